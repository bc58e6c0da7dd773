//! `ferrule decap attach|detach|show`: the DSR backend's side of the load balancer, without the
//! daemon. `tc_decap` (ebpf/bpf/tc_decap.bpf.c) strips the IPIP / IP6IP6 / 4in6 / 6in4 header the
//! load balancer puts in front of a client's packet when the tunnel is addressed to an allowed
//! local address, so the backend (which holds the VIP on a local interface, e.g. `lo`) answers the
//! client directly. Program links and maps are pinned under `<bpffs>/ferrule/<name>`: the program
//! keeps running after the command exits, and running the command again adopts what is there.
//! This is what a backend runs whether or not it runs the Ferrule daemon (a VM or legacy host
//! needs only this binary and a kernel with tcx, 6.6+).

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use ferrule_ebpf::{Decap, DecapEvents, DecapLink};
use serde::Serialize;

use crate::cli::{DecapAttachArgs, DecapDetachArgs, DecapPinArgs, DecapShowArgs};

/// One counter of `tc_decap` (`enum fr_decap_event`).
pub struct DecapEventKind {
    /// The name `ferrule decap show` and the `event` label of `ferrule_decap_packets_total` use.
    pub name: &'static str,
    pub count: fn(&DecapEvents) -> u64,
    pub meaning: &'static str,
}

/// Every counter of [`DecapEvents`]: the one list `ferrule decap show` and the metrics are made
/// from, as `api::LB_EVENTS` is for the load balancer's events.
pub const DECAP_EVENTS: [DecapEventKind; 4] = [
    DecapEventKind {
        name: "decapsulated",
        count: |e| e.decapsulated,
        meaning: "tunnel header removed; the client's packet goes on to the stack",
    },
    DecapEventKind {
        name: "not_local",
        count: |e| e.not_local,
        meaning: "tunnel to an address not allowed here: left alone",
    },
    DecapEventKind {
        name: "malformed",
        count: |e| e.malformed,
        meaning: "outer header the stack drops (version, checksum, lengths): left alone",
    },
    DecapEventKind {
        name: "failed",
        count: |e| e.failed,
        meaning: "the kernel refused to remove the header: left alone",
    },
];

/// What `ferrule decap show --json` prints.
#[derive(Debug, Serialize)]
struct DecapState {
    name: String,
    pin_dir: String,
    interfaces: Vec<DecapLink>,
    addresses: Vec<IpAddr>,
    events: DecapEvents,
}

fn open(pin: &DecapPinArgs) -> Result<Decap> {
    ferrule_ebpf::ensure_bpffs(&pin.bpffs)?;
    Ok(Decap::open_at(&pin.bpffs, &pin.name)?)
}

/// Whether anything of `tc_decap` is pinned for this name (show and detach do not create it).
fn installed(pin: &DecapPinArgs) -> Result<bool> {
    Ok(Decap::installed_at(&pin.bpffs, &pin.name)?)
}

/// Refuses to change what a Ferrule daemon owns: its node directory (the load balancer's maps are
/// pinned there) is kept in step with its `[decap]` section, which would undo the change.
fn refuse_daemon_node(pin: &DecapPinArgs) -> Result<()> {
    if ferrule_ebpf::Datapath::pinned_at(&pin.bpffs, &pin.name)? {
        let dir = ferrule_ebpf::node_pin_dir(&pin.bpffs, &pin.name)?;
        bail!(
            "{:?} is a Ferrule daemon's node (its datapath is pinned under {}): set `[decap]` in its config \
             instead, or use another --name",
            pin.name,
            dir.display()
        );
    }
    Ok(())
}

/// The addresses of this host's interfaces (in this network namespace).
fn local_addresses() -> BTreeSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return BTreeSet::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

pub fn attach(args: DecapAttachArgs) -> Result<()> {
    if args.interfaces.is_empty() && args.addresses.is_empty() {
        bail!("nothing to attach: give --interface IFNAME and/or --address ADDRESS");
    }
    // Checked before anything changes, so that a typo leaves the running setup as it was.
    refuse_daemon_node(&args.pin)?;
    for name in &args.interfaces {
        nix::net::if_::if_nametoindex(name.as_str())
            .with_context(|| format!("interface {name:?}: no such interface in this network namespace"))?;
    }
    let mut decap = open(&args.pin)?;
    let local = local_addresses();
    for addr in &args.addresses {
        if addr.is_unspecified() || addr.is_multicast() {
            bail!("address {addr}: a tunnel is addressed to a unicast address of this host");
        }
        decap.allow_address(*addr)?;
        if !local.contains(addr) {
            eprintln!(
                "ferrule: warning: {addr} is not an address of this host (yet); its tunnels arrive only once it is"
            );
        }
        println!("allowed tunnels to {addr}");
    }
    for name in &args.interfaces {
        decap.attach(name).with_context(|| format!("attaching tc_decap to {name}"))?;
        println!("attached to {name} (ingress)");
    }
    println!("pinned under {}", decap.pin_dir().display());
    Ok(())
}

