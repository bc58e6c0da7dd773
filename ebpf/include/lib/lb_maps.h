/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The load balancer's maps, all pinned by name so a daemon restart keeps services, tables,
 * conntrack and counters. Their shapes are ABI (ferrule_abi.h): the loader refuses a pinned map
 * whose type, sizes or flags differ. This header holds definitions only, no logic.
 */
#ifndef FERRULE_LIB_LB_MAPS_H
#define FERRULE_LIB_LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ferrule_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FR_LB_MAX_SERVICES);
	__type(key, struct fr_lb_service_key);
	__type(value, struct fr_lb_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_services SEC(".maps");

/*
 * Maglev tables, one inner array per service id (slot 0 = length N, slots 1..N = backend ids).
 * BPF_F_INNER_MAP lets each inner array have its own size (a prime chosen per service).
 */
struct lb_table_template {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, FR_LB_MAX_SERVICES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb_table_template);
} fr_lb_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FR_LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct fr_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_lb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_config SEC(".maps");

/*
 * Conntrack is one LRU hash shared by all CPUs (per-CPU LRU lists, BPF_F_NO_COMMON_LRU, to avoid
 * a global lock) rather than a per-CPU hash: ICMP errors and fragments of a flow arrive with
 * other RSS hashes, on other CPUs, and must still find the flow's backend.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FR_LB_CT_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct fr_lb_flow);
	__type(value, struct fr_lb_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FR_LB_NAT_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct fr_lb_flow);
	__type(value, struct fr_lb_nat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FR_LB_FRAGS_SIZE);
	__type(key, struct fr_lb_frag_key);
	__type(value, struct fr_lb_frag_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_frags SEC(".maps");

/* Counters are created on first use (no preallocation: most ids never exist). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FR_LB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fr_lb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FR_LB_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct fr_lb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_backend_stats SEC(".maps");

/* Packets and bytes of the ids below FR_LB_TRAFFIC_ARR_SIZE (ferrule_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FR_LB_TRAFFIC_ARR_SIZE);
	__type(key, __u32);
	__type(value, struct fr_lb_traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_service_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FR_LB_TRAFFIC_ARR_SIZE);
	__type(key, __u32);
	__type(value, struct fr_lb_traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_backend_traffic SEC(".maps");

/* The generation of the load balancer's maps: see FR_LB_GEN in ferrule_abi.h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_gen SEC(".maps");

/* The services' VIPs as a bitmap: see fr_lb_vips in ferrule_abi.h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FR_LB_VIP_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FR_LB_EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_lb_events SEC(".maps");

#endif /* FERRULE_LIB_LB_MAPS_H */
