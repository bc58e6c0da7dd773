use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::policy::{Action, Match, MaxPrefix, PolicyRule};
use crate::testutil::malformed::{update_bytes, AS_PATH4, NEXT_HOP, ORIGIN};
use crate::wire::{
    decode_message, AsPath, AsSegment, Community, DecodeOptions, EncodeOptions, LargeCommunity, Message, MpReach,
    MpUnreach, Origin, SegmentType,
};

const LOCAL_AS: u32 = 65101;

fn p(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn rib() -> Rib {
    Rib::new(RibConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 11)))
}

fn rib_with(decision: DecisionConfig) -> Rib {
    Rib::new(RibConfig { decision, ..RibConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 11)) })
}

/// A peer at 192.0.2.N with router id 198.51.100.N.
fn peer(n: u8, asn: u32, ebgp: bool) -> PeerInfo {
    PeerInfo {
        id: PeerId(u32::from(n)),
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        asn,
        router_id: Ipv4Addr::new(198, 51, 100, n),
        ebgp,
    }
}

fn session_v4() -> ExportSession {
    ExportSession {
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 11)),
        local_v6: Some("2001:db8::11".parse().unwrap()),
        link_local: None,
        extended_next_hop: false,
    }
}

/// `up`, with a max-prefix `limit` and `action` on the peer's import.
fn up_limited(rib: &mut Rib, info: PeerInfo, limit: u32, action: MaxPrefixAction) {
    let import = ImportPolicy { max_prefix: Some(MaxPrefix { limit, action }), ..ImportPolicy::accept_all() };
    rib.peer_up(info, import, ExportPolicy::default(), session_v4());
}

fn up(rib: &mut Rib, info: PeerInfo) {
    rib.peer_up(info, ImportPolicy::accept_all(), ExportPolicy::default(), session_v4());
}

fn path(asns: &[u32]) -> PathAttributes {
    PathAttributes { origin: Some(Origin::Igp), as_path: Some(AsPath::sequence(asns)), ..PathAttributes::default() }
}

fn nh(info: &PeerInfo) -> Ipv4Addr {
    match info.addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::new(192, 0, 2, 254),
    }
}

/// Announces IPv4 prefixes from `info` with next hop = the peer's address.
fn announce(
    rib: &mut Rib,
    info: &PeerInfo,
    prefixes: &[&str],
    mut attrs: PathAttributes,
    now: Instant,
) -> UpdateOutcome {
    let list: Vec<Prefix> = prefixes.iter().map(|s| p(s)).collect();
    attrs.next_hop = Some(nh(info));
    let u = Update { attributes: attrs, nlri: Prefixes::List(&list), ..Update::default() };
    rib.apply_update(info.id, &u, now).unwrap()
}

fn withdraw(rib: &mut Rib, info: &PeerInfo, prefixes: &[&str], now: Instant) -> UpdateOutcome {
    let list: Vec<Prefix> = prefixes.iter().map(|s| p(s)).collect();
    let u = Update { withdrawn: Prefixes::List(&list), ..Update::default() };
    rib.apply_update(info.id, &u, now).unwrap()
}

fn best_peer(rib: &Rib, prefix: &str) -> Option<Source> {
    rib.best(&p(prefix)).map(|r| r.source)
}

const PFX: &str = "203.0.113.0/24";

/// Two eBGP peers announce PFX with the given attributes; returns the winner.
fn duel(rib: &mut Rib, a: (PeerInfo, PathAttributes), b: (PeerInfo, PathAttributes)) -> Source {
    let now = Instant::now();
    for (info, attrs) in [a, b] {
        up(rib, info);
        announce(rib, &info, &[PFX], attrs, now);
    }
    best_peer(rib, PFX).unwrap()
}

// ----- decision process, one step per test -----

#[test]
fn local_announcement_beats_any_learned_path() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX], PathAttributes { local_pref: Some(1000), ..path(&[65001]) }, t);
    let changes = rib.set_local_routes(vec![LocalRoute::new(p(PFX))], t);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].best.as_ref().unwrap().source, Source::Local);
    assert!(changes[0].ecmp.is_empty(), "nothing to install for the node's own prefix");
    assert_eq!(changes[0].previous.as_ref().unwrap().source, Source::Peer(a.id));
}

