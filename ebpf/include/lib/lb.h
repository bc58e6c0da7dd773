/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The L4 load balancer's fast path, run by xdp_lb on every packet of an uplink: parse, service
 * lookup, backend choice (a flow remembered per CPU, lb_fc; else conntrack; else Maglev), then DSR
 * encapsulation or NAT, and forwarding through bpf_fib_lookup (answers cached for 50 ms: lb_be_nh,
 * lb_nh_cache). Everything it does not handle goes to the stack (XDP_PASS) with a counter; it
 * drops only for the reasons of `enum fr_lb_drop`, counted per service and, once a backend was
 * chosen, on that backend too.
 *
 * Defined behaviours (each has a datapath test):
 * - IPv4 options (IHL > 5): handled; L4 is found at IHL * 4 and the options travel untouched.
 * - IPv6 extension headers: hop-by-hop, routing, destination options and fragment headers are
 *   walked, at most LB_MAX_EXT_HDRS of them; more → XDP_PASS + FR_LB_EV_EXT_HDR_LIMIT.
 * - Fragments: the first (offset 0, has the L4 header) is balanced by its 5-tuple like any packet
 *   and recorded in fr_lb_frags under (src, dst, id, proto); later ones are sent to the recorded
 *   backend, or passed with FR_LB_EV_FRAG_UNKNOWN. NAT-mode services do not handle fragments:
 *   XDP_PASS + FR_LB_EV_NAT_UNHANDLED.
 * - ICMP errors (IPv4 type 3/11, ICMPv6 type 1/2/3) quoting a packet *from* a VIP (a backend's
 *   reply) go to the backend of that flow (conntrack with the quoted tuple reversed), so a PMTU
 *   signal reaches the host that sends too big. DSR: encapsulated like the flow (no conntrack
 *   entry: Maglev chooses, FR_LB_EV_ICMP_NO_FLOW). NAT: translated as if about the backend's own
 *   packet (outer node → backend, quoted backend:bport → node:nat_port); no conntrack entry (so no
 *   SNAT port), an ICMP error in fragments or behind IPv6 extension headers → XDP_PASS +
 *   FR_LB_EV_NAT_UNHANDLED.
 * - NAT, backend side: ICMP errors to the node's address quoting a translated packet (node:nat_port
 *   → backend:bport, found in fr_lb_nat) go back to the client translated (outer VIP → client,
 *   quoted client:cport → VIP:vport). Both directions count FR_LB_EV_ICMP_FORWARDED.
 * - A quote cut short before the quoted ports, a quoted IHL < 5, or quoted ports beyond the outer
 *   IP packet: XDP_PASS + FR_LB_EV_MALFORMED. A quote cut anywhere after the ports is translated
 *   (checksums of what is quoted stay right; a quoted L4 checksum not quoted is not touched).
 *   A quoted IPv4 later fragment has no ports: XDP_PASS.
 * - Malformed headers (truncated, IHL < 5, lengths beyond the frame, an IP version that is not the
 *   ethertype's): XDP_PASS + FR_LB_EV_MALFORMED; the stack's own checks then discard them.
 * - Too big for the route to the backend (DSR: once encapsulated; NAT: as it is): a TCP/UDP packet
 *   that may not be fragmented (IPv4 with DF, IPv6) and is not a later fragment is answered with
 *   ICMP "fragmentation needed" / ICMPv6 "packet too big" from the VIP (lb_too_big,
 *   FR_LB_EV_TOO_BIG, rate-limited per CPU); anything else that does not fit is passed
 *   (FR_LB_EV_MTU_PASS).
 * - Tagged frames (one 802.1Q/802.1ad tag) are handled; the tag is kept, so they are sent back
 *   out (XDP_TX) only when the route's egress is the ingress interface, else passed.
 */
#ifndef FERRULE_LIB_LB_H
#define FERRULE_LIB_LB_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferrule_abi.h"
#include "lib/csum.h"
#include "lib/lb_maps.h"

#define LB_CONTINUE (-1)
#define LB_MAX_EXT_HDRS 4
/* Upper bound of any header offset, for the verifier; real headers end long before. */
#define LB_MAX_OFF 1024
#define LB_AF_INET 2
#define LB_AF_INET6 10
#define LB_IP_MF 0x2000
#define LB_IP_OFFSET 0x1fff
#define LB_IP_DF 0x4000
#define LB_NH_HOPOPTS 0
#define LB_NH_ROUTING 43
#define LB_NH_FRAGMENT 44
#define LB_NH_DSTOPTS 60
#define LB_NH_ICMPV6 58
#define LB_TTL 64
#define LB_SEED_MAGLEV 0x6d61676cu
#define LB_SEED_NAT 0x6e617470u
#define LB_REFRESH_NS 1000000000ull
/* lb_fib's answer for a client's packet over the route's MTU (DSR: once encapsulated); never a
 * verdict. */
#define LB_TOO_BIG (-2)
/* Most bytes of a packet an ICMP "too big" quotes: its IP header(s) and 8 bytes of TCP/UDP. */
#define LB_QUOTE_MAX 256

enum lb_frag { LB_FRAG_NONE = 0, LB_FRAG_FIRST = 1, LB_FRAG_LATER = 2 };

/* What parsing learnt about the packet. Aligned so address words can be read as __u32. */
struct lb_pkt {
	struct fr_lb_flow flow;
	__u64 frame_len;
	__u64 gen; /* fr_lb_gen when the packet arrived (valid when `fc`); slots keep its low 32 bits */
	__u32 l4_off;
	__u32 l3_len; /* IP header + payload, as the IP header says */
	__u32 frag_id;
	__be32 v6_word0; /* IPv6 version / traffic class / flow label */
	__be16 v4_id;
	__be16 v4_frag_off;
	__u32 service_id; /* once the packet is known to be for a service: drops are counted on it */
	__u32 backend_id; /* once a backend is chosen: its drops are counted on it too */
	__u8 frag; /* enum lb_frag */
	__u8 tos;
	__u8 vlan;
	__u8 fc; /* `gen` and `fc_slot` are set: a confirmed flow may be remembered in lb_fc */
	__u32 fc_slot; /* the flow's slot in lb_fc (this CPU's part, at lb_fc_index), when `fc` */
} __attribute__((aligned(8)));

/* Value of the next-hop cache: one successful bpf_fib_lookup's answer, until `expires_ns`. */
struct lb_nh {
	__u64 expires_ns; /* coarse monotonic clock */
	__u32 ifindex; /* egress */
	__u16 mtu;
	__u8 dmac[6];
	__u8 smac[6];
	__u16 pad;
	__u32 ingress; /* the lookup's ingress interface (the key's) */
};

/* Where a rewritten or encapsulated packet goes: its new L3 (and, for NAT, L4) endpoints; and,
 * once lb_fib sent it, the next hop it went to. */
struct lb_fwd {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u32 l3_len;
	__u32 backend_id; /* the backend `dst` is, or 0: picks the next-hop slot (lb_be_nh) */
	__u8 family;
	__u8 vlan;
	__u8 too_big; /* client's packet: lb_fib answers LB_TOO_BIG when the route's MTU is exceeded */
	__u8 sent; /* lb_fib sent the packet to `nh` (XDP_TX or a redirect) */
	/* NAT: what the rewrite adds to the IPv4 header checksum (addresses) and to the L4 checksum
	 * (addresses and ports), folded (lb_nat_deltas). They depend only on the flow and `src`,
	 * `dst`, `sport`, `dport`, so a remembered flow's next packet reuses them. */
	__u16 d_addr;
	__u16 d_l4;
	struct lb_nh nh; /* when `sent` */
} __attribute__((aligned(8)));

struct lb_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct lb_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

/* Key of the next-hop cache: one route lookup's inputs. */
struct lb_nh_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 ifindex; /* ingress */
	__u8 family;
	__u8 pad[3];
};

/* A per-CPU next-hop slot: one cached route lookup (its key and answer) for a backend. */
struct lb_be_nh {
	struct lb_nh_key key;
	struct lb_nh nh;
} __attribute__((aligned(8)));

struct lb_icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 rest;
};

/* Where an ICMP error's parts are (set while parsing it) and, for NAT, what its translation
 * writes: the new outer addresses and the new addresses and ports of the quoted packet. */
struct lb_icmp {
	__u8 outer_src[16];
	__u8 outer_dst[16];
	__u8 q_src[16];
	__u8 q_dst[16];
	__be16 q_sport;
	__be16 q_dport;
	__u32 icmp_off; /* the ICMP header */
	__u32 qip_off; /* the quoted IP header */
	__u32 ql4_off; /* the quoted TCP/UDP header, of which at least the ports are there */
	__u32 end; /* end of the outer IP packet: anything after it is Ethernet padding */
	__u8 q_proto;
	__u8 pad[7];
} __attribute__((aligned(8)));

/*
 * Whether the flow cache (lb_fc) pays, per CPU: with more active flows than slots, most probes
 * miss, and each miss (hash, probe, fill) makes the full path dearer. Every LB_FC_SAMPLE probes,
 * fewer than LB_FC_MIN_HITS hits turn the cache off for the next LB_FC_BYPASS packets to a
 * possible VIP (a counter check each), after which it samples again. Kept in the scratch space,
 * which every packet has looked up already.
 */
#define LB_FC_SAMPLE 1024
#define LB_FC_MIN_HITS 256
#define LB_FC_BYPASS 15360

struct lb_fc_stats {
	__u32 probes;
	__u32 hits;
	__u32 bypass; /* packets still to let through without the cache */
	__u32 pad;
};

/*
 * Per-CPU scratch space for the larger temporaries: the BPF stack is 512 bytes for the whole call
 * chain. Each field has one user at a time (a callee never uses its caller's field), and XDP runs
 * to completion on its CPU, so one copy per CPU suffices.
 */
struct lb_scratch {
	struct lb_pkt pkt;
	struct lb_fwd fwd;
	struct bpf_fib_lookup fib;
	struct fr_lb_service_key sk;
	struct fr_lb_flow flow;
	struct fr_lb_flow nat_key;
	struct fr_lb_nat_entry nat;
	struct fr_lb_frag_key frag;
	struct fr_lb_ct_entry ct;
	struct lb_icmp icmp;
	struct lb_nh_key nh_key;
	struct lb_nh nh;
	__u32 too_big_mtu; /* the route's MTU, when lb_fib answered LB_TOO_BIG */
	__u32 pad;
	struct lb_fc_stats fc_stats; /* lives across packets, unlike the rest */
	__u64 clock_ns; /* lb_clock's, across packets too: the coarse clock ... */
	__u64 clock_jiffies; /* ... as read when jiffies was this */
	__u8 quote[LB_QUOTE_MAX]; /* the start of a packet answered with ICMP "too big" */
	/* lb_nat_claim's copy of lb_nat_ports (no stack); last, so that the fields every packet
	 * touches keep their offsets and cache lines. */
	struct fr_lb_nat_ports nat_ports;
} __attribute__((aligned(8)));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_scratch);
} lb_scratch_map SEC(".maps");

/*
 * Next hops found by bpf_fib_lookup, reused for LB_NH_TTL_NS: the route lookup is the largest
 * single cost of a forwarded packet (about a third of a conntrack hit's), while the answer for one
 * (source, destination, ingress) changes rarely. A change of route or neighbour therefore reaches
 * packets at most LB_NH_TTL_NS late (plus a clock tick), far below BFD's detection time; a packet
 * longer than the cached MTU, and every failed lookup, goes to bpf_fib_lookup itself. Private to
 * the program (not pinned): a restart starts with an empty cache.
 */
#define LB_NH_TTL_NS 50000000ull
#define LB_NH_CACHE_SIZE 16384

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_NH_CACHE_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct lb_nh_key);
	__type(value, struct lb_nh);
} lb_nh_cache SEC(".maps");

/*
 * In front of that cache, for packets to a backend (DSR and NAT forward, the bulk of the
 * traffic): per-CPU slots picked by backend id and ingress interface, each holding one entry of
 * lb_nh_cache (key and answer, same lifetime), so that a conntrack hit finds its next hop with an
 * array index and a compare instead of hashing a 40-byte key. A slot answers only a packet whose
 * whole key (source, destination, ingress, family) matches, so an id now naming another address
 * misses; two backends on one slot take turns and fall through to lb_nh_cache. Private, like it.
 */
#define LB_BE_NH_SLOTS 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_BE_NH_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_be_nh);
} lb_be_nh SEC(".maps");

static __always_inline struct lb_scratch *lb_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_scratch_map, &zero);
}

/*
 * The coarse monotonic clock (bpf_ktime_get_coarse_ns: the time of the last tick), read through
 * the helper once per jiffy on each CPU: it moves only when a tick moves jiffies too, and jiffies
 * is a load the verifier inlines, where the helper is a call into the timekeeping code (a few ns
 * on every packet). A CPU that reads between a tick's update of jiffies and of the clock keeps
 * that tick's old time for the jiffy: one tick behind, which the coarse clock may be anyway.
 */
