// SPDX-License-Identifier: GPL-2.0
/*
 * Shoal's transparent redirect: cgroup hooks that send a job's TCP connects
 * on the configured ports to the transparent listener and remember where
 * each connection was going.
 *
 *   connect4/6     TCP to a configured port: stash the original destination
 *                  in socket storage, rewrite the address to the listener
 *                  (127.0.0.1, [::1], or [::ffff:127.0.0.1] for an IPv4
 *                  destination reached through a dual-stack socket).
 *                  UDP to a configured port: EPERM (QUIC falls back to TCP).
 *   sendmsg4/6     UDP sendto() to a configured port: EPERM.
 *   accepted4/6    (attached to the daemon's own cgroup only) the daemon's
 *                  getpeername() on a socket its transparent listener
 *                  accepted: find the client's socket by the connection's
 *                  4-tuple (bpf_sk_lookup_tcp) and copy that socket's
 *                  original destination into the accepted socket's storage
 *                  (shoal_accepted), which the daemon then reads with the
 *                  accepted fd as the key. No sockops program is needed
 *                  (attached anywhere, one turns on a check at about ten
 *                  points of every TCP connection on the machine); the price
 *                  is that a client which closes its socket before the
 *                  daemon looks is not found (it has stopped listening for
 *                  an answer by then).
 *   getpeername4/6 (job cgroups) a redirected socket still connected to
 *                  the listener reports the original peer.
 *
 * Never a loop: nothing is touched outside the daemon's network namespace,
 * in the daemon's own cgroup, on sockets carrying the daemon's SO_MARK, or
 * when the destination already is the listener. TCP connects the listener
 * could not serve are left alone too: to IPv6 link-local destinations
 * (sin6_scope_id is not visible here, so the daemon could not reach them)
 * and from sockets bound to a device (SO_BINDTODEVICE, e.g. into a VRF).
 * Only IPPROTO_TCP and IPPROTO_UDP sockets are looked at (not MPTCP, SCTP,
 * UDP-Lite or ping sockets).
 *
 * Every program returns 1 (proceed) unless it refuses a UDP send/connect
 * (0, which the kernel turns into EPERM). Configuration is .rodata
 * (struct shoal_config, include/shoal/bpf_abi.h), frozen at load.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "shoal/bpf_abi.h"

/* From the C library's socket headers, which the BPF target cannot include. */
#define AF_INET	    2
#define AF_INET6    10
#define SOCK_STREAM 1
#define SOCK_DGRAM  2

#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

#define barrier() asm volatile("" ::: "memory")

char LICENSE[] SEC("license") = "GPL";

const volatile struct shoal_config shoal_cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct shoal_orig_dst);
} shoal_sk_orig SEC(".maps");

/* On sockets the transparent listener accepted: the client's shoal_sk_orig. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct shoal_orig_dst);
} shoal_accepted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SHOAL_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} shoal_stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *v = bpf_map_lookup_elem(&shoal_stats, &index);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
}

/* port: host order. */
static __always_inline int port_configured(__u16 port)
{
	return shoal_cfg.ports[port >> 3] & (1 << (port & 7));
}

/*
 * Connect/send from a socket the hooks must leave alone: another network
 * namespace (a --net container has its own loopback), the daemon's cgroup,
 * or a socket carrying the daemon's mark.
 */
static __always_inline int leave_alone(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (bpf_get_netns_cookie(ctx) != shoal_cfg.netns_cookie)
		return 1;
	if (bpf_get_current_cgroup_id() == shoal_cfg.daemon_cgroup_id)
		return 1;
	if (shoal_cfg.mark != 0 && sk->mark == shoal_cfg.mark)
		return 1;
	return 0;
}

enum verdict {
	PASS,	  /* not ours: proceed untouched, not counted */
	SKIP,	  /* ours but left alone on purpose: proceed, counted */
	BLOCK,	  /* UDP to a configured port: refuse */
	REDIRECT, /* TCP to a configured port: rewrite */
};

/*
 * The common decision of connect4/6 and sendmsg4/6. to_listener: the
 * destination is the transparent listener itself. odd_dst: a destination
 * the daemon could not reach (IPv6 link-local). A TCP socket bound to a
 * device cannot reach the loopback listener either. UDP is refused in both
 * cases: refusing needs no listener.
 */
static __always_inline enum verdict decide(struct bpf_sock_addr *ctx, int to_listener, int odd_dst)
{
	__u32 type, protocol;

	if (!port_configured(bpf_ntohs((__u16)ctx->user_port)))
		return PASS;
	type = ctx->type;
	protocol = ctx->protocol;
	if (!(type == SOCK_STREAM && protocol == IPPROTO_TCP) &&
	    !(type == SOCK_DGRAM && protocol == IPPROTO_UDP))
		return PASS; /* MPTCP, SCTP, ping sockets, UDP-Lite... */
	if (to_listener || leave_alone(ctx))
		return SKIP;
	if (type == SOCK_DGRAM)
		return BLOCK;
	if (odd_dst || ctx->sk->bound_dev_if != 0)
		return SKIP;
	return REDIRECT;
}

