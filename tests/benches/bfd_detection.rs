//! BFD detection time against FRR, with BIRD as the baseline in the same run: five cuts
//! (SIGSTOP of FRR's bfdd) per interval, 100 ms x 3 and 50 ms x 3, over IPv6 link-local. Each
//! cut is seen by Ferrule's BFD driver and by BIRD's BFD peering with the same bfdd over a second
//! link (its timestamps have millisecond resolution). Prints the medians, min and max, their
//! ratio, the ratio to interval x multiplier, and how many cuts took longer than that + 50 ms (the
//! interop tests hold that bound). The lab is the interop tests' (`tests/bfd_lab/`).
//!
//! As root: `cargo bench -p ferrule-tests --bench bfd_detection`.

#[path = "../tests/bfd_lab/mod.rs"]
mod bfd_lab;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bfd_lab::*;
use ferrule_bgp::bfd::Diag;
use ferrule_tests::{cmd, net, Bird, NetNs};

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

fn main() {
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
        let late = ours.iter().filter(|t| **t > detect + SLACK).count();
        println!("  cuts detected later than the bound + {SLACK:?}: {late} of {}", ours.len());
    }
}