#[test]
fn highest_local_pref_wins() {
    let mut rib = rib();
    // iBGP paths carry LOCAL_PREF; peer 1 has the better router id, peer 2 the higher LP.
    let won = duel(
        &mut rib,
        (peer(1, LOCAL_AS, false), PathAttributes { local_pref: Some(100), ..path(&[]) }),
        (peer(2, LOCAL_AS, false), PathAttributes { local_pref: Some(200), ..path(&[65001, 65002]) }),
    );
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn absent_local_pref_counts_as_the_default() {
    let mut rib = rib();
    let won = duel(
        &mut rib,
        (peer(1, LOCAL_AS, false), PathAttributes { local_pref: Some(99), ..path(&[]) }),
        (peer(2, LOCAL_AS, false), path(&[65001])),
    );
    assert_eq!(won, Source::Peer(PeerId(2)), "no LOCAL_PREF = 100 > 99");
}

#[test]
fn shorter_as_path_wins_and_an_as_set_counts_one() {
    let mut rib = rib();
    let won = duel(&mut rib, (peer(1, 65001, true), path(&[65001, 64500])), (peer(2, 65002, true), path(&[65002])));
    assert_eq!(won, Source::Peer(PeerId(2)));

    let mut rib = self::rib();
    let with_set = PathAttributes {
        as_path: Some(AsPath {
            segments: vec![
                AsSegment { kind: SegmentType::Sequence, asns: vec![65003] },
                AsSegment { kind: SegmentType::Set, asns: vec![64500, 64501, 64502] },
            ],
        }),
        ..path(&[])
    };
    // Length 2 (65003 + one set) beats length 3, despite the worse router id.
    let won = duel(&mut rib, (peer(1, 65001, true), path(&[65001, 64500, 64501])), (peer(3, 65003, true), with_set));
    assert_eq!(won, Source::Peer(PeerId(3)));
}

#[test]
fn lowest_origin_wins() {
    let mut rib = rib();
    let won = duel(
        &mut rib,
        (peer(1, 65001, true), PathAttributes { origin: Some(Origin::Incomplete), ..path(&[65001]) }),
        (peer(2, 65002, true), PathAttributes { origin: Some(Origin::Egp), ..path(&[65002]) }),
    );
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn lower_med_wins_within_the_same_neighbour_as() {
    let mut rib = rib();
    let won = duel(
        &mut rib,
        (peer(1, 65001, true), PathAttributes { med: Some(20), ..path(&[65001]) }),
        (peer(2, 65001, true), PathAttributes { med: Some(10), ..path(&[65001]) }),
    );
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn med_is_not_compared_across_neighbour_ases() {
    let mut rib = rib();
    // Peer 2's MED is lower, but it is in another AS: router id decides, peer 1 wins.
    let won = duel(
        &mut rib,
        (peer(1, 65001, true), PathAttributes { med: Some(20), ..path(&[65001]) }),
        (peer(2, 65002, true), PathAttributes { med: Some(10), ..path(&[65002]) }),
    );
    assert_eq!(won, Source::Peer(PeerId(1)));
}

#[test]
fn always_compare_med_compares_across_neighbour_ases() {
    let mut rib = rib_with(DecisionConfig { always_compare_med: true, ..DecisionConfig::default() });
    let won = duel(
        &mut rib,
        (peer(1, 65001, true), PathAttributes { med: Some(20), ..path(&[65001]) }),
        (peer(2, 65002, true), PathAttributes { med: Some(10), ..path(&[65002]) }),
    );
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn missing_med_counts_as_zero() {
    let mut rib = rib();
    let won = duel(
        &mut rib,
        (peer(1, 65001, true), PathAttributes { med: Some(1), ..path(&[65001]) }),
        (peer(2, 65001, true), path(&[65001])),
    );
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn med_elimination_is_per_neighbour_as_not_pairwise() {
    // A (AS 65001, MED 5), B (AS 65002, MED 0), C (AS 65001, MED 1): C removes A; B and C
    // remain and router id picks B over C, whatever the arrival order.
    for order in [[1u8, 2, 3], [3, 2, 1], [2, 3, 1]] {
        let mut rib = rib();
        let t = Instant::now();
        for n in order {
            let (asn, med) = match n {
                1 => (65001, 5),
                2 => (65002, 0),
                _ => (65001, 1),
            };
            let info = peer(n, asn, true);
            up(&mut rib, info);
            announce(&mut rib, &info, &[PFX], PathAttributes { med: Some(med), ..path(&[asn]) }, t);
        }
        assert_eq!(best_peer(&rib, PFX), Some(Source::Peer(PeerId(2))), "order {order:?}");
    }
}

#[test]
fn ebgp_beats_ibgp() {
    let mut rib = rib();
    let won = duel(&mut rib, (peer(1, LOCAL_AS, false), path(&[65001])), (peer(2, 65002, true), path(&[65002])));
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn oldest_ebgp_path_wins_only_when_enabled() {
    for (enabled, winner) in [(false, 1), (true, 2)] {
        let mut rib = rib_with(DecisionConfig { prefer_oldest_ebgp: enabled, ..DecisionConfig::default() });
        let t = Instant::now();
        let (a, b) = (peer(1, 65001, true), peer(2, 65002, true));
        up(&mut rib, a);
        up(&mut rib, b);
        announce(&mut rib, &b, &[PFX], path(&[65002]), t);
        announce(&mut rib, &a, &[PFX], path(&[65001]), t + Duration::from_secs(5));
        assert_eq!(best_peer(&rib, PFX), Some(Source::Peer(PeerId(winner))), "prefer_oldest_ebgp = {enabled}");
    }
}

#[test]
fn lowest_router_id_wins() {
    let mut rib = rib();
    let mut a = peer(1, 65001, true);
    a.router_id = Ipv4Addr::new(198, 51, 100, 200);
    let won = duel(&mut rib, (a, path(&[65001])), (peer(2, 65002, true), path(&[65002])));
    assert_eq!(won, Source::Peer(PeerId(2)));
}

#[test]
fn lowest_peer_address_breaks_equal_router_ids() {
    let mut rib = rib();
    let mut a = peer(1, 65001, true);
    a.addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
    let mut b = peer(2, 65002, true);
    b.router_id = a.router_id;
    let won = duel(&mut rib, (a, path(&[65001])), (b, path(&[65002])));
    assert_eq!(won, Source::Peer(PeerId(2)));
}

// ----- ECMP -----

#[test]
fn ecmp_set_holds_the_equal_paths_best_first() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b, c) = (peer(1, 65001, true), peer(2, 65002, true), peer(3, 65003, true));
    for info in [c, b, a] {
        up(&mut rib, info);
    }
    announce(&mut rib, &c, &[PFX], path(&[65003, 64500, 64501]), t); // longer: not in the set
    announce(&mut rib, &b, &[PFX], path(&[65002, 64500]), t);
    let out = announce(&mut rib, &a, &[PFX], path(&[65001, 64500]), t);
    let change = out.changes.last().unwrap();
    assert_eq!(change.best.as_ref().unwrap().source, Source::Peer(a.id));
    let hops: Vec<_> = change.ecmp.iter().map(|e| (e.peer, e.next_hop)).collect();
    assert_eq!(hops, vec![(a.id, NextHop::V4(nh(&a))), (b.id, NextHop::V4(nh(&b)))]);
    let view = rib.lookup(&p(PFX), t).unwrap();
    let flags: Vec<_> = view.paths.iter().map(|v| (v.source, v.best, v.ecmp)).collect();
    assert_eq!(
        flags,
        vec![(Source::Peer(a.id), true, true), (Source::Peer(b.id), false, true), (Source::Peer(c.id), false, false)]
    );
}

#[test]
fn ecmp_without_relax_needs_the_same_neighbour_as() {
    let mut rib = rib_with(DecisionConfig { multipath_relax: false, ..DecisionConfig::default() });
    let t = Instant::now();
    let (a, b, c) = (peer(1, 65001, true), peer(2, 65002, true), peer(3, 65001, true));
    for info in [a, b, c] {
        up(&mut rib, info);
        announce(&mut rib, &info, &[PFX], path(&[info.asn, 64500]), t);
    }
    let view = rib.lookup(&p(PFX), t).unwrap();
    let ecmp: Vec<_> = view.paths.iter().filter(|v| v.ecmp).map(|v| v.source).collect();
    assert_eq!(ecmp, vec![Source::Peer(a.id), Source::Peer(c.id)]);
}

#[test]
fn ecmp_leaves_out_paths_lost_before_the_ebgp_step() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b, c) = (peer(1, 65001, true), peer(2, 65001, true), peer(3, LOCAL_AS, false));
    for info in [a, b, c] {
        up(&mut rib, info);
    }
    announce(&mut rib, &a, &[PFX], PathAttributes { med: Some(0), ..path(&[65001]) }, t);
    announce(&mut rib, &b, &[PFX], PathAttributes { med: Some(50), ..path(&[65001]) }, t); // loses on MED
    announce(&mut rib, &c, &[PFX], path(&[65001]), t); // loses on iBGP
    let view = rib.lookup(&p(PFX), t).unwrap();
    let ecmp: Vec<_> = view.paths.iter().filter(|v| v.ecmp).map(|v| v.source).collect();
    assert_eq!(ecmp, vec![Source::Peer(a.id)]);
}

#[test]
fn max_paths_caps_the_ecmp_set() {
    let mut rib = rib_with(DecisionConfig { max_paths: 2, ..DecisionConfig::default() });
    let t = Instant::now();
    for n in 1..=4u8 {
        let info = peer(n, 65000 + u32::from(n), true);
        up(&mut rib, info);
        announce(&mut rib, &info, &[PFX], path(&[info.asn]), t);
    }
    let change = rib.lookup(&p(PFX), t).unwrap();
    assert_eq!(change.paths.iter().filter(|v| v.ecmp).count(), 2);
}

#[test]
fn ibgp_ecmp_without_relax_needs_the_identical_as_path() {
    let mut rib = rib_with(DecisionConfig { multipath_relax: false, ..DecisionConfig::default() });
    let t = Instant::now();
    let (a, b, c) = (peer(1, LOCAL_AS, false), peer(2, LOCAL_AS, false), peer(3, LOCAL_AS, false));
    for (info, asns) in [(a, [65001, 64500]), (b, [65001, 64500]), (c, [65001, 64501])] {
        up(&mut rib, info);
        announce(&mut rib, &info, &[PFX], path(&asns), t);
    }
    let view = rib.lookup(&p(PFX), t).unwrap();
    let ecmp: Vec<_> = view.paths.iter().filter(|v| v.ecmp).map(|v| v.source).collect();
    assert_eq!(ecmp, vec![Source::Peer(a.id), Source::Peer(b.id)]);
}

// ----- deltas -----

#[test]
fn withdrawing_the_best_promotes_the_next_path_and_reports_the_previous() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b) = (peer(1, 65001, true), peer(2, 65002, true));
    up(&mut rib, a);
    up(&mut rib, b);
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    announce(&mut rib, &b, &[PFX], path(&[65002, 64500]), t);
    let out = withdraw(&mut rib, &a, &[PFX], t);
    assert_eq!(out.changes.len(), 1);
    let ch = &out.changes[0];
    assert_eq!(ch.previous.as_ref().unwrap().source, Source::Peer(a.id));
    assert_eq!(ch.best.as_ref().unwrap().source, Source::Peer(b.id));
    assert_eq!(ch.ecmp, vec![EcmpPath { peer: b.id, next_hop: NextHop::V4(nh(&b)) }]);
    let out = withdraw(&mut rib, &b, &[PFX], t);
    assert_eq!(out.changes[0].best, None);
    assert!(rib.is_empty());
}

