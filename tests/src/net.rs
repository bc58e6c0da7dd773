//! Links and addresses inside test namespaces: veth pairs, addresses, sysctls and a bounded ping.
//! Every helper acts on namespaces the test owns; nothing here touches the root namespace's
//! interfaces, and all traffic stays between those namespaces.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::cmd;
use crate::netns::NetNs;

/// Linux's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
        bail!("interface name {name:?} must be 1-{MAX_IFNAME} characters without '/' or spaces");
    }
    Ok(())
}

/// Creates a veth pair with `if_a` in `a` and `if_b` in `b`, turns IPv6 duplicate address
/// detection off on both ends and brings them up.
///
/// DAD is off because its 1-2 s of "tentative" addresses (link-local included) make BGP daemons
/// fail their first connect and then back off for much longer; two ends of a fresh veth
/// cannot hold duplicates anyway.
pub fn veth(a: &NetNs, if_a: &str, b: &NetNs, if_b: &str) -> Result<()> {
    check_ifname(if_a)?;
    check_ifname(if_b)?;
    cmd::run(std::process::Command::new("ip").args([
        "link",
        "add",
        if_a,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        if_b,
        "netns",
        b.name(),
    ]))
    .with_context(|| format!("creating veth {}:{if_a} <-> {}:{if_b}", a.name(), b.name()))?;
    for (ns, ifname) in [(a, if_a), (b, if_b)] {
        sysctl(ns, &format!("net.ipv6.conf.{ifname}.accept_dad"), "0")?;
        link_up(ns, ifname)?;
    }
    Ok(())
}

/// Sets a sysctl inside `ns` (network sysctls are per namespace).
pub fn sysctl(ns: &NetNs, key: &str, value: &str) -> Result<()> {
    ns.run("sysctl", ["-qw", &format!("{key}={value}")])?;
    Ok(())
}

/// Turns IPv4 and IPv6 forwarding on in `ns` (routers: ToRs, nodes).
pub fn enable_forwarding(ns: &NetNs) -> Result<()> {
    sysctl(ns, "net.ipv4.ip_forward", "1")?;
    sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
}

pub fn link_up(ns: &NetNs, ifname: &str) -> Result<()> {
    ns.run("ip", ["link", "set", ifname, "up"])?;
    Ok(())
}

/// Adds `cidr` (e.g. `2001:db8:1::1/64` or `192.0.2.1/31`) to `ifname`. IPv6 addresses are added
/// with `nodad` so they are usable at once.
pub fn add_addr(ns: &NetNs, ifname: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.run("ip", args).with_context(|| format!("adding {cidr} to {ifname}"))?;
    Ok(())
}

/// Waits until `ifname` has no tentative IPv6 address left, for links where DAD stayed on.
pub fn wait_dad(ns: &NetNs, ifname: &str, timeout: Duration) -> Result<()> {
    cmd::poll_until(&format!("DAD to finish on {}:{ifname}", ns.name()), timeout, Duration::from_millis(100), || {
        let out = ns.run("ip", ["-6", "addr", "show", "dev", ifname, "tentative"])?;
        Ok(out.trim().is_empty())
    })
}

/// The link-local IPv6 address of `ifname` (needed for unnumbered BGP and next hops).
pub fn link_local(ns: &NetNs, ifname: &str) -> Result<IpAddr> {
    let out = ns.run("ip", ["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("no link-local address on {}:{ifname}: {out}", ns.name()))
}

/// Sends `count` echo requests from `ns` to `addr` (0.2 s apart, 1 s reply timeout each, so it
/// is bounded) and requires at least one reply.
pub fn ping(ns: &NetNs, addr: IpAddr, count: u32) -> Result<()> {
    cmd::require_tool("ping", "iputils-ping")?;
    let count = count.to_string();
    let addr = addr.to_string();
    ns.run("ping", ["-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", &addr])
        .with_context(|| format!("ping {addr} from netns {}", ns.name()))?;
    Ok(())
}

/// Ferrule's protocol id for its kernel routes (appliance/src/routes.rs, RTPROT_FERRULE).
pub const RTPROT_FERRULE: &str = "233";

/// The default route of `family` ("-4"/"-6") that Ferrule installed in `ns` (protocol
/// [`RTPROT_FERRULE`]), as its sorted list of `gateway@device` next hops (empty when there is
/// none), and the raw `ip -j` output.
pub fn ferrule_default_route(ns: &NetNs, family: &str) -> Result<(Vec<String>, String)> {
    let raw = ns.run("ip", ["-j", family, "route", "show", "default", "proto", RTPROT_FERRULE])?;
    let routes: Value = serde_json::from_str(&raw).with_context(|| format!("ip -j output: {raw}"))?;
    let routes = routes.as_array().context("ip -j route prints a list")?;
    ensure!(routes.len() <= 1, "more than one default route with proto {RTPROT_FERRULE}: {raw}");
    let Some(route) = routes.first() else { return Ok((Vec::new(), raw.trim().to_string())) };
    let hop = |h: &Value| {
        let gateway = h["gateway"].as_str().or_else(|| h["via"]["host"].as_str()).unwrap_or("?");
        format!("{gateway}@{}", h["dev"].as_str().unwrap_or("?"))
    };
    let mut hops: Vec<String> = match route["nexthops"].as_array() {
        Some(list) => list.iter().map(hop).collect(),
        None => vec![hop(route)],
    };
    hops.sort();
    Ok((hops, raw.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_interface_names_longer_than_ifnamsiz() {
        assert!(check_ifname("eth-to-tor1-abc").is_ok());
        let err = check_ifname("eth-to-tor1-abcd").unwrap_err();
        assert!(format!("{err}").contains("1-15 characters"));
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
