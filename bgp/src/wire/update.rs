//! UPDATE messages: decoding with RFC 7606 error handling, encoding, and packing many prefixes
//! into as few messages as fit. NLRI stay in the received buffer and are decoded lazily by
//! iterators; attributes are decoded once per message. No I/O, no RIB logic.

use super::attrs::{self, flags, type_code, PathAttributes, RawAttribute};
use super::notification::{Notification, NotificationError};
use super::open::AS_TRANS;
use super::types::{validate_nlri, Family, NextHop, NlriError, Prefix, PrefixIter};
use super::{DecodeError, DecodeOptions, EncodeError, EncodeOptions, HEADER_LEN};

/// A list of prefixes of one family: either still in the wire encoding (decoded messages) or
/// a caller's slice (messages being built). Both iterate as [`Prefix`] values.
#[derive(Debug, Clone, Copy)]
pub enum Prefixes<'a> {
    /// Validated NLRI octets borrowed from the message buffer.
    Wire {
        family: Family,
        bytes: &'a [u8],
    },
    List(&'a [Prefix]),
}

impl<'a> Prefixes<'a> {
    pub const EMPTY: Prefixes<'static> = Prefixes::List(&[]);

    pub fn iter(&self) -> PrefixesIter<'a> {
        match *self {
            Prefixes::Wire { family, bytes } => PrefixesIter::Wire(PrefixIter::new(family, bytes)),
            Prefixes::List(l) => PrefixesIter::List(l.iter()),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Prefixes::Wire { bytes, .. } => bytes.is_empty(),
            Prefixes::List(l) => l.is_empty(),
        }
    }

    /// Number of prefixes (walks wire-encoded lists).
    pub fn count(&self) -> usize {
        self.iter().count()
    }

    fn encode(&self, family: Family, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Prefixes::Wire { family: f, bytes } if *f == family => out.extend_from_slice(bytes),
            _ => {
                for p in self.iter() {
                    if p.family() != family {
                        return Err(EncodeError::WrongFamily { prefix: p, expected: family });
                    }
                    p.encode(out);
                }
            }
        }
        Ok(())
    }
}

impl PartialEq for Prefixes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Prefixes<'_> {}

