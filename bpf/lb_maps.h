/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cellmesh socket load balancer: map layouts.
 *
 * FROZEN with bpf/layout.py: every struct below is mirrored byte for byte by
 * the Python side (and checked against this object's BTF by
 * tests/bpf/test_layout.py). Change both or neither.
 *
 * Naming: lb4_* are the IPv4 layouts; the IPv6 twins will be lb6_* with the
 * __be32 address replaced by a 16-byte union v6addr, maps cm_lb6_*.
 * Addresses and ports are in network byte order; every other field is host order.
 */
#ifndef CM_LB_MAPS_H
#define CM_LB_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Not including <sys/socket.h> / <netinet/in.h>: they fail on gnu/stubs-32.h. */
#define CM_IPPROTO_TCP 6
#define CM_IPPROTO_UDP 17

/* Defaults: the agent sets the LB maps' sizes at load time (--bpf-lb-map-max,
 * bpf_map__set_max_entries), so these only matter to other loaders. */
#define CM_LB4_SERVICES_MAX 524288
#define CM_LB4_BACKENDS_MAX 524288
#define CM_LB4_REV_NAT_MAX 65536
#define CM_LB4_REVERSE_SK_MAX 65536

/* Service scope (lb4_key.scope). */
#define CM_LB_SCOPE_EXTERNAL 0
#define CM_LB_SCOPE_INTERNAL 1

/* Key of cm_lb4_services. slot 0 is the master entry, slots 1..count the backends. */
struct lb4_key {
	__be32 address;   /* VIP */
	__be16 dport;     /* VIP port */
	__u8 proto;       /* CM_IPPROTO_TCP / CM_IPPROTO_UDP */
	__u8 scope;       /* CM_LB_SCOPE_* */
	__u16 slot;       /* 0 = master, 1..count = backend slot */
	__u16 pad;
};

/* Value of cm_lb4_services. Master: count = #backends, backend_id = 0. Slot: backend_id. */
struct lb4_service {
	__u32 backend_id;
	__u16 count;
	__u16 rev_nat_id;
	__u8 flags;
	__u8 pad[3];
};

/* Value of cm_lb4_backends (key: __u32 backend id). */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
	__u8 cell_id;
	__u8 pad[3];
};

/* Value of cm_lb4_reverse_nat (key: __u16 rev_nat_id): the service frontend. */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* Key of cm_lb4_reverse_sk: socket cookie + the backend the socket was sent to. */
struct lb4_sk_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* Value of cm_lb4_reverse_sk: the VIP to show the application instead. */
struct lb4_sk_value {
	__be32 address;
	__be16 port;
	__u16 rev_nat_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, CM_LB4_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cm_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, CM_LB4_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cm_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, CM_LB4_REV_NAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cm_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sk_key);
	__type(value, struct lb4_sk_value);
	__uint(max_entries, CM_LB4_REVERSE_SK_MAX);
} cm_lb4_reverse_sk SEC(".maps");

#endif /* CM_LB_MAPS_H */
