//! BFD interop: Ferrule's BFD driver (`ferrule_bgp::bfd`) against FRR's bfdd and BIRD's
//! `protocol bfd`, over IPv6 link-local and over IPv4. Each scenario builds a node namespace
//! (our driver, on a tokio runtime whose threads live there) and a peer namespace joined by a
//! veth (the lab in `bfd_lab/`), and checks, printing what it expected and what it saw:
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
//! same packet with 255 is accepted; and a stall of our own runtime longer than the detection
//! time, while FRR keeps sending, is no failure. The detection-time figures (medians over five cuts against
//! FRR, BIRD as the baseline) are the benchmark `benches/bfd_detection.rs`.

mod bfd_lab;

use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bfd_lab::*;
use ferrule_bgp::bfd::{BfdPeer, Diag, State};
use ferrule_tests::{cmd, in_netns, net, NetNs, TestDir};
use serde_json::Value;

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
    assert_eq!((down.state, down.diag), (State::Down, Diag::NEIGHBOR_SIGNALED_SESSION_DOWN), "{down:?}");
    // FRR sends one AdminDown packet and then nothing: once our detection time has passed
    // without a packet (vtysh may return that late on a busy machine), the peer is forgotten
    // (its state back to Down, nothing received), while the reason we went Down stays.
    let forgotten = down.remote_state == State::Down && down.last_received.is_none();
    assert!(down.remote_state == State::AdminDown || forgotten, "{down:?}");
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

/// A node and a peer namespace joined by a veth with IPv4 addresses (no daemon on either side).
fn v4_link() -> (NetNs, NetNs) {
    let node = NetNs::new("bfdn").unwrap();
    let peer_ns = NetNs::new("bfdp").unwrap();
    net::veth(&node, NODE_IF, &peer_ns, PEER_IF).unwrap();
    net::add_addr(&node, NODE_IF, &format!("{NODE_V4}/24")).unwrap();
    net::add_addr(&peer_ns, PEER_IF, &format!("{PEER_V4}/24")).unwrap();
    (node, peer_ns)
}

/// Our runtime stalls (both its workers busy for 500 ms, beyond our 300 ms detection time) while
/// FRR keeps sending: when the BFD task runs again, its expired deadline and FRR's queued
/// packets are there together, and the packets must be read first: no false Down. Our
/// multiplier is 10, so that FRR's detection of us (1 s) outlasts the stall. Ten stalls: were
/// the expiry handled first by chance, about half of them would end the session.
#[test]
fn a_stall_of_our_runtime_is_not_taken_for_the_peers_silence() {
    if !ferrule_tests::privileged() {
        return;
    }
    let lab = Lab::new(Kind::Frr, Transport::V4, FAST, "bfst").unwrap();
    let who = lab.who();
    let peer = BfdPeer::new(lab.addrs.theirs, FAST, 10).local(lab.addrs.ours).interface(lab.ifindex);
    let mut status = lab.rt.block_on(lab.bfd.add(peer)).unwrap();
    lab.wait_up(&mut status, FAST).unwrap();
    std::thread::sleep(SETTLE);
    let before = status.borrow().counters.failures;
    for _ in 0..10 {
        stall_workers(&lab, ms(500));
        std::thread::sleep(ms(300));
    }
    let after = status.borrow().clone();
    println!(
        "[{who}] stalls: expected Up and no new failure after ten 500 ms stalls of our runtime, saw {} with {} \
         failure(s) ({} before)",
        after.state, after.counters.failures, before
    );
    assert_eq!((after.state, after.counters.failures), (State::Up, before), "{after:?}");
}

