// Raising RLIMIT_NOFILE's soft limit to the hard one. Every connection holds
// a descriptor, and the soft limit a shell hands down is often 1024: a
// daemon started by hand (systemd's unit sets both limits) would run out
// with a few hundred clients, or, for a scheduler, a few hundred peers
// keeping their connections alive. Header-only; the callers log the result.
#pragma once

#include <sys/resource.h>

#include <cstdint>

namespace shoal::util {

struct FdLimit {
  int64_t before = 0, now = 0;  // soft limits; -1 for unlimited
};

// Any thread; idempotent. On a failure the limit stays as it was.
inline FdLimit raise_fd_limit() {
  auto value = [](rlim_t v) { return v == RLIM_INFINITY ? int64_t{-1} : static_cast<int64_t>(v); };
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return {};
  FdLimit r{value(rl.rlim_cur), value(rl.rlim_cur)};
  if (rl.rlim_cur != rl.rlim_max) {
    rlimit want = rl;
    want.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) r.now = value(want.rlim_cur);
  }
  return r;
}

}  // namespace shoal::util
