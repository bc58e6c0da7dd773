//! Path attributes of a route (RFC 4271 5, 1997, 4360, 6793, 8092): their types, the syntax of
//! each value and their encoding. Owns "is this value well formed"; what to do about a value that
//! is not (RFC 7606) is decided in `update.rs`, which knows the whole message.

use std::fmt;
use std::net::Ipv4Addr;

use super::open::AS_TRANS;

/// Attribute type codes (IANA "BGP Path Attributes").
pub mod type_code {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// Attribute flag bits (RFC 4271 4.3).
pub mod flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// The Optional and Transitive bits a known attribute must carry, `None` for unknown types.
pub(crate) fn expected_flags(code: u8) -> Option<u8> {
    use type_code::*;
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    const OPT_NON_TRANS: u8 = flags::OPTIONAL;
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => WELL_KNOWN,
        MULTI_EXIT_DISC | MP_REACH_NLRI | MP_UNREACH_NLRI => OPT_NON_TRANS,
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR | LARGE_COMMUNITIES => OPT_TRANS,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentType {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

impl SegmentType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        })
    }

    pub(crate) fn is_confed(self) -> bool {
        matches!(self, SegmentType::ConfedSequence | SegmentType::ConfedSet)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: SegmentType,
    pub asns: Vec<u32>,
}

/// AS_PATH with 4-octet AS numbers: after decoding, a 2-octet AS_PATH has been merged with
/// AS4_PATH (RFC 6793 4.2.3), so consumers never see AS_TRANS where the real AS is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE (empty slice: the empty path of iBGP-originated routes).
    pub fn sequence(asns: &[u32]) -> Self {
        if asns.is_empty() {
            return Self::default();
        }
        Self { segments: vec![AsSegment { kind: SegmentType::Sequence, asns: asns.to_vec() }] }
    }

    /// Path length as the decision process counts it (RFC 4271 9.1.2.2: an AS_SET counts as
    /// one, confederation segments do not count; RFC 5065).
    pub fn route_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// The leftmost AS of the first AS_SEQUENCE, i.e. the neighbour AS for eBGP routes.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment { kind: SegmentType::Sequence, asns }) => asns.first().copied(),
            _ => None,
        }
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    fn needs_as4(&self) -> bool {
        self.segments.iter().any(|s| s.asns.iter().any(|&a| a > u32::from(u16::MAX)))
    }
}

impl fmt::Display for AsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let (open, close) = match s.kind {
                SegmentType::Sequence => ("", ""),
                SegmentType::Set => ("{", "}"),
                SegmentType::ConfedSequence => ("(", ")"),
                SegmentType::ConfedSet => ("[", "]"),
            };
            f.write_str(open)?;
            for (j, a) in s.asns.iter().enumerate() {
                if j > 0 {
                    f.write_str(if matches!(s.kind, SegmentType::Set | SegmentType::ConfedSet) { "," } else { " " })?;
                }
                write!(f, "{a}")?;
            }
            f.write_str(close)?;
        }
        Ok(())
    }
}

/// AGGREGATOR (with a 4-octet AS after AS4_AGGREGATOR has been applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub addr: Ipv4Addr,
}

/// A standard community (RFC 1997).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
    pub const NO_EXPORT_SUBCONFED: Community = Community(0xFFFF_FF03);
    /// RFC 3765.
    pub const NO_PEER: Community = Community(0xFFFF_FF04);
    /// RFC 8326.
    pub const GRACEFUL_SHUTDOWN: Community = Community(0xFFFF_0000);
    /// RFC 7611.
    pub const ACCEPT_OWN: Community = Community(0xFFFF_0001);
    /// RFC 9494.
    pub const LLGR_STALE: Community = Community(0xFFFF_0006);
    pub const NO_LLGR: Community = Community(0xFFFF_0007);
    /// RFC 7999.
    pub const BLACKHOLE: Community = Community(0xFFFF_029A);

    pub fn new(asn: u16, value: u16) -> Self {
        Community((u32::from(asn) << 16) | u32::from(value))
    }

    fn well_known_name(self) -> Option<&'static str> {
        Some(match self {
            Community::NO_EXPORT => "no-export",
            Community::NO_ADVERTISE => "no-advertise",
            Community::NO_EXPORT_SUBCONFED => "no-export-subconfed",
            Community::NO_PEER => "no-peer",
            Community::GRACEFUL_SHUTDOWN => "graceful-shutdown",
            Community::ACCEPT_OWN => "accept-own",
            Community::LLGR_STALE => "llgr-stale",
            Community::NO_LLGR => "no-llgr",
            Community::BLACKHOLE => "blackhole",
            _ => return None,
        })
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.well_known_name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff),
        }
    }
}

