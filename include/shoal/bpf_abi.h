// The ABI between bpf/shoal_redirect.bpf.c and the loader
// (userspace/redirect/ebpf.cpp): map keys and values, the configuration the
// loader writes into .rodata before the object is loaded, and the indexes of
// the stats map. This is the only header both sides include; never declare
// these structs anywhere else.
//
// Rules for everything here: fixed-width fields only, every padding byte
// spelled out (hash keys are compared byte by byte, so implicit padding would
// make equal keys differ), sizes a multiple of 8. The loader static_asserts
// each size and offset, so a change here that is not made on both sides fails
// to compile. Byte order is stated per field: "network" is big-endian as on
// the wire and in sockaddr; "host" is the CPU's.
//
// Plain C (the BPF side is C, built by clang -target bpf), hence
// <linux/types.h> and no enum class.
#pragma once

#include <linux/types.h>

// Indexes of the per-CPU array map shoal_stats (one __u64 per index and CPU;
// the loader sums the CPUs).
#define SHOAL_STAT_REDIRECTED 0  // TCP connects rewritten to the transparent listener
#define SHOAL_STAT_SKIPPED 1     // connects/sends to a configured port left alone on purpose
#define SHOAL_STAT_BLOCKED 2     // UDP connects/sends to a configured port refused with EPERM
#define SHOAL_STAT_COUNT 3

// Size of the ports bitmap: one bit per port 0..65535.
#define SHOAL_PORT_BITMAP_BYTES 8192

// The hooks' configuration, a global `const volatile struct shoal_config
// shoal_cfg` in the object's .rodata: the loader fills it between open and
// load, after which the kernel freezes it (the verifier then treats every
// field as a constant).
struct shoal_config {
  __u64 daemon_cgroup_id;  // cgroup v2 id whose tasks are never redirected (0 = none)
  __u64 netns_cookie;      // act only in this network namespace (SO_NETNS_COOKIE)
  __u32 mark;              // sockets with this SO_MARK are never redirected (0 = no mark check)
  __u16 listen_port;       // transparent listener port, network order
  __u16 pad0;              // zero
  // Destination ports (TCP redirected, UDP refused): port p is configured
  // when bit (p & 7) of byte (p >> 3) is set; p in host order.
  __u8 ports[SHOAL_PORT_BITMAP_BYTES];
};

// Where a redirected socket was going and who opened it. The value of the
// socket-storage maps shoal_sk_orig (on the client's socket: written by
// connect4/6, read by getpeername4/6 and accepted4/6) and shoal_accepted (on
// the socket the transparent listener accepted: written by accepted4/6 when
// the daemon calls getpeername(), read by the daemon with that fd as key).
struct shoal_orig_dst {
  // Destination address, network order, as the client's socket saw it:
  // family AF_INET: addr[0] is the IPv4 address, addr[1..3] are zero;
  // family AF_INET6: all 16 bytes, an IPv4 destination reached through a
  // dual-stack socket being ::ffff:a.b.c.d.
  __u32 addr[4];
  __u16 port;       // destination port, network order
  __u16 family;     // AF_INET or AF_INET6: the client socket's family
  __u32 tgid;       // process (thread-group) id of the connecting task, in the initial PID namespace
  __u64 cgroup_id;  // cgroup v2 id of the connecting task
};
