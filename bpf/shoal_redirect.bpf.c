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
 *   sockops        ACTIVE_ESTABLISHED of a redirected socket: publish
 *                  {client address, client port, listener port} -> original
 *                  destination in the LRU hash shoal_conns, which the daemon
 *                  reads (and deletes) after accept(). The SYN-ACK is handled
 *                  before the client's ACK is sent, so the entry exists before
 *                  the listener can accept the connection.
 *   getpeername4/6 a redirected socket still connected to the listener
 *                  reports the original peer.
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct shoal_conn_key);
	__type(value, struct shoal_orig_dst);
} shoal_conns SEC(".maps");

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
 * sockops would publish it for a direct connect to the listener.
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

SEC("sockops")
int shoal_sockops(struct bpf_sock_ops *ctx)
{
	struct shoal_conn_key key = {};
	struct shoal_orig_dst *o;
	struct bpf_sock *sk;

	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	/*
	 * remote_port is the network-order port shifted into the upper half on
	 * little-endian hosts (a 32-bit network-order value on any host), so
	 * bpf_ntohl() yields the host-order port; local_port is host order.
	 */
	if (bpf_ntohl(ctx->remote_port) != bpf_ntohs(shoal_cfg.listen_port))
		return 1;
	sk = ctx->sk;
	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&shoal_sk_orig, sk, 0, 0);
	/*
	 * The barriers keep clang from merging the two branches into one load
	 * through a computed context pointer, which the verifier rejects
	 * ("dereference of modified ctx ptr").
	 */
	if (ctx->family == AF_INET) {
		key.addr[2] = bpf_htonl(0xffff);
		key.addr[3] = ctx->local_ip4;
		barrier();
	} else {
		key.addr[0] = ctx->local_ip6[0];
		key.addr[1] = ctx->local_ip6[1];
		key.addr[2] = ctx->local_ip6[2];
		key.addr[3] = ctx->local_ip6[3];
		barrier();
	}
	key.port = bpf_htons((__u16)ctx->local_port); /* local_port: host order */
	key.listen_port = shoal_cfg.listen_port;
	if (o)
		bpf_map_update_elem(&shoal_conns, &key, o, BPF_ANY);
	else /* a direct connect to the listener: drop a stale entry the daemon never took */
		bpf_map_delete_elem(&shoal_conns, &key);
	return 1;
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