#[test]
fn identical_reannouncement_and_non_best_changes_produce_no_delta() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b) = (peer(1, 65001, true), peer(2, 65002, true));
    up(&mut rib, a);
    up(&mut rib, b);
    assert_eq!(announce(&mut rib, &a, &[PFX], path(&[65001]), t).changes.len(), 1);
    assert!(announce(&mut rib, &a, &[PFX], path(&[65001]), t).changes.is_empty());
    // b's path is worse (longer) and stays out of the ECMP set: no delta, twice.
    assert!(announce(&mut rib, &b, &[PFX], path(&[65002, 1]), t).changes.is_empty());
    assert!(announce(&mut rib, &b, &[PFX], path(&[65002, 2]), t).changes.is_empty());
    // Changing the best path's attributes is a delta even though the source is the same.
    let out = announce(&mut rib, &a, &[PFX], PathAttributes { med: Some(7), ..path(&[65001]) }, t);
    assert_eq!(out.changes[0].best.as_ref().unwrap().attrs.attributes.med, Some(7));
}

// ----- UPDATE handling -----

#[test]
fn treat_as_withdraw_removes_every_prefix_of_the_message() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65000, true);
    up(&mut rib, a);
    let opts = DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() };
    let nlri = [24, 198, 51, 100, 24, 203, 0, 113];
    let good = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP], &nlri);
    let (Message::Update(u), _) = decode_message(&good, &opts).unwrap().unwrap() else { panic!("UPDATE") };
    assert_eq!(rib.apply_update(a.id, &u, t).unwrap().changes.len(), 2);
    // Same prefixes, MED of 3 octets: RFC 7606 7.6 treat-as-withdraw.
    let bad_med: &[u8] = &[0x80, 4, 3, 0, 0, 1];
    let bad = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, bad_med], &nlri);
    let (Message::Update(u), _) = decode_message(&bad, &opts).unwrap().unwrap() else { panic!("UPDATE") };
    let out = rib.apply_update(a.id, &u, t).unwrap();
    assert!(out.treat_as_withdraw);
    assert_eq!(out.changes.iter().filter(|c| c.best.is_none()).count(), 2);
    assert!(rib.is_empty());
    let c = rib.peer(a.id).unwrap().counters;
    assert_eq!((c.treat_as_withdraw, c.accepted, c.withdrawn), (1, 0, 2));
}

