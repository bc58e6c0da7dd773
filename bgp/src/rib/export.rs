//! Adj-RIB-Out: what each peer has been sent, and the diff that brings it to what export
//! policy wants. Only the node's own announcements are ever exported (a server is not a
//! transit); this module builds their outgoing attributes and next hops per session. It
//! produces prefixes and attributes for the codec's builders and never writes to a socket.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{PeerId, PeerInfo, Rib, RibError};
use crate::wire::{
    build_announcements, build_withdrawals, encode_message, AsPath, Community, EncodeError, EncodeOptions, Family,
    LargeCommunity, Message, NextHop, Origin, PathAttributes, Prefix, Update,
};

/// One of the node's own announcements (a `[[bgp.announce]]` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalRoute {
    pub prefix: Prefix,
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    pub med: Option<u32>,
    /// Sent to iBGP peers only; LOCAL_PREF is not carried over eBGP (RFC 4271 5.1.5).
    pub local_pref: Option<u32>,
}

impl LocalRoute {
    pub fn new(prefix: Prefix) -> Self {
        LocalRoute { prefix, communities: Vec::new(), large_communities: Vec::new(), med: None, local_pref: None }
    }

    /// The attributes the route has in the Loc-RIB (before per-peer export changes).
    pub(crate) fn loc_rib_attributes(&self) -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            med: self.med,
            local_pref: self.local_pref,
            communities: self.communities.clone(),
            large_communities: self.large_communities.clone(),
            ..PathAttributes::default()
        }
    }
}

/// What an established session offers for exporting: the negotiated families and the local
/// addresses of the TCP connection, from which next hops are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSession {
    /// Families both sides negotiated (Multiprotocol capability, or IPv4 unicast alone).
    pub families: Vec<Family>,
    /// Local IPv4 address of the session, if any: the NEXT_HOP of IPv4 routes.
    pub local_v4: Option<Ipv4Addr>,
    /// Local global IPv6 address usable by the peer as next hop.
    pub local_v6: Option<Ipv6Addr>,
    /// Local link-local address, set when the peer shares the link (RFC 2545 3): sent after
    /// the global address. Alone (unnumbered sessions) it fills both next-hop fields.
    pub link_local: Option<Ipv6Addr>,
    /// RFC 8950 extended next hop negotiated for IPv4 unicast.
    pub extended_next_hop: bool,
}

/// Prefixes sharing one set of outgoing attributes and next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub attributes: PathAttributes,
    pub next_hop: NextHop,
    pub prefixes: Vec<Prefix>,
}

/// An announcement export policy allows but that cannot be sent on this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSkip {
    pub prefix: Prefix,
    pub reason: &'static str,
}

/// What to send a peer to bring its Adj-RIB-Out to the desired state. The RIB already counts
/// it as sent: the caller encodes it ([`ExportDiff::encode`]) and hands it to the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportDiff {
    pub withdraw: Vec<Prefix>,
    pub announce: Vec<Announcement>,
    /// End-of-RIB markers to send after the rest: once per session, after the initial sync.
    pub end_of_rib: Vec<Family>,
    /// For the log: announcements this session cannot carry, and why.
    pub skipped: Vec<ExportSkip>,
}

impl ExportDiff {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.withdraw.is_empty() && self.announce.is_empty() && self.end_of_rib.is_empty()
    }

    /// Appends the UPDATE messages (withdrawals, announcements, End-of-RIB markers) to `out`;
    /// returns how many were written.
    pub fn encode(&self, opts: &EncodeOptions, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let mut n = build_withdrawals(opts, &self.withdraw, out)?;
        for a in &self.announce {
            n += build_announcements(opts, &a.attributes, a.next_hop, &a.prefixes, out)?;
        }
        for family in &self.end_of_rib {
            encode_message(&Message::Update(Update::end_of_rib_marker(*family)), opts, out)?;
            n += 1;
        }
        Ok(n)
    }
}

/// What one peer has been sent on its current session.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdjRibOut {
    /// `None` while the peer is down.
    session: Option<ExportSession>,
    sent: BTreeMap<Prefix, (PathAttributes, NextHop)>,
    eor_pending: bool,
}

impl AdjRibOut {
    pub fn new(session: ExportSession) -> Self {
        AdjRibOut { session: Some(session), sent: BTreeMap::new(), eor_pending: true }
    }

