//! The OPEN exchange: the OPEN we send, the checks on the peer's OPEN that need configuration
//! (RFC 4271 6.2, RFC 6286, RFC 6793), and what both sides agreed on. Pure functions over
//! [`Open`] values; state and timers belong to the FSM.

use std::net::Ipv4Addr;

use super::config::SessionConfig;
use crate::wire::{
    Afi, Capability, DecodeOptions, EncodeOptions, ExtendedNextHop, Family, GracefulRestart, GracefulRestartFamily,
    Notification, NotificationError, Open, Safi, AS_TRANS,
};

/// RFC 8950 tuple: IPv4 unicast NLRI with an IPv6 next hop.
const ENH_IPV4_OVER_IPV6: ExtendedNextHop =
    ExtendedNextHop { nlri_afi: Afi::IPV4, nlri_safi: Safi::UNICAST.0 as u16, next_hop_afi: Afi::IPV6 };

/// What the session agreed on, computed when the peer's OPEN is accepted and reported with
/// [`super::Output::Established`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's AS (from the 4-octet AS capability when present).
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    /// min(ours, theirs) in seconds; 0 = no hold timer and no keepalives.
    pub hold_time: u16,
    /// Families both sides advertised (a side without any Multiprotocol capability counts as
    /// IPv4 unicast only, RFC 4760 8). May be empty: the session still comes up, see the
    /// module documentation.
    pub families: Vec<Family>,
    pub four_octet_asn: bool,
    pub route_refresh: bool,
    /// Families whose NLRI may carry an IPv6 next hop (RFC 8950), both sides advertised.
    pub extended_nexthop: Vec<Family>,
    pub extended_message: bool,
    pub ebgp: bool,
    /// The peer's Graceful Restart capability as received, for the GR helper.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// Both sides advertised Graceful Restart.
    pub graceful_restart: bool,
    /// Every capability the peer sent, unknown ones included (`show bgp neighbor`).
    pub peer_capabilities: Vec<Capability>,
    /// Read the peer's bytes with these.
    pub decode: DecodeOptions,
    /// Write to the peer with these.
    pub encode: EncodeOptions,
}

/// Our OPEN for `config`.
pub fn local_open(config: &SessionConfig) -> Open {
    let mut capabilities: Vec<Capability> =
        config.families.iter().map(|f| Capability::Multiprotocol { afi: f.afi(), safi: f.safi() }).collect();
    capabilities.push(Capability::RouteRefresh);
    capabilities.push(Capability::FourOctetAsn(config.local_asn));
    if config.extended_nexthop {
        capabilities.push(Capability::ExtendedNextHop(vec![ENH_IPV4_OVER_IPV6]));
    }
    if config.extended_message {
        capabilities.push(Capability::ExtendedMessage);
    }
    if let Some(gr) = config.graceful_restart {
        capabilities.push(Capability::GracefulRestart(GracefulRestart {
            restart_state: gr.restarting,
            // RFC 8538 (GR for NOTIFICATION) is not implemented: do not claim it.
            notification: false,
            restart_time: gr.restart_time,
            families: config
                .families
                .iter()
                .map(|f| GracefulRestartFamily {
                    afi: f.afi(),
                    safi: f.safi(),
                    forwarding_preserved: gr.forwarding_preserved,
                })
                .collect(),
        }));
    }
    Open {
        my_as: u16::try_from(config.local_asn).unwrap_or(AS_TRANS),
        hold_time: config.hold_time,
        bgp_id: config.local_router_id,
        capabilities,
    }
}

/// A peer OPEN we refuse: the NOTIFICATION to send and a line for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRejection {
    pub notification: Notification,
    pub reason: String,
}

fn reject(error: NotificationError, reason: String) -> OpenRejection {
    // RFC 4271 6.2 defines no data for these subcodes; what we saw goes to the log instead.
    OpenRejection { notification: Notification::new(error, vec![]), reason }
}

/// RFC 4271 6.2 checks that need the configuration. The codec already refused versions other
/// than 4, hold times 1-2 and identifier 0 on the wire; they are repeated here because an
/// [`Open`] can also be built in memory (tests, replays).
///
/// Unknown or unsupported capabilities are not an error (RFC 5492 5 lets a speaker ignore
/// them), and neither is a missing family overlap: see the module documentation.
pub fn validate_open(config: &SessionConfig, open: &Open) -> Result<(), OpenRejection> {
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(reject(
            NotificationError::UnacceptableHoldTime,
            format!("peer proposed a hold time of {} s; RFC 4271 allows only 0 or at least 3", open.hold_time),
        ));
    }
    let asn = open.asn();
    if asn != config.peer_asn {
        return Err(reject(
            NotificationError::BadPeerAs,
            format!(
                "peer says it is AS {asn}, but AS {} is configured; fix peer_asn or the peer's local AS",
                config.peer_asn
            ),
        ));
    }
    if open.bgp_id.is_unspecified() {
        return Err(reject(NotificationError::BadBgpIdentifier, "peer BGP identifier is 0.0.0.0".to_string()));
    }
    // RFC 6286 2.2: identifiers need only be unique within an AS, so an external peer may
    // share ours.
    if open.bgp_id == config.local_router_id && asn == config.local_asn {
        return Err(reject(
            NotificationError::BadBgpIdentifier,
            format!(
                "internal peer uses our own BGP identifier {} (RFC 6286); give one of the two routers another router id",
                open.bgp_id
            ),
        ));
    }
    Ok(())
}

