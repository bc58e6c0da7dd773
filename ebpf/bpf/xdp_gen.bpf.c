/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Benchmark traffic: a generator, a sink and a minimal forwarder, for tests/benches/lb_pps.rs; not
 * part of the datapath.
 *
 * xdp_gen is never attached to an interface: user space runs it with
 * BPF_PROG_TEST_RUN in live-frames mode (src/test_run.rs, `XdpTrafficGen`), where the kernel hands
 * it a copy of a page per repetition and XDP_TX sends it out of the ingress interface named in the
 * context. All it does besides XDP_TX is write the next of the frames user space prepared over the
 * page, because neither the page's content nor one frame per syscall is enough:
 * - the kernel recycles live-frame pages without rewriting them, and on a veth the receiver (an
 *   XDP NAT, the stack's DNAT) edits the very page in place, so a page comes back as the packet
 *   the receiver forwarded, not the one generated;
 * - each live-frames syscall costs a grace period to set up and tear down (~20 ms here), so a
 *   syscall has to send many frames, and the flows have to vary within it.
 * It never drops what it was given; it drops only when user space has not prepared any frame.
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

/* Not part of the datapath ABI: only the benchmark wrapper writes these. A frame is plain bytes;
 * the control struct crosses to user space, so it has a checked mirror (src/abi.rs, GenCtl). */
struct gen_frame {
	__u8 bytes[GEN_FRAME_LEN];
};

struct fr_gen_ctl {
	__u32 frames; /* how many of gen_frames are prepared, set by user space */
	__u32 next;   /* the next frame to send; one thread runs the generator at a time */
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

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct fr_gen_ctl *ctl = bpf_map_lookup_elem(&gen_ctl, &zero);

	if (!ctl || ctl->frames == 0 || data + GEN_FRAME_LEN > data_end)
		return XDP_DROP;
	__u32 i = ctl->next;
	if (i >= ctl->frames)
		i = 0;
	ctl->next = i + 1;
	struct gen_frame *frame = bpf_map_lookup_elem(&gen_frames, &i);
	if (!frame)
		return XDP_DROP;
	__builtin_memcpy(data, frame->bytes, GEN_FRAME_LEN);
	return XDP_TX;
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
