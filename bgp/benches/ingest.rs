//! RIB ingest benchmark: the synthetic full table (1,000,000 IPv4 + 200,000 IPv6 prefixes)
//! fed as a byte stream through decode -> Adj-RIB-In -> Loc-RIB, then 10 peers x 100,000
//! shared prefixes (where the decision process and ECMP really run). Baseline in the same
//! run: decoding the same stream without the RIB. Memory is the peak RSS (VmHWM, reset
//! through /proc/self/clear_refs) minus the RSS before loading; each scenario runs in a fresh
//! child process because the allocator keeps freed memory resident, which would hide the
//! second scenario's growth. Run with `cargo bench -p ferrule-bgp --bench ingest`. Plain
//! `Instant` loop: this is a bench binary, not protocol logic.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ferrule_bgp::policy::{ExportPolicy, ImportPolicy};
use ferrule_bgp::rib::{ExportSession, PeerId, PeerInfo, Rib, RibConfig};
use ferrule_bgp::testutil::full_table::{full_table, generate, FullTable};
use ferrule_bgp::wire::{decode_message, AsPath, DecodeOptions, EncodeOptions, Family, Message, NextHop};

const ROUNDS: usize = 3;
const LOCAL_AS: u32 = 65101;

/// (VmRSS, VmHWM) in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak-RSS mark to the current RSS (Linux >= 4.0); returns the RSS.
fn reset_peak() -> u64 {
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        eprintln!("warning: cannot reset VmHWM; peak figures include earlier allocations");
    }
    memory().0
}

fn info(n: u32) -> PeerInfo {
    PeerInfo {
        id: PeerId(n),
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n as u8 + 1)),
        asn: 65000 + n,
        router_id: Ipv4Addr::new(198, 51, 100, n as u8 + 1),
        ebgp: true,
    }
}

fn session() -> ExportSession {
    ExportSession {
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 100)),
        local_v6: None,
        link_local: None,
        extended_next_hop: false,
    }
}

fn opts() -> DecodeOptions {
    DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() }
}

/// Decodes every message and iterates its prefixes: the work the RIB cannot avoid.
fn decode_only(stream: &[u8]) -> usize {
    let mut rest = stream;
    let mut n = 0;
    while let Some((m, used)) = decode_message(rest, &opts()).expect("valid stream") {
        if let Message::Update(u) = &m {
            n += u.announced().count();
        }
        black_box(&m);
        rest = &rest[used..];
    }
    n
}

/// Feeds the streams to the RIB, one message per peer in turn (sessions run concurrently).
/// Returns the number of Loc-RIB changes produced.
fn ingest(rib: &mut Rib, streams: &[(PeerId, Vec<u8>)]) -> usize {
    let mut rests: Vec<(PeerId, &[u8])> = streams.iter().map(|(p, s)| (*p, s.as_slice())).collect();
    let now = Instant::now();
    let mut changes = 0;
    while !rests.is_empty() {
        rests.retain_mut(|(peer, rest)| {
            let Some((m, used)) = decode_message(rest, &opts()).expect("valid stream") else {
                return false;
            };
            if let Message::Update(u) = &m {
                let out = rib.apply_update(*peer, u, now).expect("peer is up");
                changes += out.changes.len();
                black_box(&out);
            }
            *rest = &rest[used..];
            true
        });
    }
    changes
}

fn new_rib(peers: u32) -> Rib {
    let mut rib = Rib::new(RibConfig::new(LOCAL_AS, Ipv4Addr::new(192, 0, 2, 100)));
    for n in 0..peers {
        rib.peer_up(info(n), ImportPolicy::accept_all(), ExportPolicy::default(), session());
    }
    rib
}

/// The first (memory-measured) ingest of a scenario.
struct Run {
    time: Duration,
    changes: usize,
    peak: u64,
    retained: u64,
    prefixes: usize,
}

fn run(peers: u32, streams: &[(PeerId, Vec<u8>)]) -> (Run, Rib) {
    let baseline = reset_peak();
    let mut rib = new_rib(peers);
    let t = Instant::now();
    let changes = ingest(&mut rib, streams);
    let time = t.elapsed();
    let (rss, peak) = memory();
    let run = Run {
        time,
        changes,
        peak: peak.saturating_sub(baseline),
        retained: rss.saturating_sub(baseline),
        prefixes: rib.len(),
    };
    (run, rib)
}

/// Best ingest time over the first run and `ROUNDS` more.
fn best_ingest(peers: u32, streams: &[(PeerId, Vec<u8>)], first: Duration) -> Duration {
    best_of(|| {
        let mut rib = new_rib(peers);
        let t = Instant::now();
        ingest(&mut rib, streams);
        t.elapsed()
    })
    .min(first)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn best_of<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..ROUNDS).map(|_| f()).min().unwrap_or_default()
}