    /// Nothing sent yet on the same session (a route refresh).
    pub fn restart(&self) -> Self {
        self.session.clone().map(AdjRibOut::new).unwrap_or_default()
    }
}

/// An IPv6 next hop from the session's addresses: global (+ link-local on a shared link);
/// link-local only (unnumbered) is written in both fields, the 32-octet form FRR sends and
/// reads, so a receiver expecting a global address first still finds a usable one.
fn v6_next_hop(s: &ExportSession) -> Option<NextHop> {
    match (s.local_v6, s.link_local) {
        (Some(global), link_local) => Some(NextHop::V6 { global, link_local }),
        (None, Some(ll)) => Some(NextHop::V6 { global: ll, link_local: Some(ll) }),
        (None, None) => None,
    }
}

/// Outgoing attributes and next hop of a local route for one peer (next-hop-self always:
/// the node originates these routes).
fn outgoing(
    route: &LocalRoute,
    peer: &PeerInfo,
    local_asn: u32,
    s: &ExportSession,
) -> Result<(PathAttributes, NextHop), &'static str> {
    let next_hop = match route.prefix.family() {
        Family::Ipv4Unicast => match (s.local_v4, s.extended_next_hop) {
            (Some(a), _) => NextHop::V4(a),
            (None, true) => v6_next_hop(s).ok_or("the session has no local address to use as next hop")?,
            (None, false) => {
                return Err("the session has no local IPv4 address and RFC 8950 extended next hop was not negotiated")
            }
        },
        Family::Ipv6Unicast => v6_next_hop(s).ok_or("the session has no local IPv6 address to use as next hop")?,
    };
    let attributes = PathAttributes {
        origin: Some(Origin::Igp),
        // eBGP: prepend the local AS to the (empty) path of a locally originated route;
        // iBGP: the empty AS_PATH (RFC 4271 5.1.2).
        as_path: Some(if peer.ebgp { AsPath::sequence(&[local_asn]) } else { AsPath::default() }),
        med: route.med,
        local_pref: if peer.ebgp { None } else { Some(route.local_pref.unwrap_or(100)) },
        communities: route.communities.clone(),
        large_communities: route.large_communities.clone(),
        ..PathAttributes::default()
    };
    Ok((attributes, next_hop))
}

impl Rib {
    /// Brings `peer`'s Adj-RIB-Out to what export policy wants and returns the difference
    /// (level-triggered: call it after any change of the local routes, or when the session
    /// comes up). The first call after [`Rib::peer_up`] also carries End-of-RIB for every
    /// negotiated family.
    pub fn export(&mut self, peer: PeerId) -> Result<ExportDiff, RibError> {
        let info = *self.infos.get(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let local_asn = self.config.local_asn;
        let state = self.peers.get_mut(&peer).ok_or(RibError::UnknownPeer { peer })?;
        let Some(session) = state.out.session.as_ref().filter(|_| state.up) else {
            return Err(RibError::PeerDown { peer, addr: info.addr });
        };
        let mut diff = ExportDiff::default();
        let mut desired = BTreeMap::new();
        for route in self.locals.values() {
            if !state.export.exports(&route.prefix) {
                continue;
            }
            if !session.families.contains(&route.prefix.family()) {
                let reason = "the peer did not negotiate this address family";
                diff.skipped.push(ExportSkip { prefix: route.prefix, reason });
                continue;
            }
            match outgoing(route, &info, local_asn, session) {
                Ok(out) => {
                    desired.insert(route.prefix, out);
                }
                Err(reason) => diff.skipped.push(ExportSkip { prefix: route.prefix, reason }),
            }
        }
        let families = session.families.clone();
        let out = &mut state.out;
        diff.withdraw = out.sent.keys().filter(|p| !desired.contains_key(p)).copied().collect();
        for (prefix, (attributes, next_hop)) in &desired {
            if out.sent.get(prefix) == Some(&(attributes.clone(), *next_hop)) {
                continue;
            }
            match diff.announce.iter_mut().find(|a| a.next_hop == *next_hop && a.attributes == *attributes) {
                Some(a) => a.prefixes.push(*prefix),
                None => diff.announce.push(Announcement {
                    attributes: attributes.clone(),
                    next_hop: *next_hop,
                    prefixes: vec![*prefix],
                }),
            }
        }
        if out.eor_pending {
            diff.end_of_rib = families;
            out.eor_pending = false;
        }
        out.sent = desired;
        state.counters.sent = out.sent.len();
        Ok(diff)
    }
}
