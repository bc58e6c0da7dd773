//! The validated desired model every source (file, API, k8s-sync) produces and every reconciler reads.
//! These types are the JSON shape of the API and mirror the TOML keys, so field names are a contract:
//! add fields, never rename. Nothing here checks validity; `parse` is the only way in from text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::bgp_types::{Community, LargeCommunity, PrefixFilter};

/// Everything this node should be doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub node: Node,
    #[serde(default)]
    pub bgp: Bgp,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Decap::is_empty")]
    pub decap: Decap,
}

/// `[decap]`: this node as a backend of DSR services. `tc_decap` runs on the ingress of
/// `interfaces` and strips the load balancer's tunnel header from packets addressed to one of
/// `addresses` (the backend's addresses in those services). Empty: not a DSR backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decap {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

impl Decap {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.addresses.is_empty()
    }
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
    /// Source ports NAT-mode services take on the node's address (`snat_ports = "10000-32767"`).
    #[serde(default)]
    pub snat_ports: PortRange,
}

/// Ports `first..=last`, written `"first-last"` (in TOML and JSON alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub(crate) fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// The datapath's default: below Linux's default `ip_local_port_range` (32768-60999), so that the
/// node's own outgoing connections never take a port a translated flow has.
impl Default for PortRange {
    fn default() -> Self {
        PortRange { first: 10_000, last: 32_767 }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(s: String) -> Result<PortRange, String> {
        crate::validate::check_snat_ports(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bgp {
    /// TCP port for incoming sessions; 0 = accept none (every peer is then active-only).
    #[serde(default = "default_bgp_port")]
    pub listen_port: u16,
    /// Install accepted routes in the kernel's main table (protocol 233), with ECMP.
    #[serde(default = "default_true")]
    pub install_routes: bool,
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Ranges accepting dynamic neighbors.
    #[serde(default)]
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub announce: Vec<Announce>,
}

impl Default for Bgp {
    fn default() -> Self {
        Bgp {
            listen_port: default_bgp_port(),
            install_routes: true,
            peers: Vec::new(),
            listen: Vec::new(),
            announce: Vec::new(),
        }
    }
}

/// One configured neighbor: a fixed `address`, or (unnumbered) whoever sends router
/// advertisements on `interface`. Exactly one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Unnumbered peering: the peer's IPv6 link-local address is learned from its router
    /// advertisements on this interface, and Ferrule sends its own there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub asn: u32,
    #[serde(flatten)]
    pub options: PeerOptions,
}

/// A range of addresses from which sessions are accepted (dynamic neighbors: VMs and legacy
/// hosts on a segment where the node acts as their route server). Sessions from the range are
/// passive only; each takes the options of the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listen {
    pub range: IpNet,
    pub asn: u32,
    /// At most this many sessions from the range at a time; further connections are refused.
    #[serde(default = "default_listen_limit")]
    pub limit: u32,
    #[serde(flatten)]
    pub options: PeerOptions,
}

/// The per-session keys shared by `[[bgp.peers]]` and `[[bgp.listen]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOptions {
    /// The peer's TCP port for our outgoing connection.
    #[serde(default = "default_bgp_port")]
    pub port: u16,
    /// Only wait for the peer to connect; never connect out.
    #[serde(default)]
    pub passive: bool,
    /// Proposed hold time in seconds (0 = no keepalives, else at least 3).
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Prefix list of the routes accepted from this peer; empty = accept nothing (a server is not
    /// a transit and takes only what it is told to, e.g. `["0.0.0.0/0", "::/0"]`).
    #[serde(default)]
    pub import: Vec<PrefixFilter>,
    #[serde(default)]
    pub max_prefix: Option<MaxPrefix>,
    /// Applied in order to routes the prefix list let in: the first `accept`/`reject` that
    /// matches decides; `local_pref` / `med` change the route and go on.
    #[serde(default)]
    pub import_rules: Vec<ImportRule>,
    /// Single-hop BFD (RFC 5880/5881) for this session; its Down takes the session down at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<Bfd>,
    /// TCP MD5 signature key (RFC 2385). Never printed: Debug and JSON show `<redacted>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// Graceful restart (RFC 4724), both helper and restarting-speaker modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<GracefulRestart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bfd {
    /// Desired transmit and required receive interval, milliseconds.
    pub interval_ms: u32,
    /// Packets missed before the session is declared down.
    pub multiplier: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestart {
    /// How long a peer should keep our routes while we restart (seconds, 1..=4095).
    pub restart_time_s: u16,
}

/// A TCP MD5 key. Its Debug and Serialize forms are `<redacted>` so that logs, `show` output and
/// the JSON model never carry it; the daemon reads it with [`Password::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub const REDACTED: &'static str = "<redacted>";

    pub fn new(key: String) -> Password {
        Password(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Password::REDACTED)
    }
}

impl Serialize for Password {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Password::REDACTED)
    }
}