/// An extended community (RFC 4360), kept as its 8 octets: type, sub-type, value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtCommunity(pub [u8; 8]);

impl ExtCommunity {
    pub fn type_high(&self) -> u8 {
        self.0[0]
    }

    pub fn subtype(&self) -> u8 {
        self.0[1]
    }

    /// Transitive across ASes (RFC 4360: bit 0x40 of the type is "non-transitive").
    pub fn is_transitive(&self) -> bool {
        self.0[0] & 0x40 == 0
    }

    /// Route target with a 2-octet AS (type 0x00, sub-type 0x02).
    pub fn route_target_as2(asn: u16, value: u32) -> Self {
        let mut b = [0x00, 0x02, 0, 0, 0, 0, 0, 0];
        b[2..4].copy_from_slice(&asn.to_be_bytes());
        b[4..8].copy_from_slice(&value.to_be_bytes());
        ExtCommunity(b)
    }
}

/// A large community (RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    pub global_admin: u32,
    pub local_data1: u32,
    pub local_data2: u32,
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.global_admin, self.local_data1, self.local_data2)
    }
}

/// An attribute this speaker does not interpret, kept to be passed on (optional transitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// Flags as they will be sent: the decoder sets Partial (RFC 4271 9) and clears
    /// Extended Length (the encoder chooses it from the length).
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// The attributes of a route, independent of the message that carried them. MP_REACH_NLRI and
/// MP_UNREACH_NLRI are not here: they are NLRI framing and live on [`super::Update`].
/// An empty community list means the attribute is absent (an empty one is malformed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    /// NEXT_HOP attribute, used by IPv4 NLRI sent outside MP_REACH_NLRI.
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<Community>,
    pub ext_communities: Vec<ExtCommunity>,
    pub large_communities: Vec<LargeCommunity>,
    /// Unrecognised optional transitive attributes, in the order received.
    pub unknown: Vec<RawAttribute>,
}

// ----- value decoding: `Err` carries what was wrong, for logs and notifications -----

pub(crate) type ValueResult<T> = Result<T, &'static str>;

pub(crate) fn decode_origin(v: &[u8]) -> ValueResult<Origin> {
    match v {
        [0] => Ok(Origin::Igp),
        [1] => Ok(Origin::Egp),
        [2] => Ok(Origin::Incomplete),
        [_] => Err("ORIGIN value is not IGP, EGP or INCOMPLETE"),
        _ => Err("ORIGIN length is not 1"),
    }
}

/// Parses AS_PATH / AS4_PATH segments with 2- or 4-octet AS numbers (RFC 4271 4.3, RFC 6793).
pub(crate) fn decode_as_path(mut v: &[u8], four_octet: bool) -> ValueResult<AsPath> {
    let width = if four_octet { 4 } else { 2 };
    let mut segments = Vec::with_capacity(1);
    while !v.is_empty() {
        let [t, n, rest @ ..] = v else {
            return Err("AS_PATH segment header is truncated");
        };
        let kind = SegmentType::from_u8(*t).ok_or("AS_PATH segment type is not 1 to 4")?;
        if *n == 0 {
            return Err("AS_PATH segment has zero length");
        }
        let Some((body, rest)) = rest.split_at_checked(usize::from(*n) * width) else {
            return Err("AS_PATH segment overruns the attribute");
        };
        let asns: Vec<u32> = if four_octet {
            body.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
        } else {
            body.chunks_exact(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).collect()
        };
        if asns.contains(&0) {
            // RFC 7607: AS 0 must not appear in a path.
            return Err("AS_PATH contains AS 0");
        }
        segments.push(AsSegment { kind, asns });
        v = rest;
    }
    Ok(AsPath { segments })
}

