//! The BFD lab shared by the interop tests (`tests/bfd_interop.rs`) and the detection-time
//! benchmark (`benches/bfd_detection.rs`): a node namespace running Ferrule's BFD driver on a tokio
//! runtime whose threads live there, a peer namespace running FRR's bfdd or BIRD, one veth
//! between them, and the waits, cuts (SIGSTOP of the peer daemon) and reconfigurations both use.
#![allow(dead_code)] // each target uses its own subset

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use ferrule_bgp::bfd::{Bfd, BfdPeer, BfdStatus, State};
use ferrule_tests::{cmd, in_netns, net, Bird, Frr, NetNs, TestDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::watch;

pub const MULTIPLIER: u8 = 3;
pub const FAST: Duration = Duration::from_millis(100);
pub const FASTER: Duration = Duration::from_millis(50);
/// Scheduling and wake-up latency allowed on top of interval x multiplier.
pub const SLACK: Duration = Duration::from_millis(50);
/// Handshakes run on one-second packets until Up, then a Poll Sequence on each side.
pub const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a session runs Up before a cut; also checks that it stays up in steady state.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Well above any detection time the tests configure.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(5);

pub const NODE_IF: &str = "tor0";
pub const PEER_IF: &str = "srv0";
pub const NODE_V4: &str = "192.0.2.1";
pub const PEER_V4: &str = "192.0.2.2";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Frr,
    Bird,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    V4,
    V6LinkLocal,
}

pub enum PeerDaemon {
    Frr(Frr),
    Bird(Bird),
}

/// The addresses of one link, seen from our side (`ours`) and the peer's (`theirs`).
pub struct Addresses {
    pub ours: IpAddr,
    pub theirs: IpAddr,
}

/// Fields drop in order: our handle (AdminDown to the peer), the runtime running its task,
/// the peer daemon, the namespaces, and last the directory the daemon wrote to.
pub struct Lab {
    pub bfd: Bfd,
    pub rt: Runtime,
    pub daemon: PeerDaemon,
    pub kind: Kind,
    pub transport: Transport,
    pub addrs: Addresses,
    pub ifindex: u32,
    _node: NetNs,
    pub peer_ns: NetNs,
    pub dir: TestDir,
}

impl Lab {
    pub fn new(kind: Kind, transport: Transport, interval: Duration, label: &str) -> Result<Lab> {
        let dir = TestDir::new(label)?;
        let node = NetNs::new("bfdn")?;
        let peer_ns = NetNs::new("bfdp")?;
        net::veth(&node, NODE_IF, &peer_ns, PEER_IF)?;
        net::add_addr(&node, NODE_IF, &format!("{NODE_V4}/24"))?;
        net::add_addr(&peer_ns, PEER_IF, &format!("{PEER_V4}/24"))?;
        let addrs = match transport {
            Transport::V4 => Addresses { ours: NODE_V4.parse()?, theirs: PEER_V4.parse()? },
            Transport::V6LinkLocal => {
                Addresses { ours: net::link_local(&node, NODE_IF)?, theirs: net::link_local(&peer_ns, PEER_IF)? }
            }
        };
        let ifindex = ifindex(&node, NODE_IF)?;
        let daemon = match kind {
            Kind::Frr => {
                PeerDaemon::Frr(Frr::start_raw(&peer_ns, dir.path(), &[("bfdd", &bfdd_conf(&addrs, interval))])?)
            }
            Kind::Bird => PeerDaemon::Bird(Bird::start_raw(&peer_ns, dir.path(), &bird_conf(&addrs, interval))?),
        };
        let (rt, bfd) = start_driver(&node)?;
        Ok(Lab { bfd, rt, daemon, kind, transport, addrs, ifindex, _node: node, peer_ns, dir })
    }

    pub fn who(&self) -> String {
        format!("{:?} over {:?}", self.kind, self.transport)
    }

    pub fn bfd_peer(&self, interval: Duration) -> BfdPeer {
        BfdPeer::new(self.addrs.theirs, interval, MULTIPLIER).local(self.addrs.ours).interface(self.ifindex)
    }

    pub fn add(&self, interval: Duration) -> Result<watch::Receiver<BfdStatus>> {
        Ok(self.rt.block_on(self.bfd.add(self.bfd_peer(interval)))?)
    }