static __always_inline __u64 lb_clock(struct lb_scratch *s)
{
	__u64 j = bpf_jiffies64();

	if (j != s->clock_jiffies || s->clock_ns == 0) {
		s->clock_ns = bpf_ktime_get_coarse_ns();
		s->clock_jiffies = j;
	}
	return s->clock_ns;
}

static __always_inline __u32 lb_l2_len(const struct lb_pkt *p)
{
	return p->vlan ? ETH_HLEN + sizeof(struct lb_vlan_hdr) : ETH_HLEN;
}

static __always_inline void lb_event(__u32 event)
{
	__u64 *count = bpf_map_lookup_elem(&fr_lb_events, &event);

	if (count)
		*count += 1;
}

static __always_inline int lb_pass_event(__u32 event)
{
	lb_event(event);
	return XDP_PASS;
}

/* The initial value of counters, in read-only global data rather than on the small BPF stack. */
static const struct fr_lb_counters lb_zero_counters;

/*
 * The counters of `id` in `map`, created on first use; NULL only when the map is full. One
 * function per map: the verifier turns a lookup in a map it knows into a direct (for per-CPU
 * hashes, inlined) call, but a lookup in a map passed as an argument from several call sites
 * stays a generic helper call through the map's ops table (an indirect call, and a retpoline
 * where the CPU needs one).
 */
#define LB_COUNTERS_FN(name, map)                                                      \
	static __attribute__((noinline)) struct fr_lb_counters *name(__u32 id)          \
	{                                                                               \
		struct fr_lb_counters *c = bpf_map_lookup_elem(&map, &id);              \
                                                                                        \
		if (c)                                                                  \
			return c;                                                       \
		/* BPF_NOEXIST: another CPU may have created it since the lookup. */   \
		bpf_map_update_elem(&map, &id, &lb_zero_counters, BPF_NOEXIST);         \
		return bpf_map_lookup_elem(&map, &id);                                  \
	}

LB_COUNTERS_FN(lb_service_counters, fr_lb_service_stats)
LB_COUNTERS_FN(lb_backend_counters, fr_lb_backend_stats)

/*
 * Adds a packet of `bytes` to the packets and bytes of `id`: in the per-CPU array when the id
 * indexes it (an inlined index, no hashing: every packet of every flow does this twice), else in
 * its counters, which are then returned so that a caller counting a new flow too does not look
 * them up again (NULL: counted in the array). One function per map, like the above.
 */
#define LB_TRAFFIC_FN(name, array, counters_fn)                                        \
	static __always_inline struct fr_lb_counters *name(__u32 id, __u64 bytes)       \
	{                                                                               \
		struct fr_lb_counters *c;                                               \
		struct fr_lb_traffic *t;                                                \
                                                                                        \
		if (id < FR_LB_TRAFFIC_ARR_SIZE) {                                      \
			t = bpf_map_lookup_elem(&array, &id);                           \
			if (t) {                                                        \
				t->packets += 1;                                        \
				t->bytes += bytes;                                      \
			}                                                               \
			return NULL;                                                    \
		}                                                                       \
		c = counters_fn(id);                                                    \
		if (c) {                                                                \
			c->packets += 1;                                                \
			c->bytes += bytes;                                              \
		}                                                                       \
		return c;                                                               \
	}

LB_TRAFFIC_FN(lb_service_traffic, fr_lb_service_traffic, lb_service_counters)
LB_TRAFFIC_FN(lb_backend_traffic, fr_lb_backend_traffic, lb_backend_counters)

/* Takes back a packet lb_backend_traffic counted on backend `id`, one answered in the backend's
 * stead (lb_too_big). Counted on this CPU, so the count holds it, unless the id's counters were
 * cleared since (then nothing is taken). */
static __always_inline void lb_backend_uncount(__u32 id, __u64 bytes)
{
	struct fr_lb_counters *c;
	struct fr_lb_traffic *t;

	if (id < FR_LB_TRAFFIC_ARR_SIZE) {
		t = bpf_map_lookup_elem(&fr_lb_backend_traffic, &id);
		if (t && t->packets && t->bytes >= bytes) {
			t->packets -= 1;
			t->bytes -= bytes;
		}
		return;
	}
	c = bpf_map_lookup_elem(&fr_lb_backend_stats, &id);
	if (c && c->packets && c->bytes >= bytes) {
		c->packets -= 1;
		c->bytes -= bytes;
	}
}

/* Counts a drop on the service (`p->service_id`) and, once one was chosen, on the backend
 * (`p->backend_id`). Drops are rare: the counters are looked up here rather than carried along. */
static __always_inline int lb_drop(const struct lb_pkt *p, __u32 reason)
{
	struct fr_lb_counters *sc, *bc;

	if (reason >= FR_LB_DROP_MAX)
		return XDP_DROP;
	if (p->service_id) {
		sc = lb_service_counters(p->service_id);
		if (sc)
			sc->drops[reason] += 1;
	}
	if (p->backend_id) {
		bc = lb_backend_counters(p->backend_id);
		if (bc)
			bc->drops[reason] += 1;
	}
	return XDP_DROP;
}

static __always_inline int lb_addr_eq(const __u8 *a, const __u8 *b, int words)
{
	const __u32 *x = (const __u32 *)a;
	const __u32 *y = (const __u32 *)b;
	int eq = 1;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (i < words && x[i] != y[i])
			eq = 0;
	}
	return eq;
}

/* Address equality for `family`, with the word count fixed per branch (no loop-carried
 * branches for the verifier to explore). */
static __always_inline int lb_addr_eq_family(const __u8 *a, const __u8 *b, __u8 family)
{
	if (family == FR_FAMILY_IPV4)
		return lb_addr_eq(a, b, 1);
	return lb_addr_eq(a, b, 4);
}

/* A 32-bit multiply-rotate mix (MurmurHash3's round and finaliser constants). */
static __always_inline __u32 lb_mix(__u32 h, __u32 w)
{
	w *= 0xcc9e2d51u;
	w = (w << 15) | (w >> 17);
	w *= 0x1b873593u;
	h ^= w;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64u;
}

static __always_inline __u32 lb_hash_flow(const struct fr_lb_flow *f, __u32 seed)
{
	const __u32 *w = (const __u32 *)f;
	__u32 h = seed;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*f) / 4); i++)
		h = lb_mix(h, w[i]);
	h ^= sizeof(*f);
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* Which backend an id named when a flow was created (`fr_lb_ct_entry.backend_tag`). */
static __always_inline __u32 lb_backend_tag(const struct fr_lb_backend *be)
{
	const __u32 *w = (const __u32 *)be->addr;
	__u32 h = 0x9e3779b9u;

#pragma unroll
	for (int i = 0; i < 4; i++)
		h = lb_mix(h, w[i]);
	return lb_mix(h, ((__u32)be->port << 16) | be->family);
}

/*
 * lb_backend_tag is a chain of some twenty dependent multiplies: recomputed on every conntrack
 * hit it was the largest part of lb_service's time. Per CPU, a slot per backend id (modulo
 * LB_BE_TAG_SLOTS) remembers the tag with the whole backend value it was computed from, and
 * answers only for that exact value, so a changed or reused backend gets its own tag computed.
 * The tag is a pure function of the value: nothing here can go stale. Private, not pinned.
 */
#define LB_BE_TAG_SLOTS 1024
#define LB_BE_WORDS (sizeof(struct fr_lb_backend) / 4)

_Static_assert(sizeof(struct fr_lb_backend) % 4 == 0, "fr_lb_backend is compared a word at a time");

struct lb_be_tag {
	__u32 be[LB_BE_WORDS]; /* the fr_lb_backend the tag is of; all zero (family 0) in an unused slot */
	__u32 tag;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_BE_TAG_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_be_tag);
} lb_be_tag SEC(".maps");

/* lb_backend_tag(be) of backend `id`, from this CPU's slot when it holds exactly `be`'s value. */
static __always_inline __u32 lb_backend_tag_of(__u32 id, const struct fr_lb_backend *be)
{
	const __u32 *w = (const __u32 *)be;
	__u32 i = id & (LB_BE_TAG_SLOTS - 1);
	struct lb_be_tag *slot = bpf_map_lookup_elem(&lb_be_tag, &i);
	__u32 same = 1, tag;

	if (!slot)
		return lb_backend_tag(be);
#pragma unroll
	for (int k = 0; k < (int)LB_BE_WORDS; k++) {
		if (slot->be[k] != w[k])
			same = 0;
	}
	if (same)
		return slot->tag;
	tag = lb_backend_tag(be);
#pragma unroll
	for (int k = 0; k < (int)LB_BE_WORDS; k++)
		slot->be[k] = w[k];
	slot->tag = tag;
	return tag;
}

/*
 * The flow cache: per CPU, a slot per hash of the flow remembers the service, backend (and, NAT,
 * SNAT port) of a flow whose conntrack entry the full path just confirmed (conntrack lookup,
 * backend and tag checks), with the generation of the maps (fr_lb_gen) read when that packet
 * arrived. A later packet of the flow on this CPU skips the service lookup, the conntrack lookup
 * and the checks while the generation is the same (any change to a service, its mode or table, a
 * backend or the node's addresses is a new one), for at most LB_REFRESH_NS; then the full path
 * runs again, which keeps the conntrack entry's recency and last-seen time fresh. Another flow in
 * the slot, any change in the maps (user space bumps the generation after it) and fragments take
 * the full path. Only packets to an address in the VIP filter (fr_lb_vips) probe it, so traffic
 * for no VIP does not pay for it. Private, not pinned: a new program starts empty. A slot also
 * holds how the flow's last packet was sent (addresses, ports, next hop, NAT's checksum deltas),
 * so that the next one is rewritten or encapsulated and sent without looking anything else up
 * (lb_fc_send).
 *
 * FR_LB_FC_SLOTS slots of 160 bytes per CPU (640 KiB), CPU c's at [c * FR_LB_FC_SLOTS, ...) of
 * one plain array that the loader sizes for the possible CPUs: a per-CPU array would first load
 * the slot's own per-CPU pointer, from a table of 4096 of them (32 KiB), a cache miss of its own
 * for every other flow. Mappable, so the slots start on a page and none straddles more lines
 * than its size needs. XDP runs to completion on its CPU, so no other CPU touches a CPU's slots.
 */
struct lb_fc_slot {
	struct fr_lb_flow flow; /* family 0: empty */
	__u64 until_ns; /* coarse clock */
	__u32 service_id;
	/* The generation's low 32 bits: a slot lives at most a second, and 2^32 changes of the maps
	 * in a second cannot happen, so they tell generations apart as well as all 64 would. */
	__u32 gen;
	__u8 mode; /* FR_LB_MODE_* of the service when confirmed, or LB_FC_MODE_NAT_REPLY */
	__u8 pad[3];
	__u32 epoch; /* NAT, either way: the SNAT port's lb_nat_epoch before the NAT table was read */
	/* How the flow's last packet was sent (lb_fib's `sent` set): new endpoints (NAT: the SNAT
	 * port is fwd.sport), the backend (fwd.backend_id) and the next hop. The next packet goes the
	 * same way while the next hop is fresh (fwd.nh.expires_ns, the route lookup's own lifetime),
	 * its VLAN tagging is the same and it fits the route's MTU. */
	struct lb_fwd fwd;
	/* To 160 bytes: every slot then starts on 32 bytes of the page-aligned array, and none spans
	 * more than the three lines 160 bytes need. */
	__u8 align[8];
} __attribute__((aligned(8)));

_Static_assert(sizeof(struct lb_fc_slot) == 160, "a slot is 160 bytes: 640 KiB per CPU");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FR_LB_FC_SLOTS); /* times the possible CPUs: the loader's */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct lb_fc_slot);
} lb_fc SEC(".maps");

_Static_assert(sizeof(struct fr_lb_flow) == 40, "flows are compared as five 64-bit words");

/*
 * Replies of NAT flows (backend -> node:SNAT port) are remembered in lb_fc too, keyed by the
 * reply's flow, with how the last one went back to the client (mode LB_FC_MODE_NAT_REPLY, no
 * service's). The generation does not cover the NAT table, whose entries come and go in the
 * datapath (an LRU), so a port's entry could be gone and the port claimed for another client
 * while a slot still holds the old translation. Every claim attempt of an SNAT port first moves
 * that port's epoch on; a slot keeps the epoch read before its NAT lookup and answers only while
 * the epoch is still that: a slot filled from the old entry is then never used for the new one.
 * A NAT flow's forward slots keep it the same way (read before the full path checked that the
 * port's entry is still the flow's), so that once the port is another client's, the flow's next
 * packet takes the full path, which moves it to another port instead of sending it into that
 * client's connection. Private (not pinned): after a restart both lb_fc and the epochs start
 * empty.
 */