pub(crate) fn decode_u32(v: &[u8], what: &'static str) -> ValueResult<u32> {
    let b: [u8; 4] = v.try_into().map_err(|_| what)?;
    Ok(u32::from_be_bytes(b))
}

/// Whether `a` can be a next hop: a unicast host address. RFC 4271 6.3 calls a NEXT_HOP that is
/// not a valid IP host address syntactically incorrect (RFC 7606 7.3: treat-as-withdraw): 0/8
/// ("this network"), 224/4 (multicast) and 240/4 (reserved, the limited broadcast among them)
/// are not; installed, 0.0.0.0 would even make the route on-link. Loopback addresses are left
/// to the peer: a session between speakers on one host runs over them and names them.
pub(crate) fn is_host_v4(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    first != 0 && first < 224
}

pub(crate) fn decode_next_hop(v: &[u8]) -> ValueResult<Ipv4Addr> {
    let b: [u8; 4] = v.try_into().map_err(|_| "NEXT_HOP length is not 4")?;
    let a = Ipv4Addr::from(b);
    if !is_host_v4(a) {
        return Err("NEXT_HOP is not a unicast host address");
    }
    Ok(a)
}

pub(crate) fn decode_aggregator(v: &[u8], four_octet: bool) -> ValueResult<Aggregator> {
    let (asn, addr) = match (v.len(), four_octet) {
        (6, false) => (u32::from(u16::from_be_bytes([v[0], v[1]])), &v[2..6]),
        (8, true) => (u32::from_be_bytes([v[0], v[1], v[2], v[3]]), &v[4..8]),
        _ => return Err("AGGREGATOR length does not match the AS number size"),
    };
    if asn == 0 {
        return Err("AGGREGATOR AS is 0");
    }
    Ok(Aggregator { asn, addr: Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]) })
}

pub(crate) fn decode_communities(v: &[u8]) -> ValueResult<Vec<Community>> {
    if v.is_empty() || v.len() % 4 != 0 {
        return Err("COMMUNITIES length is zero or not a multiple of 4");
    }
    Ok(v.chunks_exact(4).map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect())
}

pub(crate) fn decode_ext_communities(v: &[u8]) -> ValueResult<Vec<ExtCommunity>> {
    if v.is_empty() || v.len() % 8 != 0 {
        return Err("EXTENDED COMMUNITIES length is zero or not a multiple of 8");
    }
    Ok(v.chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            ExtCommunity(b)
        })
        .collect())
}

pub(crate) fn decode_large_communities(v: &[u8]) -> ValueResult<Vec<LargeCommunity>> {
    if v.is_empty() || v.len() % 12 != 0 {
        return Err("LARGE_COMMUNITY length is zero or not a multiple of 12");
    }
    Ok(v.chunks_exact(12)
        .map(|c| LargeCommunity {
            global_admin: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            local_data1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            local_data2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
        })
        .collect())
}

/// RFC 6793 4.2.3: rebuilds the real path from a 2-octet AS_PATH and the AS4_PATH an old
/// speaker passed on. AS4_PATH confederation segments must already have been removed.
pub(crate) fn merge_as4_path(as_path: &AsPath, as4_path: AsPath) -> AsPath {
    let old_len = as_path.route_len();
    let new_len = as4_path.route_len();
    if old_len < new_len {
        // AS4_PATH is longer than AS_PATH: it cannot be trusted, keep AS_PATH.
        return as_path.clone();
    }
    // Keep the leading (old_len - new_len) ASes of AS_PATH (with any confed segments among
    // them), then append AS4_PATH.
    let mut keep = old_len - new_len;
    let mut segments = Vec::with_capacity(as_path.segments.len() + as4_path.segments.len());
    for s in &as_path.segments {
        if keep == 0 {
            break;
        }
        match s.kind {
            SegmentType::ConfedSequence | SegmentType::ConfedSet => segments.push(s.clone()),
            SegmentType::Set => {
                segments.push(s.clone());
                keep -= 1;
            }
            SegmentType::Sequence => {
                let n = keep.min(s.asns.len());
                segments.push(AsSegment { kind: s.kind, asns: s.asns[..n].to_vec() });
                keep -= n;
            }
        }
    }
    segments.extend(as4_path.segments);
    AsPath { segments }
}