    /// Waits (bounded) until our status satisfies `done`; returns the status then.
    pub fn wait(
        &self,
        status: &mut watch::Receiver<BfdStatus>,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&BfdStatus) -> bool,
    ) -> Result<BfdStatus> {
        let result = self.rt.block_on(async {
            tokio::time::timeout(timeout, status.wait_for(done)).await.map(|r| r.map(|s| s.clone()))
        });
        match result {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => bail!("[{}] the BFD session was removed while waiting for {what}", self.who()),
            Err(_) => bail!(
                "[{}] timed out after {timeout:?} waiting for {what}; ours: {:?}\npeer:\n{}",
                self.who(),
                *status.borrow(),
                self.peer_report()
            ),
        }
    }

    /// Waits until the session is Up with the detection time the interval gives.
    pub fn wait_up(&self, status: &mut watch::Receiver<BfdStatus>, interval: Duration) -> Result<BfdStatus> {
        let expected = interval * u32::from(MULTIPLIER);
        self.wait(status, &format!("Up with a {expected:?} detection time"), UP_TIMEOUT, |s| {
            s.state == State::Up && s.detection_time == Some(expected)
        })
    }

    pub fn peer_pid(&mut self) -> Pid {
        let pid = match &mut self.daemon {
            PeerDaemon::Frr(f) => f.daemons().iter().find(|d| d.name().starts_with("bfdd")).expect("bfdd runs").pid(),
            PeerDaemon::Bird(b) => b.daemon().pid(),
        };
        Pid::from_raw(pid as i32)
    }

    /// The peer's own state for our address, as its CLI says it.
    pub fn peer_state(&self) -> Result<String> {
        match &self.daemon {
            PeerDaemon::Frr(f) => Ok(frr_peer(f, self.addrs.ours)?["status"].as_str().unwrap_or("?").to_string()),
            PeerDaemon::Bird(b) => {
                let out = b.birdc(&["show", "bfd", "sessions"])?;
                let ours = self.addrs.ours.to_string();
                out.lines()
                    .find(|l| l.split_whitespace().next() == Some(ours.as_str()))
                    .and_then(|l| l.split_whitespace().nth(2))
                    .map(|s| s.to_lowercase())
                    .with_context(|| format!("BIRD has no BFD session for {ours}:\n{out}"))
            }
        }
    }

    pub fn peer_report(&self) -> String {
        let out = match &self.daemon {
            PeerDaemon::Frr(f) => f.vtysh(&["show bfd peers"]),
            PeerDaemon::Bird(b) => b.birdc(&["show", "bfd", "sessions"]),
        };
        let log = match &self.daemon {
            PeerDaemon::Frr(f) => ferrule_tests::bgp::BgpPeer::log_tail(f),
            PeerDaemon::Bird(b) => ferrule_tests::bgp::BgpPeer::log_tail(b),
        };
        format!("{}\n{log}", out.unwrap_or_else(|e| format!("{e:#}")))
    }

    /// Lets the session run for `settle` (it must stay Up, without a flap), then stops the peer
    /// daemon and returns how long after the stop our session went Down (from the driver's own
    /// timestamp of the transition); the daemon is resumed either way.
    ///
    /// The settling matters for the figures: `wait_up` returns as the peer's Poll packet
    /// arrives, and a cut right then would always measure the full detection time.
    pub fn cut(&mut self, status: &mut watch::Receiver<BfdStatus>, settle: Duration) -> Result<(Duration, BfdStatus)> {
        let (took, down, ()) = self.cut_then(status, settle, |_| Ok(()))?;
        Ok((took, down))
    }

    /// [`Lab::cut`], running `then` with the wall-clock time of the cut after our Down and
    /// before the peer resumes (for a second detector of the same cut).
    pub fn cut_then<T>(
        &mut self,
        status: &mut watch::Receiver<BfdStatus>,
        settle: Duration,
        then: impl FnOnce(SystemTime) -> Result<T>,
    ) -> Result<(Duration, BfdStatus, T)> {
        let before = status.borrow_and_update().clone();
        std::thread::sleep(settle);
        let now = status.borrow_and_update().clone();
        ensure!(
            now.state == State::Up && now.counters.up_transitions == before.counters.up_transitions,
            "[{}] the session did not stay Up for {settle:?}: {now:?}",
            self.who()
        );
        let pid = self.peer_pid();
        let (cut, wall) = (Instant::now(), SystemTime::now());
        kill(pid, Signal::SIGSTOP)?;
        let result = self
            .wait(status, "Down after the cut", DOWN_TIMEOUT, |s| s.state != State::Up)
            .and_then(|down| Ok((down, then(wall)?)));
        kill(pid, Signal::SIGCONT)?;
        let (down, other) = result?;
        Ok((down.last_change.saturating_duration_since(cut), down, other))
    }

    pub fn wait_peer_state(&self, want: &str) -> Result<()> {
        let mut seen = String::new();
        cmd::poll_until(&format!("{:?} to report the session {want}", self.kind), UP_TIMEOUT, ms(100), || {
            seen = self.peer_state()?;
            Ok(seen == want)
        })
        .with_context(|| format!("peer says {seen:?}:\n{}", self.peer_report()))
    }

    /// Moves the peer to a new interval (its side starts a Poll Sequence).
    pub fn reconfigure_peer(&self, interval: Duration) -> Result<()> {
        match &self.daemon {
            PeerDaemon::Frr(f) => {
                let ms = interval.as_millis().to_string();
                f.vtysh(&[
                    "configure terminal",
                    "bfd",
                    &frr_peer_line(&self.addrs),
                    &format!("receive-interval {ms}"),
                    &format!("transmit-interval {ms}"),
                ])?;
            }
            PeerDaemon::Bird(b) => {
                std::fs::write(b.config_path(), bird_conf(&self.addrs, interval))?;
                let out = b.birdc(&["configure"])?;
                ensure!(out.contains("Reconfigured"), "birdc configure: {out}");
            }
        }
        Ok(())
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A multi-threaded runtime built on a thread inside `node`: its worker threads are created
/// there, so every socket the driver opens (on a worker) belongs to the node namespace.
pub fn start_driver(node: &NetNs) -> Result<(Runtime, Bfd)> {
    let rt =
        in_netns(node, || Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?))?;
    let bfd = rt.block_on(rt.spawn(async { Bfd::spawn() }))??;
    let listening = node.run("ss", ["-H", "-u", "-l", "-n", "sport", "=", ":3784"])?;
    ensure!(listening.lines().count() == 2, "expected UDP 3784 on IPv4 and IPv6 in {}:\n{listening}", node.name());
    Ok((rt, bfd))
}