#[test]
fn mp_reach_and_mp_unreach_carry_ipv6() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    let v6 = [p("2001:db8:1::/48"), p("2001:db8:2::/48")];
    let hop = NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: Some("fe80::1".parse().unwrap()) };
    let u = Update {
        attributes: path(&[65001]),
        mp_reach: Some(MpReach { family: Family::Ipv6Unicast, next_hop: hop, nlri: Prefixes::List(&v6) }),
        ..Update::default()
    };
    let out = rib.apply_update(a.id, &u, t).unwrap();
    assert_eq!(out.changes.len(), 2);
    assert_eq!(out.changes[0].ecmp, vec![EcmpPath { peer: a.id, next_hop: hop }]);
    let gone = [v6[0]];
    let u = Update {
        mp_unreach: Some(MpUnreach { family: Family::Ipv6Unicast, withdrawn: Prefixes::List(&gone) }),
        ..Update::default()
    };
    let out = rib.apply_update(a.id, &u, t).unwrap();
    assert_eq!((out.changes.len(), out.changes[0].prefix, out.end_of_rib), (1, v6[0], None));
    assert_eq!(rib.len(), 1);
}

#[test]
fn ipv4_prefixes_with_an_ipv6_next_hop_keep_it() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    let v4 = [p(PFX)];
    let hop = NextHop::V6 { global: "fe80::1".parse().unwrap(), link_local: Some("fe80::1".parse().unwrap()) };
    let u = Update {
        attributes: path(&[65001]),
        mp_reach: Some(MpReach { family: Family::Ipv4Unicast, next_hop: hop, nlri: Prefixes::List(&v4) }),
        ..Update::default()
    };
    let out = rib.apply_update(a.id, &u, Instant::now()).unwrap();
    assert_eq!(out.changes[0].ecmp[0].next_hop, hop);
}

#[test]
fn recognises_end_of_rib_for_both_families() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let out = rib.apply_update(a.id, &Update::end_of_rib_marker(family), Instant::now()).unwrap();
        assert_eq!(out.end_of_rib, Some(family));
        assert!(out.changes.is_empty());
    }
}

#[test]
fn routes_with_the_local_as_in_the_path_are_rejected() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    let out = announce(&mut rib, &a, &[PFX], path(&[65001, LOCAL_AS, 64500]), Instant::now());
    assert_eq!((out.rejected, out.changes.len()), (1, 0));
    assert_eq!(rib.peer(a.id).unwrap().counters.rejected, 1);
}

#[test]
fn default_import_policy_rejects_everything_and_counts_it() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    rib.peer_up(a, ImportPolicy::default(), ExportPolicy::default(), session_v4());
    let out = announce(&mut rib, &a, &["0.0.0.0/0", PFX], path(&[65001]), Instant::now());
    assert_eq!(out.rejected, 2);
    assert!(rib.is_empty());
    let c = rib.peer(a.id).unwrap().counters;
    assert_eq!((c.received, c.rejected, c.accepted), (2, 2, 0));
}

#[test]
fn prefix_list_admits_only_matching_prefixes() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    let import = ImportPolicy {
        prefixes: crate::policy::tests::list(&["0.0.0.0/0", "::/0", "203.0.113.0/24 le 32"]),
        ..ImportPolicy::default()
    };
    rib.peer_up(a, import, ExportPolicy::default(), session_v4());
    let out =
        announce(&mut rib, &a, &["0.0.0.0/0", "203.0.113.128/25", "198.51.100.0/24"], path(&[65001]), Instant::now());
    assert_eq!(out.rejected, 1);
    assert!(rib.best(&p("198.51.100.0/24")).is_none());
    assert!(rib.best(&p("203.0.113.128/25")).is_some() && rib.best(&p("0.0.0.0/0")).is_some());
}

#[test]
fn a_rejected_reannouncement_removes_the_earlier_path() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    let drop_tagged = Community::new(65001, 666);
    let import = ImportPolicy {
        rules: vec![PolicyRule::new(Match::Community(drop_tagged), Action::Reject)],
        ..ImportPolicy::accept_all()
    };
    rib.peer_up(a, import, ExportPolicy::default(), session_v4());
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    let out = announce(&mut rib, &a, &[PFX], PathAttributes { communities: vec![drop_tagged], ..path(&[65001]) }, t);
    assert_eq!((out.rejected, out.changes[0].best.clone()), (1, None));
    assert_eq!(rib.peer(a.id).unwrap().counters.accepted, 0);
}

#[test]
fn import_rules_can_set_local_pref_and_steer_the_decision() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b) = (peer(1, 65001, true), peer(2, 65002, true));
    rib.peer_up(a, ImportPolicy::accept_all(), ExportPolicy::default(), session_v4());
    let prefer = ImportPolicy {
        rules: vec![PolicyRule::new(Match::OriginAs(64500), Action::SetLocalPref(300))],
        ..ImportPolicy::accept_all()
    };
    rib.peer_up(b, prefer, ExportPolicy::default(), session_v4());
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    announce(&mut rib, &b, &[PFX], path(&[65002, 64499, 64500]), t);
    assert_eq!(best_peer(&rib, PFX), Some(Source::Peer(b.id)));
    assert_eq!(rib.lookup(&p(PFX), t).unwrap().paths[0].local_pref, 300);
}

