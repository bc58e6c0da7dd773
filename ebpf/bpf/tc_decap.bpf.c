/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * tc (tcx) ingress program for DSR backends: strips the outer IPv4/IPv6 header that xdp_lb put in
 * front of a client's packet (IPIP, IP6IP6, 4in6, 6in4) when the tunnel is addressed to one of
 * the addresses in `fr_decap_addrs`, so the stack sees the client's packet to the VIP (which the
 * backend has on a local interface) and answers the client directly. It never drops: anything
 * else, an outer header the stack would refuse (counted), or a decapsulation the kernel refuses,
 * continues unchanged (TC_ACT_OK).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferrule_abi.h"
#include "lib/csum.h"

/* From include/uapi/linux/bpf.h of Linux 6.3+ (older userspace headers lack them). */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define DECAP_MAX_ADDRS 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DECAP_MAX_ADDRS);
	__type(key, struct fr_decap_addr);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_decap_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FR_DECAP_EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fr_decap_events SEC(".maps");

static __always_inline int decap_event(__u32 event)
{
	__u64 *count = bpf_map_lookup_elem(&fr_decap_events, &event);

	if (count)
		*count += 1;
	return TC_ACT_OK;
}

SEC("classifier")
int tc_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct fr_decap_addr key __attribute__((aligned(8))) = {};
	struct ethhdr *eth = data;
	__u32 outer_len;
	__u8 inner;
	__be16 inner_proto;
	__u64 flags;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_OK;
		/* xdp_lb's outer header has no options and is never fragmented by it; a fragmented
		 * tunnel packet is left to the stack to reassemble (and then dropped, no ipip module). */
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return TC_ACT_OK;
		/* What ip_rcv would drop is not decapsulated either: the stack drops it as it is. */
		if (ip->version != 4 || csum_ipv4_header_valid(ip) == 0 ||
		    bpf_ntohs(ip->tot_len) < sizeof(*ip) || bpf_ntohs(ip->tot_len) > skb->len - sizeof(*eth))
			return decap_event(FR_DECAP_EV_MALFORMED);
		inner = ip->protocol;
		*(__u32 *)key.addr = ip->daddr;
		key.family = FR_FAMILY_IPV4;
		outer_len = sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		if (ip6->version != 6 || bpf_ntohs(ip6->payload_len) > skb->len - sizeof(*eth) - sizeof(*ip6))
			return decap_event(FR_DECAP_EV_MALFORMED);
		inner = ip6->nexthdr;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
		key.family = FR_FAMILY_IPV6;
		outer_len = sizeof(*ip6);
	} else {
		return TC_ACT_OK;
	}
	if (inner == IPPROTO_IPIP) {
		flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
		inner_proto = bpf_htons(ETH_P_IP);
	} else if (inner == IPPROTO_IPV6) {
		flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
		inner_proto = bpf_htons(ETH_P_IPV6);
	} else {
		return TC_ACT_OK;
	}
	if (!bpf_map_lookup_elem(&fr_decap_addrs, &key))
		return decap_event(FR_DECAP_EV_NOT_LOCAL);
	/* Removes the outer header behind the MAC header and sets skb->protocol to the inner one. */
	if (bpf_skb_adjust_room(skb, -(__s32)outer_len, BPF_ADJ_ROOM_MAC, flags))
		return decap_event(FR_DECAP_EV_FAILED);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &inner_proto, sizeof(inner_proto), 0))
		return decap_event(FR_DECAP_EV_FAILED);
	return decap_event(FR_DECAP_EV_DECAPSULATED);
}

char LICENSE[] SEC("license") = "GPL";
