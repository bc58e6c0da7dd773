/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The map ABI between the C datapath and Ferrule's user space: every struct that crosses the
 * kernel boundary is defined here and only here. The Rust mirrors live in ebpf/src/abi.rs and a
 * test compares them with the BTF of the compiled objects, so a change here that is not made
 * there fails the build's tests instead of corrupting a map.
 *
 * Only plain fixed-width fields: no bitfields, no pointers, no implicit padding (add explicit
 * `pad` fields), because the layout must be the same on every architecture user space runs on.
 */
#ifndef FERRULE_ABI_H
#define FERRULE_ABI_H

#include <linux/types.h>

/* Value of map `fr_iface_stats` (per-CPU hash), keyed by the ingress ifindex (__u32). */
struct fr_iface_stats {
	__u64 packets;
	__u64 bytes;
};

#endif /* FERRULE_ABI_H */
