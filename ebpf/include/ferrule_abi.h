/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The map ABI between the C datapath and Ferrule's user space: every struct that crosses the
 * kernel boundary is defined here and only here. The Rust mirrors live in ebpf/src/abi.rs and a
 * test compares them with the BTF of the compiled objects, so a change here that is not made
 * there fails the build's tests instead of corrupting a map.
 *
 * Only plain fixed-width fields: no bitfields, no pointers, no implicit padding (add explicit
 * `pad` fields), because the layout must be the same on every architecture user space runs on.
 * Addresses and ports are stored in network byte order, as they are on the wire, so the fast path
 * never swaps bytes; IPv4 addresses use the first 4 bytes of a 16-byte field, the rest zero.
 */
#ifndef FERRULE_ABI_H
#define FERRULE_ABI_H

#include <linux/types.h>

/*
 * Value of maps `fr_iface_stats` (per-CPU hash, keyed by the ingress ifindex, __u32) and
 * `fr_iface_stats_arr` (per-CPU array indexed by the ifindex). An interface whose ifindex is below
 * FR_IFACE_STATS_ARR_SIZE is counted in the array (an index, no hashing on every packet); one at
 * or above it in the hash. User space adds the two: counters an older build left in the hash for
 * a low ifindex still count.
 */
struct fr_iface_stats {
	__u64 packets;
	__u64 bytes;
};

#define FR_IFACE_STATS_ARR_SIZE 1024

/* ---- L4 load balancer (xdp_lb) ---------------------------------------------------------- */

/* `family` fields. 0 marks an unused slot (a removed backend). */
#define FR_FAMILY_IPV4 4
#define FR_FAMILY_IPV6 6

/* `fr_lb_service.mode`. */
#define FR_LB_MODE_DSR 1 /* encapsulate to the backend, which answers the client directly */
#define FR_LB_MODE_NAT 2 /* DNAT to the backend + SNAT to the node; replies come back through us */

/* Capacities (max_entries). Changing one changes the pinned maps' shape (see loader.rs). */
#define FR_LB_MAX_SERVICES 131072
#define FR_LB_MAX_BACKENDS 65536 /* backend ids are 1..65535; 0 means "none" */
#define FR_LB_CT_SIZE 262144
#define FR_LB_NAT_SIZE 262144
#define FR_LB_FRAGS_SIZE 8192

/*
 * Default SNAT source ports of NAT mode: [FR_LB_NAT_PORT_MIN, FR_LB_NAT_PORT_MIN +
 * FR_LB_NAT_PORT_COUNT), until the daemon sets `node.snat_ports` (lb_nat_ports in lib/lb.h).
 * Below Linux's default ip_local_port_range (32768-60999) so the node's own connections never
 * collide with translated flows; the node must keep its local port range out of this one.
 */
#define FR_LB_NAT_PORT_MIN 10000
#define FR_LB_NAT_PORT_COUNT 22768

/* Value of the datapath's private `lb_nat_ports` map (array of 1): SNAT ports [first, first +
 * count). */
struct fr_lb_nat_ports {
	__u32 first;
	__u32 count;
};

/*
 * DSR encapsulation overhead: 20 bytes (IPIP, outer IPv4) or 40 bytes (IP6IP6 and IPv4-in-IPv6,
 * outer IPv6). Where the links between load balancer and backends have an MTU at least that much
 * larger than the clients' path MTU, nothing else is needed. Where they do not, a TCP/UDP packet
 * that does not fit once encapsulated and may not be fragmented (IPv4 with DF, every IPv6 packet)
 * is answered like a router would: ICMP "fragmentation needed" / ICMPv6 "packet too big" from the
 * VIP to the client, with the route's MTU minus the overhead (FR_LB_EV_TOO_BIG), so path MTU
 * discovery shrinks the client's packets. At most FR_LB_TOO_BIG_PER_SEC such answers per CPU and
 * second; beyond that, and for packets that may be fragmented, the encapsulated packet is passed
 * to the stack (FR_LB_EV_MTU_PASS). NAT mode: the same for a packet over the MTU of the route to
 * its backend (no overhead to take off).
 */
#define FR_LB_TOO_BIG_PER_SEC 1000
#define FR_LB_ENCAP4_OVERHEAD 20
#define FR_LB_ENCAP6_OVERHEAD 40

/* Key of `fr_lb_services` (hash). */
struct fr_lb_service_key {
	__u8 vip[16];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;
};

/* Value of `fr_lb_services`. The service's Maglev table is `fr_lb_tables[id]`. */
struct fr_lb_service {
	__u32 id;
	__u8 mode; /* FR_LB_MODE_* */
	__u8 flags; /* reserved, 0 */
	__u16 pad;
};