/// Keeps both worker threads of the lab's runtime busy for `stall` (each waits, bounded, until
/// the other has started, so they cannot both be on one worker).
fn stall_workers(lab: &Lab, stall: Duration) {
    let started = Arc::new(AtomicUsize::new(0));
    lab.rt.block_on(async {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let started = started.clone();
                tokio::spawn(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let since = Instant::now();
                    while started.load(Ordering::SeqCst) < 2 && since.elapsed() < Duration::from_secs(1) {
                        std::thread::sleep(ms(1));
                    }
                    std::thread::sleep(stall);
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

/// A removed session keeps telling its peer AdminDown for a few seconds (about one packet a
/// second), not once: one lost packet would make the peer see a failure. The peer here is a
/// plain UDP socket on port 3784 that records the state of every Control packet.
#[test]
fn a_removed_session_sends_admin_down_more_than_once() {
    if !ferrule_tests::privileged() {
        return;
    }
    let (node, peer_ns) = v4_link();
    let ifindex = ifindex(&node, NODE_IF).unwrap();
    let (rt, bfd) = start_driver(&node).unwrap();

    // The peer: every Control packet's state (the top two bits of its second byte) for 6 s.
    let netns = std::fs::File::open(format!("/run/netns/{}", peer_ns.name())).unwrap();
    let listener = std::thread::spawn(move || -> Result<Vec<(Duration, u8)>> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let socket = UdpSocket::bind("0.0.0.0:3784")?;
        socket.set_read_timeout(Some(ms(100)))?;
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while start.elapsed() < Duration::from_secs(6) {
            if let Ok(n) = socket.recv(&mut buf) {
                if n >= 24 {
                    seen.push((start.elapsed(), buf[1] >> 6));
                }
            }
        }
        Ok(seen)
    });
    std::thread::sleep(ms(200));
    let peer = BfdPeer::new(PEER_V4.parse().unwrap(), FAST, MULTIPLIER).interface(ifindex);
    let _status = rt.block_on(bfd.add(peer)).unwrap();
    std::thread::sleep(ms(1500));
    assert!(rt.block_on(bfd.remove(PEER_V4.parse().unwrap(), Some(ifindex))).unwrap());
    let seen = listener.join().unwrap().unwrap();
    let admin_down: Vec<Duration> = seen.iter().filter(|(_, state)| *state == 0).map(|(at, _)| *at).collect();
    println!(
        "removal: expected AdminDown (state 0) at least twice after the Down ones, saw {} packets, AdminDown at {admin_down:?}",
        seen.len()
    );
    assert!(seen.iter().any(|(_, state)| *state == 1), "Down packets before the removal: {seen:?}");
    assert!(admin_down.len() >= 2, "{seen:?}");
}

/// BFD that cannot start when its BGP peer is added (here: another process holds UDP port 3784,
/// as FRR's bfdd would) is tried again: once the port is free, the peer gets its BFD session
/// without any configuration change.
#[test]
fn bfd_that_could_not_start_is_retried() {
    if !ferrule_tests::privileged() {
        return;
    }
    use ferrule_bgp::driver::{BfdConfig, PeerConfig, Speaker, SpeakerConfig};
    use ferrule_bgp::policy::ImportPolicy;

    let (node, _peer_ns) = v4_link();
    let seen = in_netns(&node, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            // [::] takes IPv4 too (unless bindv6only); either way the driver cannot bind both.
            let blockers = UdpSocket::bind("[::]:3784")?;
            let speaker = Speaker::spawn();
            let peer = PeerConfig {
                address: PEER_V4.parse()?,
                ifindex: None,
                port: 179,
                asn: 65001,
                passive: true,
                hold_time: 9,
                connect_retry: ms(1000),
                import: ImportPolicy::default(),
                md5: None,
                graceful_restart: None,
                bfd: Some(BfdConfig { interval: FAST, multiplier: MULTIPLIER }),
            };
            let config = SpeakerConfig {
                local_asn: 65000,
                router_id: NODE_V4.parse()?,
                listen_port: 0,
                install_routes: false,
                peers: vec![peer],
                listen: Vec::new(),
                announcements: Vec::new(),
                awaiting_peers: Vec::new(),
            };
            speaker.set_config(config).await?;
            let bfd_state = || async { speaker.summary().await.map(|s| s[0].bfd.clone()) };
            tokio::time::sleep(ms(500)).await;
            let while_taken = bfd_state().await?;
            drop(blockers);
            let freed = Instant::now();
            let mut after = None;
            while after.is_none() && freed.elapsed() < Duration::from_secs(12) {
                tokio::time::sleep(ms(100)).await;
                after = bfd_state().await?;
            }
            speaker.shutdown(false).await;
            anyhow::Ok((while_taken, after, freed.elapsed()))
        })
    })
    .unwrap();
    println!(
        "BFD retry: expected no BFD session while port 3784 was taken and one within 12 s of freeing it, saw {:?} \
         then {:?} after {:?}",
        seen.0, seen.1, seen.2
    );
    assert_eq!(seen.0, None);
    assert!(seen.1.is_some(), "{seen:?}");
}

/// One family's BFD receive socket that cannot open (here another socket holds [::]:3784 for
/// IPv6 only; a kernel booted with ipv6.disable=1 is the other case) leaves the other family's
/// BFD working, and opens once it can, when a session of its family is added. Before, the BFD
/// task did not start at all, so IPv4 peers had no BFD either.
#[test]
fn bfd_of_one_family_works_while_the_other_familys_port_is_held() {
    if !ferrule_tests::privileged() {
        return;
    }
    use ferrule_bgp::bfd::Bfd;
    let (node, peer_ns) = v4_link();
    let ifindex = ifindex(&node, NODE_IF).unwrap();
    let peer_ll = net::link_local(&peer_ns, PEER_IF).unwrap();
    let (v4, v6_held, v6_freed) = in_netns(&node, move || {
        let holder = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
        holder.set_only_v6(true)?;
        holder.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 3784)).into())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let bfd = Bfd::spawn()?;
            let v4 = bfd.add(BfdPeer::new(PEER_V4.parse()?, FAST, MULTIPLIER)).await.map(|_| ());
            let v6 = || BfdPeer::new(peer_ll, FAST, MULTIPLIER).interface(ifindex);
            let v6_held = bfd.add(v6()).await.map(|_| ());
            drop(holder);
            let v6_freed = bfd.add(v6()).await.map(|_| ());
            anyhow::Ok((v4, v6_held, v6_freed))
        })
    })
    .unwrap();
    println!("IPv6 port held: expected IPv4 BFD to start and IPv6 to wait for its port, saw {v4:?}, {v6_held:?}, then {v6_freed:?}");
    assert!(v4.is_ok(), "{v4:?}");
    assert!(v6_held.as_ref().is_err_and(|e| e.to_string().contains("[::]:3784")), "{v6_held:?}");
    assert!(v6_freed.is_ok(), "{v6_freed:?}");
}

/// GTSM (RFC 5881 5): the same Down packet is dropped at TTL / hop limit 254 and accepted at
/// 255; a packet from an address without a session is dropped too.
#[test]
fn drops_control_packets_whose_ttl_or_hop_limit_is_not_255() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("bgts").unwrap();
    let (node, peer_ns) = v4_link();
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