/// RFC 6793: AS4_PATH must not carry confederation segments; they are dropped.
pub(crate) fn strip_confed(mut p: AsPath) -> AsPath {
    p.segments.retain(|s| !s.kind.is_confed());
    p
}

// ----- encoding -----

fn put_attr(out: &mut Vec<u8>, base_flags: u8, code: u8, value: &[u8]) {
    put_attr_header(out, base_flags, code, value.len());
    out.extend_from_slice(value);
}

/// Writes flags, type and length, choosing the Extended Length form only when needed.
pub(crate) fn put_attr_header(out: &mut Vec<u8>, base_flags: u8, code: u8, len: usize) {
    let base = base_flags & !flags::EXTENDED_LENGTH;
    if len > 255 {
        out.extend_from_slice(&[base | flags::EXTENDED_LENGTH, code]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[base, code, len as u8]);
    }
}

/// Writes segments, splitting any longer than 255 ASes (the count is one octet).
fn put_as_path(out: &mut Vec<u8>, code: u8, path: &AsPath, four_octet: bool, skip_confed: bool) {
    let mut v = Vec::with_capacity(2 + path.route_len() * 4);
    for s in &path.segments {
        if skip_confed && s.kind.is_confed() {
            continue;
        }
        for chunk in s.asns.chunks(255) {
            v.push(s.kind as u8);
            v.push(chunk.len() as u8);
            for &a in chunk {
                if four_octet {
                    v.extend_from_slice(&a.to_be_bytes());
                } else {
                    let a2 = u16::try_from(a).unwrap_or(AS_TRANS);
                    v.extend_from_slice(&a2.to_be_bytes());
                }
            }
        }
    }
    put_attr(out, flags::TRANSITIVE | if code == type_code::AS4_PATH { flags::OPTIONAL } else { 0 }, code, &v);
}

/// Encodes `attrs` in type-code order. `mp` is an already encoded MP_REACH/MP_UNREACH
/// attribute, placed at its type-code position. With `four_octet == false`, AS numbers that
/// need 4 octets become AS_TRANS and AS4_PATH / AS4_AGGREGATOR carry the real values.
pub(crate) fn encode_attributes(attrs: &PathAttributes, four_octet: bool, mp: &[u8], out: &mut Vec<u8>) {
    encode_attributes_head(attrs, four_octet, out);
    out.extend_from_slice(mp);
    encode_attributes_tail(attrs, four_octet, out);
}

/// Encodes the attributes whose type code sorts before MP_REACH_NLRI into `head` and the
/// rest into `tail`.
pub(crate) fn encode_attributes_split(
    attrs: &PathAttributes,
    four_octet: bool,
    head: &mut Vec<u8>,
    tail: &mut Vec<u8>,
) {
    encode_attributes_head(attrs, four_octet, head);
    encode_attributes_tail(attrs, four_octet, tail);
}

const WK: u8 = flags::TRANSITIVE;
const OT: u8 = flags::OPTIONAL | flags::TRANSITIVE;
const ON: u8 = flags::OPTIONAL;

fn encode_attributes_head(attrs: &PathAttributes, four_octet: bool, out: &mut Vec<u8>) {
    use type_code::*;
    if let Some(o) = attrs.origin {
        put_attr(out, WK, ORIGIN, &[o as u8]);
    }
    if let Some(p) = &attrs.as_path {
        put_as_path(out, AS_PATH, p, four_octet, false);
    }
    if let Some(nh) = attrs.next_hop {
        put_attr(out, WK, NEXT_HOP, &nh.octets());
    }
    if let Some(m) = attrs.med {
        put_attr(out, ON, MULTI_EXIT_DISC, &m.to_be_bytes());
    }
    if let Some(lp) = attrs.local_pref {
        put_attr(out, WK, LOCAL_PREF, &lp.to_be_bytes());
    }
    if attrs.atomic_aggregate {
        put_attr(out, WK, ATOMIC_AGGREGATE, &[]);
    }
    if let Some(ag) = attrs.aggregator {
        let mut v = Vec::with_capacity(8);
        if four_octet {
            v.extend_from_slice(&ag.asn.to_be_bytes());
        } else {
            v.extend_from_slice(&u16::try_from(ag.asn).unwrap_or(AS_TRANS).to_be_bytes());
        }
        v.extend_from_slice(&ag.addr.octets());
        put_attr(out, OT, AGGREGATOR, &v);
    }
    if !attrs.communities.is_empty() {
        put_attr_header(out, OT, COMMUNITIES, attrs.communities.len() * 4);
        for c in &attrs.communities {
            out.extend_from_slice(&c.0.to_be_bytes());
        }
    }
}