/*
 * Value of `fr_lb_backends` (array indexed by backend id). family == 0: no backend with that id.
 * Maglev tables (`fr_lb_tables`, hash of maps keyed by service id) hold __u32 backend ids: inner
 * slot 0 is the table's length N, slots 1..N the table. Replacing the inner map is one map update,
 * so a packet sees the old table or the new one, never a mix; the length travels with the table.
 */
struct fr_lb_backend {
	__u8 addr[16];
	__be16 port; /* NAT mode: destination port after DNAT; DSR ignores it */
	__u8 family;
	__u8 flags; /* FR_LB_BE_* */
};

/*
 * `fr_lb_backend.flags`. DOWN: the backend failed its health checks (for every service listing
 * it). User space sets it only after writing tables without it, so it gets no new flow; a UDP
 * flow conntrack holds on it starts over through its service's table (a datagram flow has
 * nothing to lose, and one from a fixed source port, a resolver's, would otherwise stay on the
 * dead backend for as long as it keeps sending), while a TCP flow stays (a false alarm must not
 * reset a live connection; a client of a dead backend reconnects from another port, a new flow).
 * The flag lives in the pinned map, so a restarted daemon knows which backends were down. Older
 * versions wrote 0.
 */
#define FR_LB_BE_DOWN 1

/* `fr_lb_config.flags`. */
#define FR_LB_CFG_HAVE_V4 1
#define FR_LB_CFG_HAVE_V6 2

/* The one value of `fr_lb_config` (array of 1): the node's addresses, outer source of DSR
 * tunnels and SNAT source of NAT mode. */
struct fr_lb_config {
	__u8 node_v4[4];
	__u8 node_v6[16];
	__u32 flags; /* FR_LB_CFG_* */
};

/* A connection as seen in one direction. Key of `fr_lb_ct` (client → VIP) and `fr_lb_nat`
 * (backend → node, the reply direction of a NAT flow). */
struct fr_lb_flow {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Value of `fr_lb_ct` (LRU hash shared by all CPUs). */
struct fr_lb_ct_entry {
	__u64 created_ns; /* bpf_ktime_get_ns() */
	__u64 last_seen_ns; /* refreshed at most once a second */
	__u32 backend_id;
	__u32 service_id;
	__be16 nat_port; /* NAT mode: the SNAT source port; 0 in DSR mode */
	/* NAT mode: the low bits of the port's epoch (a private map of the datapath's, moved on by
	 * every claim of the port) when the port's reverse entry was last found to be this flow's.
	 * Older versions wrote 0 here. */
	__u16 nat_epoch;
	/* Digest of the backend's address and port when the flow was created: once the id is given
	 * to another backend it no longer matches, and the flow starts over (NAT state included)
	 * instead of following the id to a host that never saw it. */
	__u32 backend_tag;
};

/* Value of `fr_lb_nat` (LRU hash): how to translate a reply of a NAT flow back. */
struct fr_lb_nat_entry {
	__u8 client[16];
	__u8 vip[16];
	__be16 client_port;
	__be16 vip_port;
	__u32 service_id;
	__u32 backend_id;
	__u32 pad;
};

/* Key of `fr_lb_frags` (LRU hash): one fragmented datagram. */
struct fr_lb_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id; /* IPv4: the 16-bit id; IPv6: the fragment header's id (network order) */
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Value of `fr_lb_frags`, written by the first fragment (the one with the L4 header). */
struct fr_lb_frag_entry {
	__u32 backend_id;
	__u32 service_id;
};

/* Why a packet to a VIP was dropped: index into `fr_lb_counters.drops`. */
enum fr_lb_drop {
	FR_LB_DROP_NO_BACKEND = 0, /* empty or missing Maglev table, or its slot names no backend */
	FR_LB_DROP_NO_NODE_ADDRESS = 1, /* no node address of the family the tunnel/SNAT needs */
	FR_LB_DROP_ENCAP_FAILED = 2, /* bpf_xdp_adjust_head failed (no headroom) */
	FR_LB_DROP_NAT_PORTS = 3, /* no free SNAT port after a few probes */
	FR_LB_DROP_NAT_FAMILY = 4, /* NAT mode between different families is not supported */
	FR_LB_DROP_MAX = 8,
};

/* Value of `fr_lb_service_stats` and `fr_lb_backend_stats` (per-CPU hashes keyed by id, entries
 * created on first use). */
struct fr_lb_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 drops[FR_LB_DROP_MAX];
};

/*
 * Value of `fr_lb_service_traffic` and `fr_lb_backend_traffic` (per-CPU arrays indexed by id):
 * the packets and bytes of ids below FR_LB_TRAFFIC_ARR_SIZE, which every packet of a flow adds to,
 * kept in an array so that a conntrack hit hashes no id. Ids are allocated lowest first, so these
 * are the ids in use on all but the largest nodes; higher ids count packets and bytes in
 * `fr_lb_counters`. New flows and drops are always in `fr_lb_counters`. An id's packets and bytes
 * are the sum of both maps (an older build counted low ids in the hash).
 */
