//! The RFC 7606 regression corpus: malformed UPDATEs written byte by byte, each with the
//! outcome the RFC assigns. The tests check our decoder against it; the decode benchmark
//! feeds it to netgauze for comparison.

use crate::wire::{attr_type, DecodeOptions};

/// What a conforming receiver must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Accept,
    /// The attribute with this type code is discarded, the routes kept.
    AttributeDiscard(u8),
    /// Every announced prefix is withdrawn; the fault is on this type code.
    TreatAsWithdraw(u8),
    /// NOTIFICATION code and subcode.
    SessionReset(u8, u8),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    /// The whole message, header included.
    pub bytes: Vec<u8>,
    pub opts: DecodeOptions,
    pub expected: Expected,
}

/// ORIGIN IGP: flags well-known transitive (0x40), type 1, length 1.
pub const ORIGIN: &[u8] = &[0x40, 1, 1, 0];
/// AS_PATH, 4-octet ASNs: one AS_SEQUENCE (2) of one AS, 65000 (0x0000fde8).
pub const AS_PATH4: &[u8] = &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8];
/// NEXT_HOP 192.0.2.1.
pub const NEXT_HOP: &[u8] = &[0x40, 3, 4, 192, 0, 2, 1];
/// NLRI 198.51.100.0/24.
pub const NLRI: &[u8] = &[24, 198, 51, 100];

/// Builds a whole UPDATE message from raw withdrawn, attribute and NLRI fields.
pub fn update_bytes(withdrawn: &[u8], attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
    let attr_len: usize = attrs.iter().map(|a| a.len()).sum();
    let len = 19 + 2 + withdrawn.len() + 2 + attr_len + nlri.len();
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    m.extend_from_slice(withdrawn);
    m.extend_from_slice(&(attr_len as u16).to_be_bytes());
    for a in attrs {
        m.extend_from_slice(a);
    }
    m.extend_from_slice(nlri);
    m
}

/// A well-formed base UPDATE with one extra attribute appended.
fn with(extra: &[u8]) -> Vec<u8> {
    update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, extra], NLRI)
}

/// Options of a 4-octet-AS eBGP session, the common datacenter case.
pub fn ebgp4() -> DecodeOptions {
    DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() }
}

/// MP_REACH_NLRI for IPv6 unicast with next hop 2001:db8::1 and NLRI 2001:db8:1::/48.
fn mp_reach_v6(flags: u8, nh_len: u8, nlri: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 2, 1, nh_len];
    let mut nh = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    nh.resize(usize::from(nh_len), 0);
    v.extend_from_slice(&nh);
    v.push(0);
    v.extend_from_slice(nlri);
    let mut a = vec![flags, 14, v.len() as u8];
    a.extend_from_slice(&v);
    a
}

const V6_NLRI: &[u8] = &[48, 0x20, 0x01, 0x0d, 0xb8, 0, 1];

/// MP_REACH_NLRI for IPv6 unicast with next hop `nh` (16 or 32 bytes) and NLRI 2001:db8:1::/48.
fn mp_reach_v6_via(nh: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 2, 1, nh.len() as u8];
    v.extend_from_slice(nh);
    v.push(0);
    v.extend_from_slice(V6_NLRI);
    let mut a = vec![0x80, 14, v.len() as u8];
    a.extend_from_slice(&v);
    a
}

/// The 16 bytes of an IPv6 address.
fn v6(a: &str) -> [u8; 16] {
    a.parse::<std::net::Ipv6Addr>().expect("an IPv6 address").octets()
}

