//! The model's `[bgp]` section as the speaker's configuration. Pure translation: the config crate
//! has validated every value, so a conversion that fails here is a bug, reported as such.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ferrule_bgp::driver::{BfdConfig, ListenRange, Md5Key, PeerConfig, SpeakerConfig};
use ferrule_bgp::policy::{self, ImportPolicy, PrefixList, PrefixListEntry};
use ferrule_bgp::rib::LocalRoute;
use ferrule_bgp::wire::{Community, LargeCommunity, Prefix};
use ferrule_config::{MaxPrefixAction, Model, PeerOptions};
use ipnet::IpNet;

/// How long one outbound connection attempt may take, and the pause between attempts.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// What the daemon knows of an interface named by a peer (`interface = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    /// The link-local address the peer announced itself with (router advertisements).
    pub neighbor: Option<Ipv6Addr>,
}

/// The speaker's configuration: the model's `[bgp]` section, plus `vips` (service VIPs with a
/// healthy backend) announced as host routes. A VIP that is also in `[[bgp.announce]]` keeps the
/// attributes given there. An unnumbered peer becomes a peer at the link-local address found on
/// its interface (`links`); until one is found (or while the interface is missing) it is left out.
pub fn speaker_config(model: &Model, vips: &BTreeSet<IpNet>, links: &BTreeMap<String, Link>) -> SpeakerConfig {
    let mut announcements: Vec<LocalRoute> = model
        .bgp
        .announce
        .iter()
        .map(|a| LocalRoute {
            prefix: prefix(a.prefix),
            communities: a.communities.iter().map(|c| Community(c.0)).collect(),
            large_communities: a
                .large_communities
                .iter()
                .map(|c| LargeCommunity { global_admin: c.global, local_data1: c.local1, local_data2: c.local2 })
                .collect(),
            med: a.med,
            local_pref: a.local_pref,
        })
        .collect();
    for vip in vips {
        let route = LocalRoute::new(prefix(*vip));
        if !announcements.iter().any(|a| a.prefix == route.prefix) {
            announcements.push(route);
        }
    }
    // Peers the speaker cannot be given yet (an unnumbered one before its neighbour is found, a
    // link-local one whose interface is missing): those with graceful restart are awaited by
    // name, so that our own restart waits for them as for any configured peer.
    let mut peers = Vec::new();
    let mut awaiting_peers = Vec::new();
    for p in &model.bgp.peers {
        let link = p.interface.as_ref().and_then(|name| links.get(name));
        let (address, ifindex) = match (p.address, link) {
            (Some(address), None) if p.interface.is_none() => (address, None),
            (Some(address), Some(link)) => (address, Some(link.ifindex)),
            (None, Some(Link { ifindex, neighbor: Some(n) })) => (IpAddr::V6(*n), Some(*ifindex)),
            _ => {
                if p.options.graceful_restart.is_some() {
                    let address = p.address.map_or("unnumbered peer".to_string(), |a| a.to_string());
                    awaiting_peers.push(format!("{address} on {}", p.interface.as_deref().unwrap_or("?")));
                }
                continue;
            }
        };
        peers.push(peer_config(address, ifindex, p.asn, &p.options));
    }
    SpeakerConfig {
        local_asn: model.node.asn,
        router_id: model.node.router_id,
        listen_port: model.bgp.listen_port,
        install_routes: model.bgp.install_routes,
        peers,
        listen: model
            .bgp
            .listen
            .iter()
            .map(|l| ListenRange {
                prefix: prefix(l.range),
                limit: l.limit,
                template: peer_config(l.range.addr(), None, l.asn, &l.options),
            })
            .collect(),
        announcements,
        awaiting_peers,
    }
}

fn peer_config(address: IpAddr, ifindex: Option<u32>, asn: u32, p: &PeerOptions) -> PeerConfig {
    PeerConfig {
        address,
        ifindex,
        port: p.port,
        asn,
        passive: p.passive,
        hold_time: p.hold_time,
        connect_retry: CONNECT_RETRY,
        import: ImportPolicy {
            prefixes: PrefixList {
                entries: p
                    .import
                    .iter()
                    .map(|f| PrefixListEntry { prefix: prefix(f.prefix), ge: f.ge, le: f.le })
                    .collect(),
            },
            rules: p.import_rules.iter().map(import_rule).collect(),
            max_prefix: p.max_prefix.map(|m| policy::MaxPrefix {
                limit: m.limit,
                action: match m.action {
                    MaxPrefixAction::Warn => policy::MaxPrefixAction::Warn,
                    MaxPrefixAction::Teardown => policy::MaxPrefixAction::Teardown,
                },
            }),
        },
        md5: p.password.as_ref().map(|k| Md5Key::new(k.expose().as_bytes())),
        graceful_restart: p.graceful_restart.map(|g| g.restart_time_s),
        bfd: p
            .bfd
            .map(|b| BfdConfig { interval: Duration::from_millis(b.interval_ms.into()), multiplier: b.multiplier }),
    }
}