struct fr_lb_traffic {
	__u64 packets;
	__u64 bytes;
};

#define FR_LB_TRAFFIC_ARR_SIZE 4096

/*
 * `fr_lb_gen` (array of one __u64): the generation of the load balancer's maps. User space adds
 * one after each change to services, tables, backends or node addresses (after the change is in
 * place). The fast path remembers a flow's service and backend per CPU only together with the
 * generation it was confirmed under, and uses the memory only while that generation is current.
 */

/*
 * `fr_lb_vips` (array of FR_LB_VIP_WORDS __u64): a bitmap over the services' VIPs, 2^22 bits. The
 * slot of an address is its 16 bytes (IPv4 in the first 4, the rest 0) read as four host-order
 * 32-bit words w0..w3: the top FR_LB_VIP_SLOT_BITS bits of (w0 ^ w1 ^ w2 ^ w3) * FR_LB_VIP_MUL,
 * and its bit is bit (slot % 64) of word (slot / 64). A packet whose destination's bit is clear
 * is for no service, known without a service lookup (nor a probe of the flow cache, which comes
 * before the service lookup). User space counts the services of each slot (counted again from
 * fr_lb_services when it loads the program, which also makes the bitmap exact), sets a slot's bit
 * before its first service is written and clears it after its last is removed, so a bit is never
 * clear while a service has it; a bit set for another address (1 in 40 with 100,000 VIPs) only
 * costs packets to it the service lookup.
 */
#define FR_LB_VIP_SLOT_BITS 22
#define FR_LB_VIP_WORDS 65536
#define FR_LB_VIP_MUL 2654435761

/*
 * Slots per CPU of xdp_lb's flow cache (`lb_fc`, private to the program, not pinned): an array the
 * loader sizes to FR_LB_FC_SLOTS times the possible CPUs. A power of two.
 */
#define FR_LB_FC_SLOTS 4096

/*
 * Node-wide events of the load balancer: index into `fr_lb_events` (per-CPU array of __u64).
 * Counted packets are passed to the stack unless the comment says where they went; the fast path
 * only drops what it decided to.
 */
enum fr_lb_event {
	FR_LB_EV_MALFORMED = 0, /* truncated Ethernet/IP/L4 header, IHL < 5, lengths that lie */
	FR_LB_EV_EXT_HDR_LIMIT = 1, /* more IPv6 extension headers than the walk follows */
	FR_LB_EV_FRAG_UNKNOWN = 2, /* a non-first fragment whose first fragment was not seen */
	FR_LB_EV_FIB_PASS = 3, /* bpf_fib_lookup had no route/neighbour: the stack forwards (ARP/ND) */
	FR_LB_EV_MTU_PASS = 4, /* encapsulated packet larger than the egress MTU */
	FR_LB_EV_NAT_UNHANDLED = 5, /* fragment of a NAT flow; ICMP error of one without conntrack */
	FR_LB_EV_ICMP_FORWARDED = 6, /* ICMP error for a flow sent to its backend (NAT: or client) */
	FR_LB_EV_ICMP_NO_FLOW = 7, /* ... whose flow had no conntrack entry (Maglev chose) */
	FR_LB_EV_FRAG_FORWARDED = 8, /* non-first fragment sent to its first fragment's backend */
	FR_LB_EV_NAT_REPLY = 9, /* reply of a NAT flow translated back to the client */
	FR_LB_EV_VLAN_REDIRECT = 10, /* tagged packet whose egress is another interface: passed */
	FR_LB_EV_TOO_BIG = 11, /* over the route to the backend's MTU: ICMP "too big" to the client */
	FR_LB_EV_MAX = 16,
};

/* ---- DSR decapsulation on backends (tc_decap) ------------------------------------------- */

/* Key of `fr_decap_addrs` (hash, value __u8 = 1): local addresses tunnels may be addressed to. */
struct fr_decap_addr {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* Index into `fr_decap_events` (per-CPU array of __u64). */
enum fr_decap_event {
	FR_DECAP_EV_DECAPSULATED = 0,
	FR_DECAP_EV_NOT_LOCAL = 1, /* tunnel packet to an address not in fr_decap_addrs: left alone */
	FR_DECAP_EV_FAILED = 2, /* bpf_skb_adjust_room refused: left alone */
	FR_DECAP_EV_MALFORMED = 3, /* outer header the stack would drop (version, checksum, length): left alone */
	FR_DECAP_EV_MAX = 4,
};

#endif /* FERRULE_ABI_H */