/* Stashes the original destination of ctx's socket. 0 on failure (ENOMEM). */
static __always_inline int stash(struct bpf_sock_addr *ctx, __u32 family)
{
	struct shoal_orig_dst *o;

	o = bpf_sk_storage_get(&shoal_sk_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return 0;
	if (family == AF_INET) {
		o->addr[0] = ctx->user_ip4;
		o->addr[1] = 0;
		o->addr[2] = 0;
		o->addr[3] = 0;
	} else {
		o->addr[0] = ctx->user_ip6[0];
		o->addr[1] = ctx->user_ip6[1];
		o->addr[2] = ctx->user_ip6[2];
		o->addr[3] = ctx->user_ip6[3];
	}
	o->port = (__u16)ctx->user_port;
	o->family = (__u16)family;
	o->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	o->cgroup_id = bpf_get_current_cgroup_id();
	return 1;
}

/*
 * A socket redirected earlier, disconnected (AF_UNSPEC) and now connecting
 * where it is left alone must not keep its old original destination:
 * the daemon would be handed it for a direct connect to the listener.
 */
static __always_inline void forget(struct bpf_sock_addr *ctx)
{
	bpf_sk_storage_delete(&shoal_sk_orig, ctx->sk);
}

static __always_inline int is_listener4(__u32 ip4, __u32 port)
{
	return ip4 == bpf_htonl(LOOPBACK4) && port == shoal_cfg.listen_port;
}

/* ::ffff:a.b.c.d */
static __always_inline int is_v4mapped(const __u32 *ip6)
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
}

/* [::1]:listen_port or [::ffff:127.0.0.1]:listen_port. */
static __always_inline int is_listener6(const __u32 *ip6, __u32 port)
{
	if (port != shoal_cfg.listen_port || ip6[0] != 0 || ip6[1] != 0)
		return 0;
	return (ip6[2] == 0 && ip6[3] == bpf_htonl(1)) ||
	       (ip6[2] == bpf_htonl(0xffff) && ip6[3] == bpf_htonl(LOOPBACK4));
}