#define LB_FC_MODE_NAT_REPLY 0x80

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536); /* by port number: any SNAT range */
	__type(key, __u32);
	__type(value, __u32);
} lb_nat_epoch SEC(".maps");

/*
 * The SNAT ports (`node.snat_ports`): private, written by the loader (the default range) before
 * the program can run and by the daemon from the config before it attaches the program, and
 * whenever the setting changes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_lb_nat_ports);
} lb_nat_ports SEC(".maps");

/* The SNAT range; NULL only if the map cannot be read (then no port is an SNAT port). */
static __always_inline const struct fr_lb_nat_ports *lb_nat_range(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&lb_nat_ports, &zero);
}

/*
 * Added to every epoch as read: a random base the loader sets for each load. The epochs start
 * from 0 with every load of the program, while conntrack (pinned) keeps what it stored under the
 * previous one; with the base, an old value matches a new one only by a 1-in-65,536 chance (16
 * bits are kept there), which the check once a second covers.
 */
volatile const __u32 lb_nat_epoch_base = 0;

/* Whether `port` is in `range`. */
static __always_inline int lb_port_in(const struct fr_lb_nat_ports *range, __be16 port)
{
	return (__u32)bpf_ntohs(port) - range->first < range->count;
}

/* Whether `port` is one NAT mode takes its SNAT ports from: only then may a packet be a reply. */
static __always_inline int lb_in_snat_range(__be16 port)
{
	const struct fr_lb_nat_ports *range = lb_nat_range();

	return range && lb_port_in(range, port);
}

static __always_inline __u32 *lb_nat_epoch_of(__be16 port)
{
	__u32 i = bpf_ntohs(port);

	return bpf_map_lookup_elem(&lb_nat_epoch, &i);
}

/* The epoch `e` points to (lb_nat_epoch_of), as remembered and compared. */
static __always_inline __u32 lb_nat_epoch_val(const __u32 *e)
{
	return *e + lb_nat_epoch_base;
}

/* A cheap mix of the flow (three multiplies; jhash of the whole key is what the slot saves). A
 * collision costs only the full path. */
static __always_inline __u32 lb_fc_index(const struct fr_lb_flow *f)
{
	const __u32 *s = (const __u32 *)f->src, *d = (const __u32 *)f->dst;
	__u32 a = s[0] ^ s[1] ^ s[2] ^ s[3];
	__u32 b = d[0] ^ d[1] ^ d[2] ^ d[3];
	__u32 c = *(const __u32 *)&f->sport ^ f->proto;
	__u32 h = a * 0x9e3779b1u ^ b * 0x85ebca77u ^ c * 0xc2b2ae3du;

	return (h ^ (h >> 16)) & (FR_LB_FC_SLOTS - 1);
}

static __always_inline int lb_flow_eq(const struct fr_lb_flow *a, const struct fr_lb_flow *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* Whether `dst` (16 bytes, IPv4 zero-padded) may be a VIP: its bit in the fr_lb_vips bitmap is
 * set (the slot's formula is in ferrule_abi.h). 0 means certainly not. */
static __always_inline int lb_vip_maybe(const __u8 *dst)
{
	const __u32 *w = (const __u32 *)dst;
	__u32 slot = ((w[0] ^ w[1] ^ w[2] ^ w[3]) * (__u32)FR_LB_VIP_MUL) >> (32 - FR_LB_VIP_SLOT_BITS);
	__u32 word = slot >> 6;
	__u64 *bits = bpf_map_lookup_elem(&fr_lb_vips, &word);

	return bits && ((*bits >> (slot & 63)) & 1);
}

/* Remembers a confirmed flow of service `sid` (`mode`), whose packet `f` says how lb_fib sent, in
 * the slot lb_fast probed (see lb_fc), from `now` (lb_clock) on. */
static __always_inline void lb_fc_fill(const struct lb_pkt *p, __u32 sid, __u8 mode, const struct lb_fwd *f,
				       __u64 now, __u32 epoch)
{
	__u32 i = p->fc_slot;
	struct lb_fc_slot *slot = bpf_map_lookup_elem(&lb_fc, &i);

	if (!slot)
		return;
	__builtin_memcpy(&slot->flow, &p->flow, sizeof(slot->flow));
	slot->gen = (__u32)p->gen;
	slot->until_ns = now + LB_REFRESH_NS;
	slot->service_id = sid;
	slot->mode = mode;
	slot->epoch = epoch;
	__builtin_memcpy(&slot->fwd, f, sizeof(*f));
}

/* ---- parsing ---------------------------------------------------------------------------- */

static __always_inline int lb_parse_ipv4(void *data, void *data_end, struct lb_pkt *p, __u32 l3)
{
	struct iphdr *ip = data + l3;
	__u32 ihl_len, tot;
	__u16 fo;

	if ((void *)(ip + 1) > data_end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	ihl_len = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* The stack drops a version other than 4 behind the IPv4 ethertype; so does this. */
	if (ip->version != 4 || ihl_len < sizeof(*ip) || tot < ihl_len || l3 + tot > p->frame_len)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	p->l3_len = tot;
	p->tos = ip->tos;
	p->v4_id = ip->id;
	p->v4_frag_off = ip->frag_off;
	*(__u32 *)p->flow.src = ip->saddr;
	*(__u32 *)p->flow.dst = ip->daddr;
	p->flow.family = FR_FAMILY_IPV4;
	p->flow.proto = ip->protocol;
	fo = bpf_ntohs(ip->frag_off);
	if (fo & LB_IP_OFFSET)
		p->frag = LB_FRAG_LATER;
	else if (fo & LB_IP_MF)
		p->frag = LB_FRAG_FIRST;
	p->frag_id = ip->id;
	p->l4_off = l3 + ihl_len;
	return LB_CONTINUE;
}

static __always_inline int lb_parse_ipv6(void *data, void *data_end, struct lb_pkt *p, __u32 l3)
{
	struct ipv6hdr *ip6 = data + l3;
	__u32 off = l3 + sizeof(*ip6);
	__u32 plen;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	plen = bpf_ntohs(ip6->payload_len);
	/* payload_len 0 is a jumbogram (hop-by-hop option), which an uplink never carries. */
	if (ip6->version != 6 || plen == 0 || off + plen > p->frame_len)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	p->l3_len = sizeof(*ip6) + plen;
	p->v6_word0 = *(__be32 *)ip6;
	p->tos = (bpf_ntohl(p->v6_word0) >> 20) & 0xff;
	__builtin_memcpy(p->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(p->flow.dst, &ip6->daddr, 16);
	p->flow.family = FR_FAMILY_IPV6;
	nh = ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < LB_MAX_EXT_HDRS; i++) {
		if (off > LB_MAX_OFF)
			return lb_pass_event(FR_LB_EV_MALFORMED);
		if (nh == LB_NH_HOPOPTS || nh == LB_NH_ROUTING || nh == LB_NH_DSTOPTS) {
			__u8 *h = data + off;

			if ((void *)(h + 2) > data_end)
				return lb_pass_event(FR_LB_EV_MALFORMED);
			nh = h[0];
			off += (h[1] + 1) * 8;
		} else if (nh == LB_NH_FRAGMENT) {
			struct lb_frag_hdr *f = data + off;
			__u16 fo;

			if ((void *)(f + 1) > data_end)
				return lb_pass_event(FR_LB_EV_MALFORMED);
			fo = bpf_ntohs(f->frag_off);
			nh = f->nexthdr;
			p->frag_id = f->id;
			/* offset 0 without M is an "atomic fragment": a whole datagram. */
			if (fo & 0xfff8)
				p->frag = LB_FRAG_LATER;
			else if (fo & 1)
				p->frag = LB_FRAG_FIRST;
			off += sizeof(*f);
		} else {
			break;
		}
	}
	if (nh == LB_NH_HOPOPTS || nh == LB_NH_ROUTING || nh == LB_NH_DSTOPTS || nh == LB_NH_FRAGMENT)
		return lb_pass_event(FR_LB_EV_EXT_HDR_LIMIT);
	if (off > l3 + p->l3_len)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	p->flow.proto = nh;
	p->l4_off = off;
	return LB_CONTINUE;
}

/* Ethernet (+ one VLAN tag) and IP. XDP_PASS for anything that is not IP. */
static __always_inline int lb_parse(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__be16 proto;

	p->frame_len = data_end - data;
	if ((void *)(eth + 1) > data_end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct lb_vlan_hdr *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end)
			return lb_pass_event(FR_LB_EV_MALFORMED);
		proto = vh->proto;
		p->vlan = 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return lb_parse_ipv4(data, data_end, p, lb_l2_len(p));
	if (proto == bpf_htons(ETH_P_IPV6))
		return lb_parse_ipv6(data, data_end, p, lb_l2_len(p));
	return XDP_PASS;
}

/*
 * The common case, parsed with less: an untagged IPv4 packet without options and not a fragment,
 * or an untagged IPv6 packet without extension headers, carrying TCP or UDP with its whole fixed
 * header inside the datagram. Writes every field of `p` exactly as lb_parse and lb_parse_ports
 * would (no memset first: the stores are the clearing) and returns 1; 0 for anything else, which
 * the general parser then takes from the start, events and all.
 */
_Static_assert(sizeof(struct lb_pkt) == 96, "lb_parse_plain writes every field of lb_pkt: extend it too");

static __always_inline __u32 lb_plain_l4_need(__u8 proto)
{
	return proto == IPPROTO_TCP ? 20 : proto == IPPROTO_UDP ? 8 : 0;
}

static __always_inline int lb_parse_plain(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 frame_len = data_end - data;
	__u64 *flow = (__u64 *)&p->flow;
	__be16 *ports;
	__u32 need, l3_len;
	__u8 proto;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		ports = (void *)(ip + 1);
		if ((void *)ports + 8 > data_end || *(__u8 *)ip != 0x45 ||
		    (ip->frag_off & bpf_htons(LB_IP_MF | LB_IP_OFFSET)))
			return 0;
		proto = ip->protocol;
		need = lb_plain_l4_need(proto);
		l3_len = bpf_ntohs(ip->tot_len);
		if (!need || (void *)ports + need > data_end || l3_len < sizeof(*ip) + need ||
		    ETH_HLEN + l3_len > frame_len)
			return 0;
		/* Addresses zero-padded to 16 bytes. */
		flow[0] = ip->saddr;
		flow[1] = 0;
		flow[2] = ip->daddr;
		flow[3] = 0;
		flow[4] = *(__u32 *)ports | (__u64)proto << 32 | (__u64)FR_FAMILY_IPV4 << 40;
		p->frag_id = ip->id;
		p->v6_word0 = 0;
		p->v4_id = ip->id;
		p->v4_frag_off = ip->frag_off;
		p->tos = ip->tos;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		const __u64 *a;
		__u32 plen;

		ports = (void *)(ip6 + 1);
		if ((void *)ports + 8 > data_end || ip6->version != 6)
			return 0;
		proto = ip6->nexthdr;
		need = lb_plain_l4_need(proto);
		plen = bpf_ntohs(ip6->payload_len);
		if (!need || (void *)ports + need > data_end || plen < need ||
		    ETH_HLEN + sizeof(*ip6) + plen > frame_len)
			return 0;
		a = (const __u64 *)&ip6->saddr;
		flow[0] = a[0];
		flow[1] = a[1];
		flow[2] = a[2];
		flow[3] = a[3];
		flow[4] = *(__u32 *)ports | (__u64)proto << 32 | (__u64)FR_FAMILY_IPV6 << 40;
		l3_len = sizeof(*ip6) + plen;
		p->frag_id = 0;
		p->v6_word0 = *(__be32 *)ip6;
		p->v4_id = 0;
		p->v4_frag_off = 0;
		p->tos = (bpf_ntohl(p->v6_word0) >> 20) & 0xff;
	} else {
		return 0;
	}
	p->frame_len = frame_len;
	p->gen = 0;
	p->l4_off = (void *)ports - data;
	p->l3_len = l3_len;
	p->service_id = 0;
	p->backend_id = 0;
	p->frag = LB_FRAG_NONE;
	p->vlan = 0;
	p->fc = 0;
	p->fc_slot = 0;
	return 1;
}

/* The TCP/UDP ports; the whole fixed L4 header must be there (NAT rewrites its checksum). */
static __always_inline int lb_parse_ports(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = p->l4_off;
	__u32 need = p->flow.proto == IPPROTO_TCP ? 20 : 8;
	__be16 *ports;

	if (off > LB_MAX_OFF)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	ports = data + off;
	if ((void *)ports + need > data_end || off + need > lb_l2_len(p) + p->l3_len)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	p->flow.sport = ports[0];
	p->flow.dport = ports[1];
	return LB_CONTINUE;
}

/* ---- choosing a backend ------------------------------------------------------------------ */

static __always_inline const struct fr_lb_backend *lb_backend(__u32 id)
{
	struct fr_lb_backend *be;

	if (id == 0)
		return NULL;
	be = bpf_map_lookup_elem(&fr_lb_backends, &id);
	if (!be || be->family == 0)
		return NULL;
	return be;
}

/* The backend id at `hash` in the service's Maglev table; 0 when it has none. */
static __always_inline __u32 lb_maglev(__u32 service_id, __u32 hash)
{
	void *table = bpf_map_lookup_elem(&fr_lb_tables, &service_id);
	__u32 zero = 0, slot;
	__u32 *len, *id;

	if (!table)
		return 0;
	len = bpf_map_lookup_elem(table, &zero);
	if (!len || *len == 0)
		return 0;
	slot = hash % *len + 1;
	id = bpf_map_lookup_elem(table, &slot);
	return id ? *id : 0;
}

static __always_inline void lb_node_addr(const struct fr_lb_config *cfg, __u8 family, __u8 *out)
{
	if (family == FR_FAMILY_IPV4)
		__builtin_memcpy(out, cfg->node_v4, 4);
	else
		__builtin_memcpy(out, cfg->node_v6, 16);
}

static __always_inline int lb_have_node_addr(const struct fr_lb_config *cfg, __u8 family)
{
	return cfg->flags & (family == FR_FAMILY_IPV4 ? FR_LB_CFG_HAVE_V4 : FR_LB_CFG_HAVE_V6);
}

/* ---- forwarding ------------------------------------------------------------------------- */

/* Writes the next hop's MAC addresses and sends the packet to it: XDP_TX out of the ingress
 * interface (`ingress`, ctx's, which callers have read already: through ctx it is three dependent
 * loads), else a redirect (a tagged packet to another interface is passed: the tag belongs to the
 * ingress). */
static __always_inline int lb_nh_send(struct xdp_md *ctx, const struct lb_nh *nh, __u8 vlan, __u32 ingress)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	if (nh->ifindex == ingress)
		return XDP_TX;
	if (vlan)
		return lb_pass_event(FR_LB_EV_VLAN_REDIRECT);
	return bpf_redirect(nh->ifindex, 0);
}

/*
 * Sets the MACs for the next hop towards `dst` and sends the packet there: XDP_TX when that is
 * the ingress interface, a redirect otherwise; `f` then records the next hop (`sent`, `nh`). No
 * route or neighbour yet: the stack gets the (already rewritten) packet, forwards it and resolves
 * the neighbour for the next ones.
 */
static __attribute__((noinline)) int lb_fib(struct xdp_md *ctx, struct lb_fwd *f)
{
	struct lb_scratch *s = lb_scratch();
	__u32 ingress = ctx->ingress_ifindex;
	struct lb_be_nh *slot = NULL;
	struct bpf_fib_lookup *fib;
	struct lb_nh_key *key;
	struct lb_nh *nh;
	__u64 now;
	long rc;

	if (!s)
		return XDP_PASS;
	now = lb_clock(s);
	if (f->backend_id) {
		__u32 i = (f->backend_id ^ (ingress << 7)) & (LB_BE_NH_SLOTS - 1);

		slot = bpf_map_lookup_elem(&lb_be_nh, &i);
		if (slot && now < slot->nh.expires_ns && f->l3_len <= slot->nh.mtu && slot->key.ifindex == ingress &&
		    slot->key.family == f->family && lb_addr_eq_family(slot->key.dst, f->dst, f->family) &&
		    lb_addr_eq_family(slot->key.src, f->src, f->family)) {
			nh = &slot->nh;
			goto send;
		}
	}
	key = &s->nh_key;
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(key->src, f->src, 16);
	__builtin_memcpy(key->dst, f->dst, 16);
	key->ifindex = ingress;
	key->family = f->family;
	nh = bpf_map_lookup_elem(&lb_nh_cache, key);
	if (!nh || now >= nh->expires_ns || f->l3_len > nh->mtu) {
		fib = &s->fib;
		__builtin_memset(fib, 0, sizeof(*fib));
		fib->ifindex = ingress;
		fib->tot_len = f->l3_len;
		if (f->family == FR_FAMILY_IPV4) {
			fib->family = LB_AF_INET;
			fib->ipv4_src = *(const __u32 *)f->src;
			fib->ipv4_dst = *(const __u32 *)f->dst;
		} else {
			fib->family = LB_AF_INET6;
			__builtin_memcpy(fib->ipv6_src, f->src, 16);
			__builtin_memcpy(fib->ipv6_dst, f->dst, 16);
		}
		rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && f->too_big) {
			s->too_big_mtu = fib->mtu_result; /* on FRAG_NEEDED, the route's MTU */
			return LB_TOO_BIG;
		}
		if (rc != BPF_FIB_LKUP_RET_SUCCESS)
			return lb_pass_event(rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? FR_LB_EV_MTU_PASS : FR_LB_EV_FIB_PASS);
		nh = &s->nh;
		__builtin_memset(nh, 0, sizeof(*nh));
		nh->expires_ns = now + LB_NH_TTL_NS;
		nh->ingress = ingress;
		nh->ifindex = fib->ifindex;
		nh->mtu = fib->mtu_result; /* on success, the route's MTU replaces tot_len */
		__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
		__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
		bpf_map_update_elem(&lb_nh_cache, key, nh, BPF_ANY);
	}
	if (slot) {
		/* Per-CPU: no other CPU reads this slot while it is written. */
		__builtin_memcpy(&slot->key, key, sizeof(*key));
		__builtin_memcpy(&slot->nh, nh, sizeof(*nh));
	}
send:
	rc = lb_nh_send(ctx, nh, f->vlan, ingress);
	if (rc == XDP_TX || rc == XDP_REDIRECT) {
		__builtin_memcpy(&f->nh, nh, sizeof(*nh));
		f->sent = 1;
	}
	return rc;
}