#[test]
fn identical_attributes_are_shared_between_prefixes_and_updates() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX, "198.51.100.0/24"], path(&[65001, 64500]), t);
    announce(&mut rib, &a, &["192.0.2.0/24"], path(&[65001, 64500]), t);
    let x = rib.best(&p(PFX)).unwrap().attrs;
    let y = rib.best(&p("192.0.2.0/24")).unwrap().attrs;
    assert!(Arc::ptr_eq(&x, &y));
    assert_eq!(rib.peer(a.id).unwrap().attribute_sets, 1);
}

#[test]
fn updates_from_unknown_or_down_peers_are_errors() {
    let mut rib = rib();
    let a = peer(1, 65001, true);
    let u = Update::default();
    assert_eq!(rib.apply_update(a.id, &u, Instant::now()), Err(RibError::UnknownPeer { peer: a.id }));
    up(&mut rib, a);
    rib.peer_down(a.id).unwrap();
    let err = rib.apply_update(a.id, &u, Instant::now()).unwrap_err();
    assert_eq!(err, RibError::PeerDown { peer: a.id, addr: a.addr });
    assert!(err.to_string().contains("192.0.2.1"), "{err}");
}

// ----- peer down, graceful restart -----

#[test]
fn peer_down_removes_its_routes_with_deltas() {
    let mut rib = rib();
    let t = Instant::now();
    let (a, b) = (peer(1, 65001, true), peer(2, 65002, true));
    up(&mut rib, a);
    up(&mut rib, b);
    announce(&mut rib, &a, &[PFX, "198.51.100.0/24"], path(&[65001]), t);
    announce(&mut rib, &b, &[PFX], path(&[65002, 64500]), t);
    let mut changes = rib.peer_down(a.id).unwrap();
    changes.sort_by_key(|c| c.prefix);
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].prefix, p("198.51.100.0/24"));
    assert_eq!(changes[0].best, None);
    assert_eq!(changes[1].best.as_ref().unwrap().source, Source::Peer(b.id));
    assert_eq!(rib.len(), 1);
    let s = rib.peer(a.id).unwrap();
    assert!(!s.up);
    assert_eq!((s.counters.accepted, s.attribute_sets), (0, 0));
}

#[test]
fn stale_paths_stay_until_swept_and_refreshed_ones_survive() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX, "198.51.100.0/24"], path(&[65001]), t);
    let v6 = [p("2001:db8:1::/48")];
    let hop = NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: None };
    let u = Update {
        attributes: path(&[65001]),
        mp_reach: Some(MpReach { family: Family::Ipv6Unicast, next_hop: hop, nlri: Prefixes::List(&v6) }),
        ..Update::default()
    };
    rib.apply_update(a.id, &u, t).unwrap();

    assert_eq!(rib.mark_stale(a.id).unwrap(), (3, vec![]));
    assert!(rib.lookup(&p(PFX), t).unwrap().paths[0].stale);
    assert_eq!(rib.len(), 3, "stale routes keep forwarding");
    up(&mut rib, a);
    // Refreshed with the same attributes: no delta, no longer stale.
    assert!(announce(&mut rib, &a, &[PFX], path(&[65001]), t).changes.is_empty());
    assert!(!rib.lookup(&p(PFX), t).unwrap().paths[0].stale);
    assert_eq!(rib.peer(a.id).unwrap().counters.stale, 2);

    let swept = rib.sweep_stale(a.id, Some(Family::Ipv4Unicast)).unwrap();
    assert_eq!(swept.iter().map(|c| (c.prefix, c.best.is_none())).collect::<Vec<_>>(), [(p("198.51.100.0/24"), true)]);
    assert!(rib.best(&v6[0]).is_some(), "IPv6 waits for its own End-of-RIB");
    assert_eq!(rib.sweep_stale(a.id, None).unwrap().len(), 1);
    let c = rib.peer(a.id).unwrap().counters;
    assert_eq!((c.accepted, c.stale), (1, 0));
    assert_eq!(rib.len(), 1);
}

#[test]
fn a_second_restart_removes_paths_still_stale_from_the_first() {
    // RFC 4724 4.2: the peer restarts, re-sends only PFX, and restarts again before its
    // End-of-RIB: 198.51.100.0/24, stale since the first restart, goes; PFX is kept as stale.
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX, "198.51.100.0/24"], path(&[65001]), t);
    assert_eq!(rib.mark_stale(a.id).unwrap().0, 2);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    let (marked, removed) = rib.mark_stale(a.id).unwrap();
    assert_eq!(marked, 1);
    assert_eq!(
        removed.iter().map(|c| (c.prefix, c.best.is_none())).collect::<Vec<_>>(),
        [(p("198.51.100.0/24"), true)]
    );
    assert!(rib.lookup(&p(PFX), t).unwrap().paths[0].stale);
    let c = rib.peer(a.id).unwrap().counters;
    assert_eq!((c.accepted, c.stale), (1, 1));
}

#[test]
fn a_route_refresh_resends_everything_and_keeps_a_crossed_limit() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up_limited(&mut rib, a, 1, MaxPrefixAction::Teardown);
    rib.set_local_routes(vec![LocalRoute::new(p("192.0.2.0/24"))], t);
    let first = rib.export(a.id).unwrap();
    assert!(!first.is_empty());
    assert!(rib.export(a.id).unwrap().is_empty(), "nothing new");
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    assert!(announce(&mut rib, &a, &["198.51.100.0/24"], path(&[65001]), t).max_prefix.is_some());

    rib.resend(a.id).unwrap();
    assert_eq!(rib.export(a.id).unwrap(), first, "the same routes and End-of-RIB again");
    // The limit stays crossed until the session restarts: still refused.
    let out = announce(&mut rib, &a, &["203.0.113.0/25"], path(&[65001]), t);
    assert_eq!((out.rejected, rib.len()), (1, 2));
}

// ----- max-prefix -----