fn encode_attributes_tail(attrs: &PathAttributes, four_octet: bool, out: &mut Vec<u8>) {
    use type_code::*;
    if !attrs.ext_communities.is_empty() {
        put_attr_header(out, OT, EXTENDED_COMMUNITIES, attrs.ext_communities.len() * 8);
        for c in &attrs.ext_communities {
            out.extend_from_slice(&c.0);
        }
    }
    if !four_octet {
        if let Some(p) = attrs.as_path.as_ref().filter(|p| p.needs_as4()) {
            put_as_path(out, AS4_PATH, p, true, true);
        }
        if let Some(ag) = attrs.aggregator.filter(|a| a.asn > u32::from(u16::MAX)) {
            let mut v = Vec::with_capacity(8);
            v.extend_from_slice(&ag.asn.to_be_bytes());
            v.extend_from_slice(&ag.addr.octets());
            put_attr(out, OT, AS4_AGGREGATOR, &v);
        }
    }
    if !attrs.large_communities.is_empty() {
        put_attr_header(out, OT, LARGE_COMMUNITIES, attrs.large_communities.len() * 12);
        for c in &attrs.large_communities {
            out.extend_from_slice(&c.global_admin.to_be_bytes());
            out.extend_from_slice(&c.local_data1.to_be_bytes());
            out.extend_from_slice(&c.local_data2.to_be_bytes());
        }
    }
    for raw in &attrs.unknown {
        put_attr(out, raw.flags, raw.type_code, &raw.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(a: &[u32]) -> AsSegment {
        AsSegment { kind: SegmentType::Sequence, asns: a.to_vec() }
    }

    #[test]
    fn as4_path_replaces_trailing_as_trans_entries() {
        // Old speaker path: 65001 AS_TRANS AS_TRANS; AS4_PATH: 4200000001 4200000002.
        let old = AsPath { segments: vec![seq(&[65001, 23456, 23456])] };
        let as4 = AsPath { segments: vec![seq(&[4_200_000_001, 4_200_000_002])] };
        let merged = merge_as4_path(&old, as4);
        assert_eq!(merged, AsPath { segments: vec![seq(&[65001]), seq(&[4_200_000_001, 4_200_000_002])] });
        assert_eq!(merged.route_len(), 3);
    }

    #[test]
    fn longer_as4_path_than_as_path_is_ignored() {
        let old = AsPath { segments: vec![seq(&[23456])] };
        let as4 = AsPath { segments: vec![seq(&[4_200_000_001, 4_200_000_002])] };
        assert_eq!(merge_as4_path(&old, as4), old);
    }

    #[test]
    fn as_path_with_as_zero_is_malformed() {
        assert!(decode_as_path(&[2, 1, 0, 0], false).is_err());
    }

    #[test]
    fn community_display_uses_well_known_names() {
        assert_eq!(Community::NO_EXPORT.to_string(), "no-export");
        assert_eq!(Community::new(65000, 100).to_string(), "65000:100");
    }

    #[test]
    fn as_path_display_marks_sets_and_confed_segments() {
        let p = AsPath {
            segments: vec![
                AsSegment { kind: SegmentType::ConfedSequence, asns: vec![64512] },
                seq(&[65001, 65002]),
                AsSegment { kind: SegmentType::Set, asns: vec![1, 2] },
            ],
        };
        assert_eq!(p.to_string(), "(64512) 65001 65002 {1,2}");
    }
}