/// A config import rule as a policy rule: every condition given must hold.
fn import_rule(rule: &ferrule_config::ImportRule) -> policy::PolicyRule {
    let mut all = Vec::new();
    if let Some(asn) = rule.as_path_contains {
        all.push(policy::Match::AsPathContains(asn));
    }
    if let Some(asn) = rule.origin_as {
        all.push(policy::Match::OriginAs(asn));
    }
    if let Some(c) = rule.community {
        all.push(policy::Match::Community(Community(c.0)));
    }
    if let Some(c) = rule.large_community {
        all.push(policy::Match::LargeCommunity(LargeCommunity {
            global_admin: c.global,
            local_data1: c.local1,
            local_data2: c.local2,
        }));
    }
    let action = match rule.action {
        ferrule_config::ImportAction::Accept => policy::Action::Accept,
        ferrule_config::ImportAction::Reject => policy::Action::Reject,
        ferrule_config::ImportAction::LocalPref(v) => policy::Action::SetLocalPref(v),
        ferrule_config::ImportAction::Med(v) => policy::Action::SetMed(v),
    };
    policy::PolicyRule::new(policy::Match::All(all), action)
}

/// A validated prefix (no host bits) as the codec's type.
pub fn prefix(net: IpNet) -> Prefix {
    Prefix::new(net.addr(), net.prefix_len()).expect("the config crate rejects prefixes with host bits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_bgp_section_becomes_speaker_config() {
        let text = r#"[node]
name = "n1"
asn = 65101
router_id = "192.0.2.11"
[bgp]
listen_port = 1179
[[bgp.peers]]
address = "2001:db8:1::1"
asn = 65000
hold_time = 9
passive = true
import = ["0.0.0.0/0", "203.0.113.0/24 le 32"]
max_prefix = { limit = 10, action = "warn" }
[[bgp.announce]]
prefix = "2001:db8:100::/64"
communities = ["65101:100"]
large_communities = ["65101:1:2"]
med = 5
"#;
        let model = ferrule_config::parse("t.toml", text).unwrap();
        let c = speaker_config(&model, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!((c.local_asn, c.listen_port), (65101, 1179));
        let peer = &c.peers[0];
        assert_eq!((peer.asn, peer.hold_time, peer.passive, peer.port), (65000, 9, true, 179));
        let entries: Vec<String> = peer.import.prefixes.entries.iter().map(ToString::to_string).collect();
        assert_eq!(entries, ["0.0.0.0/0", "203.0.113.0/24 le 32"]);
        assert!(peer.import.admits(&"203.0.113.7/32".parse::<IpNet>().map(prefix).unwrap()));
        assert!(!peer.import.admits(&"198.51.100.0/24".parse::<IpNet>().map(prefix).unwrap()));
        assert_eq!(
            peer.import.max_prefix,
            Some(policy::MaxPrefix { limit: 10, action: policy::MaxPrefixAction::Warn })
        );
        let route = &c.announcements[0];
        assert_eq!(route.prefix.to_string(), "2001:db8:100::/64");
        assert_eq!(route.communities[0].to_string(), "65101:100");
        assert_eq!(route.large_communities[0].to_string(), "65101:1:2");
        assert_eq!(route.med, Some(5));
    }

    #[test]
    fn healthy_vips_are_announced_as_host_routes_once() {
        let text = "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n\
                    [[bgp.announce]]\nprefix = \"203.0.113.10/32\"\nmed = 7\n";
        let model = ferrule_config::parse("t.toml", text).unwrap();
        let vips: BTreeSet<IpNet> =
            ["203.0.113.10/32", "2001:db8:200::10/128"].iter().map(|s| s.parse().unwrap()).collect();
        let c = speaker_config(&model, &vips, &BTreeMap::new());
        let routes: Vec<(String, Option<u32>)> =
            c.announcements.iter().map(|r| (r.prefix.to_string(), r.med)).collect();
        assert_eq!(routes, [("203.0.113.10/32".to_string(), Some(7)), ("2001:db8:200::10/128".to_string(), None)]);
    }

    #[test]
    fn import_rules_reject_by_as_path_and_community_and_set_local_pref() {
        use ferrule_bgp::wire::{AsPath, PathAttributes};
        let text = "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n\
            [[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\nimport = [\"0.0.0.0/0 le 32\"]\n\
            import_rules = [ { as_path_contains = 64666, action = \"reject\" },\n\
              { community = \"65000:666\", action = \"reject\" },\n\
              { origin_as = 65010, action = \"local_pref\", value = 200 } ]\n";
        let c = speaker_config(&ferrule_config::parse("t.toml", text).unwrap(), &BTreeSet::new(), &BTreeMap::new());
        let policy = &c.peers[0].import;
        let route = prefix("203.0.113.0/24".parse().unwrap());
        let path = |asns: &[u32], communities: &[u32]| PathAttributes {
            as_path: Some(AsPath::sequence(asns)),
            communities: communities.iter().map(|c| Community(*c)).collect(),
            ..PathAttributes::default()
        };
        assert_eq!(policy.evaluate(&route, &path(&[65000, 64666, 65010], &[])), policy::Verdict::Reject);
        assert_eq!(policy.evaluate(&route, &path(&[65000], &[(65000 << 16) | 666])), policy::Verdict::Reject);
        match policy.evaluate(&route, &path(&[65000, 65010], &[])) {
            policy::Verdict::Accept(Some(changed)) => assert_eq!(changed.local_pref, Some(200)),
            other => panic!("expected local_pref 200, got {other:?}"),
        }
        assert_eq!(policy.evaluate(&route, &path(&[65000, 65020], &[])), policy::Verdict::Accept(None));
    }

    #[test]
    fn unnumbered_peer_appears_once_its_neighbor_is_discovered_with_md5_and_gr() {
        let text = "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n\
            [[bgp.peers]]\ninterface = \"eth0\"\nasn = 65000\npassword = \"k3y\"\n\
            graceful_restart = { restart_time_s = 90 }\n\
            [[bgp.peers]]\naddress = \"fe80::2\"\ninterface = \"eth1\"\nasn = 65000\n\
            [[bgp.listen]]\nrange = \"2001:db8:500::/64\"\nasn = 65200\nlimit = 5\n";
        let model = ferrule_config::parse("t.toml", text).unwrap();
        let mut links = BTreeMap::new();
        links.insert("eth0".to_string(), Link { ifindex: 4, neighbor: None });
        let c = speaker_config(&model, &BTreeSet::new(), &links);
        assert!(c.peers.is_empty(), "no neighbor found on eth0 and eth1 missing: {:?}", c.peers);
        // A restart waits for the unnumbered peer with graceful restart (eth1's has none).
        assert_eq!(c.awaiting_peers, ["unnumbered peer on eth0"]);
        assert_eq!((c.listen[0].prefix.to_string(), c.listen[0].limit), ("2001:db8:500::/64".into(), 5));
        assert_eq!(c.listen[0].template.asn, 65200);

        links.insert("eth0".to_string(), Link { ifindex: 4, neighbor: Some("fe80::1".parse().unwrap()) });
        links.insert("eth1".to_string(), Link { ifindex: 5, neighbor: None });
        let c = speaker_config(&model, &BTreeSet::new(), &links);
        let found: Vec<(String, Option<u32>)> = c.peers.iter().map(|p| (p.address.to_string(), p.ifindex)).collect();
        assert_eq!(found, [("fe80::1".to_string(), Some(4)), ("fe80::2".to_string(), Some(5))]);
        assert_eq!(c.peers[0].md5, Some(Md5Key::new(b"k3y")));
        assert_eq!((c.peers[0].graceful_restart, c.peers[1].graceful_restart), (Some(90), None));
        assert!(c.awaiting_peers.is_empty(), "{:?}", c.awaiting_peers);
    }

    #[test]
    fn no_import_list_imports_nothing() {
        let text = "[node]\nname = \"n1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n[[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\n";
        let c = speaker_config(&ferrule_config::parse("t.toml", text).unwrap(), &BTreeSet::new(), &BTreeMap::new());
        assert!(!c.peers[0].import.admits(&"0.0.0.0/0".parse::<IpNet>().map(prefix).unwrap()));
    }
}