fn advertised_families(open: &Open) -> Vec<Family> {
    let mut mp = open.capabilities.iter().filter_map(|c| match c {
        Capability::Multiprotocol { afi, safi } => Some(Family::from_afi_safi(*afi, *safi)),
        _ => None,
    });
    let any_mp = mp.clone().next().is_some();
    let mut fams: Vec<Family> = mp.by_ref().flatten().collect();
    if !any_mp {
        fams.push(Family::Ipv4Unicast);
    }
    fams.sort();
    fams.dedup();
    fams
}

fn has(open: &Open, pred: impl Fn(&Capability) -> bool) -> bool {
    open.capabilities.iter().any(pred)
}

fn enh_families(open: &Open) -> Vec<Family> {
    let mut out = Vec::new();
    for c in &open.capabilities {
        if let Capability::ExtendedNextHop(tuples) = c {
            if tuples.contains(&ENH_IPV4_OVER_IPV6) {
                out.push(Family::Ipv4Unicast);
            }
        }
    }
    out
}

/// What `local` (our OPEN, built from `config`) and a validated peer OPEN agree on.
pub fn negotiate(config: &SessionConfig, local: &Open, peer: &Open) -> Negotiated {
    let ours = advertised_families(local);
    let theirs = advertised_families(peer);
    let families: Vec<Family> = ours.iter().copied().filter(|f| theirs.contains(f)).collect();
    let four_octet_asn = has(local, |c| matches!(c, Capability::FourOctetAsn(_)))
        && has(peer, |c| matches!(c, Capability::FourOctetAsn(_)));
    let route_refresh =
        has(local, |c| matches!(c, Capability::RouteRefresh)) && has(peer, |c| matches!(c, Capability::RouteRefresh));
    let extended_message = has(local, |c| matches!(c, Capability::ExtendedMessage))
        && has(peer, |c| matches!(c, Capability::ExtendedMessage));
    let peer_enh = enh_families(peer);
    let extended_nexthop: Vec<Family> =
        enh_families(local).into_iter().filter(|f| peer_enh.contains(f) && families.contains(f)).collect();
    // RFC 4724 3: of several Graceful Restart capabilities, all but the last are ignored.
    let peer_graceful_restart = peer.capabilities.iter().rev().find_map(|c| match c {
        Capability::GracefulRestart(gr) => Some(gr.clone()),
        _ => None,
    });
    let peer_asn = peer.asn();
    let ebgp = peer_asn != config.local_asn;
    let decode = DecodeOptions {
        four_octet_asn,
        extended_message,
        ebgp,
        extended_next_hop: extended_nexthop.contains(&Family::Ipv4Unicast),
    };
    Negotiated {
        peer_asn,
        peer_router_id: peer.bgp_id,
        hold_time: local.hold_time.min(peer.hold_time),
        families,
        four_octet_asn,
        route_refresh,
        extended_nexthop,
        extended_message,
        ebgp,
        graceful_restart: peer_graceful_restart.is_some() && config.graceful_restart.is_some(),
        peer_graceful_restart,
        peer_capabilities: peer.capabilities.clone(),
        encode: EncodeOptions::from(&decode),
        decode,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::session::config::GracefulRestartConfig;

    fn config() -> SessionConfig {
        SessionConfig::new(65001, Ipv4Addr::new(192, 0, 2, 1), 4_200_000_000, IpAddr::from([192, 0, 2, 2]))
    }

    fn peer_open(caps: Vec<Capability>) -> Open {
        Open { my_as: AS_TRANS, hold_time: 30, bgp_id: Ipv4Addr::new(192, 0, 2, 2), capabilities: caps }
    }

    #[test]
    fn local_open_puts_as_trans_in_my_as_for_a_four_octet_asn() {
        let mut c = config();
        c.local_asn = 4_200_000_001;
        let open = local_open(&c);
        assert_eq!(open.my_as, AS_TRANS);
        assert_eq!(open.asn(), 4_200_000_001);
        c.local_asn = 65001;
        assert_eq!(local_open(&c).my_as, 65001);
    }

    #[test]
    fn local_open_advertises_configured_capabilities_only() {
        let mut c = config();
        c.families = vec![Family::Ipv6Unicast];
        c.extended_nexthop = true;
        c.graceful_restart =
            Some(GracefulRestartConfig { restart_time: 120, restarting: true, forwarding_preserved: true });
        let open = local_open(&c);
        assert!(open.capabilities.contains(&Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST }));
        assert!(!open.capabilities.contains(&Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST }));
        assert!(open.capabilities.contains(&Capability::ExtendedNextHop(vec![ENH_IPV4_OVER_IPV6])));
        assert!(!open.capabilities.contains(&Capability::ExtendedMessage));
        let gr = open
            .capabilities
            .iter()
            .find_map(|c| match c {
                Capability::GracefulRestart(g) => Some(g.clone()),
                _ => None,
            })
            .expect("graceful restart capability");
        assert!(gr.restart_state && !gr.notification);
        assert_eq!(gr.restart_time, 120);
        assert_eq!(
            gr.families,
            vec![GracefulRestartFamily { afi: Afi::IPV6, safi: Safi::UNICAST, forwarding_preserved: true }]
        );
    }

    #[test]
    fn peer_asn_is_read_from_the_four_octet_capability() {
        let ok = peer_open(vec![Capability::FourOctetAsn(4_200_000_000)]);
        assert_eq!(validate_open(&config(), &ok), Ok(()));
        // Without the capability the peer's AS is AS_TRANS, which is not the configured one.
        let err = validate_open(&config(), &peer_open(vec![])).unwrap_err();
        assert_eq!(err.notification.error(), Some(NotificationError::BadPeerAs));
    }

    #[test]
    fn own_identifier_is_refused_from_internal_peers_only() {
        let mut c = config();
        c.peer_asn = 65001;
        let mut open = Open { my_as: 65001, hold_time: 90, bgp_id: c.local_router_id, capabilities: vec![] };
        let err = validate_open(&c, &open).unwrap_err();
        assert_eq!(err.notification.error(), Some(NotificationError::BadBgpIdentifier));
        // eBGP: RFC 6286 allows the same identifier.
        c.peer_asn = 65002;
        open.my_as = 65002;
        assert_eq!(validate_open(&c, &open), Ok(()));
    }

    #[test]
    fn families_are_the_intersection_and_no_multiprotocol_means_ipv4_unicast() {
        let c = config();
        let local = local_open(&c);
        let v6_only = peer_open(vec![
            Capability::FourOctetAsn(4_200_000_000),
            Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST },
            Capability::Multiprotocol { afi: Afi(25), safi: Safi(70) },
        ]);
        assert_eq!(negotiate(&c, &local, &v6_only).families, vec![Family::Ipv6Unicast]);
        let legacy = peer_open(vec![Capability::FourOctetAsn(4_200_000_000)]);
        assert_eq!(negotiate(&c, &local, &legacy).families, vec![Family::Ipv4Unicast]);
        let l2vpn_only = peer_open(vec![Capability::Multiprotocol { afi: Afi(25), safi: Safi(70) }]);
        assert!(negotiate(&c, &local, &l2vpn_only).families.is_empty());
    }

    #[test]
    fn options_need_both_sides() {
        let mut c = config();
        c.extended_nexthop = true;
        c.extended_message = true;
        let local = local_open(&c);
        let peer = peer_open(vec![
            Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
            Capability::ExtendedNextHop(vec![ENH_IPV4_OVER_IPV6]),
            Capability::Unknown { code: 73, value: b"tor1".to_vec() },
        ]);
        let n = negotiate(&c, &local, &peer);
        assert!(!n.four_octet_asn && !n.route_refresh && !n.extended_message);
        assert_eq!(n.extended_nexthop, vec![Family::Ipv4Unicast]);
        assert!(n.decode.extended_next_hop && n.decode.ebgp && !n.decode.four_octet_asn);
        assert_eq!(n.hold_time, 30);
        assert_eq!(n.peer_capabilities.len(), 3);

        let full = peer_open(vec![
            Capability::RouteRefresh,
            Capability::FourOctetAsn(4_200_000_000),
            Capability::ExtendedMessage,
        ]);
        let n = negotiate(&c, &local, &full);
        assert!(n.four_octet_asn && n.route_refresh && n.extended_message);
        // The peer did not send ENH: IPv4 routes must keep IPv4 next hops.
        assert!(n.extended_nexthop.is_empty() && !n.decode.extended_next_hop);
        assert_eq!(n.encode, EncodeOptions { four_octet_asn: true, extended_message: true });
    }

    #[test]
    fn peer_graceful_restart_is_kept_for_the_helper() {
        let mut c = config();
        let gr = GracefulRestart {
            restart_state: true,
            notification: false,
            restart_time: 90,
            families: vec![GracefulRestartFamily { afi: Afi::IPV4, safi: Safi::UNICAST, forwarding_preserved: true }],
        };
        let peer = peer_open(vec![Capability::GracefulRestart(gr.clone())]);
        let n = negotiate(&c, &local_open(&c), &peer);
        assert_eq!(n.peer_graceful_restart, Some(gr.clone()));
        assert!(!n.graceful_restart, "we did not advertise GR");
        c.graceful_restart = Some(GracefulRestartConfig::default());
        assert!(negotiate(&c, &local_open(&c), &peer).graceful_restart);
        // RFC 4724 3: of two copies, the last one counts.
        let last = GracefulRestart { restart_state: false, restart_time: 120, families: vec![], ..gr.clone() };
        let twice = peer_open(vec![Capability::GracefulRestart(gr), Capability::GracefulRestart(last.clone())]);
        assert_eq!(negotiate(&c, &local_open(&c), &twice).peer_graceful_restart, Some(last));
    }
}
