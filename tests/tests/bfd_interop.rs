//! BFD interop: Ferrule's BFD driver (`ferrule_bgp::bfd`) against FRR's bfdd and BIRD's
//! `protocol bfd`, over IPv6 link-local and over IPv4. Each scenario builds a node namespace
//! (our driver, on a tokio runtime whose threads live there) and a peer namespace joined by a
//! veth, and checks, printing what it expected and what it saw:
//!  1. the session comes Up on both sides, with our detection time at the configured
//!     interval x multiplier once the peers' Poll Sequences are done;
//!  2. after a second of steady state (no flap), a cut peer (SIGSTOP on the daemon) is
//!     detected within interval x multiplier + 50 ms of the cut, with diagnostic 1;
//!  3. the session comes back when the peer resumes;
//!  4. both sides move to 50 ms through a Poll Sequence, and a cut is detected within
//!     150 ms + 50 ms;
//!  5. (FRR) the peer's `shutdown` is seen as AdminDown, not as a failure, and removing our
//!     session makes FRR report the neighbor administratively down.
//!
//! Plus GTSM: a Control packet that arrives with a TTL / hop limit below 255 is dropped, the
//! same packet with 255 is accepted. And an ignored benchmark: the median detection time over
//! five cuts at 100 ms x 3 and 50 ms x 3 against FRR.

use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use ferrule_bgp::bfd::{Bfd, BfdPeer, BfdStatus, Diag, State};
use ferrule_tests::{cmd, in_netns, net, Bird, Frr, NetNs, TestDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::watch;

const MULTIPLIER: u8 = 3;
const FAST: Duration = Duration::from_millis(100);
const FASTER: Duration = Duration::from_millis(50);
/// Scheduling and wake-up latency allowed on top of interval x multiplier.
const SLACK: Duration = Duration::from_millis(50);
/// Handshakes run on one-second packets until Up, then a Poll Sequence on each side.
const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a session runs Up before a cut; also checks that it stays up in steady state.
const SETTLE: Duration = Duration::from_secs(1);
/// Well above any detection time the tests configure.
const DOWN_TIMEOUT: Duration = Duration::from_secs(5);

const NODE_IF: &str = "tor0";
const PEER_IF: &str = "srv0";
const NODE_V4: &str = "192.0.2.1";
const PEER_V4: &str = "192.0.2.2";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Frr,
    Bird,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    V4,
    V6LinkLocal,
}

enum PeerDaemon {
    Frr(Frr),
    Bird(Bird),
}

/// The addresses of one link, seen from our side (`ours`) and the peer's (`theirs`).
struct Addresses {
    ours: IpAddr,
    theirs: IpAddr,
}

/// Fields drop in order: our handle (AdminDown to the peer), the runtime running its task,
/// the peer daemon, the namespaces, and last the directory the daemon wrote to.
struct Lab {
    bfd: Bfd,
    rt: Runtime,
    daemon: PeerDaemon,
    kind: Kind,
    transport: Transport,
    addrs: Addresses,
    ifindex: u32,
    _node: NetNs,
    peer_ns: NetNs,
    dir: TestDir,
}