/* Writes the saved L2 header in front of a new outer header of `ethertype`; returns the L3
 * offset, or 0 if the packet is too short for `l3_room` bytes after it. */
static __always_inline __u32 lb_write_l2(struct xdp_md *ctx, const __u8 *saved, int vlan, __be16 ethertype,
					 __u32 l3_room)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (vlan) {
		if (data + 18 + l3_room > data_end)
			return 0;
		__builtin_memcpy(data, saved, 16);
		*(__be16 *)(data + 16) = ethertype;
		return 18;
	}
	if (data + ETH_HLEN + l3_room > data_end)
		return 0;
	__builtin_memcpy(data, saved, 12);
	*(__be16 *)(data + 12) = ethertype;
	return ETH_HLEN;
}

/* The length of an IP header of `family` without options or extensions: an outer header's. */
static __always_inline __u32 lb_ip_hdr_len(__u8 family)
{
	return family == FR_FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

/* Per-CPU budget of ICMP "too big" answers: FR_LB_TOO_BIG_PER_SEC per one-second window. */
struct lb_too_big_budget {
	__u64 window_ns;
	__u32 sent;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_too_big_budget);
} lb_too_big_budget SEC(".maps");

static __always_inline int lb_too_big_allowed(__u64 now)
{
	__u32 zero = 0;
	struct lb_too_big_budget *b = bpf_map_lookup_elem(&lb_too_big_budget, &zero);

	if (!b)
		return 0;
	if (now - b->window_ns >= 1000000000ull) {
		b->window_ns = now;
		b->sent = 0;
	}
	if (b->sent >= FR_LB_TOO_BIG_PER_SEC)
		return 0;
	b->sent += 1;
	return 1;
}

/* Whether the packet's source is one host (not unspecified, loopback, multicast or broadcast): the
 * only sources an ICMP error may be sent to (RFC 1122 3.2.2, RFC 4443 2.4). */
static __always_inline int lb_unicast_src(const struct lb_pkt *p)
{
	__u8 first = p->flow.src[0];

	if (p->flow.family == FR_FAMILY_IPV4)
		return first != 0 && first != 127 && first < 224;
	if (first == 0xff)
		return 0;
	return *(const __u64 *)p->flow.src != 0 || *(const __u64 *)&p->flow.src[8] != 0;
}

/*
 * A client's packet over the MTU of the route to its backend (`s->too_big_mtu`): DSR, once
 * encapsulated (`outer_len` bytes of outer header already in front of it); NAT, as it is
 * (`outer_len` 0, not yet rewritten). When it may not be fragmented, it becomes an ICMP
 * "fragmentation needed" (IPv4) / ICMPv6 "packet too big" from the VIP to the client, sent back
 * out where it came from (XDP_TX, MACs swapped, a VLAN tag kept). Reported MTU: the route's minus
 * the tunnel overhead, at least 68 / 1280 (a packet no longer than that is passed: telling its
 * source would not make it fit). The quote is the packet's IP header(s) and the
 * first 8 bytes of TCP/UDP (RFC 792; RFC 4443 allows less than 1280 bytes), which is what a host
 * needs to find the connection. Everything else keeps the old way: passed, FR_LB_EV_MTU_PASS.
 */
static __attribute__((noinline)) int lb_too_big(struct xdp_md *ctx, const struct lb_pkt *p, __u32 outer_len)
{
	struct lb_scratch *s = lb_scratch();
	int v4 = p->flow.family == FR_FAMILY_IPV4;
	__u32 l2_len = lb_l2_len(p);
	__u32 hdr_len = lb_ip_hdr_len(p->flow.family) + 8;
	__u8 l2[18] __attribute__((aligned(8)));
	struct lb_icmp_hdr *icmp;
	__u32 mtu, len, l3;
	void *data, *data_end;
	__u64 quote_len, now, sum;
	long csum;

	if (!s)
		return XDP_PASS;
	if (p->frag == LB_FRAG_LATER || (p->flow.proto != IPPROTO_TCP && p->flow.proto != IPPROTO_UDP) ||
	    (v4 && !(p->v4_frag_off & bpf_htons(LB_IP_DF))) || !lb_unicast_src(p))
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	/* 64-bit, so that the register the helpers take is the one checked (with a 32-bit value
	 * clang compares a zero-extended copy, and the verifier does not see the bounds). */
	quote_len = (__u64)(__u32)(p->l4_off - l2_len) + 8;
	if (quote_len < sizeof(struct iphdr) + 8 || quote_len > LB_QUOTE_MAX || outer_len > 40)
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	mtu = s->too_big_mtu > outer_len ? s->too_big_mtu - outer_len : 0;
	if (v4 && mtu < 68)
		mtu = 68;
	if (!v4 && mtu < 1280)
		mtu = 1280;
	/* The least a host may be told (68 / 1280) can exceed what fits: a packet no longer than the
	 * MTU it would be told cannot be made smaller by telling it, and answering would only repeat
	 * itself. Passed. */
	if (p->l3_len <= mtu)
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	now = lb_clock(s);
	if (!lb_too_big_allowed(now))
		return lb_pass_event(FR_LB_EV_MTU_PASS);

	/* The quote, for the checksum, and the MACs, swapped, before the frame changes. */
	if (bpf_xdp_load_bytes(ctx, l2_len + outer_len, s->quote, quote_len))
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(l2) > data_end)
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	__builtin_memcpy(l2, data + 6, 6);
	__builtin_memcpy(l2 + 6, data, 6);
	__builtin_memcpy(l2 + 12, data + 12, 6);
	/* [L2][outer][quote][rest] -> [L2][outer][quote] -> [L2][IP][ICMP][quote] */
	len = (__u32)(data_end - data);
	if (bpf_xdp_adjust_tail(ctx, (int)(l2_len + outer_len + quote_len) - (int)len))
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	if (bpf_xdp_adjust_head(ctx, (int)outer_len - (int)hdr_len))
		return lb_pass_event(FR_LB_EV_MTU_PASS);
	l3 = lb_write_l2(ctx, l2, p->vlan, v4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6), hdr_len);
	if (l3 == 0 || l3 > 18)
		return XDP_DROP; /* the frame was already cut: nothing left to pass */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	csum = bpf_csum_diff(NULL, 0, (__be32 *)s->quote, quote_len, 0);
	sum = csum < 0 ? 0 : (__u64)(__u32)csum;
	if (v4) {
		struct iphdr *ip = data + l3;

		icmp = (void *)(ip + 1);
		if ((void *)(icmp + 1) > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(hdr_len + quote_len);
		ip->id = 0;
		ip->frag_off = bpf_htons(LB_IP_DF);
		ip->ttl = LB_TTL;
		ip->protocol = IPPROTO_ICMP;
		ip->check = 0;
		ip->saddr = *(const __u32 *)p->flow.dst;
		ip->daddr = *(const __u32 *)p->flow.src;
		ip->check = csum_ipv4_header(ip);
		icmp->type = 3; /* destination unreachable */
		icmp->code = 4; /* fragmentation needed and DF set */
		icmp->rest = bpf_htonl(mtu & 0xffff); /* unused (16 bits), next-hop MTU */
	} else {
		struct ipv6hdr *ip6 = data + l3;
		const __u32 *a = (const __u32 *)p->flow.src, *b = (const __u32 *)p->flow.dst;

		icmp = (void *)(ip6 + 1);
		if ((void *)(icmp + 1) > data_end)
			return XDP_DROP;
		*(__be32 *)ip6 = bpf_htonl(6u << 28);
		ip6->payload_len = bpf_htons(8 + quote_len);
		ip6->nexthdr = LB_NH_ICMPV6;
		ip6->hop_limit = LB_TTL;
		__builtin_memcpy(&ip6->saddr, p->flow.dst, 16);
		__builtin_memcpy(&ip6->daddr, p->flow.src, 16);
		icmp->type = 2; /* packet too big */
		icmp->code = 0;
		icmp->rest = bpf_htonl(mtu);
		/* Pseudo-header: source, destination, upper-layer length, next header. */
#pragma unroll
		for (int k = 0; k < 4; k++)
			sum += (__u64)a[k] + b[k];
		sum += bpf_htonl(8 + quote_len) + bpf_htonl(LB_NH_ICMPV6);
	}
	/* The ICMP header, all but its checksum field: type and code, then the 32 bits after it. */
	sum += *(__u16 *)icmp + (icmp->rest & 0xffff) + (icmp->rest >> 16);
	icmp->check = ~csum_fold64(sum);
	/* The service's counters keep the packet (it was for the VIP); the backend never got it. */
	if (p->backend_id)
		lb_backend_uncount(p->backend_id, p->frame_len);
	lb_event(FR_LB_EV_TOO_BIG);
	return XDP_TX;
}

