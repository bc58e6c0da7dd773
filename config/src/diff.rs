//! What changed between two accepted models, keyed the way operators think of objects: peers by
//! address, announcements by prefix, services by name. Pure; reconcilers decide what to do with it.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::model::{Announce, Model, Peer, Service};

/// Differences from an old model to a new one. Added and changed entries carry the new value,
/// removed ones the old value; order follows the model that holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelDiff {
    /// The node's name, ASN, router-id or SNAT ports changed (uplinks are reported separately
    /// below).
    pub node_changed: bool,
    pub uplinks_added: Vec<String>,
    pub uplinks_removed: Vec<String>,
    pub peers_added: Vec<Peer>,
    pub peers_removed: Vec<Peer>,
    /// New value of peers whose address is in both models but whose settings differ.
    pub peers_changed: Vec<Peer>,
    pub announce_added: Vec<Announce>,
    pub announce_removed: Vec<Announce>,
    /// New value of announcements whose prefix is in both models but whose attributes differ.
    pub announce_changed: Vec<Announce>,
    pub services_added: Vec<Service>,
    pub services_removed: Vec<Service>,
    /// New value of services whose name is in both models but whose definition differs.
    pub services_changed: Vec<Service>,
    /// `[decap]` (this node as a DSR backend) differs.
    pub decap_changed: bool,
}

impl ModelDiff {
    pub fn is_empty(&self) -> bool {
        *self == ModelDiff::default()
    }
}

pub fn diff(old: &Model, new: &Model) -> ModelDiff {
    let node_changed = old.node.name != new.node.name
        || old.node.asn != new.node.asn
        || old.node.router_id != new.node.router_id
        || old.node.snat_ports != new.node.snat_ports
        || old.bgp.listen_port != new.bgp.listen_port;

    let (uplinks_added, uplinks_removed, _) = keyed(&old.node.uplinks, &new.node.uplinks, |u| u.clone());
    let (peers_added, peers_removed, peers_changed) = keyed(&old.bgp.peers, &new.bgp.peers, Peer::name);
    let (announce_added, announce_removed, announce_changed) =
        keyed(&old.bgp.announce, &new.bgp.announce, |a| a.prefix);
    let (services_added, services_removed, services_changed) = keyed(&old.services, &new.services, |s| s.name.clone());

    ModelDiff {
        node_changed,
        uplinks_added,
        uplinks_removed,
        peers_added,
        peers_removed,
        peers_changed,
        announce_added,
        announce_removed,
        announce_changed,
        services_added,
        services_removed,
        services_changed,
        decap_changed: old.decap != new.decap,
    }
}

/// (added, removed, changed) between two lists whose entries are identified by `key`.
fn keyed<T: Clone + PartialEq, K: Eq + Hash>(old: &[T], new: &[T], key: impl Fn(&T) -> K) -> (Vec<T>, Vec<T>, Vec<T>) {
    let old_by_key: HashMap<K, &T> = old.iter().map(|t| (key(t), t)).collect();
    let new_keys: HashSet<K> = new.iter().map(&key).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for t in new {
        match old_by_key.get(&key(t)) {
            None => added.push(t.clone()),
            Some(before) if *before != t => changed.push(t.clone()),
            Some(_) => {}
        }
    }
    let removed = old.iter().filter(|t| !new_keys.contains(&key(t))).cloned().collect();
    (added, removed, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Bgp, Mode, Node, Protocol};

    fn model() -> Model {
        Model {
            node: Node {
                name: "node1".into(),
                asn: 65101,
                router_id: "192.0.2.11".parse().unwrap(),
                uplinks: vec!["eth0".into(), "eth1".into()],
                snat_ports: Default::default(),
            },
            bgp: Bgp {
                listen_port: 179,
                install_routes: true,
                peers: vec![
                    Peer::new("2001:db8:1::1".parse().unwrap(), 65000),
                    Peer::new("2001:db8:2::1".parse().unwrap(), 65000),
                ],
                listen: Vec::new(),
                announce: vec![Announce::new("2001:db8:100::/64".parse().unwrap())],
            },
            services: vec![service("web", 80), service("dns", 53)],
            decap: Default::default(),
        }
    }

    fn service(name: &str, port: u16) -> Service {
        Service {
            name: name.into(),
            vip: "2001:db8:200::10".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            mode: Mode::Dsr,
            backends: vec![Backend { address: "2001:db8:300::21".parse().unwrap(), port, weight: 1 }],
            health: None,
            announce: Default::default(),
            maglev_table_size: 65537,
        }
    }

    #[test]
    fn identical_models_have_empty_diff() {
        let d = diff(&model(), &model());
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn reordering_is_not_a_change() {
        let old = model();
        let mut new = model();
        new.bgp.peers.reverse();
        new.services.reverse();
        new.node.uplinks.reverse();
        assert!(diff(&old, &new).is_empty());
    }

    #[test]
    fn node_identity_change_is_flagged_but_uplinks_are_listed() {
        let old = model();
        let mut new = model();
        new.node.router_id = "192.0.2.12".parse().unwrap();
        new.node.uplinks = vec!["eth1".into(), "eth2".into()];
        let d = diff(&old, &new);
        assert!(d.node_changed);
        assert_eq!(d.uplinks_added, vec!["eth2".to_string()]);
        assert_eq!(d.uplinks_removed, vec!["eth0".to_string()]);
        assert!(!d.is_empty());

        let mut only_uplinks = model();
        only_uplinks.node.uplinks.push("eth2".into());
        let d = diff(&old, &only_uplinks);
        assert!(!d.node_changed);
        assert_eq!(d.uplinks_added, vec!["eth2".to_string()]);
    }

    #[test]
    fn peers_keyed_by_address() {
        let old = model();
        let mut new = model();
        new.bgp.peers[0].asn = 65001; // changed
        let removed = new.bgp.peers.remove(1);
        let added = Peer::new("192.0.2.1".parse().unwrap(), 65002);
        new.bgp.peers.push(added.clone());
        let d = diff(&old, &new);
        assert_eq!(d.peers_changed, vec![new.bgp.peers[0].clone()]);
        assert_eq!(d.peers_removed, vec![removed]);
        assert_eq!(d.peers_added, vec![added]);
        assert!(!d.node_changed);
    }

    #[test]
    fn announcements_keyed_by_prefix() {
        let old = model();
        let mut new = model();
        new.bgp.announce = vec![Announce::new("2001:db8:101::/64".parse().unwrap())];
        let d = diff(&old, &new);
        assert_eq!(d.announce_added, new.bgp.announce);
        assert_eq!(d.announce_removed, old.bgp.announce);
    }

    #[test]
    fn services_keyed_by_name_report_new_value_when_changed() {
        let old = model();
        let mut new = model();
        new.services[0].backends[0].weight = 5;
        new.services.remove(1);
        new.services.push(service("ntp", 123));
        let d = diff(&old, &new);
        assert_eq!(d.services_changed, vec![new.services[0].clone()]);
        assert_eq!(d.services_changed[0].backends[0].weight, 5);
        assert_eq!(d.services_removed, vec![old.services[1].clone()]);
        assert_eq!(d.services_added, vec![service("ntp", 123)]);
    }

    #[test]
    fn renamed_service_is_removed_and_added() {
        let old = model();
        let mut new = model();
        new.services[0].name = "www".into();
        let d = diff(&old, &new);
        assert_eq!(d.services_removed.len(), 1);
        assert_eq!(d.services_removed[0].name, "web");
        assert_eq!(d.services_added.len(), 1);
        assert_eq!(d.services_added[0].name, "www");
        assert!(d.services_changed.is_empty());
    }
}
