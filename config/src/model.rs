//! The validated desired model every source (file, API, k8s-sync) produces and every reconciler reads.
//! These types are the JSON shape of the API and mirror the TOML keys, so field names are a contract:
//! add fields, never rename. Nothing here checks validity; `parse` is the only way in from text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Everything this node should be doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub node: Node,
    #[serde(default)]
    pub bgp: Bgp,
    #[serde(default)]
    pub services: Vec<Service>,
}

/// Identity of this node in the fabric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Also a directory name under the bpffs pin path, hence the restricted charset.
    pub name: String,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// NICs the XDP datapath attaches to.
    #[serde(default)]
    pub uplinks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bgp {
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub announce: Vec<Announce>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub address: IpAddr,
    pub asn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub prefix: IpNet,
}

/// An L4 load-balanced service: traffic to `vip:port/protocol` is spread over `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Direct server return: the packet is encapsulated unchanged and the backend answers the client
    /// itself from the VIP.
    Dsr,
    /// Destination NAT: the VIP is rewritten to the backend address, so both must be one family.
    Nat,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// A backend without an explicit weight gets an equal share.
pub(crate) fn default_weight() -> u32 {
    1
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Model {
    /// One line for logs and `ferrule show config`, e.g.
    /// `node node1 AS65101 router-id 192.0.2.11: 2 uplinks, 1 BGP peer, 1 announced prefix, 1 service (1 backend)`.
    pub fn summary(&self) -> String {
        let backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        format!(
            "node {} AS{} router-id {}: {}, {}, {}, {} ({})",
            self.node.name,
            self.node.asn,
            self.node.router_id,
            count(self.node.uplinks.len(), "uplink", "uplinks"),
            count(self.bgp.peers.len(), "BGP peer", "BGP peers"),
            count(self.bgp.announce.len(), "announced prefix", "announced prefixes"),
            count(self.services.len(), "service", "services"),
            count(backends, "backend", "backends"),
        )
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