#[test]
fn max_prefix_warn_reports_once_and_keeps_the_routes() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up_limited(&mut rib, a, 2, MaxPrefixAction::Warn);
    let out = announce(&mut rib, &a, &["192.0.2.0/24", "198.51.100.0/24"], path(&[65001]), t);
    assert_eq!(out.max_prefix, None, "at the limit is not over it");
    let out = announce(&mut rib, &a, &[PFX, "203.0.113.0/25"], path(&[65001]), t);
    let event = out.max_prefix.unwrap();
    assert_eq!((event.limit, event.accepted, event.action), (2, 3, MaxPrefixAction::Warn));
    assert!(event.to_string().contains("warning only"), "{event}");
    assert_eq!(rib.len(), 4);
    assert_eq!(announce(&mut rib, &a, &["203.0.113.128/25"], path(&[65001]), t).max_prefix, None);
    // Back under the limit re-arms the warning.
    withdraw(&mut rib, &a, &[PFX, "203.0.113.0/25", "203.0.113.128/25"], t);
    assert!(announce(&mut rib, &a, &[PFX], path(&[65001]), t).max_prefix.is_some());
}

#[test]
fn max_prefix_teardown_refuses_the_excess_and_builds_the_cease_data() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up_limited(&mut rib, a, 2, MaxPrefixAction::Teardown);
    announce(&mut rib, &a, &["192.0.2.0/24", "198.51.100.0/24"], path(&[65001]), t);
    // Replacing an already accepted prefix at the limit is not growth.
    let out = announce(&mut rib, &a, &["192.0.2.0/24"], path(&[65001, 64500]), t);
    assert_eq!((out.max_prefix, out.changes.len()), (None, 1));
    let out = announce(&mut rib, &a, &[PFX, "203.0.113.0/25"], path(&[65001]), t);
    let event = out.max_prefix.unwrap();
    assert_eq!((event.family, event.accepted, event.action), (Family::Ipv4Unicast, 3, MaxPrefixAction::Teardown));
    assert_eq!(rib.len(), 2, "the prefixes over the limit never reach the Loc-RIB");
    assert_eq!(out.rejected, 2);
    assert!(event.to_string().contains("Cease 6/1"), "{event}");
    let n = event.notification();
    assert_eq!((n.code, n.subcode), (6, 1));
    // RFC 4486: AFI 1 (2 octets), SAFI 1 (1 octet), limit 2 (4 octets).
    assert_eq!(n.data, vec![0, 1, 1, 0, 0, 0, 2]);

    let v6 = Prefix::new("2001:db8::".parse().unwrap(), 32).unwrap();
    let e6 = MaxPrefixEvent { family: v6.family(), limit: 100_000, ..event };
    assert_eq!(e6.notification().data, vec![0, 2, 1, 0, 0x01, 0x86, 0xa0]);
}

#[test]
fn max_prefix_counts_each_family_against_the_limit_on_its_own() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up_limited(&mut rib, a, 2, MaxPrefixAction::Teardown);
    announce(&mut rib, &a, &["192.0.2.0/24", "198.51.100.0/24"], path(&[65001]), t);
    // Two IPv6 prefixes beside two IPv4 ones: each family is at its limit, none over it.
    let v6 = [p("2001:db8:1::/48"), p("2001:db8:2::/48"), p("2001:db8:3::/48")];
    let hop = NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: None };
    fn mp<'a>(nlri: &'a [Prefix], next_hop: NextHop) -> Update<'a> {
        Update {
            attributes: path(&[65001]),
            mp_reach: Some(MpReach { family: Family::Ipv6Unicast, next_hop, nlri: Prefixes::List(nlri) }),
            ..Update::default()
        }
    }
    let out = rib.apply_update(a.id, &mp(&v6[..2], hop), t).unwrap();
    assert_eq!((out.max_prefix, out.changes.len()), (None, 2));
    assert_eq!(rib.peer(a.id).unwrap().counters.accepted, 4, "the summary still counts both families");
    // The third IPv6 prefix crosses the IPv6 limit, and the event names that family's count.
    let out = rib.apply_update(a.id, &mp(&v6[2..], hop), t).unwrap();
    let event = out.max_prefix.expect("IPv6 over its limit");
    assert_eq!((event.family, event.accepted), (Family::Ipv6Unicast, 3));
    assert_eq!(event.notification().data, vec![0, 2, 1, 0, 0, 0, 2]);
    assert!(event.to_string().contains("3 accepted ipv6-unicast prefixes"), "{event}");
}

#[test]
fn nlri_of_a_family_the_session_did_not_negotiate_are_ignored() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    let v4_only = ExportSession { families: vec![Family::Ipv4Unicast], ..session_v4() };
    rib.peer_up(a, ImportPolicy::accept_all(), ExportPolicy::default(), v4_only);
    let v6 = [p("2001:db8:1::/48")];
    let hop = NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: None };
    // IPv6 in MP_REACH beside IPv4 in the classic field: only the IPv4 prefix is taken.
    let v4 = [p(PFX)];
    let u = Update {
        attributes: PathAttributes { next_hop: Some(nh(&a)), ..path(&[65001]) },
        nlri: Prefixes::List(&v4),
        mp_reach: Some(MpReach { family: Family::Ipv6Unicast, next_hop: hop, nlri: Prefixes::List(&v6) }),
        ..Update::default()
    };
    let out = rib.apply_update(a.id, &u, t).unwrap();
    assert_eq!((out.changes.len(), out.ignored), (1, 1));
    assert!(rib.best(&v6[0]).is_none());
    assert_eq!(best_peer(&rib, PFX), Some(Source::Peer(a.id)));
    let u = Update {
        mp_unreach: Some(MpUnreach { family: Family::Ipv6Unicast, withdrawn: Prefixes::List(&v6) }),
        ..Update::default()
    };
    assert_eq!(rib.apply_update(a.id, &u, t).unwrap().ignored, 1);
    let c = rib.peer(a.id).unwrap().counters;
    assert_eq!((c.received, c.accepted, c.withdrawn, c.ignored), (1, 1, 0, 2));

    // An IPv6-only session (RFC 8950 peers may negotiate only IPv6): the classic IPv4 fields
    // are ignored the same way, withdrawals included.
    let b = peer(2, 65002, true);
    let v6_only = ExportSession { families: vec![Family::Ipv6Unicast], ..session_v4() };
    rib.peer_up(b, ImportPolicy::accept_all(), ExportPolicy::default(), v6_only);
    let out = announce(&mut rib, &b, &["198.51.100.0/24"], path(&[65002]), t);
    assert_eq!((out.changes.len(), out.ignored), (0, 1));
    assert!(rib.best(&p("198.51.100.0/24")).is_none());
    assert_eq!(withdraw(&mut rib, &b, &[PFX], t).ignored, 1);
    assert_eq!(best_peer(&rib, PFX), Some(Source::Peer(a.id)), "b cannot withdraw a's route anyway");
}

