//! GoBGP inside a test namespace: renders a gobgpd TOML config from a `BgpConfig` (or takes raw
//! TOML), runs `gobgpd` with its gRPC API on the namespace's own loopback, and queries it with the
//! `gobgp` CLI run inside the same namespace (127.0.0.1 there is not the host's).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bgp::{BgpConfig, BgpPeer, Family, SessionState};
use crate::cmd;
use crate::daemon::Daemon;
use crate::netns::NetNs;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct GoBgp {
    daemon: Daemon,
    ns: NetNs,
    api_port: u16,
}

impl GoBgp {
    /// Starts gobgpd in `ns` with a config rendered from `config`; files go to `dir/gobgp-<ns>/`.
    pub fn start(ns: &NetNs, dir: &Path, config: &BgpConfig) -> Result<GoBgp> {
        GoBgp::start_raw(ns, dir, &render_config(config))
    }

    /// Starts gobgpd with `toml` as its config and waits until `gobgp global` answers.
    pub fn start_raw(ns: &NetNs, dir: &Path, toml: &str) -> Result<GoBgp> {
        // Each namespace has its own loopback, so ports only need to differ within one; a
        // per-process counter still keeps two instances in one namespace apart.
        static NEXT_PORT: AtomicU16 = AtomicU16::new(50051);
        cmd::require_tool("gobgpd", "gobgpd")?;
        let api_port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let dir = dir.join(format!("gobgp-{}", ns.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join("gobgpd.toml");
        std::fs::write(&config_path, toml).with_context(|| format!("writing {}", config_path.display()))?;
        let api = format!("127.0.0.1:{api_port}");
        let daemon = Daemon::spawn(
            ns,
            &format!("gobgpd[{}]", ns.name()),
            "gobgpd",
            [
                "-f".as_ref(),
                config_path.as_os_str(),
                "-t".as_ref(),
                "toml".as_ref(),
                "--api-hosts".as_ref(),
                api.as_ref(),
                "--pprof-disable".as_ref(),
                "--log-plain".as_ref(),
                // Debug level logs received NOTIFICATIONs with their codes, which tests check.
                "--log-level".as_ref(),
                "debug".as_ref(),
            ],
            &dir.join("gobgpd.log"),
        )?;
        let mut gobgp = GoBgp { daemon, ns: ns.clone(), api_port };
        let ns = gobgp.ns.clone();
        gobgp.daemon.wait_ready(READY_TIMEOUT, || {
            let out = gobgp_in(&ns, api_port, &["global"])?;
            Ok(out.contains("AS:"))
        })?;
        Ok(gobgp)
    }

    /// Runs `gobgp -p PORT args…` inside the namespace.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        gobgp_in(&self.ns, self.api_port, args)
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl BgpPeer for GoBgp {
    fn kind(&self) -> &'static str {
        "GoBGP"
    }

    fn session_state(&self, neighbor: IpAddr) -> Result<SessionState> {
        let out = self.cli(&["neighbor", &neighbor.to_string(), "-j"])?;
        parse_neighbor_state(&out)
    }

    fn sessions_summary(&self) -> String {
        self.cli(&["neighbor"]).unwrap_or_else(|e| format!("(gobgp failed: {e:#})"))
    }

    fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

fn gobgp_in(ns: &NetNs, port: u16, args: &[&str]) -> Result<String> {
    let port = port.to_string();
    let mut full = vec!["-p", port.as_str()];
    full.extend_from_slice(args);
    ns.run("gobgp", full)
}

/// gobgp prints the session state either as the protobuf enum number or as its name, depending
/// on the version; both are accepted.
fn parse_neighbor_state(json: &str) -> Result<SessionState> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("gobgp returned non-JSON: {json}"))?;
    let state = value
        .pointer("/state/session_state")
        .with_context(|| format!("no state.session_state in gobgp output: {json}"))?;
    Ok(match state {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(1) => SessionState::Idle,
            Some(2) => SessionState::Connect,
            Some(3) => SessionState::Active,
            Some(4) => SessionState::OpenSent,
            Some(5) => SessionState::OpenConfirm,
            Some(6) => SessionState::Established,
            _ => SessionState::Other(n.to_string()),
        },
        serde_json::Value::String(s) => SessionState::parse(s),
        other => SessionState::Other(other.to_string()),
    })
}

/// Renders gobgpd's TOML config: global AS and router id, one `[[neighbors]]` per neighbor with
/// its families.
pub fn render_config(config: &BgpConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Generated by ferrule-tests.");
    let _ = writeln!(out, "[global.config]");
    let _ = writeln!(out, "  as = {}", config.asn);
    let _ = writeln!(out, "  router-id = \"{}\"", config.router_id);
    for n in &config.neighbors {
        let _ = writeln!(out, "\n[[neighbors]]");
        let _ = writeln!(out, "  [neighbors.config]");
        let _ = writeln!(out, "    neighbor-address = \"{}\"", n.address);
        let _ = writeln!(out, "    peer-as = {}", n.asn);
        let _ = writeln!(out, "    description = \"{}\"", n.name);
        if let Some(local) = n.local_address {
            let _ = writeln!(out, "  [neighbors.transport.config]");
            let _ = writeln!(out, "    local-address = \"{local}\"");
        }
        for family in &n.families {
            let name = match family {
                Family::Ipv4Unicast => "ipv4-unicast",
                Family::Ipv6Unicast => "ipv6-unicast",
            };
            let _ = writeln!(out, "  [[neighbors.afi-safis]]");
            let _ = writeln!(out, "    [neighbors.afi-safis.config]");
            let _ = writeln!(out, "      afi-safi-name = \"{name}\"");
        }
    }
    out.push_str(&config.extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::Neighbor;

    #[test]
    fn renders_neighbor_with_transport_and_family() {
        let config = BgpConfig::new("192.0.2.3".parse().unwrap(), 65102).neighbor(
            Neighbor::new("bird", "2001:db8:2::1".parse().unwrap(), 65101)
                .local_address("2001:db8:2::2".parse().unwrap()),
        );
        let text = render_config(&config);
        assert!(text.contains("as = 65102"), "{text}");
        assert!(text.contains("router-id = \"192.0.2.3\""), "{text}");
        assert!(text.contains("neighbor-address = \"2001:db8:2::1\""), "{text}");
        assert!(text.contains("local-address = \"2001:db8:2::2\""), "{text}");
        assert!(text.contains("afi-safi-name = \"ipv6-unicast\""), "{text}");
    }

    #[test]
    fn parses_session_state_as_number_or_name() {
        let numeric = r#"{"conf":{},"state":{"session_state":6}}"#;
        assert_eq!(parse_neighbor_state(numeric).unwrap(), SessionState::Established);
        let named = r#"{"state":{"session_state":"BGP_FSM_ACTIVE"}}"#;
        assert_eq!(parse_neighbor_state(named).unwrap(), SessionState::Active);
        assert!(parse_neighbor_state(r#"{"conf":{}}"#).is_err());
    }
}