impl Lab {
    fn new(kind: Kind, transport: Transport, interval: Duration, label: &str) -> Result<Lab> {
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

    fn who(&self) -> String {
        format!("{:?} over {:?}", self.kind, self.transport)
    }

    fn bfd_peer(&self, interval: Duration) -> BfdPeer {
        BfdPeer::new(self.addrs.theirs, interval, MULTIPLIER).local(self.addrs.ours).interface(self.ifindex)
    }

    fn add(&self, interval: Duration) -> Result<watch::Receiver<BfdStatus>> {
        Ok(self.rt.block_on(self.bfd.add(self.bfd_peer(interval)))?)
    }

    /// Waits (bounded) until our status satisfies `done`; returns the status then.
    fn wait(
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
    fn wait_up(&self, status: &mut watch::Receiver<BfdStatus>, interval: Duration) -> Result<BfdStatus> {
        let expected = interval * u32::from(MULTIPLIER);
        self.wait(status, &format!("Up with a {expected:?} detection time"), UP_TIMEOUT, |s| {
            s.state == State::Up && s.detection_time == Some(expected)
        })
    }

    fn peer_pid(&mut self) -> Pid {
        let pid = match &mut self.daemon {
            PeerDaemon::Frr(f) => f.daemons().iter().find(|d| d.name().starts_with("bfdd")).expect("bfdd runs").pid(),
            PeerDaemon::Bird(b) => b.daemon().pid(),
        };
        Pid::from_raw(pid as i32)
    }

    /// The peer's own state for our address, as its CLI says it.
    fn peer_state(&self) -> Result<String> {
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

    fn peer_report(&self) -> String {
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
    fn cut(&mut self, status: &mut watch::Receiver<BfdStatus>, settle: Duration) -> Result<(Duration, BfdStatus)> {
        let (took, down, ()) = self.cut_then(status, settle, |_| Ok(()))?;
        Ok((took, down))
    }

    /// [`Lab::cut`], running `then` with the wall-clock time of the cut after our Down and
    /// before the peer resumes (for a second detector of the same cut).
    fn cut_then<T>(
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

    fn wait_peer_state(&self, want: &str) -> Result<()> {
        let mut seen = String::new();
        cmd::poll_until(&format!("{:?} to report the session {want}", self.kind), UP_TIMEOUT, ms(100), || {
            seen = self.peer_state()?;
            Ok(seen == want)
        })
        .with_context(|| format!("peer says {seen:?}:\n{}", self.peer_report()))
    }

    /// Moves the peer to a new interval (its side starts a Poll Sequence).
    fn reconfigure_peer(&self, interval: Duration) -> Result<()> {
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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A multi-threaded runtime built on a thread inside `node`: its worker threads are created
/// there, so every socket the driver opens (on a worker) belongs to the node namespace.
fn start_driver(node: &NetNs) -> Result<(Runtime, Bfd)> {
    let rt =
        in_netns(node, || Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?))?;
    let bfd = rt.block_on(rt.spawn(async { Bfd::spawn() }))??;
    let listening = node.run("ss", ["-H", "-u", "-l", "-n", "sport", "=", ":3784"])?;
    ensure!(listening.lines().count() == 2, "expected UDP 3784 on IPv4 and IPv6 in {}:\n{listening}", node.name());
    Ok((rt, bfd))
}

fn ifindex(ns: &NetNs, ifname: &str) -> Result<u32> {
    let out = ns.run("ip", ["-o", "link", "show", "dev", ifname])?;
    out.split(':').next().and_then(|n| n.trim().parse().ok()).with_context(|| format!("ifindex of {ifname}: {out}"))
}

fn frr_peer_line(addrs: &Addresses) -> String {
    format!("peer {} interface {PEER_IF}", addrs.ours)
}

fn bfdd_conf(addrs: &Addresses, interval: Duration) -> String {
    let ms = interval.as_millis();
    format!(
        "log stdout debugging\n!\nbfd\n {}\n  detect-multiplier {MULTIPLIER}\n  receive-interval {ms}\n  \
         transmit-interval {ms}\n  no shutdown\n !\n!\n",
        frr_peer_line(addrs)
    )
}

/// BIRD runs a BFD session only for a client: the `neighbor` line is that client here.
fn bird_conf(addrs: &Addresses, interval: Duration) -> String {
    let ms = interval.as_millis();
    format!(
        "router id {PEER_V4};\nlog stderr all;\nprotocol device {{ }}\n\
         protocol bfd bfd1 {{\n  interface \"{PEER_IF}\" {{ interval {ms} ms; multiplier {MULTIPLIER}; }};\n  \
         neighbor {} dev \"{PEER_IF}\" local {};\n}}\n",
        addrs.ours, addrs.theirs
    )
}

fn frr_peer(frr: &Frr, addr: IpAddr) -> Result<Value> {
    let out = frr.vtysh(&["show bfd peers json"])?;
    let peers: Value = serde_json::from_str(&out).with_context(|| format!("vtysh returned non-JSON: {out}"))?;
    peers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer"] == addr.to_string()))
        .cloned()
        .with_context(|| format!("FRR has no BFD peer {addr}: {out}"))
}

/// Checks 1-4 of the module documentation.
fn interop(kind: Kind, transport: Transport, label: &str) -> Result<()> {
    let mut lab = Lab::new(kind, transport, FAST, label)?;
    let who = lab.who();

    // 1. Up on both sides, fast timers.
    let mut status = lab.add(FAST)?;
    let up = lab.wait_up(&mut status, FAST)?;
    lab.wait_peer_state("up")?;
    println!(
        "[{who}] 1 up: expected Up on both sides with detection {:?}, saw ours {} (remote {}) detection {:?}, peer up",
        FAST * 3,
        up.state,
        up.remote_state,
        up.detection_time
    );

    // `show bfd peers --json` material: one row, with the negotiated figures.
    let rows = serde_json::to_value(lab.rt.block_on(lab.bfd.sessions())?)?;
    let row = &rows[0];
    println!(
        "[{who}] 1 summary: expected one row, Up, peer {}, detection 300000 us; saw {} row(s), {} peer {} \
         detection {} us, remote discriminator {}",
        lab.addrs.theirs,
        rows.as_array().map_or(0, Vec::len),
        row["state"],
        row["peer"],
        row["detection_time_us"],
        row["remote_discriminator"]
    );
    ensure!(rows.as_array().map_or(0, Vec::len) == 1, "{rows}");
    ensure!(row["state"] == "Up" && row["peer"] == lab.addrs.theirs.to_string(), "{row}");
    ensure!(row["detection_time_us"] == 300_000 && row["remote_discriminator"].as_u64() != Some(0), "{row}");

    for (n, interval) in [(2, FAST), (4, FASTER)] {
        if interval != FAST {
            // 4. Both sides move to 50 ms.
            lab.reconfigure_peer(interval)?;
            status = lab.add(interval)?;
            let up = lab.wait_up(&mut status, interval)?;
            println!(
                "[{who}] 4 reconfigured: expected detection {:?} after the Poll Sequences, saw {:?} (tx {:?})",
                interval * 3,
                up.detection_time,
                up.transmit_interval
            );
        }
        let bound = interval * u32::from(MULTIPLIER) + SLACK;
        let (took, down) = lab.cut(&mut status, SETTLE)?;
        println!(
            "[{who}] {n} cut at {interval:?} x {MULTIPLIER}: expected Down with diag 1 within {bound:?}, \
             saw {} diag {} after {took:?}",
            down.state,
            down.diag.code()
        );
        ensure!(down.state == State::Down && down.diag == Diag::CONTROL_DETECTION_TIME_EXPIRED, "{down:?}");
        ensure!(down.is_failure() && down.counters.failures >= 1, "{down:?}");
        ensure!(took <= bound, "[{who}] detection took {took:?}, more than {bound:?}");

        // 3. Back up once the peer resumes.
        let again = lab.wait_up(&mut status, interval)?;
        println!(
            "[{who}] 3 resumed: expected Up again, saw {} (up transitions {})",
            again.state, again.counters.up_transitions
        );
    }
    Ok(())
}

#[test]
fn frr_over_ipv6_link_local_comes_up_and_detects_a_cut_at_100_and_50_ms() {
    if !ferrule_tests::privileged() {
        return;
    }
    interop(Kind::Frr, Transport::V6LinkLocal, "bfr6").unwrap();
}

#[test]
fn frr_over_ipv4_comes_up_and_detects_a_cut_at_100_and_50_ms() {
    if !ferrule_tests::privileged() {
        return;
    }
    interop(Kind::Frr, Transport::V4, "bfr4").unwrap();
}

#[test]
fn bird_over_ipv6_link_local_comes_up_and_detects_a_cut_at_100_and_50_ms() {
    if !ferrule_tests::privileged() {
        return;
    }
    interop(Kind::Bird, Transport::V6LinkLocal, "bbi6").unwrap();
}

#[test]
fn bird_over_ipv4_comes_up_and_detects_a_cut_at_100_and_50_ms() {
    if !ferrule_tests::privileged() {
        return;
    }
    interop(Kind::Bird, Transport::V4, "bbi4").unwrap();
}

/// 5. Administrative shutdown both ways, with FRR.
#[test]
fn frr_admin_down_is_not_a_failure_and_removing_our_session_tells_frr() {
    if !ferrule_tests::privileged() {
        return;
    }
    let lab = Lab::new(Kind::Frr, Transport::V6LinkLocal, FAST, "bfra").unwrap();
    let who = lab.who();
    let mut status = lab.add(FAST).unwrap();
    lab.wait_up(&mut status, FAST).unwrap();
    let PeerDaemon::Frr(frr) = &lab.daemon else { unreachable!() };

    frr.vtysh(&["configure terminal", "bfd", &frr_peer_line(&lab.addrs), "shutdown"]).unwrap();
    let down = lab.wait(&mut status, "the peer's AdminDown", DOWN_TIMEOUT, |s| s.state != State::Up).unwrap();
    println!(
        "[{who}] 5 peer shutdown: expected Down, remote AdminDown, not a failure; saw {} remote {} \
         peer_admin_down={} is_failure={} failures={}",
        down.state,
        down.remote_state,
        down.peer_admin_down,
        down.is_failure(),
        down.counters.failures
    );
    assert_eq!(
        (down.state, down.remote_state, down.diag),
        (State::Down, State::AdminDown, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN)
    );
    assert!(down.peer_admin_down && !down.is_failure() && down.counters.failures == 0, "{down:?}");

    frr.vtysh(&["configure terminal", "bfd", &frr_peer_line(&lab.addrs), "no shutdown"]).unwrap();
    lab.wait_up(&mut status, FAST).unwrap();
    println!("[{who}] 5 peer no shutdown: expected Up again, saw Up");

    let removed = lab.rt.block_on(lab.bfd.remove(lab.addrs.theirs, Some(lab.ifindex))).unwrap();
    assert!(removed);
    let mut seen = Value::Null;
    cmd::poll_until("FRR to see our AdminDown", DOWN_TIMEOUT, ms(50), || {
        seen = frr_peer(frr, lab.addrs.ours)?;
        Ok(seen["status"] == "down")
    })
    .unwrap();
    println!(
        "[{who}] 5 removed: expected FRR down with remote diagnostic administratively down, saw status {} \
         remote-diagnostic {}",
        seen["status"], seen["remote-diagnostic"]
    );
    assert!(seen["remote-diagnostic"].as_str().unwrap_or("").contains("administratively"), "{seen}");
    // The last status is AdminDown, then the channel closes.
    let drained = lab.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), async { while status.changed().await.is_ok() {} }).await
    });
    let last = status.borrow().clone();
    println!("[{who}] 5 removed: expected our last status AdminDown and the channel closed, saw {}", last.state);
    assert!(drained.is_ok(), "the status channel closes on removal");
    assert_eq!(last.state, State::AdminDown);
}

/// GTSM (RFC 5881 5): the same Down packet is dropped at TTL / hop limit 254 and accepted at
/// 255; a packet from an address without a session is dropped too.
#[test]
fn drops_control_packets_whose_ttl_or_hop_limit_is_not_255() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("bgts").unwrap();
    let node = NetNs::new("bfdn").unwrap();
    let peer_ns = NetNs::new("bfdp").unwrap();
    net::veth(&node, NODE_IF, &peer_ns, PEER_IF).unwrap();
    net::add_addr(&node, NODE_IF, &format!("{NODE_V4}/24")).unwrap();
    net::add_addr(&peer_ns, PEER_IF, &format!("{PEER_V4}/24")).unwrap();
    net::add_addr(&peer_ns, PEER_IF, "192.0.2.3/24").unwrap();
    let ifindex = ifindex(&node, NODE_IF).unwrap();
    let (rt, bfd) = start_driver(&node).unwrap();
    let node_ll = net::link_local(&node, NODE_IF).unwrap();
    let peer_ll = net::link_local(&peer_ns, PEER_IF).unwrap();

    for (ours, theirs, other) in [
        (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]), Some(IpAddr::from([192, 0, 2, 3]))),
        (node_ll, peer_ll, None),
    ] {
        let peer = BfdPeer::new(theirs, FAST, MULTIPLIER).interface(ifindex);
        let mut status = rt.block_on(bfd.add(peer)).unwrap();
        let before = rt.block_on(bfd.counters()).unwrap();
        let dest = match ours {
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 3784, 0, peer_ifindex(&peer_ns))),
            v4 => SocketAddr::new(v4, 3784),
        };
        send_down_packet(&peer_ns, theirs, dest, 254).unwrap();
        if let Some(other) = other {
            send_down_packet(&peer_ns, other, dest, 255).unwrap();
        }
        std::thread::sleep(ms(200));
        let after = rt.block_on(bfd.counters()).unwrap();
        let s = status.borrow_and_update().clone();
        println!(
            "[GTSM {theirs}] TTL 254: expected dropped (dropped_ttl +1) and the session still Down, saw dropped_ttl +{} \
             state {} remote discriminator {}",
            after.dropped_ttl - before.dropped_ttl,
            s.state,
            s.remote_discr
        );
        assert_eq!(after.dropped_ttl - before.dropped_ttl, 1);
        assert_eq!((s.state, s.remote_discr), (State::Down, 0));
        if other.is_some() {
            println!(
                "[GTSM {theirs}] from an address without a session: expected dropped, saw dropped_no_session +{}",
                after.dropped_no_session - before.dropped_no_session
            );
            assert_eq!(after.dropped_no_session - before.dropped_no_session, 1);
        }

        send_down_packet(&peer_ns, theirs, dest, 255).unwrap();
        let s = rt
            .block_on(async {
                let init = status.wait_for(|s| s.state == State::Init);
                tokio::time::timeout(Duration::from_secs(2), init).await.map(|r| r.map(|s| s.clone()))
            })
            .expect("Init within 2 s")
            .unwrap();
        println!(
            "[GTSM {theirs}] TTL 255: expected Init with remote discriminator 77, saw {} {}",
            s.state, s.remote_discr
        );
        assert_eq!(s.remote_discr, 77);
        assert!(rt.block_on(bfd.remove(theirs, Some(ifindex))).unwrap());
    }
    drop(bfd);
    drop(rt);
    drop(dir);
}

