// libFuzzer target for the configuration loader (shoal/config/config.h):
// YAML text -> node tree -> validate() -> check_resources() (the rules
// module's regex compile; CA files the text names are read, never
// written). The input is the text of a dfget.yaml. Checked: nothing
// crashes, leaks or escapes as an exception; a refused file has at least one
// error and an accepted one none; every diagnostic names a file and, when it
// is this text's, a line and column inside it (what `file:line:col:`
// promises the operator); the same text loads to the same diagnostics again
// (no hidden state between loads).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "shoal/config/config.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Real files are at most a few KiB; large inputs only slow the search.
  if (size > 16384) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string name = "fuzz.yaml";
  // A base directory that does not exist, so relative paths name nothing.
  shoal::config::LoadResult r = shoal::config::load_string(text, name, "/nonexistent-shoal-fuzz");
  size_t errors = 0;
  // An upper bound on the lines as YAML counts them: LF, CR (alone or
  // before LF), and NEL, LS and PS, whose UTF-8 forms end in 0x85, 0xA8
  // and 0xA9.
  int lines = 1;
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    lines += u == '\n' || u == '\r' || u == 0x85 || u == 0xa8 || u == 0xa9;
  }
  for (const shoal::config::Diag& d : r.diags) {
    if (!d.warning) errors++;
    check(!d.file.empty() && !d.message.empty());
    check(d.line >= 0 && d.col >= 0);
    if (d.file == name && d.line > 0) check(d.line <= lines + 1);
    const std::string s = d.str();
    check(s.compare(0, d.file.size(), d.file) == 0);
  }
  check(r.ok() == (errors == 0));
  if (r.ok()) check(r.config->source == name);
  shoal::config::LoadResult again = shoal::config::load_string(text, name, "/nonexistent-shoal-fuzz");
  check(again.errors_text() == r.errors_text());
  return 0;
}