fn report(label: &str, paths: usize, first: &Run, best: Duration, decode: Duration) {
    println!(
        "{label}: first UPDATE -> last prefix in Loc-RIB {:.0} ms best of {ROUNDS} ({:.0} ns/path); \
         decode alone {:.0} ms; RIB costs {:.1}x the decode",
        best.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e9 / paths as f64,
        decode.as_secs_f64() * 1e3,
        best.as_secs_f64() / decode.as_secs_f64(),
    );
    println!(
        "{label}: memory peak +{:.1} MiB ({:.0} bytes/path), retained +{:.1} MiB ({:.0} bytes/path); \
         {} Loc-RIB changes, {} prefixes",
        mib(first.peak),
        first.peak as f64 / paths as f64,
        mib(first.retained),
        first.retained as f64 / paths as f64,
        first.changes,
        first.prefixes,
    );
}

/// The same prefixes as seen from peer `n`: its AS prepended, its own next hop and a MED
/// that varies by peer, so the decision process has real work and ECMP sets form.
fn as_seen_from(table: &FullTable, n: u32) -> FullTable {
    let mut t = table.clone();
    for (i, g) in t.groups.iter_mut().enumerate() {
        let mut asns = vec![65000 + n];
        if (i + n as usize) % 3 == 0 {
            asns.push(65000 + n); // prepend: longer path on a third of the groups
        }
        let path = g.attrs.as_path.take().unwrap_or_default();
        asns.extend(path.segments.iter().flat_map(|s| s.asns.iter().copied()));
        g.attrs.as_path = Some(AsPath::sequence(&asns));
        g.attrs.med = Some((i as u32 + n) % 4);
        g.next_hop = match g.next_hop {
            NextHop::V4(_) => NextHop::V4(Ipv4Addr::new(192, 0, 2, n as u8 + 1)),
            NextHop::V6 { .. } => {
                NextHop::V6 { global: format!("2001:db8::{}", n + 1).parse().expect("valid"), link_local: None }
            }
        };
    }
    t
}

const SCENARIO: &str = "FERRULE_INGEST_SCENARIO";

fn main() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("full") => full(),
        Ok("peers") => peers(),
        _ => {
            let exe = std::env::current_exe().expect("own path");
            for scenario in ["full", "peers"] {
                let status = std::process::Command::new(&exe).env(SCENARIO, scenario).status().expect("child runs");
                assert!(status.success(), "scenario {scenario} failed: {status}");
            }
        }
    }
}

fn enc() -> EncodeOptions {
    EncodeOptions { four_octet_asn: true, extended_message: false }
}

/// One peer sends the full table.
fn full() {
    let enc = enc();
    let (stream, messages, prefixes) = {
        let table = full_table();
        let (stream, messages) = table.encode(&enc).expect("table encodes");
        (stream, messages, table.prefix_count())
    };
    println!("full table: {prefixes} prefixes, {messages} UPDATEs, {:.1} MiB on the wire", mib(stream.len() as u64));
    let decode = best_of(|| {
        let t = Instant::now();
        assert_eq!(decode_only(&stream), prefixes);
        t.elapsed()
    });
    let streams = vec![(PeerId(0), stream)];
    let (first, mut rib) = run(1, &streams);
    assert_eq!(first.prefixes, prefixes);
    let sets = rib.peer(PeerId(0)).map_or(0, |s| s.attribute_sets);
    let t = Instant::now();
    let down = rib.peer_down(PeerId(0)).expect("known peer");
    let down_time = t.elapsed();
    drop(rib);
    let best = best_ingest(1, &streams, first.time);
    report("1 peer x full table", prefixes, &first, best, decode);
    println!(
        "1 peer x full table: {sets} distinct attribute sets interned ({:.1} prefixes per set); \
         peer down removes {} prefixes in {:.0} ms",
        prefixes as f64 / sets.max(1) as f64,
        down.len(),
        down_time.as_secs_f64() * 1e3
    );
}

/// Ten peers send the same 100,000 prefixes with different paths.
fn peers() {
    let enc = enc();
    const PEERS: u32 = 10;
    let base = generate(80_000, 20_000, 0xB6B_0010);
    let shared = base.prefix_count();
    let streams: Vec<(PeerId, Vec<u8>)> =
        (0..PEERS).map(|n| (PeerId(n), as_seen_from(&base, n).encode(&enc).expect("encodes").0)).collect();
    drop(base);
    let paths = shared * PEERS as usize;
    let decode = best_of(|| {
        let t = Instant::now();
        let n: usize = streams.iter().map(|(_, s)| decode_only(s)).sum();
        assert_eq!(n, paths);
        t.elapsed()
    });
    let (first, mut rib) = run(PEERS, &streams);
    assert_eq!(first.prefixes, shared);
    let ecmp = rib.routes(Instant::now()).iter().filter(|v| v.paths.iter().filter(|p| p.ecmp).count() > 1).count();
    let t = Instant::now();
    let down = rib.peer_down(PeerId(0)).expect("known peer");
    let down_time = t.elapsed();
    drop(rib);
    let best = best_ingest(PEERS, &streams, first.time);
    report(&format!("{PEERS} peers x {shared} prefixes"), paths, &first, best, decode);
    println!(
        "{PEERS} peers x {shared} prefixes: {ecmp} prefixes with a multi-path ECMP set; \
         one peer down -> {} Loc-RIB changes in {:.0} ms",
        down.len(),
        down_time.as_secs_f64() * 1e3
    );
}