pub fn ifindex(ns: &NetNs, ifname: &str) -> Result<u32> {
    let out = ns.run("ip", ["-o", "link", "show", "dev", ifname])?;
    out.split(':').next().and_then(|n| n.trim().parse().ok()).with_context(|| format!("ifindex of {ifname}: {out}"))
}

pub fn frr_peer_line(addrs: &Addresses) -> String {
    format!("peer {} interface {PEER_IF}", addrs.ours)
}

pub fn bfdd_conf(addrs: &Addresses, interval: Duration) -> String {
    let ms = interval.as_millis();
    format!(
        "log stdout debugging\n!\nbfd\n {}\n  detect-multiplier {MULTIPLIER}\n  receive-interval {ms}\n  \
         transmit-interval {ms}\n  no shutdown\n !\n!\n",
        frr_peer_line(addrs)
    )
}

/// BIRD runs a BFD session only for a client: the `neighbor` line is that client here.
pub fn bird_conf(addrs: &Addresses, interval: Duration) -> String {
    let ms = interval.as_millis();
    format!(
        "router id {PEER_V4};\nlog stderr all;\nprotocol device {{ }}\n\
         protocol bfd bfd1 {{\n  interface \"{PEER_IF}\" {{ interval {ms} ms; multiplier {MULTIPLIER}; }};\n  \
         neighbor {} dev \"{PEER_IF}\" local {};\n}}\n",
        addrs.ours, addrs.theirs
    )
}

pub fn frr_peer(frr: &Frr, addr: IpAddr) -> Result<Value> {
    let out = frr.vtysh(&["show bfd peers json"])?;
    let peers: Value = serde_json::from_str(&out).with_context(|| format!("vtysh returned non-JSON: {out}"))?;
    peers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer"] == addr.to_string()))
        .cloned()
        .with_context(|| format!("FRR has no BFD peer {addr}: {out}"))
}