pub fn cases() -> Vec<Case> {
    use Expected::*;
    let e = ebgp4();
    let ibgp = DecodeOptions { four_octet_asn: true, ..DecodeOptions::default() };
    let old = DecodeOptions { ebgp: true, ..DecodeOptions::default() };
    let as_path2: &[u8] = &[0x40, 2, 4, 2, 1, 0xfd, 0xe8];
    let c = |name, bytes, opts, expected| Case { name, bytes, opts, expected };
    vec![
        c("well-formed update", with(&[]), e, Accept),
        c(
            "origin length 2",
            update_bytes(&[], &[&[0x40, 1, 2, 0, 0], AS_PATH4, NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::ORIGIN),
        ),
        c(
            "origin value 3",
            update_bytes(&[], &[&[0x40, 1, 1, 3], AS_PATH4, NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::ORIGIN),
        ),
        c(
            "origin with optional flag",
            update_bytes(&[], &[&[0xc0, 1, 1, 0], AS_PATH4, NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::ORIGIN),
        ),
        c(
            "as_path segment type 5",
            update_bytes(&[], &[ORIGIN, &[0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe8], NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c(
            "as_path segment overruns attribute",
            update_bytes(&[], &[ORIGIN, &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe8], NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c(
            "as_path zero-length segment",
            update_bytes(&[], &[ORIGIN, &[0x40, 2, 2, 2, 0], NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c(
            "as_path with a confederation segment from ebgp",
            update_bytes(
                &[],
                &[ORIGIN, &[0x40, 2, 12, 3, 1, 0, 0, 0xfd, 0xe9, 2, 1, 0, 0, 0xfd, 0xe8], NEXT_HOP],
                NLRI,
            ),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c(
            "as_path with a confederation segment from ibgp",
            update_bytes(
                &[],
                &[ORIGIN, &[0x40, 2, 12, 3, 1, 0, 0, 0xfd, 0xe9, 2, 1, 0, 0, 0xfd, 0xe8], NEXT_HOP],
                NLRI,
            ),
            ibgp,
            Accept,
        ),
        c(
            "as_path contains AS 0",
            update_bytes(&[], &[ORIGIN, &[0x40, 2, 6, 2, 1, 0, 0, 0, 0], NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c(
            "next_hop length 5",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 5, 192, 0, 2, 1, 0]], NLRI),
            e,
            TreatAsWithdraw(attr_type::NEXT_HOP),
        ),
        // RFC 4271 6.3 / RFC 7606 7.3: a NEXT_HOP that is not a unicast host address.
        c(
            "next_hop 0.0.0.0",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 4, 0, 0, 0, 0]], NLRI),
            e,
            TreatAsWithdraw(attr_type::NEXT_HOP),
        ),
        c(
            "next_hop loopback (speakers on one host)",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 4, 127, 0, 0, 1]], NLRI),
            e,
            Accept,
        ),
        c(
            "next_hop multicast",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 4, 224, 0, 0, 5]], NLRI),
            e,
            TreatAsWithdraw(attr_type::NEXT_HOP),
        ),
        c(
            "next_hop limited broadcast",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x40, 3, 4, 255, 255, 255, 255]], NLRI),
            e,
            TreatAsWithdraw(attr_type::NEXT_HOP),
        ),
        c("med length 3", with(&[0x80, 4, 3, 0, 0, 1]), e, TreatAsWithdraw(attr_type::MULTI_EXIT_DISC)),
        c("med with transitive flag", with(&[0xc0, 4, 4, 0, 0, 0, 1]), e, TreatAsWithdraw(attr_type::MULTI_EXIT_DISC)),
        c(
            "local_pref length 3 from ibgp",
            with(&[0x40, 5, 3, 0, 0, 100]),
            ibgp,
            TreatAsWithdraw(attr_type::LOCAL_PREF),
        ),
        c("local_pref length 3 from ebgp is ignored", with(&[0x40, 5, 3, 0, 0, 100]), e, Accept),
        c("local_pref with optional flag from ebgp is ignored", with(&[0x80, 5, 4, 0, 0, 0, 100]), e, Accept),
        c(
            "local_pref with optional flag from ibgp",
            with(&[0x80, 5, 4, 0, 0, 0, 100]),
            ibgp,
            TreatAsWithdraw(attr_type::LOCAL_PREF),
        ),
        c("atomic_aggregate length 1", with(&[0x40, 6, 1, 0]), e, AttributeDiscard(attr_type::ATOMIC_AGGREGATE)),
        c(
            "aggregator length 6 on a 4-octet session",
            with(&[0xc0, 7, 6, 0xfd, 0xe8, 192, 0, 2, 1]),
            e,
            AttributeDiscard(attr_type::AGGREGATOR),
        ),
        c("aggregator AS 0", with(&[0xc0, 7, 8, 0, 0, 0, 0, 192, 0, 2, 1]), e, AttributeDiscard(attr_type::AGGREGATOR)),
        c("communities length 5", with(&[0xc0, 8, 5, 0xfd, 0xe8, 0, 1, 0]), e, TreatAsWithdraw(attr_type::COMMUNITIES)),
        c("communities length 0", with(&[0xc0, 8, 0]), e, TreatAsWithdraw(attr_type::COMMUNITIES)),
        c(
            "extended communities length 7",
            with(&[0xc0, 16, 7, 0, 2, 0xfd, 0xe8, 0, 0, 1]),
            e,
            TreatAsWithdraw(attr_type::EXTENDED_COMMUNITIES),
        ),
        c(
            "large communities length 11",
            with(&[0xc0, 32, 11, 0, 0, 0xfd, 0xe8, 0, 0, 0, 1, 0, 0, 0]),
            e,
            TreatAsWithdraw(attr_type::LARGE_COMMUNITIES),
        ),
        c(
            "attribute length overruns path attributes",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0xc0, 8, 200, 0, 0, 0, 1]], &[]),
            e,
            TreatAsWithdraw(attr_type::COMMUNITIES),
        ),
        c(
            "two stray octets after the last attribute",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 1]], NLRI),
            e,
            TreatAsWithdraw(attr_type::ORIGIN),
        ),
        c(
            "duplicate origin",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 1, 1, 2]], NLRI),
            e,
            AttributeDiscard(attr_type::ORIGIN),
        ),
        c(
            "missing next_hop with nlri",
            update_bytes(&[], &[ORIGIN, AS_PATH4], NLRI),
            e,
            TreatAsWithdraw(attr_type::NEXT_HOP),
        ),
        c(
            "missing origin with nlri",
            update_bytes(&[], &[AS_PATH4, NEXT_HOP], NLRI),
            e,
            TreatAsWithdraw(attr_type::ORIGIN),
        ),
        c(
            "missing as_path with mp_reach nlri",
            update_bytes(&[], &[ORIGIN, &mp_reach_v6(0x80, 16, V6_NLRI)], &[]),
            e,
            TreatAsWithdraw(attr_type::AS_PATH),
        ),
        c("no nlri, no mandatory attributes", update_bytes(&[], &[&[0xc0, 8, 4, 0xfd, 0xe8, 0, 1]], &[]), e, Accept),
        c("unknown optional transitive kept", with(&[0xc0, 99, 2, 1, 2]), e, Accept),
        c("unknown optional non-transitive dropped", with(&[0x80, 99, 2, 1, 2]), e, Accept),
        c("unknown well-known attribute", with(&[0x40, 99, 2, 1, 2]), e, SessionReset(3, 2)),
        c(
            "nlri prefix length 33",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP], &[33, 198, 51, 100, 0, 0]),
            e,
            SessionReset(3, 10),
        ),
        c(
            "nlri prefix truncated",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP], &[24, 198, 51]),
            e,
            SessionReset(3, 10),
        ),
        c("withdrawn prefix length 40", update_bytes(&[40, 1, 2, 3, 4, 5], &[], &[]), e, SessionReset(3, 10)),
        c(
            "withdrawn length overruns message",
            {
                let mut m = update_bytes(&[24, 198, 51, 100], &[], &[]);
                m[20] = 50;
                m
            },
            e,
            SessionReset(3, 1),
        ),
        c(
            "total attribute length overruns message",
            {
                let mut m = update_bytes(&[], &[ORIGIN], &[]);
                m[22] = 60;
                m
            },
            e,
            SessionReset(3, 1),
        ),
        c(
            "duplicate mp_reach_nlri",
            update_bytes(
                &[],
                &[ORIGIN, AS_PATH4, &mp_reach_v6(0x80, 16, V6_NLRI), &mp_reach_v6(0x80, 16, V6_NLRI)],
                &[],
            ),
            e,
            SessionReset(3, 1),
        ),
        c(
            "mp_reach next hop length 12",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6(0x80, 12, V6_NLRI)], &[]),
            e,
            SessionReset(3, 9),
        ),
        c(
            "mp_reach prefix length 129",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6(0x80, 16, &[129, 0x20, 1, 0xd, 0xb8])], &[]),
            e,
            SessionReset(3, 9),
        ),
        c(
            "mp_unreach length overruns path attributes",
            update_bytes(&[], &[&[0x80, 15, 0x20, 0, 2, 1, 48, 0x20]], &[]),
            e,
            SessionReset(3, 5),
        ),
        c(
            "mp_reach extended length overruns path attributes",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &[0x90, 14, 0x01, 0x00, 0, 2, 1, 16]], &[]),
            e,
            SessionReset(3, 5),
        ),
        c(
            "mp_unreach header truncated",
            update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x90, 15, 0]], NLRI),
            e,
            SessionReset(3, 5),
        ),
        c(
            "mp_unreach prefix truncated",
            update_bytes(&[], &[&[0x80, 15, 5, 0, 2, 1, 48, 0x20]], &[]),
            e,
            SessionReset(3, 9),
        ),
        c(
            "mp_reach with transitive flag",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6(0xc0, 16, V6_NLRI)], &[]),
            e,
            TreatAsWithdraw(attr_type::MP_REACH_NLRI),
        ),
        c(
            "mp_reach ipv6 next hop multicast",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6_via(&v6("ff02::1"))], &[]),
            e,
            TreatAsWithdraw(attr_type::MP_REACH_NLRI),
        ),
        c(
            "mp_reach ipv6 next hop loopback (speakers on one host)",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6_via(&v6("::1"))], &[]),
            e,
            Accept,
        ),
        c(
            "mp_reach ipv6 next hop unspecified",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6_via(&v6("::"))], &[]),
            e,
            TreatAsWithdraw(attr_type::MP_REACH_NLRI),
        ),
        c(
            "mp_reach ipv6 next hop unspecified beside a link-local one (unnumbered)",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6_via(&[v6("::"), v6("fe80::1")].concat())], &[]),
            e,
            Accept,
        ),
        c(
            "well-formed mp_reach ipv6 with link-local",
            update_bytes(&[], &[ORIGIN, AS_PATH4, &mp_reach_v6(0x80, 32, V6_NLRI)], &[]),
            e,
            Accept,
        ),
        c(
            "as4_path between 4-octet speakers",
            with(&[0xc0, 17, 6, 2, 1, 0, 3, 0x0d, 0x40]),
            e,
            AttributeDiscard(attr_type::AS4_PATH),
        ),
        c(
            "malformed as4_path from 2-octet speaker",
            update_bytes(&[], &[ORIGIN, as_path2, NEXT_HOP, &[0xc0, 17, 5, 2, 1, 0, 3, 0x0d]], NLRI),
            old,
            AttributeDiscard(attr_type::AS4_PATH),
        ),
        c(
            "malformed as4_aggregator from 2-octet speaker",
            update_bytes(&[], &[ORIGIN, as_path2, NEXT_HOP, &[0xc0, 18, 6, 0, 3, 192, 0, 2, 1]], NLRI),
            old,
            AttributeDiscard(attr_type::AS4_AGGREGATOR),
        ),
    ]
}