fn peer_ifindex(peer_ns: &NetNs) -> u32 {
    ifindex(peer_ns, PEER_IF).unwrap()
}

/// Sends one BFD Down packet (My Discriminator 77) from `from` in `ns` to `dest` with the given
/// TTL / hop limit.
fn send_down_packet(ns: &NetNs, from: IpAddr, dest: SocketAddr, ttl: u32) -> Result<()> {
    let packet = ferrule_bgp::bfd::ControlPacket {
        diag: Diag::NONE,
        state: State::Down,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discr: 77,
        your_discr: 0,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 100_000,
        required_min_echo_rx_us: 0,
    }
    .encode();
    in_netns(ns, move || {
        let local = match (from, dest) {
            (IpAddr::V6(ip), SocketAddr::V6(d)) => SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, d.scope_id())),
            _ => SocketAddr::new(from, 0),
        };
        let socket = socket2::Socket::new(socket2::Domain::for_address(local), socket2::Type::DGRAM, None)?;
        if dest.is_ipv6() {
            socket.set_unicast_hops_v6(ttl)?;
        } else {
            socket.set_ttl_v4(ttl)?;
        }
        socket.bind(&local.into())?;
        let socket: UdpSocket = socket.into();
        socket.send_to(&packet, dest)?;
        Ok(())
    })
}

