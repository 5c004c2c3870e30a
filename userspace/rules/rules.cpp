// Rule sets on Hyperscan 5.4 in block mode.
//
// Dragonfly matches rules with Go's regexp MatchString: an unanchored,
// case-sensitive search where an empty pattern matches everything. Hyperscan
// gives the same answer with HS_FLAG_ALLOWEMPTY (without it, patterns that
// can match the empty string, like ".*" or "", are refused at compile time)
// and HS_FLAG_SINGLEMATCH (one report per pattern is all "first rule wins"
// needs, and lets Hyperscan stop tracking a pattern once it matched).

#include "shoal/rules/rules.h"

#include <hs/hs.h>

#include <atomic>
#include <climits>
#include <cstring>
#include <new>

namespace shoal::rules {
namespace {

// Bound on remembered sets per scratch; past it the list restarts, costing
// one hs_alloc_scratch per set on its next use. Reloads are what add sets.
constexpr size_t kMaxRemembered = 64;

std::atomic<uint64_t> g_next_serial{1};

const char* hs_error_name(hs_error_t e) {
  switch (e) {
    case HS_SUCCESS:
      return "HS_SUCCESS";
    case HS_INVALID:
      return "HS_INVALID";
    case HS_NOMEM:
      return "HS_NOMEM";
    case HS_SCAN_TERMINATED:
      return "HS_SCAN_TERMINATED";
    case HS_COMPILER_ERROR:
      return "HS_COMPILER_ERROR";
    case HS_DB_VERSION_ERROR:
      return "HS_DB_VERSION_ERROR";
    case HS_DB_PLATFORM_ERROR:
      return "HS_DB_PLATFORM_ERROR";
    case HS_DB_MODE_ERROR:
      return "HS_DB_MODE_ERROR";
    case HS_BAD_ALIGN:
      return "HS_BAD_ALIGN";
    case HS_BAD_ALLOC:
      return "HS_BAD_ALLOC";
    case HS_SCRATCH_IN_USE:
      return "HS_SCRATCH_IN_USE";
    case HS_ARCH_ERROR:
      return "HS_ARCH_ERROR";
    case HS_INSUFFICIENT_SPACE:
      return "HS_INSUFFICIENT_SPACE";
    case HS_UNKNOWN_ERROR:
      return "HS_UNKNOWN_ERROR";
    default:
      return "unknown Hyperscan error";
  }
}

// Keeps the lowest id. Matches arrive in end-offset order, so a later
// callback may still bring a lower id; only id 0 cannot be beaten.
int on_match(unsigned int id, unsigned long long /*from*/, unsigned long long /*to*/, unsigned int /*flags*/,
             void* ctx) {
  unsigned int* best = static_cast<unsigned int*>(ctx);
  if (id < *best) *best = id;
  return *best == 0 ? 1 : 0;  // nonzero stops the scan
}

}  // namespace

PatternSet::~PatternSet() { hs_free_database(db_); }

std::shared_ptr<const PatternSet> PatternSet::compile(const std::vector<std::string>& patterns,
                                                      std::string* err, int* bad_index) {
  auto report = [&](int index, std::string msg) {
    if (bad_index) *bad_index = index;
    if (err) *err = std::move(msg);
  };
  if (patterns.size() > static_cast<size_t>(INT_MAX)) {
    report(-1, "too many patterns");
    return nullptr;
  }
  std::shared_ptr<PatternSet> set(new PatternSet());
  set->count_ = patterns.size();
  set->serial_ = g_next_serial.fetch_add(1, std::memory_order_relaxed);
  // Hyperscan cannot compile zero patterns; a set without a database simply
  // never matches.
  if (patterns.empty()) return set;

  std::vector<const char*> exprs;
  std::vector<unsigned int> flags, ids;
  exprs.reserve(patterns.size());
  flags.reserve(patterns.size());
  ids.reserve(patterns.size());
  for (size_t i = 0; i < patterns.size(); ++i) {
    // Hyperscan takes NUL-terminated expressions; an embedded NUL would
    // silently cut the pattern short.
    if (patterns[i].find('\0') != std::string::npos) {
      report(static_cast<int>(i), "pattern contains a NUL byte (write it as \\x00)");
      return nullptr;
    }
    exprs.push_back(patterns[i].c_str());
    flags.push_back(HS_FLAG_SINGLEMATCH | HS_FLAG_ALLOWEMPTY);
    ids.push_back(static_cast<unsigned int>(i));
  }
  hs_compile_error_t* cerr = nullptr;
  hs_error_t rc =
      hs_compile_multi(exprs.data(), flags.data(), ids.data(), static_cast<unsigned int>(exprs.size()),
                       HS_MODE_BLOCK, nullptr, &set->db_, &cerr);
  if (rc != HS_SUCCESS) {
    if (cerr) {
      report(cerr->expression, cerr->message ? cerr->message : hs_error_name(rc));
      hs_free_compile_error(cerr);
    } else {
      report(-1, hs_error_name(rc));
    }
    return nullptr;
  }
  return set;
}

int PatternSet::first_match(std::string_view text, Scratch& scratch) const {
  if (!db_ || text.size() > UINT_MAX) return -1;
  if (!scratch.fits(*this) && !scratch.prepare(*this, nullptr)) return -1;
  unsigned int best = UINT_MAX;
  // hs_scan wants a non-null pointer even for an empty text.
  const char* data = text.data() ? text.data() : "";
  hs_error_t rc = hs_scan(db_, data, static_cast<unsigned int>(text.size()), 0, scratch.s_, on_match, &best);
  if (rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED) return -1;
  return best == UINT_MAX ? -1 : static_cast<int>(best);
}

Scratch::~Scratch() { hs_free_scratch(s_); }

bool Scratch::fits(const PatternSet& set) const {
  for (uint64_t s : fits_)
    if (s == set.serial_) return true;
  return false;
}

bool Scratch::prepare(const PatternSet& set, std::string* err) {
  if (!set.db_ || fits(set)) return true;
  hs_error_t rc = hs_alloc_scratch(set.db_, &s_);
  if (rc != HS_SUCCESS) {
    // hs_alloc_scratch may have freed the old scratch on failure.
    if (s_) hs_free_scratch(s_);
    s_ = nullptr;
    fits_.clear();
    if (err) *err = std::string("hs_alloc_scratch: ") + hs_error_name(rc);
    return false;
  }
  if (fits_.size() >= kMaxRemembered) fits_.clear();
  try {
    fits_.push_back(set.serial_);
  } catch (const std::bad_alloc&) {
    // Not remembering only costs a later re-prepare.
  }
  return true;
}

}  // namespace shoal::rules
