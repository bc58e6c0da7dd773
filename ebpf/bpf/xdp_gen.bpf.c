/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Benchmark traffic: a generator, a sink and a minimal forwarder, for tests/benches/lb_pps.rs; not
 * part of the datapath.
 *
 * xdp_gen is a frame loop in the manner of a packet generator that never leaves the kernel: it is
 * attached to one end (the loop's receiving end) of a veth pair reserved for it, and every frame
 * that reaches it is rewritten as the next of the frames user space prepared and redirected with
 * BPF_F_BROADCAST to every interface in gen_out: the interface traffic goes out of (a copy, made
 * by the kernel) and the pair's other end, which hands the frame straight back to the loop. So a
 * few seed frames, sent once from user space, keep circulating, and each turn sends one frame out
 * as an XDP frame (ndo_xdp_xmit): no socket, no skb, no copy on the receiver's side, as a NIC's
 * driver hands frames to XDP. (This replaced BPF_PROG_TEST_RUN in live-frames mode, which some
 * kernels refuse with EPERM even to root.) The kernel copies the frame for the interface under
 * test (gen_out's last slot, the loop, keeps the original), so what the receiver does to its copy
 * never comes back; the rewrite at each turn is what makes the flows vary.
 *
 * A run ends by itself: after `limit` frames sent (user space ends one early by setting it to 0),
 * every frame that comes round is dropped, so the loop empties within one turn. It drops anything
 * that is not a GEN_FRAME_LEN frame too (nothing else should be on the pair: no addresses, no
 * IPv6).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Every generated frame is a minimum-size Ethernet frame (60 bytes before the FCS). */
#define GEN_FRAME_LEN 60
#define GEN_MAX_FRAMES 1024
/* gen_out's slots: 0 the interface traffic goes out of, 1 the loop's other end. */
#define GEN_OUT_SLOTS 2

/* Not part of the datapath ABI: only the benchmark wrapper writes these. A frame is plain bytes;
 * the control struct crosses to user space, so it has a checked mirror (src/abi.rs, GenCtl). */
struct gen_frame {
	__u8 bytes[GEN_FRAME_LEN];
};

/* Written by user space only, whole, to start or stop a run. */
struct fr_gen_ctl {
	__u64 limit;  /* frames this run may send */
	__u32 frames; /* how many of gen_frames are prepared */
	__u32 pad;
};

/* Written by the program only (user space resets it between runs, when the loop is empty). */
struct fr_gen_state {
	__u64 sent; /* frames sent so far in this run */
	__u32 next; /* the next frame to send; the loop runs on one CPU at a time */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GEN_MAX_FRAMES);
	__type(key, __u32);
	__type(value, struct gen_frame);
} gen_frames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_gen_ctl);
} gen_ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_gen_state);
} gen_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, GEN_OUT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} gen_out SEC(".maps");

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct fr_gen_ctl *ctl = bpf_map_lookup_elem(&gen_ctl, &zero);
	struct fr_gen_state *st = bpf_map_lookup_elem(&gen_state, &zero);

	/* Exactly one frame's length; the verifier learns the bound from the first test only. */
	if (data + GEN_FRAME_LEN > data_end || data_end - data != GEN_FRAME_LEN)
		return XDP_DROP;
	if (!ctl || !st || ctl->frames == 0 || st->sent >= ctl->limit)
		return XDP_DROP;
	__u32 i = st->next;
	if (i >= ctl->frames)
		i = 0;
	st->next = i + 1;
	struct gen_frame *frame = bpf_map_lookup_elem(&gen_frames, &i);
	if (!frame)
		return XDP_DROP;
	__builtin_memcpy(data, frame->bytes, GEN_FRAME_LEN);
	st->sent += 1;
	return bpf_redirect_map(&gen_out, 0, BPF_F_BROADCAST);
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

/*
 * xdp_sink, attached to the receiving end of a benchmark: counts IPv4 UDP datagrams and drops
 * them, before any skb exists, so the sink costs next to nothing and the same whatever path
 * delivered them. Everything else (ARP, ping) goes on to the stack.
 */
SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 zero = 0;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	__u64 *count = bpf_map_lookup_elem(&sink_count, &zero);
	if (count)
		*count += 1;
	return XDP_DROP;
}

/* Where xdp_fwd sends what it forwards. Crosses to user space: mirrored in src/abi.rs (FwdCtl). */
struct fr_fwd_ctl {
	__u32 ifindex; /* egress interface; 0 = not configured, pass everything */
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_fwd_ctl);
} fwd_ctl SEC(".maps");

/*
 * xdp_fwd: the least an XDP forwarder can do, as the floor the load balancer's cost is read
 * against. IPv4 UDP datagrams get the configured MAC addresses and a decremented TTL (checksum
 * updated incrementally), and are redirected out of the configured interface; no lookup, no
 * translation. Everything else goes to the stack.
 */
SEC("xdp")
int xdp_fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 zero = 0;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP ||
	    ip->ttl <= 1)
		return XDP_PASS;
	struct fr_fwd_ctl *ctl = bpf_map_lookup_elem(&fwd_ctl, &zero);
	if (!ctl || ctl->ifindex == 0)
		return XDP_PASS;
	/* TTL is the high byte of the 16-bit word it shares with the protocol: -0x0100 there is
	 * +0x0100 in the one's complement checksum (RFC 1624). */
	__u32 sum = (__u32)ip->check + bpf_htons(0x0100);
	ip->check = (__u16)(sum + (sum >> 16));
	ip->ttl -= 1;
	__builtin_memcpy(eth->h_dest, ctl->dmac, 6);
	__builtin_memcpy(eth->h_source, ctl->smac, 6);
	return bpf_redirect(ctl->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
