// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cellmesh socket-level load balancer (IPv4).
 *
 * connect4 / sendmsg4 translate a service VIP:port into one of its backends
 * before the kernel routes the packet, so no per-packet NAT is needed.
 * recvmsg4 / getpeername4 translate the backend back into the VIP, keyed by
 * socket cookie in cm_lb4_reverse_sk, so the application only ever sees the VIP.
 *
 * Build-time switch: -DCM_LB_DETERMINISTIC picks the backend slot from a hash
 * of the socket cookie instead of bpf_get_prandom_u32() (for tests).
 *
 * Zero-backend services: connect()/sendmsg() fail with ECONNREFUSED
 * (bpf_set_retval + return 0); without set_retval the kernel would report EPERM.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb_maps.h"

#define CM_ECONNREFUSED 111

#define SYS_REJECT 0
#define SYS_PROCEED 1

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ctx->user_port holds the port, big-endian, in the low 16 bits. */
static __always_inline __be16 ctx_dport(const struct bpf_sock_addr *ctx)
{
	return (__be16)ctx->user_port;
}

static __always_inline void ctx_set_dport(struct bpf_sock_addr *ctx, __be16 port)
{
	ctx->user_port = (__u32)port;
}

static __always_inline __u16 select_slot(struct bpf_sock_addr *ctx, __u16 count)
{
#ifdef CM_LB_DETERMINISTIC
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 hash = (__u32)(cookie ^ (cookie >> 32)) * 2654435761u;

	return 1 + (__u16)(hash % count);
#else
	(void)ctx;
	return 1 + (__u16)(bpf_get_prandom_u32() % count);
#endif
}

/* Remember backend -> VIP for this socket, for recvmsg4 / getpeername4. */
static __always_inline void record_reverse(struct bpf_sock_addr *ctx, const struct lb4_backend *be,
					   __be32 vip, __be16 vport, __u16 rev_nat_id)
{
	struct lb4_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = be->address,
		.port = be->port,
	};
	struct lb4_sk_value val = {
		.address = vip,
		.port = vport,
		.rev_nat_id = rev_nat_id,
	};

	bpf_map_update_elem(&cm_lb4_reverse_sk, &key, &val, BPF_ANY);
}

/*
 * Translate VIP -> backend. Returns SYS_PROCEED (translated or not a service)
 * or SYS_REJECT (service without backends; retval already set).
 */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.dport = ctx_dport(ctx),
		.proto = (__u8)ctx->protocol,
	};
	const struct lb4_service *svc;
	const struct lb4_service *slot_svc;
	const struct lb4_backend *be;
	__u32 backend_id;
	__be32 vip = key.address;
	__be16 vport = key.dport;

	if (key.proto != CM_IPPROTO_TCP && key.proto != CM_IPPROTO_UDP)
		return SYS_PROCEED;

	svc = bpf_map_lookup_elem(&cm_lb4_services, &key);
	if (!svc)
		return SYS_PROCEED;
	if (svc->count == 0) {
		bpf_set_retval(-CM_ECONNREFUSED);
		return SYS_REJECT;
	}

	key.slot = select_slot(ctx, svc->count);
	slot_svc = bpf_map_lookup_elem(&cm_lb4_services, &key);
	if (!slot_svc)
		return SYS_PROCEED; /* mid-update: leave the VIP untouched */

	backend_id = slot_svc->backend_id;
	be = bpf_map_lookup_elem(&cm_lb4_backends, &backend_id);
	if (!be)
		return SYS_PROCEED;

	record_reverse(ctx, be, vip, vport, svc->rev_nat_id);
	ctx->user_ip4 = be->address;
	ctx_set_dport(ctx, be->port);
	return SYS_PROCEED;
}

/* Translate backend -> VIP for this socket, if we translated it forward. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = ctx_dport(ctx),
	};
	const struct lb4_sk_value *val;

	val = bpf_map_lookup_elem(&cm_lb4_reverse_sk, &key);
	if (!val)
		return;
	ctx->user_ip4 = val->address;
	ctx_set_dport(ctx, val->port);
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}