pub fn detach(args: DecapDetachArgs) -> Result<()> {
    if !args.all && args.interfaces.is_empty() && args.addresses.is_empty() {
        bail!("nothing to detach: give --interface IFNAME, --address ADDRESS or --all");
    }
    refuse_daemon_node(&args.pin)?;
    if !installed(&args.pin)? {
        bail!(
            "tc_decap is not installed as {:?} (nothing pinned under {}); nothing to detach",
            args.pin.name,
            ferrule_ebpf::node_pin_dir(&args.pin.bpffs, &args.pin.name)?.display()
        );
    }
    if args.all {
        Decap::remove_at(&args.pin.bpffs, &args.pin.name)?;
        println!("detached from every interface; allowed addresses and counters removed");
        return Ok(());
    }
    let mut decap = open(&args.pin)?;
    let pinned: Vec<String> = decap.links()?.into_iter().map(|l| l.interface).collect();
    for name in &args.interfaces {
        if !pinned.contains(name) {
            bail!("interface {name:?}: tc_decap is not attached there (attached: {})", list(&pinned));
        }
    }
    for name in &args.interfaces {
        decap.detach(name)?;
        println!("detached from {name}");
    }
    for addr in &args.addresses {
        decap.disallow_address(*addr)?;
        println!("tunnels to {addr} no longer decapsulated");
    }
    Ok(())
}

pub fn show(args: DecapShowArgs) -> Result<()> {
    if !installed(&args.pin)? {
        bail!(
            "tc_decap is not installed as {:?} (nothing pinned under {}); `ferrule decap attach` installs it",
            args.pin.name,
            ferrule_ebpf::node_pin_dir(&args.pin.bpffs, &args.pin.name)?.display()
        );
    }
    let mut decap = open(&args.pin)?;
    let state = DecapState {
        name: args.pin.name.clone(),
        pin_dir: decap.pin_dir().display().to_string(),
        interfaces: decap.links()?,
        addresses: decap.allowed_addresses()?,
        events: decap.events()?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print!("{}", render(&state));
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// `ferrule decap show`: where it is pinned, each interface with its link's state, the allowed
/// addresses, and the counters with what they mean.
fn render(state: &DecapState) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let _ = writeln!(out, "tc_decap {:?}, pinned under {}", state.name, state.pin_dir);
    let interfaces: Vec<String> = state
        .interfaces
        .iter()
        .map(|l| if l.attached { l.interface.clone() } else { format!("{} (defunct: interface gone)", l.interface) })
        .collect();
    let addresses: Vec<String> = state.addresses.iter().map(IpAddr::to_string).collect();
    let _ = writeln!(out, "Interfaces: {}", list(&interfaces));
    let _ = writeln!(out, "Addresses:  {}", list(&addresses));
    let rows: Vec<Vec<String>> = DECAP_EVENTS
        .iter()
        .map(|e| vec![e.name.to_string(), (e.count)(&state.events).to_string(), e.meaning.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&crate::show::columns(&["Event", "Packets", ""], &rows, &[1]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_lists_interfaces_addresses_and_counters() {
        let state = DecapState {
            name: "decap".into(),
            pin_dir: "/sys/fs/bpf/ferrule/decap".into(),
            interfaces: vec![
                DecapLink { interface: "eth0".into(), attached: true },
                DecapLink { interface: "eth1".into(), attached: false },
            ],
            addresses: vec!["198.51.100.10".parse().unwrap(), "2001:db8:100::10".parse().unwrap()],
            events: DecapEvents { decapsulated: 1234, not_local: 2, failed: 0, malformed: 1 },
        };
        assert_eq!(
            render(&state),
            "\
tc_decap \"decap\", pinned under /sys/fs/bpf/ferrule/decap
Interfaces: eth0, eth1 (defunct: interface gone)
Addresses:  198.51.100.10, 2001:db8:100::10

Event         Packets
decapsulated     1234  tunnel header removed; the client's packet goes on to the stack
not_local           2  tunnel to an address not allowed here: left alone
malformed           1  outer header the stack drops (version, checksum, lengths): left alone
failed              0  the kernel refused to remove the header: left alone
"
        );
        let empty = DecapState { interfaces: vec![], addresses: vec![], ..state };
        assert!(render(&empty).contains("Interfaces: none\nAddresses:  none\n"), "{}", render(&empty));
    }
}
