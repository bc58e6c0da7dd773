//! Maglev lookup tables (Eisenbud et al., NSDI 2016): which backend id each of a service's `size`
//! slots points to. Pure and deterministic: the same backend set gives the same table in every
//! process and every release, because a daemon restart must not remap flows. No ids, health or maps.
//!
//! Each backend's permutation comes from two hashes of its stable key (address, port), never from
//! its position in a list, so adding or removing a backend leaves every other backend's preferences
//! unchanged and only about 1/N of the slots move.
//!
//! **Weights.** A backend's number of slots is fixed up front: its weight share of the table,
//! `size * weight / sum(weights)`, rounded down, with the slots left over from rounding given one
//! each to the largest remainders (ties to the lower key). The table is then filled as in the paper:
//! round-robin over the backends in key order, each taking its next preferred free slot, skipping
//! backends that already hold their share. Every backend therefore gets its share to within one
//! slot, whatever the magnitude of the weights. (The "w turns per round" variant is not used: with
//! weights up to 2^32 it lets one heavy backend fill the whole table in its first round.)

use std::net::IpAddr;

use thiserror::Error;

/// One backend entering a table. `id` is what the table stores; `(address, port)` places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    /// Relative share of the table; 0 = no slots.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// A non-prime size lets a permutation cycle through only part of the table, so filling it
    /// could never finish. The config validation only accepts primes; this guards direct callers.
    #[error("Maglev table size {size} is not a prime; use a prime such as 65537 or 655373")]
    SizeNotPrime { size: u32 },
}

/// The default table size of the model, used by the benchmark and tests.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Builds the lookup table: `size` backend ids. No backend (or only weight 0) gives an empty table,
/// which the datapath treats as "service has no usable backend": drop and count.
///
/// The table depends only on the set of `(address, port, weight, id)`, not on the order of
/// `backends`. Two entries with the same address and port are one backend: the first id is kept and
/// the weights add up (the validated model never lists a backend twice).
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    Ok(build_prime(backends, size))
}

/// `build_table` for a size the caller knows is prime (`is_prime`).
pub(crate) fn build_prime(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let entries = merge_by_key(backends);
    let quotas = apportion(&entries, size);
    if quotas.iter().all(|&q| q == 0) {
        return Vec::new();
    }

    let m = u64::from(size);
    // The walk of one backend through its permutation: slot j is (offset + j * skip) mod size.
    struct Walk {
        entry: u32,
        pos: u64,
        skip: u64,
        left: u32,
    }
    let mut walks: Vec<Walk> = entries
        .iter()
        .zip(&quotas)
        .enumerate()
        .filter(|(_, (_, &quota))| quota > 0)
        .map(|(i, (b, &quota))| {
            let key = key_bytes(b.address, b.port);
            let offset = hash(&key, OFFSET_SEED) % m;
            // size is prime, so any skip in 1..size is coprime with it and the walk visits every slot.
            let skip = hash(&key, SKIP_SEED) % (m - 1) + 1;
            Walk { entry: i as u32, pos: offset, skip, left: quota }
        })
        .collect();

    const FREE: u32 = u32::MAX;
    let mut slots = vec![FREE; size as usize];
    // Terminates: the quotas add up to `size`, so while a walk has quota left a free slot exists,
    // and each walk reaches every slot within `size` steps.
    while !walks.is_empty() {
        for w in &mut walks {
            loop {
                let slot = w.pos as usize;
                w.pos += w.skip;
                if w.pos >= m {
                    w.pos -= m;
                }
                if slots[slot] == FREE {
                    slots[slot] = w.entry;
                    break;
                }
            }
            w.left -= 1;
        }
        walks.retain(|w| w.left > 0);
    }
    slots.into_iter().map(|entry| entries[entry as usize].id).collect()
}

/// Sorted by key with duplicate keys merged, so the result is independent of the input order.
fn merge_by_key(backends: &[MaglevBackend]) -> Vec<MaglevBackend> {
    let mut sorted: Vec<MaglevBackend> = backends.to_vec();
    // Stable sort: among duplicates the first listed stays first and keeps its id.
    sorted.sort_by_key(|b| (b.address, b.port));
    let mut merged: Vec<MaglevBackend> = Vec::with_capacity(sorted.len());
    for b in sorted {
        match merged.last_mut() {
            Some(last) if (last.address, last.port) == (b.address, b.port) => {
                last.weight = last.weight.saturating_add(b.weight);
            }
            _ => merged.push(b),
        }
    }
    merged
}

