/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates) over values read from
 * the packet as they are stored there. The one's-complement sum does not depend on byte order as
 * long as every word is loaded the same way, so nothing here swaps bytes. No packet access here.
 */
#ifndef FERRULE_LIB_CSUM_H
#define FERRULE_LIB_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The folded sum of a 64-bit accumulation of 16- and 32-bit words (carries kept in the upper
 * half, as bpf_csum_diff's result and a few more words added to it need). */
static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold((__u32)sum);
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word m changed to m'. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from;
	sum += to;
	return (__u16)~csum_fold(sum);
}

static __always_inline __u16 csum_replace32(__u16 check, __u32 from, __u32 to)
{
	check = csum_replace16(check, (__u16)from, (__u16)to);
	return csum_replace16(check, (__u16)(from >> 16), (__u16)(to >> 16));
}

/* A 16-byte address changed; IPv4 addresses (first 4 bytes) pass `words` = 1. */
static __always_inline __u16 csum_replace_addr(__u16 check, const __u8 *from, const __u8 *to, int words)
{
	const __u32 *f = (const __u32 *)from;
	const __u32 *t = (const __u32 *)to;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (i < words)
			check = csum_replace32(check, f[i], t[i]);
	}
	return check;
}

/*
 * RFC 1624 eqn. 3 for many changed words: `d` accumulates ~m + m' over each 16-bit word m changed
 * to m' (start from 0; sums of deltas add), and csum_apply gives HC' = ~(~HC + d). A u32 holds
 * the deltas of thousands of words before it could overflow; the callers change a few dozen.
 */
static __always_inline __u32 csum_delta16(__u32 d, __u16 from, __u16 to)
{
	return d + (__u16)~from + to;
}

static __always_inline __u32 csum_delta32(__u32 d, __u32 from, __u32 to)
{
	d = csum_delta16(d, (__u16)from, (__u16)to);
	return csum_delta16(d, (__u16)(from >> 16), (__u16)(to >> 16));
}

/* A 16-byte address changed; IPv4 addresses (first 4 bytes) pass `words` = 1. */
static __always_inline __u32 csum_delta_addr(__u32 d, const __u8 *from, const __u8 *to, int words)
{
	const __u32 *f = (const __u32 *)from;
	const __u32 *t = (const __u32 *)to;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (i < words)
			d = csum_delta32(d, f[i], t[i]);
	}
	return d;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 d)
{
	return (__u16)~csum_fold((__u16)~check + d);
}

/* The folded one's-complement sum of a 20-byte IPv4 header without options. */
static __always_inline __u16 csum_ipv4_header_sum(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold(sum);
}

/* Checksum of a 20-byte IPv4 header without options whose `check` field is zero. */
static __always_inline __u16 csum_ipv4_header(const void *hdr)
{
	return (__u16)~csum_ipv4_header_sum(hdr);
}

/* Whether a 20-byte IPv4 header (no options) carries a correct checksum: its words sum to 0xffff. */
static __always_inline int csum_ipv4_header_valid(const void *hdr)
{
	return csum_ipv4_header_sum(hdr) == 0xffff;
}

#endif /* FERRULE_LIB_CSUM_H */