fn median(v: &[Duration]) -> Duration {
    let mut sorted = v.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// The baseline detector of the benchmark: BIRD's BFD in its own namespace, peering with the
/// same bfdd over a second link, its session times printed as epoch seconds with milliseconds.
struct Baseline {
    bird: Bird,
    /// bfdd's address on the link to BIRD.
    peer: IpAddr,
    _ns: NetNs,
}

impl Baseline {
    const IF: &str = "base0";
    const PEER_IF: &str = "srv1";

    fn start(lab: &Lab, interval: Duration) -> Result<Baseline> {
        let ns = NetNs::new("bfdb")?;
        net::veth(&ns, Self::IF, &lab.peer_ns, Self::PEER_IF)?;
        let ours = net::link_local(&ns, Self::IF)?;
        let peer = net::link_local(&lab.peer_ns, Self::PEER_IF)?;
        let PeerDaemon::Frr(frr) = &lab.daemon else { bail!("the baseline peers with FRR") };
        let ms = interval.as_millis();
        frr.vtysh(&[
            "configure terminal",
            "bfd",
            &format!("peer {ours} interface {}", Self::PEER_IF),
            &format!("detect-multiplier {MULTIPLIER}"),
            &format!("receive-interval {ms}"),
            &format!("transmit-interval {ms}"),
        ])?;
        let bird = Bird::start_raw(&ns, lab.dir.path(), &Self::conf(peer, interval))?;
        Ok(Baseline { bird, peer, _ns: ns })
    }

    fn conf(peer: IpAddr, interval: Duration) -> String {
        format!(
            "router id 192.0.2.9;\ntimeformat protocol \"%s.%3f\";\nprotocol device {{ }}\n\
             protocol bfd bfd1 {{\n  interface \"{}\" {{ interval {} ms; multiplier {MULTIPLIER}; }};\n  \
             neighbor {peer} dev \"{}\";\n}}\n",
            Self::IF,
            interval.as_millis(),
            Self::IF
        )
    }

    fn reconfigure(&self, lab: &Lab, interval: Duration) -> Result<()> {
        let PeerDaemon::Frr(frr) = &lab.daemon else { bail!("the baseline peers with FRR") };
        let ours = net::link_local(&self._ns, Self::IF)?;
        let ms = interval.as_millis().to_string();
        frr.vtysh(&[
            "configure terminal",
            "bfd",
            &format!("peer {ours} interface {}", Self::PEER_IF),
            &format!("receive-interval {ms}"),
            &format!("transmit-interval {ms}"),
        ])?;
        std::fs::write(self.bird.config_path(), Self::conf(self.peer, interval))?;
        let out = self.bird.birdc(&["configure"])?;
        ensure!(out.contains("Reconfigured"), "birdc configure: {out}");
        Ok(())
    }

    /// BIRD's state, "Since" (epoch seconds) and timeout columns for the session to bfdd.
    fn session(&self) -> Result<(String, f64, String)> {
        let out = self.bird.birdc(&["show", "bfd", "sessions"])?;
        let peer = self.peer.to_string();
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(peer.as_str()))
            .with_context(|| format!("BIRD has no BFD session for {peer}:\n{out}"))?;
        let cols: Vec<&str> = line.split_whitespace().collect();
        ensure!(cols.len() >= 6, "unexpected line: {line}");
        Ok((cols[2].to_string(), cols[3].parse().with_context(|| format!("since in {line}"))?, cols[5].to_string()))
    }

    fn wait_up(&self, interval: Duration) -> Result<()> {
        let timeout = format!("{:.3}", (interval * u32::from(MULTIPLIER)).as_secs_f64());
        cmd::poll_until(&format!("BIRD Up with timeout {timeout}"), UP_TIMEOUT, ms(50), || {
            let (state, _, t) = self.session()?;
            Ok(state == "Up" && t == timeout)
        })
    }

    /// How long after `cut` BIRD declared the session down, from its own timestamp.
    fn wait_down(&self, cut: SystemTime) -> Result<Duration> {
        let mut since = 0.0;
        cmd::poll_until("BIRD to see the cut", DOWN_TIMEOUT, ms(10), || {
            let (state, s, _) = self.session()?;
            since = s;
            Ok(state != "Up")
        })?;
        let cut = cut.duration_since(UNIX_EPOCH)?.as_secs_f64();
        Ok(Duration::from_secs_f64((since - cut).max(0.0)))
    }
}

