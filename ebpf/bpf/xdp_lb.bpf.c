/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * XDP entry point on the uplinks: counts every packet per ingress interface, then runs the L4
 * load balancer (include/lib/lb.h), which passes everything that is not for a VIP. It must never
 * drop a packet it has not explicitly decided to drop.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/iface_stats.h"
#include "lib/lb.h"

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	/* Linear part only: multi-buffer (frags) programs are not loaded with BPF_F_XDP_HAS_FRAGS. */
	__u64 len = (__u64)ctx->data_end - (__u64)ctx->data;
	__u32 ingress = ctx->ingress_ifindex; /* read once: three dependent loads through ctx */

	fr_iface_stats_count(ingress, len);
	return lb_process(ctx, ingress);
}

/*
 * The kernel lets only GPL-compatible programs call GPL-only helpers; the C datapath is
 * dual-licensed so that it can, while user space stays Apache-2.0.
 */
char LICENSE[] SEC("license") = "GPL";