// ----- export -----

fn export_peer(rib: &mut Rib, info: PeerInfo, session: ExportSession) -> ExportDiff {
    rib.peer_up(info, ImportPolicy::accept_all(), ExportPolicy::default(), session);
    rib.export(info.id).unwrap()
}

#[test]
fn learned_routes_are_never_exported_and_locals_are() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX, "0.0.0.0/0"], path(&[65001]), t);
    rib.set_local_routes(vec![LocalRoute::new(p("198.51.100.0/24"))], t);
    let b = peer(2, 65002, true);
    let diff = export_peer(&mut rib, b, session_v4());
    let sent: Vec<Prefix> = diff.announce.iter().flat_map(|a| a.prefixes.clone()).collect();
    assert_eq!(sent, vec![p("198.51.100.0/24")]);
    // Peer a gets the local route too, never its own or b's routes.
    let diff = rib.export(a.id).unwrap();
    assert_eq!(diff.announce.iter().map(|a| a.prefixes.len()).sum::<usize>(), 1);
}

#[test]
fn ebgp_ipv4_export_prepends_the_local_as_and_sets_next_hop_self() {
    let mut rib = rib();
    let t = Instant::now();
    let route = LocalRoute {
        communities: vec![Community::new(65101, 100)],
        large_communities: vec![LargeCommunity { global_admin: 65101, local_data1: 1, local_data2: 2 }],
        med: Some(10),
        local_pref: Some(300),
        ..LocalRoute::new(p("198.51.100.0/24"))
    };
    rib.set_local_routes(vec![route], t);
    let diff = export_peer(&mut rib, peer(1, 65001, true), session_v4());
    let a = &diff.announce[0];
    assert_eq!(a.next_hop, NextHop::V4(Ipv4Addr::new(192, 0, 2, 11)));
    assert_eq!(a.attributes.as_path, Some(AsPath::sequence(&[LOCAL_AS])));
    assert_eq!(a.attributes.origin, Some(Origin::Igp));
    assert_eq!(a.attributes.local_pref, None, "LOCAL_PREF is not sent over eBGP");
    assert_eq!(a.attributes.med, Some(10));
    assert_eq!(a.attributes.communities, vec![Community::new(65101, 100)]);
    assert_eq!(a.attributes.large_communities.len(), 1);
}

#[test]
fn ibgp_export_sends_local_pref_and_an_empty_path() {
    let mut rib = rib();
    rib.set_local_routes(vec![LocalRoute::new(p("198.51.100.0/24"))], Instant::now());
    let diff = export_peer(&mut rib, peer(1, LOCAL_AS, false), session_v4());
    let a = &diff.announce[0];
    assert_eq!((a.attributes.local_pref, a.attributes.as_path.clone()), (Some(100), Some(AsPath::default())));
}

#[test]
fn ipv6_export_uses_the_global_and_link_local_next_hop() {
    let mut rib = rib();
    rib.set_local_routes(vec![LocalRoute::new(p("2001:db8:100::/64"))], Instant::now());
    let ll: Ipv6Addr = "fe80::11".parse().unwrap();
    let session = ExportSession { link_local: Some(ll), ..session_v4() };
    let diff = export_peer(&mut rib, peer(1, 65001, true), session);
    assert_eq!(
        diff.announce[0].next_hop,
        NextHop::V6 { global: "2001:db8::11".parse().unwrap(), link_local: Some(ll) }
    );
    // Unnumbered: only the link-local address, written in both fields.
    let session = ExportSession { local_v6: None, link_local: Some(ll), ..session_v4() };
    let diff = export_peer(&mut rib, peer(2, 65002, true), session);
    assert_eq!(diff.announce[0].next_hop, NextHop::V6 { global: ll, link_local: Some(ll) });
}

#[test]
fn ipv4_over_an_ipv6_only_session_uses_the_rfc8950_next_hop() {
    let mut rib = rib();
    rib.set_local_routes(vec![LocalRoute::new(p("198.51.100.0/24"))], Instant::now());
    let ll: Ipv6Addr = "fe80::11".parse().unwrap();
    let enhe =
        ExportSession { local_v4: None, local_v6: None, link_local: Some(ll), extended_next_hop: true, ..session_v4() };
    let diff = export_peer(&mut rib, peer(1, 65001, true), enhe.clone());
    assert_eq!(diff.announce[0].next_hop, NextHop::V6 { global: ll, link_local: Some(ll) });
    // And the codec writes it as MP_REACH_NLRI for IPv4 that an RFC 8950 receiver decodes.
    let mut bytes = Vec::new();
    let opts = EncodeOptions { four_octet_asn: true, extended_message: false };
    diff.encode(&opts, &mut bytes).unwrap();
    let dopts = DecodeOptions { four_octet_asn: true, extended_next_hop: true, ebgp: true, ..DecodeOptions::default() };
    let (Message::Update(u), _) = decode_message(&bytes, &dopts).unwrap().unwrap() else { panic!("UPDATE") };
    assert_eq!(u.mp_reach.unwrap().family, Family::Ipv4Unicast);
    assert_eq!(u.announced().collect::<Vec<_>>(), vec![p("198.51.100.0/24")]);

    // Without extended next hop the IPv4 route cannot be sent: skipped with the reason.
    let diff = export_peer(&mut rib, peer(2, 65002, true), ExportSession { extended_next_hop: false, ..enhe });
    assert!(diff.announce.is_empty());
    assert!(diff.skipped[0].reason.contains("RFC 8950"), "{:?}", diff.skipped);
}