/// Not a timed test: the figures for the report. Five cuts (SIGSTOP of FRR's bfdd) per
/// interval over IPv6 link-local; each cut is seen by our driver and, as the baseline in the
/// same run, by BIRD's BFD peering with the same bfdd (its timestamps have millisecond
/// resolution). Prints the medians, their ratio, and the ratio to interval x multiplier.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_frr_detection_time_median_over_five_cuts() {
    if !ferrule_tests::privileged() {
        return;
    }
    let mut lab = Lab::new(Kind::Frr, Transport::V6LinkLocal, FAST, "bfbm").unwrap();
    let baseline = Baseline::start(&lab, FAST).unwrap();
    let mut status = lab.add(FAST).unwrap();
    for interval in [FAST, FASTER] {
        if interval != FAST {
            lab.reconfigure_peer(interval).unwrap();
            baseline.reconfigure(&lab, interval).unwrap();
            status = lab.add(interval).unwrap();
        }
        lab.wait_up(&mut status, interval).unwrap();
        baseline.wait_up(interval).unwrap();
        let (mut ours, mut bird) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            // A wait of 1 s plus 0-99 ms taken from the clock's nanoseconds: the cut falls at
            // an unrelated point of the peer's (jittered) schedule.
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
            let settle = SETTLE + Duration::from_nanos(u64::from(nanos % 100_000_000));
            let (took, down, theirs) = lab.cut_then(&mut status, settle, |cut| baseline.wait_down(cut)).unwrap();
            assert_eq!(down.diag, Diag::CONTROL_DETECTION_TIME_EXPIRED);
            ours.push(took);
            bird.push(theirs);
            lab.wait_up(&mut status, interval).unwrap();
            baseline.wait_up(interval).unwrap();
        }
        let detect = interval * u32::from(MULTIPLIER);
        let (m_ours, m_bird) = (median(&ours), median(&bird));
        println!(
            "BFD detection of a stopped FRR bfdd, {interval:?} x {MULTIPLIER} (bound {detect:?}), 5 cuts:\n  \
             ferrule: median {m_ours:.1?} (min {:.1?}, max {:.1?}), median/bound {:.2}\n  \
             BIRD (baseline, same cuts): median {m_bird:.1?} (min {:.1?}, max {:.1?})\n  \
             ferrule/BIRD median ratio {:.2}\n  ferrule all {ours:.1?}\n  BIRD all {bird:.1?}",
            ours.iter().min().unwrap(),
            ours.iter().max().unwrap(),
            m_ours.as_secs_f64() / detect.as_secs_f64(),
            bird.iter().min().unwrap(),
            bird.iter().max().unwrap(),
            m_ours.as_secs_f64() / m_bird.as_secs_f64(),
        );
        assert!(ours.iter().all(|t| *t <= detect + SLACK), "{ours:?}");
    }
}
