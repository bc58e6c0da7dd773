//! Probes that run beside a test while it disrupts something (restarts a daemon, shuts it down):
//! a [`Sampler`] that evaluates named conditions every few tens of milliseconds and keeps every
//! outcome, and a [`Pinger`] (one continuous `ping` whose every sequence number is accounted
//! for). Both are bounded by a hard limit as well as by `stop`, and act only inside the test's
//! namespaces. Also: waiting for a process to exit, and the kernel's per-namespace TCP counters.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::NetNs;

/// A condition the sampler evaluates: `Ok(true)` holds, `Ok(false)` does not; an error counts
/// as "does not hold" and its text is kept.
pub type Probe = Box<dyn FnMut() -> Result<bool> + Send>;

/// One round of the sampler: when, and each probe's outcome (`None` = held).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub failed: Vec<Option<String>>,
}

pub struct Sampler {
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    /// Evaluates every probe each `interval` until [`Sampler::stop`] or `limit` has passed.
    pub fn start(interval: Duration, limit: Duration, probes: Vec<(String, Probe)>) -> Sampler {
        let names: Vec<String> = probes.iter().map(|(n, _)| n.clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut probes: Vec<Probe> = probes.into_iter().map(|(_, p)| p).collect();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < limit {
                let round = Instant::now();
                let at = started.elapsed();
                let failed = probes
                    .iter_mut()
                    .map(|p| match p() {
                        Ok(true) => None,
                        Ok(false) => Some("absent".to_string()),
                        Err(e) => Some(format!("error: {e:#}")),
                    })
                    .collect();
                samples.push(Sample { at, failed });
                if let Some(rest) = interval.checked_sub(round.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            samples
        });
        Sampler { names, stop, thread: Some(thread) }
    }

    /// Stops sampling and returns every sample taken.
    pub fn stop(mut self) -> SampleLog {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        SampleLog { names: self.names.clone(), samples }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone)]
pub struct SampleLog {
    pub names: Vec<String>,
    pub samples: Vec<Sample>,
}

impl SampleLog {
    /// The samples in which probe `i` did not hold, as `(time, why)`.
    pub fn misses(&self, i: usize) -> Vec<(Duration, String)> {
        self.samples.iter().filter_map(|s| s.failed[i].clone().map(|why| (s.at, why))).collect()
    }

    /// The longest time between two consecutive samples (how fine the sampling really was).
    pub fn largest_gap(&self) -> Duration {
        self.samples.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default()
    }
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone)]
pub struct PingReport {
    pub transmitted: u32,
    pub received: u32,
    /// Sequence numbers sent and never answered, except the very last one if it was still in
    /// flight when the ping was told to stop.
    pub lost: Vec<u32>,
    /// The last sequence number sent had no answer yet when the ping stopped (not a loss).
    pub in_flight_at_stop: bool,
    pub elapsed: Duration,
}

/// One continuous `ping -i INTERVAL` from `source` to `target` inside a namespace, stopped with
/// SIGINT (so it prints its totals); bounded by `-c` and `-w` as well.
pub struct Pinger {
    child: Option<Child>,
    output: PathBuf,
    started: Instant,
}

