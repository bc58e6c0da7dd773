//! FRR inside a test namespace: zebra plus bgpd (and later bfdd, staticd…) for one instance, with
//! every path (configs, pid files, zserv socket, vty sockets) in a private directory, so several
//! instances run at once and neither /etc/frr nor the system's FRR service is ever touched.
//!
//! The daemons drop privileges to user `frr` (zebra refuses `-u root` unless root is in group
//! `frrvty`), so the private directory is owned by `frr`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::unistd::{chown, User};

use crate::bgp::{BgpConfig, BgpPeer, Family, SessionState};
use crate::cmd;
use crate::daemon::Daemon;
use crate::netns::NetNs;

const FRR_LIBEXEC: &str = "/usr/lib/frr";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Frr {
    /// In start order, zebra first; stopped in reverse so clients go before zebra.
    daemons: Vec<Daemon>,
    ns: NetNs,
    dir: PathBuf,
}

impl Frr {
    /// Starts zebra and bgpd in `ns` with a bgpd config rendered from `config`.
    pub fn start(ns: &NetNs, dir: &Path, config: &BgpConfig) -> Result<Frr> {
        let bgpd = render_bgpd_config(ns.name(), config);
        Frr::start_raw(ns, dir, &[("bgpd", &bgpd)])
    }

    /// Starts zebra, then each `(daemon, config text)` in order (e.g. `("bgpd", …)`,
    /// `("bfdd", …)`), waiting for each to answer vtysh. Files go to `dir/frr-<ns>/`.
    pub fn start_raw(ns: &NetNs, dir: &Path, daemons: &[(&str, &str)]) -> Result<Frr> {
        cmd::require_tool(&format!("{FRR_LIBEXEC}/zebra"), "frr")?;
        cmd::require_tool("vtysh", "frr")?;
        let dir = dir.join(format!("frr-{}", ns.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let frr_user = User::from_name("frr")
            .context("looking up user frr")?
            .context("user frr does not exist: install the frr package")?;
        chown(&dir, Some(frr_user.uid), Some(frr_user.gid))
            .with_context(|| format!("chown frr:frr {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("chmod 0750 {}", dir.display()))?;

        let mut frr = Frr { daemons: Vec::new(), ns: ns.clone(), dir };
        let zebra_conf = format!("hostname {}\n", ns.name());
        frr.start_daemon("zebra", &zebra_conf)?;
        for (daemon, config) in daemons {
            frr.start_daemon(daemon, config)?;
        }
        Ok(frr)
    }

    fn start_daemon(&mut self, daemon: &str, config: &str) -> Result<()> {
        let program = format!("{FRR_LIBEXEC}/{daemon}");
        cmd::require_tool(&program, "frr")?;
        let config_path = self.dir.join(format!("{daemon}.conf"));
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let path = |file: &str| self.dir.join(file).to_string_lossy().into_owned();
        let mut args = vec![
            "-f".to_string(),
            path(&format!("{daemon}.conf")),
            "-i".to_string(),
            path(&format!("{daemon}.pid")),
            "-z".to_string(),
            path("zserv.api"),
            "--vty_socket".to_string(),
            self.dir.to_string_lossy().into_owned(),
            // No TCP vty: the unix sockets in our directory are the only way in.
            "-P".to_string(),
            "0".to_string(),
            "--log".to_string(),
            "stdout".to_string(),
        ];
        if daemon == "bfdd" {
            // bfdd's control socket defaults to a fixed path under /var/run/frr.
            args.extend(["--bfdctl".to_string(), path("bfdd.sock")]);
        }
        let mut process = Daemon::spawn(
            &self.ns,
            &format!("{daemon}[{}]", self.ns.name()),
            &program,
            &args,
            &self.dir.join(format!("{daemon}.log")),
        )?;
        // FRR keeps a per-process crash-log directory; remove it with the process.
        process.remove_on_stop(PathBuf::from(format!("/var/tmp/frr/{daemon}.{}", process.pid())));
        let (ns, dir) = (self.ns.clone(), self.dir.clone());
        let daemon_name = daemon.to_string();
        let result = process.wait_ready(READY_TIMEOUT, || {
            if !dir.join(format!("{daemon_name}.vty")).exists() {
                return Ok(false);
            }
            vtysh_in(&ns, &dir, Some(&daemon_name), &["show version"])?;
            if daemon_name == "bgpd" {
                let out = vtysh_in(&ns, &dir, None, &["show bgp summary"])?;
                return Ok(!out.contains("Unknown command"));
            }
            Ok(true)
        });
        self.daemons.push(process);
        result
    }

    /// Runs `vtysh --vty_socket DIR -c CMD…` in the namespace and returns its output.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        vtysh_in(&self.ns, &self.dir, None, commands)
    }

    /// The directory holding this instance's configs, sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running daemons, zebra first.
    pub fn daemons(&mut self) -> &mut [Daemon] {
        &mut self.daemons
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        while let Some(daemon) = self.daemons.pop() {
            drop(daemon);
        }
    }
}

impl BgpPeer for Frr {
    fn kind(&self) -> &'static str {
        "FRR"
    }

    fn session_state(&self, neighbor: IpAddr) -> Result<SessionState> {
        let out = self.vtysh(&[&format!("show bgp neighbors {neighbor} json")])?;
        parse_neighbor_state(&out, neighbor)
    }

    fn sessions_summary(&self) -> String {
        self.vtysh(&["show bgp summary"]).unwrap_or_else(|e| format!("(vtysh failed: {e:#})"))
    }

    fn log_tail(&self) -> String {
        self.daemons.iter().map(|d| format!("[{}]\n{}", d.name(), d.log_tail())).collect::<Vec<_>>().join("\n")
    }
}

fn vtysh_in(ns: &NetNs, dir: &Path, daemon: Option<&str>, commands: &[&str]) -> Result<String> {
    let mut args = vec!["--vty_socket".to_string(), dir.to_string_lossy().into_owned()];
    if let Some(daemon) = daemon {
        args.extend(["-d".to_string(), daemon.to_string()]);
    }
    for command in commands {
        args.extend(["-c".to_string(), command.to_string()]);
    }
    ns.run("vtysh", &args)
}

fn parse_neighbor_state(json: &str, neighbor: IpAddr) -> Result<SessionState> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("vtysh returned non-JSON for neighbor {neighbor}: {json}"))?;
    let state = value
        .get(neighbor.to_string())
        .and_then(|n| n.get("bgpState"))
        .and_then(|s| s.as_str())
        .with_context(|| format!("FRR has no neighbor {neighbor}: {json}"))?;
    Ok(SessionState::parse(state))
}