/* Sends an encapsulated packet on; one over the route's MTU is answered by lb_too_big. */
static __always_inline int lb_encap_send(struct xdp_md *ctx, const struct lb_pkt *p, struct lb_fwd *f,
					 __u32 outer_len)
{
	int rc = lb_fib(ctx, f);

	if (rc == LB_TOO_BIG)
		return lb_too_big(ctx, p, outer_len);
	return rc;
}

/*
 * DSR: puts an outer IP header from the node's address to the backend in front of the IP packet
 * (IPIP / 6in4 with an IPv4 backend, IP6IP6 / 4in6 with an IPv6 one) and forwards it. The inner
 * packet is untouched. Outer fields: TOS / traffic class copied from the inner header; IPv4 outer
 * copies the inner IPv4 id and DF (DF set for an inner IPv6 packet, which routers never
 * fragment); IPv6 outer copies an inner IPv6 flow label (0 for inner IPv4); TTL / hop limit 64.
 *
 * lb_encap_push puts the outer header from f->src to f->dst (of f->family) in front: LB_CONTINUE,
 * or the verdict for a packet it cannot encapsulate. lb_encap finds those for a backend and sends
 * the result on; a remembered flow's packet is sent with what its slot holds (lb_fc_send).
 */
static __always_inline int lb_encap_push(struct xdp_md *ctx, const struct lb_pkt *p, const struct lb_fwd *f)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 saved[18] __attribute__((aligned(8)));
	int inner_v4 = p->flow.family == FR_FAMILY_IPV4;
	__u8 inner_proto = inner_v4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	__u32 inner_len = p->l3_len;
	int vlan = p->vlan;
	__u32 l3;

	if (data + sizeof(saved) > data_end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	__builtin_memcpy(saved, data, sizeof(saved));

	if (f->family == FR_FAMILY_IPV4) {
		struct iphdr *o;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
			return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
		l3 = lb_write_l2(ctx, saved, vlan, bpf_htons(ETH_P_IP), sizeof(*o));
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (l3 == 0 || l3 > 18)
			return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
		o = data + l3;
		if ((void *)(o + 1) > data_end)
			return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
		o->version = 4;
		o->ihl = 5;
		o->tos = p->tos;
		o->tot_len = bpf_htons(inner_len + sizeof(*o));
		o->id = inner_v4 ? p->v4_id : 0;
		o->frag_off = inner_v4 ? (p->v4_frag_off & bpf_htons(LB_IP_DF)) : bpf_htons(LB_IP_DF);
		o->ttl = LB_TTL;
		o->protocol = inner_proto;
		o->check = 0;
		o->saddr = *(const __u32 *)f->src;
		o->daddr = *(const __u32 *)f->dst;
		o->check = csum_ipv4_header(o);
		return LB_CONTINUE;
	}

	struct ipv6hdr *o6;
	__u32 word0 = (6u << 28) | ((__u32)p->tos << 20);

	if (!inner_v4)
		word0 |= bpf_ntohl(p->v6_word0) & 0xfffff;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
		return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
	l3 = lb_write_l2(ctx, saved, vlan, bpf_htons(ETH_P_IPV6), sizeof(*o6));
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (l3 == 0 || l3 > 18)
		return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
	o6 = data + l3;
	if ((void *)(o6 + 1) > data_end)
		return lb_drop(p, FR_LB_DROP_ENCAP_FAILED);
	*(__be32 *)o6 = bpf_htonl(word0);
	o6->payload_len = bpf_htons(inner_len);
	o6->nexthdr = inner_proto;
	o6->hop_limit = LB_TTL;
	__builtin_memcpy(&o6->saddr, f->src, 16);
	__builtin_memcpy(&o6->daddr, f->dst, 16);
	return LB_CONTINUE;
}

/* The packet's forwarding state (the scratch lb_fwd), cleared and set from the node's address of
 * `family` to backend `be`, for a client's packet; NULL without scratch space. */
static __always_inline struct lb_fwd *lb_fwd_to(const struct lb_pkt *p, const struct fr_lb_backend *be,
						const struct fr_lb_config *cfg, __u8 family)
{
	struct lb_scratch *s = lb_scratch();
	struct lb_fwd *f;

	if (!s)
		return NULL;
	f = &s->fwd;
	__builtin_memset(f, 0, sizeof(*f));
	lb_node_addr(cfg, family, f->src);
	__builtin_memcpy(f->dst, be->addr, 16);
	f->family = family;
	f->vlan = p->vlan;
	f->too_big = 1;
	f->backend_id = p->backend_id;
	return f;
}

static __attribute__((noinline)) int lb_encap(struct xdp_md *ctx, struct lb_pkt *p, const struct fr_lb_backend *be,
				    const struct fr_lb_config *cfg)
{
	__u8 family = be->family;
	__u32 outer_len;
	struct lb_fwd *f;
	int rc;

	if (!lb_have_node_addr(cfg, family))
		return lb_drop(p, FR_LB_DROP_NO_NODE_ADDRESS);
	f = lb_fwd_to(p, be, cfg, family);
	if (!f)
		return XDP_PASS;
	rc = lb_encap_push(ctx, p, f);
	if (rc != LB_CONTINUE)
		return rc;
	outer_len = lb_ip_hdr_len(family);
	f->l3_len = p->l3_len + outer_len;
	return lb_encap_send(ctx, p, f, outer_len);
}

/*
 * NAT: the checksum deltas (RFC 1624) of rewriting the packet's addresses and ports (p->flow) to
 * `to`'s, into to->d_addr (IPv4 header: the addresses) and to->d_l4 (L4 pseudo-header and ports),
 * folded: adding a folded delta gives the very bits the unfolded one does (both are the same sum
 * modulo 0xffff, and neither is 0 unless the whole sum is).
 */
static __always_inline void lb_nat_deltas(const struct lb_pkt *p, struct lb_fwd *to)
{
	int words = p->flow.family == FR_FAMILY_IPV4 ? 1 : 4;
	__u32 d;

	d = csum_delta_addr(0, p->flow.src, to->src, words);
	d = csum_delta_addr(d, p->flow.dst, to->dst, words);
	to->d_addr = csum_fold(d);
	d = csum_delta16(d, p->flow.sport, to->sport);
	d = csum_delta16(d, p->flow.dport, to->dport);
	to->d_l4 = csum_fold(d);
}

/*
 * NAT: rewrites addresses and ports of a TCP/UDP packet to (src:sport → dst:dport), fixing the
 * IPv4 header checksum and the L4 checksum incrementally with the deltas lb_nat_deltas put in
 * `to` (a UDP/IPv4 checksum of 0, "none", stays 0).
 */
static __always_inline int lb_rewrite_body(struct xdp_md *ctx, const struct lb_pkt *p, const struct lb_fwd *to)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = lb_l2_len(p);
	__u32 off = p->l4_off;
	__be16 *ports;
	__u16 *check;
	int udp = p->flow.proto == IPPROTO_UDP;
	int v4 = p->flow.family == FR_FAMILY_IPV4;
	const __u8 *src = to->src, *dst = to->dst;
	__be16 sport = to->sport, dport = to->dport;

	if (off > LB_MAX_OFF)
		return -1;
	ports = data + off;
	if ((void *)ports + 20 > data_end && !(udp && (void *)ports + 8 <= data_end))
		return -1;
	check = udp ? (void *)ports + 6 : (void *)ports + 16;
	if ((void *)(check + 1) > data_end)
		return -1;
	if (v4) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > data_end)
			return -1;
		ip->check = csum_apply(ip->check, to->d_addr);
		ip->saddr = *(const __u32 *)src;
		ip->daddr = *(const __u32 *)dst;
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
	}
	/* A UDP/IPv4 checksum of 0 means "none" and stays 0. */
	if (!(udp && v4 && *check == 0)) {
		__u16 c = csum_apply(*check, to->d_l4);

		/* For UDP 0 means "no checksum"; a computed 0 is sent as its other form. */
		*check = udp && c == 0 ? 0xffff : c;
	}
	ports[0] = sport;
	ports[1] = dport;
	return 0;
}

/* lb_rewrite_body as a function of its own, verified once, for the full path's callers; a
 * remembered flow's send (lb_fc_send) has the body inline and saves the call. */
static __attribute__((noinline)) int lb_rewrite(struct xdp_md *ctx, const struct lb_pkt *p, const struct lb_fwd *to)
{
	return lb_rewrite_body(ctx, p, to);
}

/* The key of a NAT flow's replies in fr_lb_nat (backend → node), all but the SNAT port (0). */
static __always_inline void lb_nat_reply_key(struct fr_lb_flow *rk, const struct fr_lb_backend *be,
					     const struct fr_lb_config *cfg, __u8 proto, __u8 family)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	__builtin_memcpy(rk->src, be->addr, 16);
	lb_node_addr(cfg, family, rk->dst);
	rk->sport = be->port;
	rk->proto = proto;
	rk->family = family;
}

/* Whether NAT entry `old` translates replies back to the client flow `ne` describes. */
static __always_inline int lb_nat_is(const struct fr_lb_nat_entry *old, const struct fr_lb_nat_entry *ne,
				     __u8 family)
{
	return old->client_port == ne->client_port && old->vip_port == ne->vip_port &&
	       lb_addr_eq_family(old->client, ne->client, family) && lb_addr_eq_family(old->vip, ne->vip, family);
}

/*
 * The SNAT port of a NAT flow (service and backend in `p`), with its reverse entry (backend →
 * node:port) naming this client flow. `have`: the port conntrack holds for the flow (0: a new
 * flow), tried first: kept while its entry is still the flow's (a lookup, nothing written), and
 * claimed again when the LRU evicted the entry. Otherwise (a new flow, or the port gone to another
 * client) a port is chosen from the flow's hash, trying a few; the same client flow finding its
 * own entry (conntrack evicted first) re-uses it. Returns the port, or 0 when none is free, and in
 * `*seen` the port's epoch (lb_nat_epoch_val) as read before the lookup or insert that showed the
 * port to be the flow's: a claim of the port after that moves the epoch past it.
 */