/// One import rule: a route matches when every condition given holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRule {
    #[serde(default)]
    pub as_path_contains: Option<u32>,
    /// The AS that originated the route (last AS of the path).
    #[serde(default)]
    pub origin_as: Option<u32>,
    #[serde(default)]
    pub community: Option<Community>,
    #[serde(default)]
    pub large_community: Option<LargeCommunity>,
    #[serde(flatten)]
    pub action: ImportAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "value")]
pub enum ImportAction {
    Accept,
    Reject,
    LocalPref(u32),
    Med(u32),
}

/// What to do when a peer sends more accepted prefixes of one address family than `limit` (each
/// family negotiated with the peer is counted against the limit on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxPrefix {
    pub limit: u32,
    #[serde(default = "default_max_prefix_action")]
    pub action: MaxPrefixAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxPrefixAction {
    /// Log and count, keep the session.
    Warn,
    /// Close the session with a Cease NOTIFICATION (RFC 4486 subcode 1).
    Teardown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub prefix: IpNet,
    #[serde(default)]
    pub communities: Vec<Community>,
    #[serde(default)]
    pub large_communities: Vec<LargeCommunity>,
    #[serde(default)]
    pub med: Option<u32>,
    /// Sent to iBGP peers only (LOCAL_PREF is not carried over eBGP).
    #[serde(default)]
    pub local_pref: Option<u32>,
}

impl Peer {
    /// A peer at a fixed address with every optional key at its default.
    pub fn new(address: IpAddr, asn: u32) -> Peer {
        Peer { address: Some(address), interface: None, asn, options: PeerOptions::default() }
    }

    /// How operators name the peer: its address, or its interface for an unnumbered peer.
    pub fn name(&self) -> String {
        match (&self.address, &self.interface) {
            (Some(a), _) => a.to_string(),
            (None, Some(i)) => i.clone(),
            (None, None) => String::new(),
        }
    }
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            port: default_bgp_port(),
            passive: false,
            hold_time: default_hold_time(),
            import: Vec::new(),
            max_prefix: None,
            import_rules: Vec::new(),
            bfd: None,
            password: None,
            graceful_restart: None,
        }
    }
}

impl Announce {
    /// An announcement with no communities, MED or local preference.
    pub fn new(prefix: IpNet) -> Announce {
        Announce { prefix, communities: Vec::new(), large_communities: Vec::new(), med: None, local_pref: None }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

pub(crate) fn default_listen_limit() -> u32 {
    100
}

pub(crate) fn default_bgp_port() -> u16 {
    179
}

pub(crate) fn default_hold_time() -> u16 {
    90
}

pub(crate) fn default_max_prefix_action() -> MaxPrefixAction {
    MaxPrefixAction::Teardown
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
    /// How backends are checked; `None` = every backend is taken as healthy.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// When the VIP is announced over BGP.
    #[serde(default)]
    pub announce: AnnounceWhen,
    /// Entries of the Maglev lookup table: a prime, at least 100 times the number of backends
    /// for an even spread. Default 65537.
    #[serde(default = "default_maglev_table_size")]
    pub maglev_table_size: u32,
}

/// Backend health check of a service. A backend turns unhealthy after `fall` failed checks in a
/// row and healthy again after `rise` good ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
    /// HTTP only: the path requested (`GET`).
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP only: the status that counts as healthy.
    #[serde(default)]
    pub expect_status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection to the backend's address and port completes.
    Tcp,
    /// `GET path` answers `expect_status`.
    Http,
}

/// When a service's VIP is announced to the BGP peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceWhen {
    /// While the service has at least one healthy backend anywhere.
    #[default]
    Healthy,
    /// Only while a backend on this node is healthy.
    Local,
}

pub(crate) fn default_maglev_table_size() -> u32 {
    65537
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
    /// Relative share of new flows. 0 drains the backend: no new flows, while its datapath entry
    /// (for the flows it has) and its health checks stay.
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
