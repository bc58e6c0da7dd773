//! Unnumbered peering: for each `[[bgp.peers]]` with `interface` and no `address`, runs IPv6
//! neighbour discovery on that interface (router advertisements both ways, `ferrule_bgp::nd`)
//! and reports the link-local address found, so the reconcile loop can give the speaker a peer
//! at `fe80::…%interface`. It owns the discovery tasks and nothing else: it never touches the
//! speaker, and a peer whose interface is missing simply waits (retried every pass).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_bgp::nd::{Discovery, DiscoveryHandle};
use ferrule_config::Model;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::bgp::Link;

/// Router advertisements every this long once the first ones are out (the discovery sends the
/// first few a second apart). FRR sends every 10 s on unnumbered links.
pub const RA_INTERVAL: Duration = Duration::from_secs(10);

/// The discovery tasks of the interfaces the model names, and what they found.
pub struct Links {
    discoveries: BTreeMap<String, DiscoveryHandle>,
    /// The last neighbour seen per interface. Kept when its advertisements stop: a missed RA must
    /// not tear the session down (BGP's hold timer or BFD decide whether the peer is gone); a
    /// different neighbour on the link replaces it.
    found: BTreeMap<String, Ipv6Addr>,
    /// Interfaces whose discovery could not start, so the warning is logged once.
    failing: BTreeSet<String>,
    /// Woken whenever a discovery's neighbour changes.
    changed: Arc<Notify>,
}

impl Links {
    pub fn new() -> Links {
        Links {
            discoveries: BTreeMap::new(),
            found: BTreeMap::new(),
            failing: BTreeSet::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Resolves when a neighbour was found or changed on any interface.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Starts discovery where the model wants it and stops it where it no longer does; returns
    /// every interface the model's peers name with its index and neighbour.
    pub fn update(&mut self, model: &Model) -> BTreeMap<String, Link> {
        let unnumbered: BTreeSet<&str> =
            model.bgp.peers.iter().filter(|p| p.address.is_none()).filter_map(|p| p.interface.as_deref()).collect();
        self.discoveries.retain(|name, _| unnumbered.contains(name.as_str()));
        self.found.retain(|name, _| unnumbered.contains(name.as_str()));
        // A discovery whose interface was deleted and created again (its socket is bound to the
        // old index, and the peer would be given that index) or whose MAC changed starts over.
        // The neighbour found stays until the new discovery hears otherwise: the ToR is most
        // likely the same.
        self.discoveries.retain(|name, handle| {
            let unchanged = handle.interface_unchanged();
            if !unchanged {
                warn!(interface = %name, "the interface was recreated or its MAC changed: restarting neighbour discovery");
            }
            unchanged
        });
        for name in &unnumbered {
            if self.discoveries.contains_key(*name) {
                continue;
            }
            match Discovery::spawn(name, RA_INTERVAL) {
                Ok(handle) => {
                    self.failing.remove(*name);
                    let mut rx = handle.peer();
                    let notify = self.changed.clone();
                    // Ends when the handle (and with it the sender) is dropped.
                    tokio::spawn(async move {
                        while rx.changed().await.is_ok() {
                            notify.notify_one();
                        }
                    });
                    self.discoveries.insert(name.to_string(), handle);
                }
                Err(err) => {
                    if self.failing.insert(name.to_string()) {
                        warn!(interface = name, error = %err, "unnumbered BGP peer waits: neighbour discovery cannot start");
                    }
                }
            }
        }
        let mut links = BTreeMap::new();
        for (name, handle) in &self.discoveries {
            let neighbor = handle.peer().borrow().clone();
            if let Some(n) = neighbor {
                if self.found.insert(name.clone(), n.address) != Some(n.address) {
                    info!(interface = %name, neighbor = %n.address, "unnumbered BGP peer found");
                }
            }
            links.insert(name.clone(), Link { ifindex: handle.ifindex(), neighbor: self.found.get(name).copied() });
        }
        // Peers with a fixed link-local address only need the interface's index.
        for p in model.bgp.peers.iter().filter(|p| p.address.is_some()) {
            if let Some(name) = &p.interface {
                if let Ok(ifindex) = nix::net::if_::if_nametoindex(name.as_str()) {
                    links.insert(name.clone(), Link { ifindex, neighbor: None });
                }
            }
        }
        links
    }
}
