// Privileges: what shoald keeps of root's capabilities once start-up is
// over. Everything that needs most of root (loading the BPF programs,
// binding the listeners, raising RLIMIT_MEMLOCK, giving the admin socket to
// its group, reading the CA key) happens before the drop; what remains is
// the short list kept_capabilities() returns for the transparent mode that
// came up. Internal to the daemon module.
#pragma once

#include <cstdint>
#include <string>

namespace shoal::daemon {

// A capability set as the kernel's bit mask (bit N = capability N).
using CapSet = uint64_t;

// The capabilities shoald needs after start-up, by the transparent mode that
// came up ("ebpf", "iptables" or "off"; see privileges.cpp for why each).
CapSet kept_capabilities(const std::string& mode);

// "cap_bpf,cap_net_admin" (kernel names, lower case), or "none".
std::string cap_names(CapSet s);

// The calling thread's effective, permitted and bounding sets, from
// /proc/thread-self/status.
struct CapState {
  CapSet eff = 0, prm = 0, bnd = 0, amb = 0, inh = 0;
};
bool read_caps(const std::string& status_path, CapState* out, std::string* err);

// Reduces the calling thread to keep (intersected with what it has):
// no_new_privs; ambient and inheritable sets cleared; every other
// capability dropped from the bounding set (needs CAP_SETPCAP, which the
// call drops last unless kept); effective = permitted = keep. Also marks the
// process not dumpable, so no core file or same-uid ptrace exposes the CA
// key. Other threads keep their sets: call it while the caller is the only
// thread that matters and check with verify_all_threads(). Returns what it
// kept in *kept. False with *err when a step fails.
bool drop_capabilities(CapSet keep, CapSet* kept, std::string* err);

// True when every thread of the process has effective and permitted sets
// equal to want and a bounding set within want; else *err names the first
// thread that does not (tid, name, its sets).
bool verify_all_threads(CapSet want, std::string* err);

// The CA key must be readable by the daemon only: a warning text when the
// key's owner is not the daemon's user (that user can read it too) — the
// mode is checked with the rest of the CA (tls::CertAuthority). Empty when
// fine or when the file cannot be inspected.
std::string ca_key_owner_warning(const std::string& key_path);

}  // namespace shoal::daemon