/// Renders bgpd.conf: datacenter timer defaults (fast keepalives and connect retries), no
/// RFC 8212 policy requirement (tests exchange routes without writing route-maps), and each
/// neighbor activated only in its configured families.
pub fn render_bgpd_config(hostname: &str, config: &BgpConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "frr defaults datacenter");
    let _ = writeln!(out, "hostname {hostname}");
    let _ = writeln!(out, "!");
    let _ = writeln!(out, "router bgp {}", config.asn);
    let _ = writeln!(out, " bgp router-id {}", config.router_id);
    let _ = writeln!(out, " no bgp ebgp-requires-policy");
    let _ = writeln!(out, " no bgp default ipv4-unicast");
    for n in &config.neighbors {
        let _ = writeln!(out, " neighbor {} remote-as {}", n.address, n.asn);
        let _ = writeln!(out, " neighbor {} description {}", n.address, n.name);
        if let Some(local) = n.local_address {
            let _ = writeln!(out, " neighbor {} update-source {local}", n.address);
        }
        if n.address.is_ipv6() && n.families.contains(&Family::Ipv4Unicast) {
            let _ = writeln!(out, " neighbor {} capability extended-nexthop", n.address);
        }
    }
    for (family, keyword) in [(Family::Ipv4Unicast, "ipv4 unicast"), (Family::Ipv6Unicast, "ipv6 unicast")] {
        let members: Vec<_> = config.neighbors.iter().filter(|n| n.families.contains(&family)).collect();
        if members.is_empty() {
            continue;
        }
        let _ = writeln!(out, " address-family {keyword}");
        for n in members {
            let _ = writeln!(out, "  neighbor {} activate", n.address);
        }
        let _ = writeln!(out, " exit-address-family");
    }
    let _ = writeln!(out, "!");
    out.push_str(&config.extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::Neighbor;

    #[test]
    fn renders_neighbor_activated_only_in_its_families() {
        let config = BgpConfig::new("192.0.2.1".parse().unwrap(), 65000).neighbor(Neighbor::new(
            "bird",
            "2001:db8:1::2".parse().unwrap(),
            65101,
        ));
        let text = render_bgpd_config("tor1", &config);
        assert!(text.contains("router bgp 65000\n"), "{text}");
        assert!(text.contains(" bgp router-id 192.0.2.1\n"), "{text}");
        assert!(text.contains(" neighbor 2001:db8:1::2 remote-as 65101\n"), "{text}");
        assert!(
            text.contains(" address-family ipv6 unicast\n  neighbor 2001:db8:1::2 activate\n exit-address-family"),
            "{text}"
        );
        assert!(!text.contains("address-family ipv4 unicast"), "{text}");
        assert!(!text.contains("extended-nexthop"), "{text}");
    }

    #[test]
    fn parses_bgp_state_from_neighbor_json() {
        let json = r#"{"2001:db8:1::2":{"remoteAs":65101,"bgpState":"Established"}}"#;
        let state = parse_neighbor_state(json, "2001:db8:1::2".parse().unwrap()).unwrap();
        assert_eq!(state, SessionState::Established);
        let missing = parse_neighbor_state(json, "2001:db8:1::9".parse().unwrap()).unwrap_err();
        assert!(format!("{missing}").contains("no neighbor 2001:db8:1::9"));
    }
}