impl<'a> IntoIterator for Prefixes<'a> {
    type Item = Prefix;
    type IntoIter = PrefixesIter<'a>;
    fn into_iter(self) -> PrefixesIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Prefixes`].
#[derive(Debug, Clone)]
pub enum PrefixesIter<'a> {
    Wire(PrefixIter<'a>),
    List(std::slice::Iter<'a, Prefix>),
}

impl Iterator for PrefixesIter<'_> {
    type Item = Prefix;
    #[inline]
    fn next(&mut self) -> Option<Prefix> {
        match self {
            PrefixesIter::Wire(i) => i.next(),
            PrefixesIter::List(i) => i.next().copied(),
        }
    }
}

/// MP_REACH_NLRI (RFC 4760) for a family this codec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpReach<'a> {
    pub family: Family,
    pub next_hop: NextHop,
    pub nlri: Prefixes<'a>,
}

/// MP_UNREACH_NLRI (RFC 4760) for a family this codec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpUnreach<'a> {
    pub family: Family,
    pub withdrawn: Prefixes<'a>,
}

/// What RFC 7606 asks the receiver to do about an UPDATE that was not rejected outright
/// (a session reset is [`DecodeError`] instead). Ordered from mildest to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Nothing was wrong.
    Accept,
    /// Some attributes were dropped (see [`Update::faults`]); the routes are used without them.
    AttributeDiscard,
    /// Every prefix the message announces must be handled as withdrawn (RFC 7606 2).
    TreatAsWithdraw,
}

/// The action taken for one faulty attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultAction {
    AttributeDiscard,
    TreatAsWithdraw,
}

/// One problem found in an UPDATE's attributes and what was done about it; the FSM logs these
/// with the peer address (RFC 7606 says such errors SHOULD be logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttributeFault {
    /// Type code of the attribute at fault (for a missing attribute, the one missing).
    pub type_code: u8,
    pub action: FaultAction,
    pub reason: &'static str,
}

/// A decoded (or to-be-encoded) UPDATE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    /// Withdrawn Routes field (IPv4 unicast).
    pub withdrawn: Prefixes<'a>,
    pub attributes: PathAttributes,
    pub mp_reach: Option<MpReach<'a>>,
    pub mp_unreach: Option<MpUnreach<'a>>,
    /// NLRI field (IPv4 unicast, next hop in `attributes.next_hop`).
    pub nlri: Prefixes<'a>,
    /// Problems handled by attribute-discard or treat-as-withdraw; empty for a clean message.
    pub faults: Vec<AttributeFault>,
    /// Whether the message carried path attributes other than MP_UNREACH_NLRI, also ones
    /// disregarded without a fault (LOCAL_PREF from an external peer, unknown optional
    /// non-transitive ones), which leave no trace in `attributes`: such a message is no
    /// End-of-RIB marker.
    pub carried_attributes: bool,
}

impl Default for Update<'_> {
    fn default() -> Self {
        Update {
            withdrawn: Prefixes::EMPTY,
            attributes: PathAttributes::default(),
            mp_reach: None,
            mp_unreach: None,
            nlri: Prefixes::EMPTY,
            faults: Vec::new(),
            carried_attributes: false,
        }
    }
}

impl<'a> Update<'a> {
    /// The RFC 7606 outcome: the most severe action among the faults.
    pub fn decision(&self) -> Decision {
        self.faults.iter().fold(Decision::Accept, |d, f| {
            d.max(match f.action {
                FaultAction::AttributeDiscard => Decision::AttributeDiscard,
                FaultAction::TreatAsWithdraw => Decision::TreatAsWithdraw,
            })
        })
    }

    pub fn is_treat_as_withdraw(&self) -> bool {
        self.faults.iter().any(|f| f.action == FaultAction::TreatAsWithdraw)
    }

    /// Prefixes announced with `attributes` (none when the message is treat-as-withdraw).
    /// IPv4 NLRI field first, then MP_REACH_NLRI.
    pub fn announced(&self) -> impl Iterator<Item = Prefix> + 'a {
        let on = !self.is_treat_as_withdraw();
        let mp = self.mp_reach.map(|m| m.nlri).unwrap_or(Prefixes::EMPTY);
        self.nlri.iter().chain(mp.iter()).filter(move |_| on)
    }

    /// Prefixes to remove from the Adj-RIB-In: the withdrawn fields, plus every announced
    /// prefix when the message is treat-as-withdraw.
    pub fn withdrawals(&self) -> impl Iterator<Item = Prefix> + 'a {
        let taw = self.is_treat_as_withdraw();
        let unreach = self.mp_unreach.map(|m| m.withdrawn).unwrap_or(Prefixes::EMPTY);
        let mp = self.mp_reach.map(|m| m.nlri).unwrap_or(Prefixes::EMPTY);
        let (nlri, mp) = if taw { (self.nlri, mp) } else { (Prefixes::EMPTY, Prefixes::EMPTY) };
        self.withdrawn.iter().chain(unreach.iter()).chain(nlri.iter()).chain(mp.iter())
    }

    /// Next hop for announced prefixes of `family`.
    pub fn next_hop(&self, family: Family) -> Option<NextHop> {
        match (family, self.mp_reach) {
            (_, Some(m)) if m.family == family => Some(m.next_hop),
            (Family::Ipv4Unicast, _) => self.attributes.next_hop.map(NextHop::V4),
            _ => None,
        }
    }

    /// The family this message marks End-of-RIB for (RFC 4724 2): an empty UPDATE for IPv4,
    /// an UPDATE with only an empty MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        if self.attributes != PathAttributes::default() || !self.faults.is_empty() || self.carried_attributes {
            return None;
        }
        match self.mp_unreach {
            None => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// The End-of-RIB marker for `family`.
    pub fn end_of_rib_marker(family: Family) -> Update<'static> {
        match family {
            Family::Ipv4Unicast => Update::default(),
            _ => Update { mp_unreach: Some(MpUnreach { family, withdrawn: Prefixes::EMPTY }), ..Update::default() },
        }
    }
}

// ----------------------------------------------------------------------------------------
// Decoding
// ----------------------------------------------------------------------------------------

fn reset(error: NotificationError, data: &[u8], reason: &'static str) -> DecodeError {
    DecodeError { notification: Notification::new(error, data.to_vec()), reason }
}

/// Set of attribute type codes seen so far in one message.
struct Seen([u64; 4]);

impl Seen {
    /// Marks `code`; returns true if it was already marked.
    fn insert(&mut self, code: u8) -> bool {
        let (w, b) = (usize::from(code >> 6), code & 63);
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }
}

/// Decodes an UPDATE body (after the header). `Err` means the session must be reset with the
/// returned NOTIFICATION; every other problem is reported through [`Update::faults`].
pub(crate) fn decode_update<'a>(body: &'a [u8], opts: &DecodeOptions) -> Result<Update<'a>, DecodeError> {
    use NotificationError as N;
    // RFC 4271 6.3 / RFC 7606 5.3: if the field lengths do not add up, the NLRI cannot be
    // located and the session is reset.
    let Some((wlen, rest)) = body.split_first_chunk::<2>() else {
        return Err(reset(N::MalformedAttributeList, &[], "UPDATE is shorter than its fixed fields"));
    };
    let Some((withdrawn, rest)) = rest.split_at_checked(usize::from(u16::from_be_bytes(*wlen))) else {
        return Err(reset(N::MalformedAttributeList, &[], "Withdrawn Routes Length overruns the message"));
    };
    let Some((alen, rest)) = rest.split_first_chunk::<2>() else {
        return Err(reset(
            N::MalformedAttributeList,
            &[],
            "Withdrawn Routes Length leaves no room for Total Path Attribute Length",
        ));
    };
    let Some((attr_bytes, nlri)) = rest.split_at_checked(usize::from(u16::from_be_bytes(*alen))) else {
        return Err(reset(N::MalformedAttributeList, &[], "Total Path Attribute Length overruns the message"));
    };
    validate_nlri(Family::Ipv4Unicast, withdrawn)
        .map_err(|_| reset(N::InvalidNetworkField, &[], "Withdrawn Routes field has a malformed prefix"))?;
    validate_nlri(Family::Ipv4Unicast, nlri)
        .map_err(|_| reset(N::InvalidNetworkField, &[], "NLRI field has a malformed prefix"))?;

    let mut u = Update {
        withdrawn: Prefixes::Wire { family: Family::Ipv4Unicast, bytes: withdrawn },
        nlri: Prefixes::Wire { family: Family::Ipv4Unicast, bytes: nlri },
        ..Update::default()
    };
    let mut seen = Seen([0; 4]);
    let mut as4_path: Option<attrs::AsPath> = None;
    let mut as4_aggregator: Option<attrs::Aggregator> = None;
    let fault = |u: &mut Update<'a>, type_code, action, reason| {
        u.faults.push(AttributeFault { type_code, action, reason });
    };
    use FaultAction::{AttributeDiscard as Discard, TreatAsWithdraw as Taw};

    let mut rest = attr_bytes;
    while !rest.is_empty() {
        // RFC 7606 4: an attribute header or value running past the Total Path Attribute
        // Length is treat-as-withdraw; that length still locates the NLRI. Not for MP_REACH_NLRI
        // or MP_UNREACH_NLRI: treat-as-withdraw needs their prefixes parsed (RFC 7606 3, 5.3),
        // and a withdrawal lost with them would leave routes the peer took back, so the session
        // is reset.
        let mp = |code: Option<u8>| matches!(code, Some(type_code::MP_REACH_NLRI | type_code::MP_UNREACH_NLRI));
        let (fl, code) = match rest {
            [fl, code, ..] if rest.len() >= if fl & flags::EXTENDED_LENGTH != 0 { 4 } else { 3 } => (*fl, *code),
            _ if mp(rest.get(1).copied()) => {
                return Err(reset(
                    N::AttributeLengthError,
                    &[],
                    "MP_REACH_NLRI or MP_UNREACH_NLRI header is truncated",
                ));
            }
            _ => {
                fault(&mut u, rest.get(1).copied().unwrap_or(0), Taw, "attribute header is truncated");
                break;
            }
        };
        let (len, hdr) = if fl & flags::EXTENDED_LENGTH != 0 {
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        let Some(whole) = rest.get(..hdr + len) else {
            if mp(Some(code)) {
                return Err(reset(
                    N::AttributeLengthError,
                    rest,
                    "MP_REACH_NLRI or MP_UNREACH_NLRI length overruns the path attributes",
                ));
            }
            fault(&mut u, code, Taw, "attribute length overruns the path attributes");
            break;
        };
        let v = &whole[hdr..];
        rest = &rest[hdr + len..];
        if code != type_code::MP_UNREACH_NLRI {
            u.carried_attributes = true;
        }

        // RFC 7606 3(g): a repeated MP_* attribute resets the session; other repeats are
        // discarded, keeping the first.
        if seen.insert(code) {
            if code == type_code::MP_REACH_NLRI || code == type_code::MP_UNREACH_NLRI {
                return Err(reset(N::MalformedAttributeList, &[], "MP_REACH_NLRI or MP_UNREACH_NLRI appears twice"));
            }
            fault(&mut u, code, Discard, "attribute appears more than once; later copies discarded");
            continue;
        }

        // RFC 7606 7.5: from an external peer LOCAL_PREF is disregarded whatever it contains,
        // its flags included.
        if code == type_code::LOCAL_PREF && opts.ebgp {
            continue;
        }
        let Some(expected) = attrs::expected_flags(code) else {
            if fl & flags::OPTIONAL == 0 {
                // RFC 4271 6.3, unchanged by RFC 7606.
                return Err(reset(N::UnrecognizedWellKnownAttribute, whole, "unrecognized well-known attribute"));
            }
            if fl & flags::TRANSITIVE != 0 {
                u.attributes.unknown.push(RawAttribute {
                    flags: (fl | flags::PARTIAL) & !flags::EXTENDED_LENGTH,
                    type_code: code,
                    value: v.to_vec(),
                });
            }
            // Unknown optional non-transitive attributes are quietly ignored (RFC 4271 9).
            continue;
        };
        // RFC 7606 3(c): Optional/Transitive bits in conflict with the type make the attribute
        // malformed, handled by treat-as-withdraw. MP_* attributes are still parsed so that
        // their NLRI can be withdrawn.
        let flags_ok = fl & (flags::OPTIONAL | flags::TRANSITIVE) == expected;
        if !flags_ok {
            fault(&mut u, code, Taw, "attribute flags conflict with the attribute type");
            if code != type_code::MP_REACH_NLRI && code != type_code::MP_UNREACH_NLRI {
                continue;
            }
        }

        let a = &mut u.attributes;
        match code {
            // RFC 7606 7.1 - 7.4: treat-as-withdraw.
            type_code::ORIGIN => match attrs::decode_origin(v) {
                Ok(o) => a.origin = Some(o),
                Err(r) => fault(&mut u, code, Taw, r),
            },
            type_code::AS_PATH => match attrs::decode_as_path(v, opts.four_octet_asn) {
                // RFC 5065 5: confederation segments from a peer outside the confederation (an
                // external one; this speaker is in none) make the AS_PATH malformed, and RFC
                // 7606 7.2 makes that treat-as-withdraw (they would also shorten the path that
                // best-path selection counts).
                Ok(p) if opts.ebgp && p.segments.iter().any(|s| s.kind.is_confed()) => {
                    fault(&mut u, code, Taw, "AS_PATH from an external peer has confederation segments")
                }
                Ok(p) => a.as_path = Some(p),
                Err(r) => fault(&mut u, code, Taw, r),
            },
            type_code::NEXT_HOP => match attrs::decode_next_hop(v) {
                Ok(nh) => a.next_hop = Some(nh),
                Err(r) => fault(&mut u, code, Taw, r),
            },
            type_code::MULTI_EXIT_DISC => match attrs::decode_u32(v, "MULTI_EXIT_DISC length is not 4") {
                Ok(m) => a.med = Some(m),
                Err(r) => fault(&mut u, code, Taw, r),
            },
            // RFC 7606 7.5: from an internal peer a bad length is treat-as-withdraw (from an
            // external one the attribute was disregarded above).
            type_code::LOCAL_PREF => match attrs::decode_u32(v, "LOCAL_PREF length is not 4") {
                Ok(lp) => a.local_pref = Some(lp),
                Err(r) => fault(&mut u, code, Taw, r),
            },
            // RFC 7606 7.6 / 7.7: attribute discard.
            type_code::ATOMIC_AGGREGATE => {
                if v.is_empty() {
                    a.atomic_aggregate = true;
                } else {
                    fault(&mut u, code, Discard, "ATOMIC_AGGREGATE length is not 0");
                }
            }
            type_code::AGGREGATOR => match attrs::decode_aggregator(v, opts.four_octet_asn) {
                Ok(ag) => a.aggregator = Some(ag),
                Err(r) => fault(&mut u, code, Discard, r),
            },
            // RFC 7606 7.8, 7.14; RFC 8092 5: treat-as-withdraw.
            type_code::COMMUNITIES => match attrs::decode_communities(v) {
                Ok(c) => a.communities = c,
                Err(r) => fault(&mut u, code, Taw, r),
            },
            type_code::EXTENDED_COMMUNITIES => match attrs::decode_ext_communities(v) {
                Ok(c) => a.ext_communities = c,
                Err(r) => fault(&mut u, code, Taw, r),
            },
            type_code::LARGE_COMMUNITIES => match attrs::decode_large_communities(v) {
                Ok(c) => a.large_communities = c,
                Err(r) => fault(&mut u, code, Taw, r),
            },
            // RFC 6793 6: AS4_* between two 4-octet speakers, or malformed, is discarded.
            type_code::AS4_PATH => {
                if opts.four_octet_asn {
                    fault(&mut u, code, Discard, "AS4_PATH received from a 4-octet AS speaker");
                } else {
                    match attrs::decode_as_path(v, true) {
                        Ok(p) if v.len() >= 6 => as4_path = Some(attrs::strip_confed(p)),
                        Ok(_) => fault(&mut u, code, Discard, "AS4_PATH is shorter than one AS"),
                        Err(r) => fault(&mut u, code, Discard, r),
                    }
                }
            }
            type_code::AS4_AGGREGATOR => {
                if opts.four_octet_asn {
                    fault(&mut u, code, Discard, "AS4_AGGREGATOR received from a 4-octet AS speaker");
                } else {
                    match attrs::decode_aggregator(v, true) {
                        Ok(ag) => as4_aggregator = Some(ag),
                        Err(r) => fault(&mut u, code, Discard, r),
                    }
                }
            }
            type_code::MP_REACH_NLRI => match decode_mp_reach(v, opts) {
                // A next hop that is no address to send to: the NLRI could be located, so
                // treat-as-withdraw (RFC 7606 7.3's rule for NEXT_HOP, and section 2's default).
                Ok(Some(m)) => {
                    let unusable = m.next_hop.unusable();
                    u.mp_reach = Some(m);
                    if let Some(r) = unusable {
                        fault(&mut u, code, Taw, r);
                    }
                }
                Ok(None) => {
                    fault(&mut u, code, Discard, "MP_REACH_NLRI for an address family this speaker does not support")
                }
                Err(r) => return Err(reset(N::OptionalAttributeError, whole, r)),
            },
            type_code::MP_UNREACH_NLRI => match decode_mp_unreach(v) {
                Ok(Some(m)) => u.mp_unreach = Some(m),
                Ok(None) => {
                    fault(&mut u, code, Discard, "MP_UNREACH_NLRI for an address family this speaker does not support")
                }
                Err(r) => return Err(reset(N::OptionalAttributeError, whole, r)),
            },
            // `expected_flags` is `Some` only for the codes above.
            _ => {}
        }
    }

    // RFC 6793 4.2.3: rebuild 4-octet AS numbers hidden behind AS_TRANS. An AGGREGATOR that
    // is not AS_TRANS means a new speaker aggregated after the old one: ignore AS4_*.
    if !opts.four_octet_asn {
        let aggregator_is_trans = u.attributes.aggregator.is_none_or(|ag| ag.asn == u32::from(AS_TRANS));
        if aggregator_is_trans {
            if let (Some(ag4), Some(ag)) = (as4_aggregator, u.attributes.aggregator.as_mut()) {
                *ag = ag4;
            }
            if let (Some(p4), Some(p)) = (as4_path, u.attributes.as_path.as_mut()) {
                *p = attrs::merge_as4_path(p, p4);
            }
        }
    }

    // RFC 7606 3(d): a missing well-known mandatory attribute is treat-as-withdraw, checked
    // only when the message announces something. NEXT_HOP is needed only by the NLRI field.
    let announces_v4 = !u.nlri.is_empty();
    let announces_mp = u.mp_reach.is_some_and(|m| !m.nlri.is_empty());
    if announces_v4 || announces_mp {
        let missing = |code| !seen.contains(code);
        if missing(type_code::ORIGIN) {
            fault(&mut u, type_code::ORIGIN, Taw, "ORIGIN is missing");
        }
        if missing(type_code::AS_PATH) {
            fault(&mut u, type_code::AS_PATH, Taw, "AS_PATH is missing");
        }
        if announces_v4 && missing(type_code::NEXT_HOP) {
            fault(&mut u, type_code::NEXT_HOP, Taw, "NEXT_HOP is missing");
        }
    }
    Ok(u)
}

impl Seen {
    fn contains(&self, code: u8) -> bool {
        self.0[usize::from(code >> 6)] & (1 << (code & 63)) != 0
    }
}

/// `Ok(None)` for a family this codec does not speak.
fn decode_mp_reach<'a>(v: &'a [u8], opts: &DecodeOptions) -> Result<Option<MpReach<'a>>, &'static str> {
    let [a0, a1, safi, nh_len, rest @ ..] = v else {
        return Err("MP_REACH_NLRI is too short for AFI, SAFI and next hop length");
    };
    let Some(family) = Family::from_afi_safi(super::Afi(u16::from_be_bytes([*a0, *a1])), super::Safi(*safi)) else {
        return Ok(None);
    };
    let Some((nh, rest)) = rest.split_at_checked(usize::from(*nh_len)) else {
        return Err("MP_REACH_NLRI next hop overruns the attribute");
    };
    let Some((_reserved, nlri)) = rest.split_first() else {
        return Err("MP_REACH_NLRI has no Reserved octet after the next hop");
    };
    // RFC 7606 7.11: a next hop length the family does not allow makes the NLRI impossible
    // to locate reliably, so the session is reset.
    let next_hop = match (family, NextHop::decode(nh)) {
        (Family::Ipv6Unicast, Some(n @ NextHop::V6 { .. })) => n,
        (Family::Ipv4Unicast, Some(n @ NextHop::V4(_))) => n,
        (Family::Ipv4Unicast, Some(n @ NextHop::V6 { .. })) if opts.extended_next_hop => n,
        _ => return Err("MP_REACH_NLRI next hop length does not fit the address family"),
    };
    match validate_nlri(family, nlri) {
        Ok(_) => Ok(Some(MpReach { family, next_hop, nlri: Prefixes::Wire { family, bytes: nlri } })),
        Err(NlriError::LengthTooLong { .. }) => Err("MP_REACH_NLRI prefix length is longer than the family allows"),
        Err(NlriError::Truncated) => Err("MP_REACH_NLRI prefix overruns the attribute"),
    }
}

fn decode_mp_unreach(v: &[u8]) -> Result<Option<MpUnreach<'_>>, &'static str> {
    let [a0, a1, safi, nlri @ ..] = v else {
        return Err("MP_UNREACH_NLRI is too short for AFI and SAFI");
    };
    let Some(family) = Family::from_afi_safi(super::Afi(u16::from_be_bytes([*a0, *a1])), super::Safi(*safi)) else {
        return Ok(None);
    };
    match validate_nlri(family, nlri) {
        Ok(_) => Ok(Some(MpUnreach { family, withdrawn: Prefixes::Wire { family, bytes: nlri } })),
        Err(NlriError::LengthTooLong { .. }) => Err("MP_UNREACH_NLRI prefix length is longer than the family allows"),
        Err(NlriError::Truncated) => Err("MP_UNREACH_NLRI prefix overruns the attribute"),
    }
}

// ----------------------------------------------------------------------------------------
// Encoding
// ----------------------------------------------------------------------------------------

/// MP_* attributes always use the Extended Length form: their size is only known after the
/// NLRI are written, and a fixed 4-octet header lets the packer reserve it up front.
fn begin_mp(out: &mut Vec<u8>, code: u8) -> usize {
    out.extend_from_slice(&[flags::OPTIONAL | flags::EXTENDED_LENGTH, code, 0, 0]);
    out.len()
}

fn finish_mp(out: &mut [u8], value_start: usize) -> Result<(), EncodeError> {
    let len = out.len() - value_start;
    let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong { len, max: usize::from(u16::MAX) })?;
    out[value_start - 2..value_start].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

fn mp_reach_header(out: &mut Vec<u8>, family: Family, nh: &NextHop) -> usize {
    let start = begin_mp(out, type_code::MP_REACH_NLRI);
    out.extend_from_slice(&family.afi().0.to_be_bytes());
    out.push(family.safi().0);
    out.push(nh.wire_len() as u8);
    nh.encode(out);
    out.push(0);
    start
}

fn mp_unreach_header(out: &mut Vec<u8>, family: Family) -> usize {
    let start = begin_mp(out, type_code::MP_UNREACH_NLRI);
    out.extend_from_slice(&family.afi().0.to_be_bytes());
    out.push(family.safi().0);
    start
}

/// Appends an UPDATE body.
pub(crate) fn encode_update(u: &Update<'_>, opts: &EncodeOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let wl_at = out.len();
    out.extend_from_slice(&[0, 0]);
    u.withdrawn.encode(Family::Ipv4Unicast, out)?;
    let wlen = out.len() - wl_at - 2;
    out[wl_at..wl_at + 2].copy_from_slice(&(wlen as u16).to_be_bytes());

    let mut mp = Vec::new();
    if let Some(r) = &u.mp_reach {
        let s = mp_reach_header(&mut mp, r.family, &r.next_hop);
        r.nlri.encode(r.family, &mut mp)?;
        finish_mp(&mut mp, s)?;
    }
    if let Some(r) = &u.mp_unreach {
        let s = mp_unreach_header(&mut mp, r.family);
        r.withdrawn.encode(r.family, &mut mp)?;
        finish_mp(&mut mp, s)?;
    }
    let al_at = out.len();
    out.extend_from_slice(&[0, 0]);
    attrs::encode_attributes(&u.attributes, opts.four_octet_asn, &mp, out);
    let alen = out.len() - al_at - 2;
    let alen16 = u16::try_from(alen).map_err(|_| EncodeError::TooLong { len: alen, max: usize::from(u16::MAX) })?;
    out[al_at..al_at + 2].copy_from_slice(&alen16.to_be_bytes());
    u.nlri.encode(Family::Ipv4Unicast, out)
}

/// Writes a 19-octet header with a placeholder length; returns the message start.
fn begin_message(out: &mut Vec<u8>, msg_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, msg_type]);
    start
}

fn finish_message(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u16;
    out[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}

/// Packs UPDATE messages announcing `prefixes` with shared `attrs` and `next_hop`, each at
/// most `opts.max_message_len()` octets, appended to `out` as a ready-to-send byte stream.
/// IPv4 prefixes with an IPv4 next hop use the NLRI field and NEXT_HOP; everything else
/// (IPv6, or IPv4 with an IPv6 next hop per RFC 8950) uses MP_REACH_NLRI. `attrs.next_hop`
/// is ignored. Returns the number of messages written.
pub fn build_announcements(
    opts: &EncodeOptions,
    attrs: &PathAttributes,
    next_hop: NextHop,
    prefixes: &[Prefix],
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let max = opts.max_message_len();
    let mut count = 0;
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let mut it = prefixes.iter().filter(|p| p.family() == family).peekable();
        if it.peek().is_none() {
            continue;
        }
        if family == Family::Ipv6Unicast && matches!(next_hop, NextHop::V4(_)) {
            return Err(EncodeError::NextHopFamily { family });
        }
        let classic = family == Family::Ipv4Unicast && matches!(next_hop, NextHop::V4(_));
        let mut a = attrs.clone();
        a.next_hop = match next_hop {
            NextHop::V4(nh) if classic => Some(nh),
            _ => None,
        };
        // Attributes are encoded once and copied into every message: those ordered before
        // MP_REACH_NLRI (type 14) and those after it, so the NLRI can be streamed into
        // MP_REACH_NLRI while keeping the type-code order RFC 4271 5 asks for.
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        attrs::encode_attributes_split(&a, opts.four_octet_asn, &mut head, &mut tail);
        while it.peek().is_some() {
            let start = begin_message(out, super::msg_type::UPDATE);
            out.extend_from_slice(&[0, 0, 0, 0]); // withdrawn length, attribute length
            out.extend_from_slice(&head);
            let mp_value_start = if classic {
                out.extend_from_slice(&tail);
                None
            } else {
                Some(mp_reach_header(out, family, &next_hop))
            };
            let reserve = if classic { 0 } else { tail.len() };
            let nlri_start = out.len();
            while let Some(p) = it.peek() {
                if out.len() - start + p.wire_len() + reserve > max {
                    break;
                }
                p.encode(out);
                it.next();
            }
            if out.len() == nlri_start {
                return Err(EncodeError::AttributesTooLong { len: nlri_start + reserve - start, max });
            }
            let attr_len = match mp_value_start {
                None => nlri_start - start - HEADER_LEN - 4,
                Some(vs) => {
                    finish_mp(out, vs)?;
                    out.extend_from_slice(&tail);
                    out.len() - start - HEADER_LEN - 4
                }
            };
            let at = start + HEADER_LEN + 2;
            out[at..at + 2].copy_from_slice(&(attr_len as u16).to_be_bytes());
            finish_message(out, start);
            count += 1;
        }
    }
    Ok(count)
}

/// Packs UPDATE messages withdrawing `prefixes` (IPv4 in the Withdrawn Routes field, IPv6
/// in MP_UNREACH_NLRI). Returns the number of messages written.
pub fn build_withdrawals(opts: &EncodeOptions, prefixes: &[Prefix], out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let max = opts.max_message_len();
    let mut count = 0;
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let mut it = prefixes.iter().filter(|p| p.family() == family).peekable();
        while it.peek().is_some() {
            let start = begin_message(out, super::msg_type::UPDATE);
            let mp_value_start = if family == Family::Ipv4Unicast {
                out.extend_from_slice(&[0, 0]);
                None
            } else {
                out.extend_from_slice(&[0, 0, 0, 0]);
                Some(mp_unreach_header(out, family))
            };
            while let Some(p) = it.peek() {
                // IPv4 withdrawals leave room for the 2-octet attribute length still to come.
                let reserve = if mp_value_start.is_none() { 2 } else { 0 };
                if out.len() - start + p.wire_len() + reserve > max {
                    break;
                }
                p.encode(out);
                it.next();
            }
            match mp_value_start {
                None => {
                    let wlen = (out.len() - start - HEADER_LEN - 2) as u16;
                    out[start + HEADER_LEN..start + HEADER_LEN + 2].copy_from_slice(&wlen.to_be_bytes());
                    out.extend_from_slice(&[0, 0]);
                }
                Some(vs) => {
                    finish_mp(out, vs)?;
                    let alen = (out.len() - start - HEADER_LEN - 4) as u16;
                    out[start + HEADER_LEN + 2..start + HEADER_LEN + 4].copy_from_slice(&alen.to_be_bytes());
                }
            }
            finish_message(out, start);
            count += 1;
        }
    }
    Ok(count)
}
