/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * XDP entry point on the uplinks. For now it only counts packets and bytes per ingress interface
 * and passes every packet to the stack; the L4 load balancer grows here. It must never drop a
 * packet it has not explicitly decided to drop.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/iface_stats.h"

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	/* Linear part only: multi-buffer (frags) programs are not loaded with BPF_F_XDP_HAS_FRAGS. */
	__u64 len = (__u64)ctx->data_end - (__u64)ctx->data;

	fr_iface_stats_count(ctx->ingress_ifindex, len);
	return XDP_PASS;
}

/*
 * The kernel lets only GPL-compatible programs call GPL-only helpers; the C datapath is
 * dual-licensed so that it can, while user space stays Apache-2.0.
 */
char LICENSE[] SEC("license") = "GPL";