impl Pinger {
    /// Starts pinging: at most `max_count` echo requests `interval` apart, and never longer
    /// than `deadline`. `dir` receives the ping's output file.
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        source: IpAddr,
        target: IpAddr,
        interval: Duration,
        max_count: u32,
        deadline: Duration,
    ) -> Result<Pinger> {
        crate::cmd::require_tool("ping", "iputils-ping")?;
        let output = dir.join(format!("ping-{}-{target}.log", ns.name()));
        let _ = std::fs::remove_file(&output);
        let args = [
            "-n".to_string(),
            "-i".to_string(),
            format!("{:.3}", interval.as_secs_f64()),
            "-W".to_string(),
            "1".to_string(),
            "-c".to_string(),
            max_count.to_string(),
            "-w".to_string(),
            deadline.as_secs().max(1).to_string(),
            "-I".to_string(),
            source.to_string(),
            target.to_string(),
        ];
        let child = ns.spawn("ping", &args, &output)?;
        Ok(Pinger { child: Some(child), output, started: Instant::now() })
    }

    /// Stops the ping (SIGINT, then waits at most 5 s for it to print its totals) and accounts
    /// for every sequence number.
    pub fn stop(mut self) -> Result<PingReport> {
        let mut child = self.child.take().context("ping already stopped")?;
        if child.try_wait()?.is_none() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        }
        let mut exited = false;
        for _ in 0..100 {
            if child.try_wait()?.is_some() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ping did not stop on SIGINT within 5 s");
        }
        let elapsed = self.started.elapsed();
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading ping output {}", self.output.display()))?;
        parse_ping(&text, elapsed).with_context(|| format!("ping output:\n{text}"))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_ping(text: &str, elapsed: Duration) -> Result<PingReport> {
    let mut replied = std::collections::BTreeSet::new();
    let mut totals = None;
    for line in text.lines() {
        if let Some(seq) = line.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")) {
            if line.contains(" bytes from ") && !line.contains("DUP!") {
                replied.insert(seq.parse::<u32>().with_context(|| format!("icmp_seq in {line:?}"))?);
            }
        }
        if line.contains("packets transmitted") {
            let number = |word: &str| -> Option<u32> {
                let words: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
                let i = words.iter().position(|w| *w == word)?;
                words.get(i.checked_sub(1)?)?.parse().ok()
            };
            totals = Some((
                number("packets").context("no transmitted count")?,
                number("received").context("no received count")?,
            ));
        }
    }
    let (transmitted, received) = totals.context("no totals line (ping did not finish)")?;
    let missing: Vec<u32> = (1..=transmitted).filter(|s| !replied.contains(s)).collect();
    let in_flight_at_stop = missing.last() == Some(&transmitted);
    let lost = missing.into_iter().filter(|s| *s != transmitted || !in_flight_at_stop).collect();
    Ok(PingReport { transmitted, received, lost, in_flight_at_stop, elapsed })
}

/// Waits (bounded) until process `pid` has exited: gone, or a zombie waiting to be reaped.
pub fn wait_exit(pid: u32, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string)));
        match state.as_deref() {
            None | Some("Z") | Some("X") => return Ok(started.elapsed()),
            _ if started.elapsed() >= timeout => bail!("process {pid} still running after {timeout:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One of the kernel's TCP counters of `ns` (`/proc/net/netstat` or `/proc/net/snmp`), e.g.
/// `("TcpExt", "TCPMD5Failure")` or `("Tcp", "PassiveOpens")`.
pub fn tcp_counter(ns: &NetNs, group: &str, name: &str) -> Result<u64> {
    let file = if group == "TcpExt" { "/proc/net/netstat" } else { "/proc/net/snmp" };
    let text = ns.run("cat", [file])?;
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if let Some((_, v)) = names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == name) {
            return v.parse().with_context(|| format!("{group} {name} = {v:?}"));
        }
    }
    bail!("no {group} {name} in {file} of netns {}", ns.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_accounts_for_every_sequence_number() {
        let text = "PING 203.0.113.1 (203.0.113.1) from 198.51.100.1 : 56(84) bytes of data.\n\
            64 bytes from 203.0.113.1: icmp_seq=1 ttl=64 time=0.05 ms\n\
            64 bytes from 203.0.113.1: icmp_seq=3 ttl=64 time=0.05 ms\n\
            64 bytes from 203.0.113.1: icmp_seq=3 ttl=64 time=0.05 ms (DUP!)\n\
            \n--- 203.0.113.1 ping statistics ---\n\
            4 packets transmitted, 2 received, +1 duplicates, 50% packet loss, time 60ms\n";
        let r = parse_ping(text, Duration::from_secs(1)).unwrap();
        assert_eq!((r.transmitted, r.received), (4, 2));
        assert_eq!(r.lost, vec![2]);
        assert!(r.in_flight_at_stop);
    }

    #[test]
    fn ping_without_totals_is_an_error() {
        assert!(parse_ping("64 bytes from 192.0.2.1: icmp_seq=1 ttl=64 time=0.1 ms\n", Duration::ZERO).is_err());
    }

    #[test]
    fn sampler_records_each_probe_outcome() {
        let mut n = 0;
        let probes: Vec<(String, Probe)> = vec![
            ("always".into(), Box::new(|| Ok(true))),
            (
                "odd".into(),
                Box::new(move || {
                    n += 1;
                    Ok(n % 2 == 1)
                }),
            ),
        ];
        let sampler = Sampler::start(Duration::from_millis(5), Duration::from_millis(60), probes);
        std::thread::sleep(Duration::from_millis(80));
        let log = sampler.stop();
        assert!(log.samples.len() >= 4, "{log:?}");
        assert!(log.misses(0).is_empty());
        assert_eq!(log.misses(1).len(), log.samples.len() / 2);
    }
}
