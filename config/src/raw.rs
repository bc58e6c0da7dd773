//! The TOML file as written, before validation: what serde can fill in without judging values.
//! Required fields are `Option`, numbers `i64` and addresses strings so that a missing field, an
//! out-of-range number or a bad address becomes one of many collected errors instead of the first
//! and only serde error. Only `validate` turns these into `Model`.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(expecting = "a TOML document")]
pub(crate) struct RawModel {
    pub node: Option<RawNode>,
    #[serde(default)]
    pub bgp: RawBgp,
    #[serde(default)]
    pub services: Vec<RawService>,
    pub decap: Option<RawDecap>,
}

/// `[decap]`: this node as a DSR backend.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawDecap {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawNode {
    pub name: Option<String>,
    pub asn: Option<i64>,
    pub router_id: Option<String>,
    #[serde(default)]
    pub uplinks: Vec<String>,
    pub snat_ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawBgp {
    pub listen_port: Option<i64>,
    pub install_routes: Option<bool>,
    #[serde(default)]
    pub peers: Vec<RawPeer>,
    #[serde(default)]
    pub listen: Vec<RawListen>,
    #[serde(default)]
    pub announce: Vec<RawAnnounce>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawPeer {
    pub address: Option<String>,
    pub interface: Option<String>,
    pub asn: Option<i64>,
    pub port: Option<i64>,
    pub passive: Option<bool>,
    pub hold_time: Option<i64>,
    #[serde(default)]
    pub import: Vec<String>,
    pub max_prefix: Option<RawMaxPrefix>,
    #[serde(default)]
    pub import_rules: Vec<RawImportRule>,
    pub bfd: Option<RawBfd>,
    pub password: Option<String>,
    pub graceful_restart: Option<RawGracefulRestart>,
}

/// `[[bgp.listen]]`: a range and the session keys that make sense for accepted sessions.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawListen {
    pub range: Option<String>,
    pub asn: Option<i64>,
    pub limit: Option<i64>,
    pub hold_time: Option<i64>,
    #[serde(default)]
    pub import: Vec<String>,
    pub max_prefix: Option<RawMaxPrefix>,
    #[serde(default)]
    pub import_rules: Vec<RawImportRule>,
    pub bfd: Option<RawBfd>,
    pub password: Option<String>,
    pub graceful_restart: Option<RawGracefulRestart>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawBfd {
    pub interval_ms: Option<i64>,
    pub multiplier: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawGracefulRestart {
    pub restart_time_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawImportRule {
    pub as_path_contains: Option<i64>,
    pub origin_as: Option<i64>,
    pub community: Option<String>,
    pub large_community: Option<String>,
    pub action: Option<String>,
    pub value: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawMaxPrefix {
    pub limit: Option<i64>,
    pub action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawAnnounce {
    pub prefix: Option<String>,
    #[serde(default)]
    pub communities: Vec<String>,
    #[serde(default)]
    pub large_communities: Vec<String>,
    pub med: Option<i64>,
    pub local_pref: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawService {
    pub name: Option<String>,
    pub vip: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
    pub mode: Option<String>,
    pub backends: Option<Vec<RawBackend>>,
    pub health: Option<RawHealth>,
    pub announce: Option<String>,
    pub maglev_table_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawHealth {
    pub kind: Option<String>,
    pub interval_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub path: Option<String>,
    pub expect_status: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table")]
pub(crate) struct RawBackend {
    pub address: Option<String>,
    pub port: Option<i64>,
    pub weight: Option<i64>,
}

/// Keys each table accepts, for "did you mean" hints on unknown keys. Indexed by the path's keys
/// without array indices (`services.backends`). Must list the fields of the structs above.
pub(crate) fn known_keys(table: &[&str]) -> &'static [&'static str] {
    match table {
        [] => &["node", "bgp", "services", "decap"],
        ["decap"] => &["interfaces", "addresses"],
        ["node"] => &["name", "asn", "router_id", "uplinks", "snat_ports"],
        ["bgp"] => &["listen_port", "install_routes", "peers", "listen", "announce"],
        ["bgp", "peers"] => &[
            "address",
            "interface",
            "asn",
            "port",
            "passive",
            "hold_time",
            "import",
            "max_prefix",
            "import_rules",
            "bfd",
            "password",
            "graceful_restart",
        ],
        ["bgp", "listen"] => &[
            "range",
            "asn",
            "limit",
            "hold_time",
            "import",
            "max_prefix",
            "import_rules",
            "bfd",
            "password",
            "graceful_restart",
        ],
        ["bgp", "peers" | "listen", "import_rules"] => {
            &["as_path_contains", "origin_as", "community", "large_community", "action", "value"]
        }
        ["bgp", "peers" | "listen", "max_prefix"] => &["limit", "action"],
        ["bgp", "peers" | "listen", "bfd"] => &["interval_ms", "multiplier"],
        ["bgp", "peers" | "listen", "graceful_restart"] => &["restart_time_s"],
        ["bgp", "announce"] => &["prefix", "communities", "large_communities", "med", "local_pref"],
        ["services"] => {
            &["name", "vip", "port", "protocol", "mode", "backends", "health", "announce", "maglev_table_size"]
        }
        ["services", "health"] => &["kind", "interval_ms", "timeout_ms", "rise", "fall", "path", "expect_status"],
        ["services", "backends"] => &["address", "port", "weight"],
        _ => &[],
    }
}