/// Largest-remainder apportionment of `size` slots by weight. Sums to `size` unless every weight
/// is 0 (then all quotas are 0).
fn apportion(entries: &[MaglevBackend], size: u32) -> Vec<u32> {
    let total: u128 = entries.iter().map(|b| u128::from(b.weight)).sum();
    if total == 0 {
        return vec![0; entries.len()];
    }
    let size_wide = u128::from(size);
    let mut quotas = Vec::with_capacity(entries.len());
    let mut remainders = Vec::with_capacity(entries.len());
    for (i, b) in entries.iter().enumerate() {
        let exact = size_wide * u128::from(b.weight);
        quotas.push((exact / total) as u32);
        remainders.push((exact % total, i));
    }
    let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    let left = (u64::from(size) - given) as usize;
    // Largest remainder first; on a tie the lower key (lower index) wins.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(left) {
        quotas[i] += 1;
    }
    quotas
}

pub(crate) fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// Family tag, 16 address bytes (IPv4 zero-padded), port: an IPv4 and an IPv6 backend never share
/// a key, and the bytes do not depend on the platform.
fn key_bytes(address: IpAddr, port: u16) -> [u8; 19] {
    let mut key = [0u8; 19];
    match address {
        IpAddr::V4(a) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key[0] = 6;
            key[1..17].copy_from_slice(&a.octets());
        }
    }
    key[17..19].copy_from_slice(&port.to_be_bytes());
    key
}