static __always_inline int is_link_local6(const __u32 *ip6)
{
	return (ip6[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000);
}

/* user_ip6 allows 4-byte loads; copy it out once. */
static __always_inline void load_ip6(struct bpf_sock_addr *ctx, __u32 *ip6)
{
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
}

/*
 * What a connect hook does with a verdict other than REDIRECT: 1 lets the
 * connect go ahead, 0 refuses it (EPERM). A REDIRECT whose destination
 * cannot be stashed is let go ahead too (skipped): better direct than lost.
 */
static __always_inline int not_redirected(struct bpf_sock_addr *ctx, enum verdict v)
{
	if (v == PASS)
		return 1;
	if (v == BLOCK) {
		count(SHOAL_STAT_BLOCKED);
		return 0;
	}
	forget(ctx);
	count(SHOAL_STAT_SKIPPED);
	return 1;
}

/* The sendmsg hooks: UDP to a configured port is refused, the rest passes. */
static __always_inline int udp_verdict(enum verdict v)
{
	if (v == BLOCK) {
		count(SHOAL_STAT_BLOCKED);
		return 0;
	}
	if (v == SKIP)
		count(SHOAL_STAT_SKIPPED);
	return 1;
}

SEC("cgroup/connect4")
int shoal_connect4(struct bpf_sock_addr *ctx)
{
	enum verdict v = decide(ctx, is_listener4(ctx->user_ip4, ctx->user_port), 0);

	if (v != REDIRECT || !stash(ctx, AF_INET))
		return not_redirected(ctx, v == REDIRECT ? SKIP : v);
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = shoal_cfg.listen_port;
	count(SHOAL_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect6")
int shoal_connect6(struct bpf_sock_addr *ctx)
{
	__u32 ip6[4];
	enum verdict v;

	load_ip6(ctx, ip6);
	v = decide(ctx, is_listener6(ip6, ctx->user_port), is_link_local6(ip6));
	if (v != REDIRECT || !stash(ctx, AF_INET6))
		return not_redirected(ctx, v == REDIRECT ? SKIP : v);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (is_v4mapped(ip6)) {
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = shoal_cfg.listen_port;
	count(SHOAL_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/sendmsg4")
int shoal_sendmsg4(struct bpf_sock_addr *ctx)
{
	return udp_verdict(decide(ctx, is_listener4(ctx->user_ip4, ctx->user_port), 0));
}

SEC("cgroup/sendmsg6")
int shoal_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 ip6[4];
	enum verdict v;

	load_ip6(ctx, ip6);
	v = decide(ctx, is_listener6(ip6, ctx->user_port), 0);
	return udp_verdict(v);
}

/*
 * getpeername on a socket this program redirected and that is still
 * connected to the listener: report the original peer. A socket that was
 * disconnected and connected elsewhere keeps its storage but no longer
 * matches the listener, so it is left alone.
 */
SEC("cgroup/getpeername4")
int shoal_getpeername4(struct bpf_sock_addr *ctx)
{
	struct shoal_orig_dst *o;

	if (!is_listener4(ctx->user_ip4, ctx->user_port))
		return 1;
	o = bpf_sk_storage_get(&shoal_sk_orig, ctx->sk, 0, 0);
	if (!o || o->family != AF_INET)
		return 1;
	ctx->user_ip4 = o->addr[0];
	ctx->user_port = o->port;
	return 1;
}

SEC("cgroup/getpeername6")
int shoal_getpeername6(struct bpf_sock_addr *ctx)
{
	struct shoal_orig_dst *o;
	__u32 ip6[4];

	load_ip6(ctx, ip6);
	if (!is_listener6(ip6, ctx->user_port))
		return 1;
	o = bpf_sk_storage_get(&shoal_sk_orig, ctx->sk, 0, 0);
	if (!o || o->family != AF_INET6)
		return 1;
	ctx->user_ip6[0] = o->addr[0];
	ctx->user_ip6[1] = o->addr[1];
	ctx->user_ip6[2] = o->addr[2];
	ctx->user_ip6[3] = o->addr[3];
	ctx->user_port = o->port;
	return 1;
}

/*
 * The daemon's side. getpeername() on a socket of the daemon's cgroup whose
 * local port is the transparent listener's: ctx->user_ip4/6 and user_port
 * hold the client's address and port. The client's socket is the
 * established one at {client} connected to {listener}, i.e. the socket a
 * packet from the listener's address and port to the client's would reach.
 * Only the storage is written; the address getpeername() returns is left
 * as it is.
 */
static __always_inline void copy_orig(struct bpf_sock_addr *ctx, struct bpf_sock_tuple *t, __u32 tuple_len)
{
	struct shoal_orig_dst *o, *d;
	struct bpf_sock *client;

	client = bpf_sk_lookup_tcp(ctx, t, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (!client)
		return;
	o = bpf_sk_storage_get(&shoal_sk_orig, client, 0, 0);
	if (o) {
		d = bpf_sk_storage_get(&shoal_accepted, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (d)
			*d = *o;
	}
	bpf_sk_release(client);
}

/*
 * A socket of the transparent listener whose destination is not copied yet
 * (shoald calls getpeername() more than once per connection; the lookup is
 * the expensive part).
 */
static __always_inline int accepted_by_listener(struct bpf_sock_addr *ctx)
{
	/* src_port: host order */
	return ctx->sk->src_port == bpf_ntohs(shoal_cfg.listen_port) &&
	       bpf_get_netns_cookie(ctx) == shoal_cfg.netns_cookie &&
	       !bpf_sk_storage_get(&shoal_accepted, ctx->sk, 0, 0);
}

SEC("cgroup/getpeername4")
int shoal_accepted4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock_tuple t = {};

	if (!accepted_by_listener(ctx))
		return 1;
	t.ipv4.saddr = ctx->sk->src_ip4;
	t.ipv4.sport = shoal_cfg.listen_port;
	t.ipv4.daddr = ctx->user_ip4;
	t.ipv4.dport = (__u16)ctx->user_port;
	copy_orig(ctx, &t, sizeof(t.ipv4));
	return 1;
}

SEC("cgroup/getpeername6")
int shoal_accepted6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock_tuple t = {};

	if (!accepted_by_listener(ctx))
		return 1;
	t.ipv6.saddr[0] = ctx->sk->src_ip6[0];
	t.ipv6.saddr[1] = ctx->sk->src_ip6[1];
	t.ipv6.saddr[2] = ctx->sk->src_ip6[2];
	t.ipv6.saddr[3] = ctx->sk->src_ip6[3];
	t.ipv6.sport = shoal_cfg.listen_port;
	t.ipv6.daddr[0] = ctx->user_ip6[0];
	t.ipv6.daddr[1] = ctx->user_ip6[1];
	t.ipv6.daddr[2] = ctx->user_ip6[2];
	t.ipv6.daddr[3] = ctx->user_ip6[3];
	t.ipv6.dport = (__u16)ctx->user_port;
	copy_orig(ctx, &t, sizeof(t.ipv6));
	return 1;
}
