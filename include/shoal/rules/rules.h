// Regex rule sets compiled once per configuration with Hyperscan 5.4:
// proxy.proxies[].regx (matched against a request's full URL) and
// hijackHTTPS.hosts[].regx (matched against "host:port" and the bare host).
// Patterns are unanchored, as in Dragonfly (Go regexp MatchString): a match
// anywhere counts. "First rule wins" = the lowest index among all matches.
// A PatternSet is immutable and shared by every thread; each thread owns a
// Scratch for it (Hyperscan scratch is per thread and per database).
// Syntax is Hyperscan's PCRE subset: case-sensitive, '.' matches any byte but
// '\n' (as in Go); no backreferences or lookaround. Matching is byte-wise
// (no UTF-8 mode: URLs off the network need not be valid UTF-8).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct hs_database;
struct hs_scratch;

namespace shoal::rules {

class Scratch;

class PatternSet {
 public:
  ~PatternSet();
  // Compiles the patterns. On failure returns nullptr and sets *bad_index to
  // the first offending pattern (or -1 for a failure not tied to one) and
  // *err to Hyperscan's message. An empty list compiles to a set that never
  // matches; an empty pattern matches every text. err and bad_index may be
  // null. Any thread; the result may be shared by all threads.
  static std::shared_ptr<const PatternSet> compile(const std::vector<std::string>& patterns, std::string* err,
                                                   int* bad_index);
  // Lowest index of a pattern matching anywhere in text, or -1. Grows
  // scratch to fit this set if it was never prepared for it (so use
  // Scratch::prepare up front to see allocation errors); -1 also when that
  // allocation or the scan fails. Any thread, each with its own scratch.
  int first_match(std::string_view text, Scratch& scratch) const;
  size_t size() const { return count_; }

 private:
  friend class Scratch;
  PatternSet() = default;
  hs_database* db_ = nullptr;  // null for an empty list
  size_t count_ = 0;
  uint64_t serial_ = 0;  // unique per compiled set, for Scratch::fits_
};

// Per-thread scratch space; re-sized to fit any PatternSet it is used with
// (so a reload only needs the next call to pass the new set).
class Scratch {
 public:
  Scratch() = default;
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // Makes the scratch usable with set; false (and *err, may be null) on
  // allocation failure, after which the scratch is empty again. Only the
  // owning thread.
  bool prepare(const PatternSet& set, std::string* err);

 private:
  friend class PatternSet;
  bool fits(const PatternSet& set) const;
  hs_scratch* s_ = nullptr;
  // Serials of the sets s_ was prepared for. Hyperscan only ever grows a
  // scratch, so each stays valid; remembering them keeps first_match from
  // calling hs_alloc_scratch (which mallocs) on every scan.
  std::vector<uint64_t> fits_;
};

}  // namespace shoal::rules