/// A fixed 64-bit hash (splitmix64 finalizer over 8-byte words). Not `std`'s hasher: its output may
/// change between Rust releases, and a changed hash remaps every flow when the daemon is upgraded.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = mix(seed ^ (bytes.len() as u64));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ u64::from_le_bytes(word));
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv6Addr;

    use super::*;

    fn backend(i: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            id: i + 1,
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x300, 0, 0, 0, 0, i as u16 + 1)),
            port: 80,
            weight,
        }
    }

    fn equal(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_insert(0) += 1;
        }
        c
    }

    /// Share of slots whose backend differs between two tables of one size.
    fn changed(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn same_backends_give_same_table_in_any_order() {
        let backends = equal(10);
        let mut reversed = backends.clone();
        reversed.reverse();
        let a = build_table(&backends, DEFAULT_TABLE_SIZE).unwrap();
        let b = build_table(&reversed, DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn table_layout_is_pinned_across_releases() {
        // A change here remaps every flow of every service when the daemon is upgraded: only change
        // these values on purpose, and say so in the release notes.
        let table = build_table(&equal(3), DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(&table[..16], &[3, 2, 2, 1, 2, 2, 3, 3, 1, 2, 3, 3, 3, 1, 2, 2]);
        assert_eq!(hash(&key_bytes("192.0.2.1".parse().unwrap(), 80), OFFSET_SEED), 0x11a3_1652_92c2_d0ed);
    }

    #[test]
    fn every_slot_holds_a_given_backend() {
        let backends = equal(7);
        let table = build_table(&backends, 1009).unwrap();
        assert_eq!(table.len(), 1009);
        let ids: Vec<u32> = backends.iter().map(|b| b.id).collect();
        assert!(table.iter().all(|id| ids.contains(id)), "a slot holds an unknown id");
        assert_eq!(counts(&table).len(), 7, "every backend owns slots");
    }

    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        let table = build_table(&equal(10), DEFAULT_TABLE_SIZE).unwrap();
        let c = counts(&table);
        let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
        assert!(max - min <= 1, "shares {min}..{max}");
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        let backends: Vec<MaglevBackend> = (0..10).map(|i| backend(i, i + 1)).collect();
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        let table = build_table(&backends, DEFAULT_TABLE_SIZE).unwrap();
        let c = counts(&table);
        for b in &backends {
            let share = c[&b.id] as f64 / table.len() as f64;
            let want = f64::from(b.weight) / f64::from(total);
            assert!(
                (share - want).abs() < 0.01,
                "backend {} weight {}: share {share:.4}, want {want:.4}",
                b.id,
                b.weight
            );
        }
    }

    #[test]
    fn huge_weights_keep_their_ratio() {
        let backends = vec![backend(0, u32::MAX), backend(1, u32::MAX / 2 + 1), backend(2, u32::MAX / 4 + 1)];
        let table = build_table(&backends, DEFAULT_TABLE_SIZE).unwrap();
        let c = counts(&table);
        let share = |id| c[&id] as f64 / table.len() as f64;
        assert!((share(1) - 4.0 / 7.0).abs() < 0.001, "{}", share(1));
        assert!((share(2) - 2.0 / 7.0).abs() < 0.001, "{}", share(2));
        assert!((share(3) - 1.0 / 7.0).abs() < 0.001, "{}", share(3));
    }

    #[test]
    fn weight_zero_backend_gets_no_slot() {
        let backends = vec![backend(0, 1), backend(1, 0), backend(2, 1)];
        let table = build_table(&backends, 1009).unwrap();
        assert!(!table.contains(&2));
        assert_eq!(table.len(), 1009);
    }

    #[test]
    fn no_backend_gives_empty_table() {
        assert_eq!(build_table(&[], DEFAULT_TABLE_SIZE).unwrap(), Vec::<u32>::new());
        assert_eq!(build_table(&[backend(0, 0)], DEFAULT_TABLE_SIZE).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn rejects_size_that_is_not_prime() {
        assert_eq!(build_table(&equal(2), 65536), Err(MaglevError::SizeNotPrime { size: 65536 }));
        assert_eq!(build_table(&equal(2), 1), Err(MaglevError::SizeNotPrime { size: 1 }));
    }

    #[test]
    fn duplicate_key_counts_once_with_summed_weight() {
        let mut dup = backend(0, 2);
        dup.id = 99;
        let table = build_table(&[backend(0, 1), dup, backend(1, 3)], 1009).unwrap();
        assert!(!table.contains(&99), "the second id of a duplicate key is not used");
        let c = counts(&table);
        assert!(c[&1].abs_diff(c[&2]) <= 1, "{} vs {}", c[&1], c[&2]);
    }

    #[test]
    fn removing_one_of_n_backends_moves_close_to_one_nth() {
        for n in [5u32, 10, 50] {
            let all = equal(n);
            let before = build_table(&all, DEFAULT_TABLE_SIZE).unwrap();
            let removed = all[n as usize / 2].id;
            let rest: Vec<MaglevBackend> = all.iter().copied().filter(|b| b.id != removed).collect();
            let after = build_table(&rest, DEFAULT_TABLE_SIZE).unwrap();

            let ideal = 1.0 / f64::from(n);
            let moved = changed(&before, &after);
            assert!(moved >= ideal - 0.001, "n={n}: moved {moved:.4} < ideal {ideal:.4}");
            assert!(moved <= ideal * 1.35, "n={n}: moved {moved:.4}, ideal {ideal:.4}");
            // Slots that belonged to a backend that is still there mostly stay with it.
            let kept: Vec<(u32, u32)> =
                before.iter().copied().zip(after.iter().copied()).filter(|(b, _)| *b != removed).collect();
            let stolen = kept.iter().filter(|(b, a)| b != a).count() as f64 / kept.len() as f64;
            assert!(stolen < 0.4 * ideal, "n={n}: {stolen:.4} of the surviving backends' slots moved");
        }
    }

    #[test]
    fn adding_a_backend_takes_close_to_its_share() {
        for n in [5u32, 10, 50] {
            let before = build_table(&equal(n), DEFAULT_TABLE_SIZE).unwrap();
            let after = build_table(&equal(n + 1), DEFAULT_TABLE_SIZE).unwrap();
            let ideal = 1.0 / f64::from(n + 1);
            let moved = changed(&before, &after);
            assert!(moved >= ideal - 0.001 && moved <= ideal * 1.35, "n={n}: moved {moved:.4}, ideal {ideal:.4}");
        }
    }
}