#[test]
fn export_diff_withdraws_removed_announcements_and_sends_end_of_rib_once() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    rib.set_local_routes(vec![LocalRoute::new(p("198.51.100.0/24")), LocalRoute::new(p("2001:db8:100::/64"))], t);
    let first = export_peer(&mut rib, a, session_v4());
    assert_eq!(first.announce.len(), 2);
    assert_eq!(first.end_of_rib, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert_eq!(rib.peer(a.id).unwrap().counters.sent, 2);
    assert!(rib.export(a.id).unwrap().is_empty(), "nothing changed");

    rib.set_local_routes(vec![LocalRoute { med: Some(5), ..LocalRoute::new(p("198.51.100.0/24")) }], t);
    let diff = rib.export(a.id).unwrap();
    assert_eq!(diff.withdraw, vec![p("2001:db8:100::/64")]);
    assert_eq!(diff.announce[0].attributes.med, Some(5));
    assert!(diff.end_of_rib.is_empty());

    // Encoded: one withdrawal UPDATE and one announcement, which decode back.
    let mut bytes = Vec::new();
    let opts = EncodeOptions { four_octet_asn: true, extended_message: false };
    assert_eq!(diff.encode(&opts, &mut bytes).unwrap(), 2);
    let dopts = DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() };
    let (Message::Update(w), used) = decode_message(&bytes, &dopts).unwrap().unwrap() else { panic!("UPDATE") };
    assert_eq!(w.withdrawals().collect::<Vec<_>>(), vec![p("2001:db8:100::/64")]);
    let (Message::Update(u), _) = decode_message(&bytes[used..], &dopts).unwrap().unwrap() else { panic!("UPDATE") };
    assert_eq!(u.attributes.med, Some(5));
    assert_eq!(u.attributes.as_path, Some(AsPath::sequence(&[LOCAL_AS])));

    // A new session starts from an empty Adj-RIB-Out, with End-of-RIB again.
    rib.peer_down(a.id).unwrap();
    assert!(matches!(rib.export(a.id), Err(RibError::PeerDown { .. })));
    let again = export_peer(&mut rib, a, session_v4());
    assert_eq!((again.announce.len(), again.end_of_rib.len()), (1, 2));
}

#[test]
fn export_policy_and_negotiated_families_filter_announcements() {
    let mut rib = rib();
    rib.set_local_routes(
        vec![LocalRoute::new(p("198.51.100.0/24")), LocalRoute::new(p("2001:db8:100::/64"))],
        Instant::now(),
    );
    let a = peer(1, 65001, true);
    let only_v4 = ExportSession { families: vec![Family::Ipv4Unicast], ..session_v4() };
    let diff = export_peer(&mut rib, a, only_v4);
    assert_eq!(diff.announce.iter().flat_map(|a| a.prefixes.clone()).collect::<Vec<_>>(), vec![p("198.51.100.0/24")]);
    assert_eq!(diff.skipped[0].prefix, p("2001:db8:100::/64"));
    let b = peer(2, 65002, true);
    let policy = ExportPolicy { prefixes: Some(crate::policy::tests::list(&["2001:db8::/32 le 64"])) };
    rib.peer_up(b, ImportPolicy::accept_all(), policy, session_v4());
    let diff = rib.export(b.id).unwrap();
    assert_eq!(diff.announce.iter().flat_map(|a| a.prefixes.clone()).collect::<Vec<_>>(), vec![p("2001:db8:100::/64")]);
}

// ----- queries -----

#[test]
fn lookup_reports_paths_with_flags_age_and_peer_address() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX], path(&[65001]), t);
    let view = rib.lookup(&p(PFX), t + Duration::from_secs(90)).unwrap();
    let v = &view.paths[0];
    assert_eq!((v.source, v.peer_addr, v.best, v.ecmp, v.stale), (Source::Peer(a.id), Some(a.addr), true, true, false));
    assert_eq!(v.age, Duration::from_secs(90));
    assert_eq!(v.local_pref, 100);
    assert!(rib.lookup(&p("203.0.113.0/25"), t).is_none());
}

#[test]
fn longest_match_finds_the_covering_prefix() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &["0.0.0.0/0", PFX, "203.0.113.128/25"], path(&[65001]), t);
    let hit = |s: &str| rib.longest_match(s.parse().unwrap(), t).map(|v| v.prefix);
    assert_eq!(hit("203.0.113.200"), Some(p("203.0.113.128/25")));
    assert_eq!(hit("203.0.113.5"), Some(p(PFX)));
    assert_eq!(hit("198.51.100.1"), Some(p("0.0.0.0/0")));
    assert_eq!(hit("2001:db8::1"), None);
}

#[test]
fn routes_lists_every_prefix_sorted() {
    let mut rib = rib();
    let t = Instant::now();
    let a = peer(1, 65001, true);
    up(&mut rib, a);
    announce(&mut rib, &a, &[PFX, "192.0.2.0/24"], path(&[65001]), t);
    rib.set_local_routes(vec![LocalRoute::new(p("2001:db8:100::/64"))], t);
    let all: Vec<Prefix> = rib.routes(t).into_iter().map(|v| v.prefix).collect();
    assert_eq!(all, vec![p("192.0.2.0/24"), p(PFX), p("2001:db8:100::/64")]);
    assert_eq!(rib.peers().len(), 1);
}
