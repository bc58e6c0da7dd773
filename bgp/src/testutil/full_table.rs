//! Synthetic full table: prefixes with a realistic length spread, grouped under shared
//! attributes the way real peers pack UPDATEs. Used by the decode benchmark and, later, the
//! RIB ingest benchmark.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Rng;
use crate::wire::{
    build_announcements, AsPath, Community, EncodeError, EncodeOptions, Ipv4Prefix, Ipv6Prefix, LargeCommunity,
    NextHop, Origin, PathAttributes, Prefix,
};

/// Prefixes announced together with one attribute set.
#[derive(Debug, Clone)]
pub struct RouteGroup {
    pub attrs: PathAttributes,
    pub next_hop: NextHop,
    pub prefixes: Vec<Prefix>,
}

#[derive(Debug, Clone)]
pub struct FullTable {
    pub groups: Vec<RouteGroup>,
}

impl FullTable {
    pub fn prefix_count(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }

    /// Encodes the table as the byte stream a peer would send (4-octet AS, 4096-octet
    /// messages unless `opts` says otherwise). Returns the stream and the message count.
    pub fn encode(&self, opts: &EncodeOptions) -> Result<(Vec<u8>, usize), EncodeError> {
        let mut out = Vec::with_capacity(self.prefix_count() * 8);
        let mut n = 0;
        for g in &self.groups {
            n += build_announcements(opts, &g.attrs, g.next_hop, &g.prefixes, &mut out)?;
        }
        Ok((out, n))
    }
}

/// The benchmark table: 1,000,000 IPv4 and 200,000 IPv6 prefixes.
pub fn full_table() -> FullTable {
    generate(1_000_000, 200_000, 0x5EED_F00D)
}

/// A table of `v4` IPv4 and `v6` IPv6 unique prefixes, deterministic for a given `seed`.
pub fn generate(v4: usize, v6: usize, seed: u64) -> FullTable {
    let mut rng = Rng::new(seed);
    // AS pool: mostly 2-octet, some 4-octet numbers, as in the real table.
    let pool: Vec<u32> = (0..4000u32).map(|i| if i % 5 == 0 { 200_000 + i * 7 } else { 1000 + i * 13 }).collect();
    let nh4 = NextHop::V4(Ipv4Addr::new(192, 0, 2, 1));
    let nh6 = NextHop::V6 {
        global: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        link_local: Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    };
    let mut counters4 = [0u64; 33];
    let mut counters6 = [0u64; 129];
    let mut groups = Vec::new();
    for (family_total, is_v6) in [(v4, false), (v6, true)] {
        let mut left = family_total;
        while left > 0 {
            // Group sizes: many singletons, a long tail up to 64 (mean about 6).
            let size = match rng.below(10) {
                0..=3 => 1,
                4..=6 => 2 + rng.below(6) as usize,
                7..=8 => 8 + rng.below(16) as usize,
                _ => 24 + rng.below(41) as usize,
            }
            .min(left);
            left -= size;
            let attrs = random_attrs(&mut rng, &pool);
            let prefixes = (0..size)
                .map(|_| if is_v6 { v6_prefix(&mut rng, &mut counters6) } else { v4_prefix(&mut rng, &mut counters4) })
                .collect();
            groups.push(RouteGroup { attrs, next_hop: if is_v6 { nh6 } else { nh4 }, prefixes });
        }
    }
    FullTable { groups }
}

fn random_attrs(rng: &mut Rng, pool: &[u32]) -> PathAttributes {
    let path_len = 2 + rng.below(7) as usize;
    let path: Vec<u32> = (0..path_len).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
    let communities =
        (0..rng.below(5)).map(|_| Community::new(rng.below(65000) as u16 + 1, rng.below(1000) as u16)).collect();
    let large_communities = if rng.below(10) == 0 {
        vec![LargeCommunity { global_admin: path[0], local_data1: 1, local_data2: rng.below(100) as u32 }]
    } else {
        Vec::new()
    };
    PathAttributes {
        origin: Some(if rng.below(8) == 0 { Origin::Incomplete } else { Origin::Igp }),
        as_path: Some(AsPath::sequence(&path)),
        med: (rng.below(3) == 0).then(|| rng.below(1000) as u32),
        communities,
        large_communities,
        ..PathAttributes::default()
    }
}

/// Unique prefix of a length drawn from the IPv4 table's spread (about 60% /24). Each length
/// has its own counter mapped through an odd multiplier, a bijection modulo 2^len, so
/// prefixes never repeat until a length's space is exhausted; then /24 is used.
fn v4_prefix(rng: &mut Rng, counters: &mut [u64; 33]) -> Prefix {
    let mut len = match rng.below(100) {
        0..=59 => 24,
        60..=69 => 23,
        70..=79 => 22,
        80..=87 => 20 + rng.below(2) as u8,
        88..=98 => 16 + rng.below(4) as u8,
        _ => 10 + rng.below(6) as u8,
    };
    // Leave headroom for the addresses skipped below.
    if counters[usize::from(len)] >= (1 << len) / 2 {
        len = 24;
    }
    let c = &mut counters[usize::from(len)];
    // Skip 0/8, 127/8 and 224/3 as real tables do (and as decoders that reject non-unicast
    // NLRI expect); distinct counter values still give distinct prefixes.
    let bits = loop {
        let host = (c.wrapping_mul(0x9E37_79B1) & ((1u64 << len) - 1)) as u32;
        *c += 1;
        let bits = host << (32 - len);
        let first = bits >> 24;
        if first != 0 && first != 127 && first < 224 {
            break bits;
        }
    };
    Prefix::V4(Ipv4Prefix::truncating(bits, len))
}

/// Unique IPv6 prefix inside 2000::/3: about half /48, 40% /32 - /44, the rest /29 - /64.
fn v6_prefix(rng: &mut Rng, counters: &mut [u64; 129]) -> Prefix {
    let len: u8 = match rng.below(100) {
        0..=49 => 48,
        50..=89 => [32, 36, 40, 44, 33, 34, 35, 38, 42][rng.below(9) as usize],
        _ => [29, 30, 31, 56, 64][rng.below(5) as usize],
    };
    let c = &mut counters[usize::from(len)];
    let span = u32::from(len) - 3;
    let host = u128::from(c.wrapping_mul(0x9E37_79B9_7F4A_7C15)) & ((1u128 << span) - 1);
    *c += 1;
    let bits = (0x2u128 << 125) | (host << (128 - u32::from(len)));
    Prefix::V6(Ipv6Prefix::truncating(bits, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_requested_counts_of_unique_prefixes() {
        let t = generate(20_000, 5_000, 7);
        let all: Vec<Prefix> = t.groups.iter().flat_map(|g| g.prefixes.iter().copied()).collect();
        assert_eq!(all.iter().filter(|p| matches!(p, Prefix::V4(_))).count(), 20_000);
        assert_eq!(all.iter().filter(|p| matches!(p, Prefix::V6(_))).count(), 5_000);
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn most_ipv4_prefixes_are_slash_24() {
        let t = generate(10_000, 0, 3);
        let n24 = t.groups.iter().flat_map(|g| &g.prefixes).filter(|p| p.len() == 24).count();
        assert!((5_500..7_000).contains(&n24), "{n24} /24s out of 10000");
    }
}