static __attribute__((noinline)) __be16 lb_nat_claim(const struct lb_pkt *p, const struct fr_lb_backend *be,
							const struct fr_lb_config *cfg, __be16 have, __u32 *seen)
{
	struct lb_scratch *s = lb_scratch();
	const struct fr_lb_nat_ports *range;
	__u8 family = p->flow.family;
	struct fr_lb_nat_entry *ne, *old;
	struct fr_lb_flow *rk;
	__u32 h;

	if (!s)
		return 0;
	rk = &s->nat_key;
	ne = &s->nat;
	lb_nat_reply_key(rk, be, cfg, p->flow.proto, p->flow.family);
	__builtin_memset(ne, 0, sizeof(*ne));
	__builtin_memcpy(ne->client, p->flow.src, 16);
	__builtin_memcpy(ne->vip, p->flow.dst, 16);
	ne->client_port = p->flow.sport;
	ne->vip_port = p->flow.dport;
	ne->service_id = p->service_id;
	ne->backend_id = p->backend_id;
	*seen = 0;
	h = lb_hash_flow(&p->flow, LB_SEED_NAT);
	range = lb_nat_range();
	if (!range)
		return 0;
	s->nat_ports = *range; /* read from the scratch in the loop: the stack is at its limit */
	/* The daemon may be rewriting the range (not atomically): a torn copy that is empty or runs
	 * past port 65535 takes no port for this packet rather than a wrapped one. */
	if (!s->nat_ports.count || s->nat_ports.first + s->nat_ports.count > 65536)
		return 0;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 *epoch, v = 0;

		/* A port left out by a change of `node.snat_ports` is not kept: its replies would
		 * no longer be taken for replies. */
		if (i == 0 && have && lb_port_in(&s->nat_ports, have))
			rk->dport = have;
		else
			rk->dport = bpf_htons(s->nat_ports.first + (h + i * 7919u) % s->nat_ports.count);
		epoch = lb_nat_epoch_of(rk->dport);
		if (epoch)
			v = lb_nat_epoch_val(epoch);
		old = bpf_map_lookup_elem(&fr_lb_nat, rk);
		if (!old) {
			/* Free. The epoch moves on before the entry can exist, so that nothing
			 * remembered under the port's earlier entry is used once it names this client
			 * (lb_nat_epoch); only a free port's: a taken one's stays, and so do the slots
			 * of the flow that has it. */
			if (epoch) {
				__sync_fetch_and_add(epoch, 1);
				v = lb_nat_epoch_val(epoch);
			}
			if (bpf_map_update_elem(&fr_lb_nat, rk, ne, BPF_NOEXIST) == 0) {
				*seen = v;
				return rk->dport;
			}
			old = bpf_map_lookup_elem(&fr_lb_nat, rk); /* another CPU's, since the lookup */
		}
		if (old && lb_nat_is(old, ne, family)) {
			*seen = v;
			return rk->dport;
		}
	}
	return 0;
}

static __always_inline void lb_frag_key(const struct lb_pkt *p, struct fr_lb_frag_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src, p->flow.src, 16);
	__builtin_memcpy(k->dst, p->flow.dst, 16);
	k->id = p->frag_id;
	k->proto = p->flow.proto;
	k->family = p->flow.family;
}

/* The first fragment of a datagram to a service: later ones follow it to `bid`. */
static __attribute__((noinline)) void lb_frag_record(const struct lb_pkt *p, __u32 bid, __u32 sid)
{
	struct fr_lb_frag_entry fe = { .backend_id = bid, .service_id = sid };
	struct lb_scratch *s = lb_scratch();

	if (!s)
		return;
	lb_frag_key(p, &s->frag);
	bpf_map_update_elem(&fr_lb_frags, &s->frag, &fe, BPF_ANY);
}

/* NAT forward direction: client:port → VIP:port becomes node:nat_port → backend:port. */
static __attribute__((noinline)) int lb_nat_forward(struct xdp_md *ctx, const struct lb_pkt *p,
						    const struct fr_lb_backend *be, const struct fr_lb_config *cfg,
						    __be16 nat_port)
{
	struct lb_fwd *f = lb_fwd_to(p, be, cfg, p->flow.family);
	int rc;

	if (!f)
		return XDP_PASS;
	f->sport = nat_port;
	f->dport = be->port;
	f->l3_len = p->l3_len;
	lb_nat_deltas(p, f);
	/* The next hop first, while the packet is still the client's: one over the route's MTU is
	 * answered with ICMP "too big" quoting it as the client sent it. (The route lookup reads
	 * only `f`; the MACs it writes and a redirect it sets up stand through the rewrite.) */
	rc = lb_fib(ctx, f);
	if (rc == LB_TOO_BIG)
		return lb_too_big(ctx, p, 0);
	if (lb_rewrite(ctx, p, f))
		return lb_pass_event(FR_LB_EV_MALFORMED);
	return rc;
}

/* Sends a client's packet to backend `be` the service's way (`mode`; NAT with `nat_port`): the
 * verdict, and in `*sent` the forwarding state lb_fib sent it with, or NULL when it was not sent
 * on (answered "too big", passed, dropped). */
static __always_inline int lb_to_backend(struct xdp_md *ctx, struct lb_pkt *p, const struct fr_lb_backend *be,
					 const struct fr_lb_config *cfg, __u8 mode, __be16 nat_port,
					 const struct lb_fwd **sent)
{
	struct lb_scratch *s;
	int rc;

	*sent = NULL;
	if (mode == FR_LB_MODE_NAT)
		rc = lb_nat_forward(ctx, p, be, cfg, nat_port);
	else
		rc = lb_encap(ctx, p, be, cfg);
	if (rc != XDP_TX && rc != XDP_REDIRECT)
		return rc;
	s = lb_scratch();
	if (s && s->fwd.sent)
		*sent = &s->fwd;
	return rc;
}

/* A TCP/UDP packet to a service. */
static __attribute__((noinline)) int lb_service(struct xdp_md *ctx, struct lb_pkt *p, const struct fr_lb_service *svc)
{
	__u32 sid = svc->id;
	__u8 mode = svc->mode;
	struct fr_lb_counters *sc, *bc;
	const struct fr_lb_backend *be = NULL;
	struct fr_lb_ct_entry *ct;
	struct fr_lb_config *cfg;
	struct lb_scratch *s;
	__u32 zero = 0, bid = 0;
	const struct lb_fwd *sent;
	__be16 nat_port = 0;
	int remember = 0, stale = 0, rc;
	__u32 seen = 0, *epoch;
	__u64 now;

	p->service_id = sid;
	/* The service's hash counters when its id is beyond the array; looked up once. */
	sc = lb_service_traffic(sid, p->frame_len);
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (mode == FR_LB_MODE_NAT && p->frag != LB_FRAG_NONE)
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);

	/* The coarse clock (the last tick) is plenty for a once-a-second refresh and reads no
	 * hardware clock, which costs tens of ns per packet in a VM. */
	s = lb_scratch();
	if (!s)
		return XDP_PASS;
	now = lb_clock(s);
	ct = bpf_map_lookup_elem(&fr_lb_ct, &p->flow);
	if (ct) {
		bid = ct->backend_id;
		be = lb_backend(bid);
		/* A flow of a removed backend, of an id now used by another service or given to another
		 * backend, or a UDP flow of a backend that is down (FR_LB_BE_DOWN), starts over. */
		if (!be || ct->service_id != sid || ct->backend_tag != lb_backend_tag_of(bid, be) ||
		    (mode == FR_LB_MODE_NAT && ct->nat_port == 0) ||
		    ((be->flags & FR_LB_BE_DOWN) && p->flow.proto == IPPROTO_UDP)) {
			ct = NULL;
		} else {
			nat_port = ct->nat_port;
			p->backend_id = bid;
			/* Refresh rarely: a write per packet would bounce the line between CPUs. */
			if (now - ct->last_seen_ns > LB_REFRESH_NS) {
				ct->last_seen_ns = now;
				stale = 1;
			}
			remember = p->frag == LB_FRAG_NONE && p->fc;
		}
	}
	if (ct && mode == FR_LB_MODE_NAT) {
		/*
		 * The SNAT port's reverse entry lives in another LRU map, which may evict it while
		 * conntrack keeps the flow: replies would find no translation, and the port could be
		 * claimed for another client, whose connection to the same backend this flow's packets
		 * would then join. So the entry is looked up again (lb_nat_claim: claimed again when
		 * gone, another port when taken) once a second, with conntrack's refresh, and whenever
		 * the port's epoch (see lb_nat_epoch: every claim attempt of the port moves it on) is
		 * no longer the one conntrack last checked it under, or the port is no longer in the
		 * SNAT range (`node.snat_ports` changed: lb_nat_claim moves it into the range). A
		 * remembered packet checks the epoch read here before the lookup.
		 */
		__u32 checked;
		__be16 port;

		if (!lb_have_node_addr(cfg, p->flow.family))
			return lb_drop(p, FR_LB_DROP_NO_NODE_ADDRESS);
		epoch = lb_nat_epoch_of(nat_port);
		if (epoch)
			seen = lb_nat_epoch_val(epoch);
		if (!epoch || stale || ct->nat_epoch != (__u16)seen || !lb_in_snat_range(nat_port)) {
			port = lb_nat_claim(p, be, cfg, nat_port, &checked);
			if (port == 0)
				return lb_drop(p, FR_LB_DROP_NAT_PORTS);
			if (!epoch || port != nat_port || checked != seen) {
				/* Claimed again, or moved to another port (for the backend, a new
				 * connection), or the epoch moved meanwhile: remembered from the next
				 * packet on. */
				remember = 0;
			}
			seen = checked;
			if (ct->nat_port != port)
				ct->nat_port = port;
			if (ct->nat_epoch != (__u16)seen)
				ct->nat_epoch = (__u16)seen;
			nat_port = port;
		}
	}
	if (!ct) {
		struct fr_lb_ct_entry *entry = &s->ct;

		__builtin_memset(entry, 0, sizeof(*entry));
		bid = lb_maglev(sid, lb_hash_flow(&p->flow, LB_SEED_MAGLEV));
		be = lb_backend(bid);
		if (!be)
			return lb_drop(p, FR_LB_DROP_NO_BACKEND);
		p->backend_id = bid;
		if (mode == FR_LB_MODE_NAT) {
			if (be->family != p->flow.family)
				return lb_drop(p, FR_LB_DROP_NAT_FAMILY);
			if (!lb_have_node_addr(cfg, p->flow.family))
				return lb_drop(p, FR_LB_DROP_NO_NODE_ADDRESS);
			nat_port = lb_nat_claim(p, be, cfg, 0, &seen);
			if (nat_port == 0)
				return lb_drop(p, FR_LB_DROP_NAT_PORTS);
			entry->nat_epoch = (__u16)seen;
		}
		entry->created_ns = now;
		entry->last_seen_ns = now;
		entry->backend_id = bid;
		entry->service_id = sid;
		entry->nat_port = nat_port;
		entry->backend_tag = lb_backend_tag_of(bid, be);
		bpf_map_update_elem(&fr_lb_ct, &p->flow, entry, BPF_ANY);
		if (!sc)
			sc = lb_service_counters(sid);
		if (sc)
			sc->new_flows += 1;
	}
	bc = lb_backend_traffic(bid, p->frame_len);
	if (!ct) {
		/* A new flow (conntrack missed above). */
		if (!bc)
			bc = lb_backend_counters(bid);
		if (bc)
			bc->new_flows += 1;
	}

	if (p->frag == LB_FRAG_FIRST)
		lb_frag_record(p, bid, sid);
	rc = lb_to_backend(ctx, p, be, cfg, mode, nat_port, &sent);
	/* A confirmed flow sent on (not answered "too big", not passed) is remembered with how. */
	if (remember && sent)
		lb_fc_fill(p, sid, mode, sent, now, seen);
	return rc;
}

/*
 * Probes the flow cache for the packet's flow, unless the cache is off for now (lb_fc_stats):
 * sets p->gen, p->fc_slot and p->fc (a confirmed flow may then be remembered there) and returns
 * the slot if it holds this flow under the current generation and within its second, with
 * `*now` set (lb_clock); else NULL.
 */
static __always_inline struct lb_fc_slot *lb_fc_probe(struct lb_scratch *s, __u64 *now)
{
	struct lb_pkt *p = &s->pkt;
	struct lb_fc_stats *st = &s->fc_stats;
	struct lb_fc_slot *slot;
	__u32 zero = 0, i;
	__u64 *gen;

	if (st->bypass) {
		st->bypass -= 1;
		return NULL; /* p->fc stays 0: nothing is remembered either */
	}
	if (st->probes >= LB_FC_SAMPLE) {
		if (st->hits < LB_FC_MIN_HITS)
			st->bypass = LB_FC_BYPASS;
		st->probes = 0;
		st->hits = 0;
		if (st->bypass)
			return NULL;
	}
	st->probes += 1;
	gen = bpf_map_lookup_elem(&fr_lb_gen, &zero);
	if (!gen)
		return NULL;
	i = bpf_get_smp_processor_id() * FR_LB_FC_SLOTS + lb_fc_index(&p->flow);
	p->gen = *gen;
	p->fc_slot = i;
	p->fc = 1;
	slot = bpf_map_lookup_elem(&lb_fc, &i);
	if (!slot || slot->gen != (__u32)p->gen || !lb_flow_eq(&slot->flow, &p->flow))
		return NULL;
	*now = lb_clock(s);
	if (*now >= slot->until_ns)
		return NULL;
	st->hits += 1;
	return slot;
}

/* Whether a remembered flow's packet can go the way its last one went (slot->fwd): that next hop
 * is fresh, the packet came in where that one did, tagged as it was, and fits the route's MTU
 * (once encapsulated, for DSR). */
static __always_inline int lb_fc_ready(const struct lb_pkt *p, const struct lb_fc_slot *slot, __u32 ingress,
				       __u64 now)
{
	const struct lb_fwd *f = &slot->fwd;
	__u32 len = p->l3_len;

	if (slot->mode == FR_LB_MODE_DSR)
		len += lb_ip_hdr_len(f->family);
	return now < f->nh.expires_ns && p->vlan == f->vlan && f->nh.ingress == ingress &&
	       len <= f->nh.mtu;
}

