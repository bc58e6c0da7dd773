/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Per-interface packet and byte counters, shared by every program that sees traffic on an
 * interface. The map is pinned by name, so all programs (and daemon restarts) share one copy;
 * this header must not hold per-program state.
 */
#ifndef FERRULE_LIB_IFACE_STATS_H
#define FERRULE_LIB_IFACE_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ferrule_abi.h"

/* Interfaces with an ifindex of FR_IFACE_STATS_ARR_SIZE or more: enough for every interface of a
 * server; one beyond this is simply not counted. */
#define FR_IFACE_STATS_MAX 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FR_IFACE_STATS_MAX);
	__type(key, __u32);
	__type(value, struct fr_iface_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_iface_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FR_IFACE_STATS_ARR_SIZE);
	__type(key, __u32);
	__type(value, struct fr_iface_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_iface_stats_arr SEC(".maps");

/*
 * The hash's counters of `ifindex`, created on first use; NULL when the hash is full. A function
 * of its own so that the compiler cannot merge its lookup with the array's into one call site:
 * the verifier inlines a lookup only where the call site sees a single map, and a merged site
 * would pay the generic helper's indirect call on every packet.
 */
static __attribute__((noinline)) struct fr_iface_stats *fr_iface_stats_hash(__u32 ifindex)
{
	struct fr_iface_stats zero = {};
	struct fr_iface_stats *stats = bpf_map_lookup_elem(&fr_iface_stats, &ifindex);

	if (stats)
		return stats;
	/* BPF_NOEXIST: another CPU may have created the entry since our lookup. */
	bpf_map_update_elem(&fr_iface_stats, &ifindex, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&fr_iface_stats, &ifindex);
}

/*
 * Adds one packet of `bytes` to the counters of `ifindex`: in the array when the ifindex indexes
 * it (a lookup the verifier inlines: no hashing), else in the hash. Per-CPU values need no
 * atomics: only this CPU writes its slot, and user space sums the slots.
 */
static __always_inline void fr_iface_stats_count(__u32 ifindex, __u64 bytes)
{
	struct fr_iface_stats *stats;

	if (ifindex < FR_IFACE_STATS_ARR_SIZE)
		stats = bpf_map_lookup_elem(&fr_iface_stats_arr, &ifindex);
	else
		stats = fr_iface_stats_hash(ifindex);
	if (!stats)
		return; /* hash full: counting must never affect forwarding */
	stats->packets += 1;
	stats->bytes += bytes;
}

#endif /* FERRULE_LIB_IFACE_STATS_H */