/* Sends a packet lb_fc_ready passed the way the flow's last one went: rewritten (NAT, either way)
 * or encapsulated (DSR) to the same endpoints, to the same next hop. */
static __always_inline int lb_fc_send(struct xdp_md *ctx, const struct lb_pkt *p, const struct lb_fc_slot *slot,
				      __u32 ingress)
{
	const struct lb_fwd *f = &slot->fwd;
	int rc;

	if (slot->mode != FR_LB_MODE_DSR) {
		if (lb_rewrite_body(ctx, p, f))
			return lb_pass_event(FR_LB_EV_MALFORMED);
	} else {
		rc = lb_encap_push(ctx, p, f);
		if (rc != LB_CONTINUE)
			return rc;
	}
	return lb_nh_send(ctx, &f->nh, f->vlan, ingress);
}

/* Whether a packet to `dst`:`dport` (of `family`) is addressed to one of the node's SNAT ports,
 * i.e. belongs to the reply direction of a NAT flow. */
static __always_inline int lb_to_snat_port(const __u8 *dst, __be16 dport, __u8 family)
{
	struct fr_lb_config *cfg;
	__u32 zero = 0;

	if (!lb_in_snat_range(dport))
		return 0;
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!cfg || !lb_have_node_addr(cfg, family))
		return 0;
	return family == FR_FAMILY_IPV4 ? lb_addr_eq(cfg->node_v4, dst, 1) : lb_addr_eq(cfg->node_v6, dst, 4);
}

/*
 * A reply of a NAT flow (backend -> node:SNAT port), which came in on `ingress`: translated back
 * to VIP -> client and sent towards the client. Remembered in lb_fc like a forward flow (see
 * lb_nat_epoch), so that the next replies on this CPU skip the NAT table and the route lookup.
 */
static __attribute__((noinline)) int lb_nat_reply(struct xdp_md *ctx, struct lb_pkt *p, __u32 ingress)
{
	struct lb_scratch *s = lb_scratch();
	struct lb_fc_slot *slot = NULL;
	struct fr_lb_nat_entry *ne;
	__u32 *epoch, seen = 0, sid;
	struct lb_fwd *f;
	__u64 now = 0;
	int rc;

	if (!lb_to_snat_port(p->flow.dst, p->flow.dport, p->flow.family))
		return XDP_PASS;
	if (p->frag != LB_FRAG_NONE)
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	if (!s)
		return XDP_PASS;
	/* The port's epoch before the NAT table is read: a claim of the port after this read moves
	 * it on, so a slot filled below from an entry gone since is never used. */
	epoch = lb_nat_epoch_of(p->flow.dport);
	if (epoch)
		seen = lb_nat_epoch_val(epoch);
	/* p->fc: lb_fast probed already (the address shares a VIP's bit). While the cache is off
	 * (p->fc 0) such a rare packet is counted against the bypass twice, which only shortens it. */
	if (!p->fc)
		slot = lb_fc_probe(s, &now);
	if (slot && epoch && slot->mode == LB_FC_MODE_NAT_REPLY && slot->epoch == seen &&
	    lb_fc_ready(p, slot, ingress, now)) {
		lb_event(FR_LB_EV_NAT_REPLY);
		return lb_fc_send(ctx, p, slot, ingress);
	}
	ne = bpf_map_lookup_elem(&fr_lb_nat, &p->flow);
	if (!ne)
		return XDP_PASS;
	sid = ne->service_id;
	f = &s->fwd;
	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->src, ne->vip, 16);
	__builtin_memcpy(f->dst, ne->client, 16);
	f->sport = ne->vip_port;
	f->dport = ne->client_port;
	f->l3_len = p->l3_len;
	f->family = p->flow.family;
	f->vlan = p->vlan;
	f->too_big = 1;
	lb_nat_deltas(p, f);
	/* The route first, while the packet is still the backend's: one longer than the route to the
	 * client allows is answered to the backend with ICMP "too big" quoting it as it was sent
	 * (translated and passed, the stack's answer would go to the VIP: the backend's path MTU
	 * discovery would never hear of it). The MACs and a redirect lb_fib sets up stand through
	 * the rewrite. */
	rc = lb_fib(ctx, f);
	if (rc == LB_TOO_BIG)
		return lb_too_big(ctx, p, 0);
	if (lb_rewrite(ctx, p, f))
		return lb_pass_event(FR_LB_EV_MALFORMED);
	lb_event(FR_LB_EV_NAT_REPLY);
	if (p->fc && epoch && f->sent)
		lb_fc_fill(p, sid, LB_FC_MODE_NAT_REPLY, f, lb_clock(s), seen);
	return rc;
}

/* A non-first fragment: to its first fragment's backend, if that was seen. */
static __attribute__((noinline)) int lb_frag_later(struct xdp_md *ctx, struct lb_pkt *p)
{
	struct lb_scratch *s = lb_scratch();
	const struct fr_lb_backend *be;
	struct fr_lb_frag_entry *fe;
	struct fr_lb_config *cfg;
	__u32 zero = 0;

	if (!s)
		return XDP_PASS;
	lb_frag_key(p, &s->frag);
	fe = bpf_map_lookup_elem(&fr_lb_frags, &s->frag);
	if (!fe)
		return lb_pass_event(FR_LB_EV_FRAG_UNKNOWN);
	p->service_id = fe->service_id;
	lb_service_traffic(fe->service_id, p->frame_len);
	lb_backend_traffic(fe->backend_id, p->frame_len);
	be = lb_backend(fe->backend_id);
	if (!be)
		return lb_drop(p, FR_LB_DROP_NO_BACKEND);
	p->backend_id = fe->backend_id;
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!cfg)
		return XDP_PASS;
	lb_event(FR_LB_EV_FRAG_FORWARDED);
	return lb_encap(ctx, p, be, cfg);
}

/* Replaces the address at `at` in the packet by `to`, adding the change to the checksum delta
 * `d`. A word at a time, so that no copy of the old address is held (the BPF stack is small). */
static __always_inline __u32 lb_put_addr(__u32 d, __u8 *at, const __u8 *to, int words)
{
	__u32 *a = (__u32 *)at;
	const __u32 *t = (const __u32 *)to;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (i < words) {
			d = csum_delta32(d, a[i], t[i]);
			a[i] = t[i];
			/* Sum now: left to itself clang keeps the old words live and spills them. */
			asm volatile("" : "+r"(d));
		}
	}
	return d;
}

/*
 * NAT of an ICMP error: the outer addresses become x->outer_*, the quoted packet's addresses and
 * ports x->q_*. Every checksum is updated incrementally (RFC 1624), so a quote cut short anywhere
 * after the ports is fine: the outer IPv4 header's; the quoted IPv4 header's; the quoted TCP/UDP
 * one when the quote holds it (a UDP 0, "none", stays 0); the ICMP one, which covers the quote
 * and, for ICMPv6, the outer addresses through its pseudo-header. The TTL / hop limit is left
 * alone, as lb_nat_forward leaves it. `v4` is a constant in each inlined copy.
 */
static __always_inline int lb_icmp_xlate(struct xdp_md *ctx, const struct lb_pkt *p, const struct lb_icmp *x,
					 const int v4)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const int words = v4 ? 1 : 4;
	const __u32 alen = v4 ? 4 : 16;
	/* The source address's offset in an IPv4 / IPv6 header; the destination follows it. */
	const __u32 aoff = v4 ? 12 : 8;
	__u32 l3 = lb_l2_len(p), icmp_off = x->icmp_off, qip = x->qip_off, ql4 = x->ql4_off, coff;
	int udp = x->q_proto == IPPROTO_UDP;
	__u32 d_outer, d_q, d_ports, d_icmp;
	struct lb_icmp_hdr *icmp;
	struct iphdr *o4, *q4;
	__u16 *qcheck = NULL;
	__u8 *osrc, *qsrc;
	__be16 *ports;
	__u16 old, new;

	/* Every bound is checked before the first write: a failure leaves the packet as it came. */
	if (icmp_off > LB_MAX_OFF || qip > LB_MAX_OFF || ql4 > LB_MAX_OFF)
		return -1;
	icmp = data + icmp_off;
	ports = data + ql4;
	osrc = data + l3 + aoff;
	qsrc = data + qip + aoff;
	o4 = data + l3;
	q4 = data + qip;
	if ((void *)(icmp + 1) > data_end || (void *)(ports + 2) > data_end || (void *)osrc + 2 * alen > data_end ||
	    (void *)qsrc + 2 * alen > data_end)
		return -1;
	if (v4 && ((void *)(o4 + 1) > data_end || (void *)(q4 + 1) > data_end))
		return -1;
	/* The quoted L4 checksum, when the quote holds it. */
	coff = ql4 + (udp ? 6 : 16);
	if (coff + 2 <= x->end) {
		qcheck = data + coff;
		if ((void *)(qcheck + 1) > data_end)
			return -1;
	}

	d_outer = lb_put_addr(0, osrc, x->outer_src, words);
	d_outer = lb_put_addr(d_outer, osrc + alen, x->outer_dst, words);
	d_q = lb_put_addr(0, qsrc, x->q_src, words);
	d_q = lb_put_addr(d_q, qsrc + alen, x->q_dst, words);
	d_ports = csum_delta16(0, ports[0], x->q_sport);
	d_ports = csum_delta16(d_ports, ports[1], x->q_dport);
	ports[0] = x->q_sport;
	ports[1] = x->q_dport;
	d_icmp = d_q + d_ports;

	/* The quoted L4 checksum covers the quoted addresses (pseudo-header) and ports. */
	if (qcheck) {
		old = *qcheck;
		if (!(udp && old == 0)) {
			new = csum_apply(old, d_q + d_ports);
			if (udp && new == 0)
				new = 0xffff;
			*qcheck = new;
			d_icmp = csum_delta16(d_icmp, old, new);
		}
	}
	if (v4) {
		old = q4->check;
		new = csum_apply(old, d_q);
		q4->check = new;
		d_icmp = csum_delta16(d_icmp, old, new);
		o4->check = csum_apply(o4->check, d_outer);
	} else {
		d_icmp += d_outer;
	}
	icmp->check = csum_apply(icmp->check, d_icmp);
	return 0;
}

/* Applies the NAT of an ICMP error (scratch `icmp`) and forwards it to its new outer destination. */
static __attribute__((noinline)) int lb_icmp_nat_send(struct xdp_md *ctx, const struct lb_pkt *p)
{
	struct lb_scratch *s = lb_scratch();
	struct lb_icmp *x;
	struct lb_fwd *f;
	int rc;

	if (!s)
		return XDP_PASS;
	x = &s->icmp;
	rc = p->flow.family == FR_FAMILY_IPV4 ? lb_icmp_xlate(ctx, p, x, 1) : lb_icmp_xlate(ctx, p, x, 0);
	if (rc)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	lb_event(FR_LB_EV_ICMP_FORWARDED);
	f = &s->fwd;
	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->src, x->outer_src, 16);
	__builtin_memcpy(f->dst, x->outer_dst, 16);
	f->l3_len = p->l3_len;
	f->family = p->flow.family;
	f->vlan = p->vlan;
	return lb_fib(ctx, f);
}

/*
 * What NAT does not translate: an ICMP error in fragments (the later ones would keep the old
 * addresses) or, IPv6, behind extension headers (a routing header would change the destination
 * the ICMPv6 checksum covers). Those stay the stack's.
 */
static __always_inline int lb_icmp_nat_unhandled(const struct lb_pkt *p)
{
	return p->frag != LB_FRAG_NONE ||
	       (p->flow.family == FR_FAMILY_IPV6 && p->l4_off != lb_l2_len(p) + sizeof(struct ipv6hdr));
}

/*
 * NAT, client side: an ICMP error about a reply we translated (quoting VIP:vport → client:cport)
 * goes to the flow's backend as if it were about the backend's own packet (backend:bport →
 * node:nat_port), from the node's address. The SNAT port is only in conntrack: without the flow
 * there, the error is the stack's. Returns LB_CONTINUE with scratch `icmp` filled in for
 * lb_icmp_nat_send, or the verdict.
 */
static __attribute__((noinline)) int lb_icmp_nat_forward(struct lb_pkt *p, __u32 sid)
{
	struct lb_scratch *s = lb_scratch();
	const struct fr_lb_backend *be;
	struct fr_lb_nat_entry *ne;
	struct fr_lb_ct_entry *ct;
	struct fr_lb_config *cfg;
	struct fr_lb_flow *rk;
	struct lb_icmp *x;
	__u32 zero = 0, bid;
	__be16 nat_port;
	__u8 family = p->flow.family;

	if (!s)
		return XDP_PASS;
	x = &s->icmp;
	if (lb_icmp_nat_unhandled(p))
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	ct = bpf_map_lookup_elem(&fr_lb_ct, &s->flow);
	if (!ct || ct->service_id != sid || ct->nat_port == 0)
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	bid = ct->backend_id;
	nat_port = ct->nat_port;
	be = lb_backend(bid);
	/* A flow whose backend id now names another host starts over with its next packet. */
	if (!be || ct->backend_tag != lb_backend_tag_of(bid, be) || be->family != family)
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	p->backend_id = bid;
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (!lb_have_node_addr(cfg, family))
		return lb_drop(p, FR_LB_DROP_NO_NODE_ADDRESS);
	/* The port conntrack holds may no longer be the flow's: left out by a change of
	 * `node.snat_ports` (its replies are not translated any more; the flow's next packet moves
	 * it), or claimed by another client since the LRU evicted the flow's reverse entry. An error
	 * translated to it would tell the backend about someone else's connection. */
	if (!lb_in_snat_range(nat_port))
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	rk = &s->nat_key;
	lb_nat_reply_key(rk, be, cfg, s->flow.proto, family);
	rk->dport = nat_port;
	ne = bpf_map_lookup_elem(&fr_lb_nat, rk);
	if (!ne || ne->client_port != s->flow.sport || ne->vip_port != s->flow.dport ||
	    !lb_addr_eq_family(ne->client, s->flow.src, family) || !lb_addr_eq_family(ne->vip, s->flow.dst, family))
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	lb_backend_traffic(bid, p->frame_len);
	lb_node_addr(cfg, family, x->outer_src);
	__builtin_memcpy(x->outer_dst, be->addr, 16);
	__builtin_memcpy(x->q_src, be->addr, 16);
	lb_node_addr(cfg, family, x->q_dst);
	x->q_sport = be->port;
	x->q_dport = nat_port;
	return LB_CONTINUE;
}

/*
 * NAT, backend side: an ICMP error to the node's address quoting a translated packet (node:nat_port
 * → backend:bport), from the backend or a router before it, goes back to the client as if about
 * its own packet (client:cport → VIP:vport), from the VIP. Anything else is the node's own.
 * Returns LB_CONTINUE with scratch `icmp` filled in for lb_icmp_nat_send, or the verdict.
 */
static __attribute__((noinline)) int lb_icmp_nat_reverse(struct lb_pkt *p)
{
	struct lb_scratch *s = lb_scratch();
	struct fr_lb_nat_entry *ne;
	struct lb_icmp *x;

	if (!s)
		return XDP_PASS;
	x = &s->icmp;
	/* s->flow is the quoted packet reversed, i.e. the key of its replies in fr_lb_nat. */
	if (!lb_to_snat_port(p->flow.dst, s->flow.dport, p->flow.family))
		return XDP_PASS;
	ne = bpf_map_lookup_elem(&fr_lb_nat, &s->flow);
	if (!ne)
		return XDP_PASS;
	if (lb_icmp_nat_unhandled(p))
		return lb_pass_event(FR_LB_EV_NAT_UNHANDLED);
	__builtin_memcpy(x->outer_src, ne->vip, 16);
	__builtin_memcpy(x->outer_dst, ne->client, 16);
	__builtin_memcpy(x->q_src, ne->client, 16);
	__builtin_memcpy(x->q_dst, ne->vip, 16);
	x->q_sport = ne->client_port;
	x->q_dport = ne->vip_port;
	return LB_CONTINUE;
}

/*
 * An ICMP error. If it quotes a packet from a service (src = VIP:port), it belongs to the flow
 * client → VIP: DSR sends it to that flow's backend as it is, NAT translates it for the backend.
 * Otherwise it may quote a NAT-translated packet to a backend, and goes back to the client.
 */
static __attribute__((noinline)) int lb_icmp_error(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_scratch *s = lb_scratch();
	struct fr_lb_service_key *sk;
	struct fr_lb_flow *flow;
	const struct fr_lb_backend *be;
	struct fr_lb_service *svc;
	struct fr_lb_ct_entry *ct;
	struct fr_lb_config *cfg;
	struct lb_icmp_hdr *icmp;
	struct lb_icmp *x;
	__u32 off = p->l4_off, bid = 0, zero = 0;
	__be16 *ports;
	int rc;

	if (!s)
		return XDP_PASS;
	sk = &s->sk;
	flow = &s->flow;
	x = &s->icmp;
	__builtin_memset(sk, 0, sizeof(*sk));
	__builtin_memset(flow, 0, sizeof(*flow));
	if (off > LB_MAX_OFF)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	icmp = data + off;
	if ((void *)(icmp + 1) > data_end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	x->icmp_off = off;
	x->end = lb_l2_len(p) + p->l3_len;
	off += sizeof(*icmp);
	x->qip_off = off;
	if (p->flow.family == FR_FAMILY_IPV4) {
		struct iphdr *in;
		__u32 ihl_len;

		if (icmp->type != 3 && icmp->type != 11)
			return XDP_PASS;
		in = data + off;
		if ((void *)(in + 1) > data_end)
			return lb_pass_event(FR_LB_EV_MALFORMED);
		ihl_len = in->ihl * 4;
		if (ihl_len < sizeof(*in))
			return lb_pass_event(FR_LB_EV_MALFORMED);
		if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP)
			return XDP_PASS;
		/* A quoted later fragment holds no ports: nothing to find a flow by. */
		if (in->frag_off & bpf_htons(LB_IP_OFFSET))
			return XDP_PASS;
		*(__u32 *)sk->vip = in->saddr;
		*(__u32 *)flow->src = in->daddr;
		*(__u32 *)flow->dst = in->saddr;
		sk->proto = in->protocol;
		off += ihl_len;
	} else {
		struct ipv6hdr *in6;

		if (icmp->type < 1 || icmp->type > 3)
			return XDP_PASS;
		in6 = data + off;
		if ((void *)(in6 + 1) > data_end)
			return lb_pass_event(FR_LB_EV_MALFORMED);
		if (in6->nexthdr != IPPROTO_TCP && in6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		__builtin_memcpy(sk->vip, &in6->saddr, 16);
		__builtin_memcpy(flow->src, &in6->daddr, 16);
		__builtin_memcpy(flow->dst, &in6->saddr, 16);
		sk->proto = in6->nexthdr;
		off += sizeof(*in6);
	}
	if (off > LB_MAX_OFF)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	ports = data + off;
	/* The ports must be in the packet, not in padding after it (NAT rewrites them). */
	if ((void *)(ports + 2) > data_end || off + 4 > x->end)
		return lb_pass_event(FR_LB_EV_MALFORMED);
	x->ql4_off = off;
	x->q_proto = sk->proto;
	sk->port = ports[0];
	sk->family = p->flow.family;
	flow->sport = ports[1];
	flow->dport = ports[0];
	flow->proto = sk->proto;
	flow->family = sk->family;
	svc = bpf_map_lookup_elem(&fr_lb_services, sk);
	if (!svc) {
		rc = lb_icmp_nat_reverse(p);
		return rc == LB_CONTINUE ? lb_icmp_nat_send(ctx, p) : rc;
	}
	p->service_id = svc->id;
	lb_service_traffic(svc->id, p->frame_len);
	if (svc->mode == FR_LB_MODE_NAT) {
		/* Translating here rather than in the callee keeps the call chain within the BPF stack. */
		rc = lb_icmp_nat_forward(p, svc->id);
		return rc == LB_CONTINUE ? lb_icmp_nat_send(ctx, p) : rc;
	}
	ct = bpf_map_lookup_elem(&fr_lb_ct, flow);
	if (ct && ct->service_id == svc->id) {
		bid = ct->backend_id;
	} else {
		lb_event(FR_LB_EV_ICMP_NO_FLOW);
		bid = lb_maglev(svc->id, lb_hash_flow(flow, LB_SEED_MAGLEV));
	}
	be = lb_backend(bid);
	if (!be)
		return lb_drop(p, FR_LB_DROP_NO_BACKEND);
	p->backend_id = bid;
	lb_backend_traffic(bid, p->frame_len);
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!cfg)
		return XDP_PASS;
	lb_event(FR_LB_EV_ICMP_FORWARDED);
	return lb_encap(ctx, p, be, cfg);
}

/* A packet of a flow remembered in lb_fc under the current generation, which vouches that its
 * service still exists with the id and mode remembered: counted and sent to its backend
 * (encapsulated or translated). LB_CONTINUE: not remembered, the full path decides. */
static __always_inline int lb_fast(struct xdp_md *ctx, struct lb_scratch *s, __u32 ingress)
{
	struct lb_pkt *p = &s->pkt;
	__u32 zero = 0, bid, sid;
	const struct lb_fwd *sent;
	__u8 mode;
	int rc;
	const struct fr_lb_backend *be;
	struct fr_lb_config *cfg;
	struct lb_fc_slot *slot;
	__u64 now = 0;

	slot = lb_fc_probe(s, &now);
	/* A reply's slot (its destination, a node address, may share a VIP's bit) is lb_nat_reply's. */
	if (!slot || slot->mode == LB_FC_MODE_NAT_REPLY)
		return LB_CONTINUE;
	/* (A slot is filled only from a conntrack hit the full path accepted, NAT with its SNAT port,
	 * and any change to the service or backend since is a new generation.) */
	bid = slot->fwd.backend_id;
	sid = slot->service_id;
	mode = slot->mode;
	/* NAT: unless the SNAT port was claimed again since the slot's fill (lb_nat_epoch). */
	if (mode == FR_LB_MODE_NAT) {
		__u32 *epoch = lb_nat_epoch_of(slot->fwd.sport);

		if (!epoch || lb_nat_epoch_val(epoch) != slot->epoch)
			return LB_CONTINUE;
	}
	p->service_id = sid;
	p->backend_id = bid;
	if (lb_fc_ready(p, slot, ingress, now)) {
		lb_service_traffic(sid, p->frame_len);
		lb_backend_traffic(bid, p->frame_len);
		return lb_fc_send(ctx, p, slot, ingress);
	}
	/* The next hop is due a new look (or the packet is longer, or came in elsewhere or tagged
	 * differently): the backend's way, and the slot remembers how this packet went. */
	be = lb_backend(bid);
	cfg = bpf_map_lookup_elem(&fr_lb_config, &zero);
	if (!be || !cfg)
		return LB_CONTINUE;
	lb_service_traffic(sid, p->frame_len);
	lb_backend_traffic(bid, p->frame_len);
	rc = lb_to_backend(ctx, p, be, cfg, mode, slot->fwd.sport, &sent);
	if (sent)
		__builtin_memcpy(&slot->fwd, sent, sizeof(slot->fwd));
	return rc;
}

/* The load balancer's verdict for one packet, which came in on `ingress` (ctx's). */
static __always_inline int lb_process(struct xdp_md *ctx, __u32 ingress)
{
	struct lb_scratch *s = lb_scratch();
	struct fr_lb_service_key *sk;
	struct fr_lb_service *svc;
	struct lb_pkt *p;
	int rc;

	if (!s)
		return XDP_PASS;
	p = &s->pkt;
	sk = &s->sk;
	if (!lb_parse_plain(ctx, p)) {
		__builtin_memset(p, 0, sizeof(*p));
		rc = lb_parse(ctx, p);
		if (rc != LB_CONTINUE)
			return rc;
		if (p->frag == LB_FRAG_LATER)
			return lb_frag_later(ctx, p);
		if (p->flow.proto == IPPROTO_ICMP && p->flow.family == FR_FAMILY_IPV4)
			return lb_icmp_error(ctx, p);
		if (p->flow.proto == LB_NH_ICMPV6 && p->flow.family == FR_FAMILY_IPV6)
			return lb_icmp_error(ctx, p);
		if (p->flow.proto != IPPROTO_TCP && p->flow.proto != IPPROTO_UDP)
			return XDP_PASS;
		rc = lb_parse_ports(ctx, p);
		if (rc != LB_CONTINUE)
			return rc;
	}
	/* For no VIP (replies of NAT flows among them): no service lookup, no flow cache, and unless
	 * the port is an SNAT port, not even the call to the reply check. */
	if (!lb_vip_maybe(p->flow.dst))
		return lb_in_snat_range(p->flow.dport) ? lb_nat_reply(ctx, p, ingress) : XDP_PASS;
	if (p->frag == LB_FRAG_NONE) {
		rc = lb_fast(ctx, s, ingress);
		if (rc != LB_CONTINUE)
			return rc;
	}

	__builtin_memset(sk, 0, sizeof(*sk));
	__builtin_memcpy(sk->vip, p->flow.dst, 16);
	sk->port = p->flow.dport;
	sk->proto = p->flow.proto;
	sk->family = p->flow.family;
	svc = bpf_map_lookup_elem(&fr_lb_services, sk);
	if (!svc)
		return lb_nat_reply(ctx, p, ingress);
	return lb_service(ctx, p, svc);
}

#endif /* FERRULE_LIB_LB_H */
