//! BGP full-table benchmark: Ferrule against BIRD and GoBGP as receivers of the same synthetic
//! Internet table, sent over real TCP sessions between network namespaces this bench creates.
//! It owns its namespaces, daemons and sender threads only; it never installs the table in a
//! kernel (BIRD runs without a kernel protocol, GoBGP and Ferrule install none).
//!
//! What is measured, in one run with the same bytes for every receiver:
//!
//! 1. **Full table, one peer.** `ferrule_bgp::testutil::full_table()` (1,000,000 IPv4 +
//!    200,000 IPv6 prefixes) is encoded once as the exact UPDATE stream an upstream sends
//!    (4-octet AS, IPv4 NLRI in the classic fields, IPv6 in MP_REACH_NLRI, 4096-octet messages)
//!    followed by both End-of-RIB markers. A minimal BGP speaker in this process (a thread that
//!    entered the sender namespace with `setns`) opens the session, then writes the stream as
//!    fast as the socket takes it. The clock starts at the first UPDATE byte written and stops
//!    when the receiver's own count of accepted prefixes reaches the table size (Ferrule:
//!    `show bgp summary` `accepted`; BIRD: `Routes: N imported`; GoBGP: the neighbor's
//!    `accepted`), polled every 100 ms, so times are upper bounds with that resolution.
//!    Memory is the daemon's peak RSS (VmHWM, reset through /proc/PID/clear_refs once the
//!    session is up) minus its RSS at that moment: what holding the table costs.
//! 2. **10 peers x 100,000 prefixes.** Ten upstreams on one link send the same 100,000 prefixes
//!    with different AS paths (their own AS first, as ten transit providers would), so the
//!    receiver holds 1,000,000 paths and runs the decision process over ten of them per prefix.
//! 3. **Announcement latency to FRR.** Ferrule peers with FRR; the time from `ferrule apply` of
//!    a config that adds an announcement to the prefix being visible in FRR (`show bgp ipv6
//!    unicast PREFIX` polled every 20 ms), and from the withdrawing apply to its removal. A vtysh
//!    probe itself takes 25-40 ms, so the change is also timed, without polling, as zebra adds
//!    or deletes the route in FRR's namespace kernel table (`ip -6 monitor route`): exact, but
//!    including zebra's install delay after bgpd.
//!
//! Run as root with a release daemon:
//! `cargo build --release -p ferrule && FERRULE_BIN=target/release/ferrule cargo bench -p ferrule-tests --bench bgp_fulltable`.
//! Knobs: `BGP_BENCH_PARTS=full,multi,latency` and `BGP_BENCH_RECEIVERS=ferrule,bird,gobgp`
//! select what runs; `BGP_BENCH_SCALE=N` divides the table sizes by N for a quick check;
//! `BGP_BENCH_GOBGP_LIMIT=SECONDS` bounds GoBGP (default 240), which is expected to be slow;
//! `BGP_BENCH_ROUNDS=N` sets how many loads of Ferrule and BIRD each table figure is the median
//! of (default 3; GoBGP, at tens of seconds per load, runs once).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferrule_bgp::testutil::full_table::{full_table, generate, FullTable};
use ferrule_bgp::wire::{
    build_announcements, encode_message, AsPath, Capability, DecodeOptions, EncodeOptions, Family, Message,
    MessageReader, NextHop, Open, Prefix, Update, AS_TRANS,
};
use ferrule_bgp::wire::{Afi, Safi};
use ferrule_tests::bgp::{BgpConfig, Neighbor};
use ferrule_tests::{cmd, net, Bird, Daemon, Ferrule, Frr, NetNs, TestDir};
use serde_json::Value;

/// The receiver's AS; not in the generator's AS pool, so no path loops back to it.
const RECEIVER_ASN: u32 = 64512;
/// Upstream `i` uses AS `UPSTREAM_ASN + i`.
const UPSTREAM_ASN: u32 = 64600;
const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RECEIVER_V6: &str = "2001:db8:a::1";
/// Proposed by every speaker; the stream itself keeps the receiver's hold timer fed.
const HOLD_TIME: u16 = 90;
/// Prefixes each upstream sends in the multi-peer scenario (before `BGP_BENCH_SCALE`).
const MULTI_PREFIXES: usize = 100_000;
const MULTI_PEERS: usize = 10;
/// How often the receiver's count is read while the table is loading.
const POLL: Duration = Duration::from_millis(100);
/// Bound for Ferrule and BIRD per scenario (they need seconds).
const FAST_LIMIT: Duration = Duration::from_secs(150);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect attempts (200 ms apart) while the receiver starts listening.
const CONNECT_TRIES: u32 = 150;
const LATENCY_ROUNDS: usize = 5;
const LATENCY_PREFIX: &str = "2001:db8:100::/64";
const LATENCY_POLL: Duration = Duration::from_millis(20);
const LATENCY_LIMIT: Duration = Duration::from_secs(15);

fn main() {
    if !ferrule_tests::privileged() {
        return;
    }
    if let Err(e) = run() {
        eprintln!("bgp_fulltable: {e:#}");
        std::process::exit(1);
    }
}

/// Which parts and receivers run, from the environment (all by default).
struct Selection {
    parts: HashSet<String>,
    receivers: Vec<Kind>,
    scale: usize,
    gobgp_limit: Duration,
    /// Loads per scenario for Ferrule and BIRD (GoBGP, at tens of seconds each, gets one).
    rounds: usize,
}

impl Selection {
    fn from_env() -> Result<Selection> {
        let list = |var: &str, all: &str| -> HashSet<String> {
            std::env::var(var).unwrap_or_else(|_| all.to_string()).split(',').map(|s| s.trim().to_string()).collect()
        };
        let parts = list("BGP_BENCH_PARTS", "full,multi,latency");
        let names = list("BGP_BENCH_RECEIVERS", "ferrule,bird,gobgp");
        let receivers: Vec<Kind> = Kind::ALL.into_iter().filter(|k| names.contains(k.key())).collect();
        let scale = match std::env::var("BGP_BENCH_SCALE") {
            Ok(s) => s.parse().ok().filter(|&n: &usize| n >= 1).context("BGP_BENCH_SCALE must be an integer >= 1")?,
            Err(_) => 1,
        };
        let gobgp_limit = match std::env::var("BGP_BENCH_GOBGP_LIMIT") {
            Ok(s) => Duration::from_secs(s.parse().context("BGP_BENCH_GOBGP_LIMIT must be whole seconds")?),
            Err(_) => Duration::from_secs(240),
        };
        let rounds = match std::env::var("BGP_BENCH_ROUNDS") {
            Ok(s) => s.parse().ok().filter(|&n: &usize| n >= 1).context("BGP_BENCH_ROUNDS must be an integer >= 1")?,
            Err(_) => 3,
        };
        Ok(Selection { parts, receivers, scale, gobgp_limit, rounds })
    }

    fn rounds(&self, kind: Kind) -> usize {
        match kind {
            Kind::GoBgp => 1,
            Kind::Ferrule | Kind::Bird => self.rounds,
        }
    }

    fn limit(&self, kind: Kind) -> Duration {
        match kind {
            Kind::GoBgp => self.gobgp_limit,
            Kind::Ferrule | Kind::Bird => FAST_LIMIT,
        }
    }
}

fn run() -> Result<()> {
    let sel = Selection::from_env()?;
    println!("ferrule binary: {}", ferrule_tests::ferrule::ferrule_bin().display());
    if sel.parts.contains("full") {
        let table = if sel.scale == 1 { full_table() } else { generate(1_000_000 / sel.scale, 200_000 / sel.scale, 7) };
        let feed = Feed::new(&table, 0)?;
        println!(
            "\n== Full table, 1 peer: {} prefixes ({} IPv4 + {} IPv6) in {} attribute sets, {} UPDATEs \
             (End-of-RIB included), {:.1} MiB on the wire ==",
            feed.prefixes,
            feed.v4_prefixes,
            feed.prefixes - feed.v4_prefixes,
            table.groups.len(),
            feed.updates,
            mib(feed.bytes.len() as u64)
        );
        drop(table);
        let feeds = [Arc::new(feed)];
        let outcomes: Vec<Outcome> = sel
            .receivers
            .iter()
            .map(|&kind| {
                println!("-- {}:", kind.label());
                scenario(kind, "full", &feeds, sel.limit(kind), sel.rounds(kind))
            })
            .collect();
        print_results(&outcomes);
    }
    if sel.parts.contains("multi") {
        let per_peer = MULTI_PREFIXES / sel.scale;
        let shared = generate(per_peer - per_peer / 6, per_peer / 6, 11);
        let feeds: Vec<Arc<Feed>> =
            (0..MULTI_PEERS).map(|i| Feed::new(&shared, i).map(Arc::new)).collect::<Result<_>>()?;
        println!(
            "\n== {MULTI_PEERS} peers x {} prefixes ({} IPv4 + {} IPv6, same prefixes, each peer's own AS first \
             in the path): {} paths, {} UPDATEs and {:.1} MiB per peer ==",
            feeds[0].prefixes,
            feeds[0].v4_prefixes,
            feeds[0].prefixes - feeds[0].v4_prefixes,
            feeds[0].prefixes * MULTI_PEERS as u64,
            feeds[0].updates,
            mib(feeds[0].bytes.len() as u64)
        );
        let outcomes: Vec<Outcome> = sel
            .receivers
            .iter()
            .map(|&kind| {
                println!("-- {}:", kind.label());
                scenario(kind, "multi", &feeds, sel.limit(kind), sel.rounds(kind))
            })
            .collect();
        print_results(&outcomes);
    }
    if sel.parts.contains("latency") {
        println!("\n== Announcement latency, Ferrule -> FRR ({LATENCY_ROUNDS} rounds, {LATENCY_PREFIX}) ==");
        latency().context("announcement latency to FRR")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table as bytes
// ---------------------------------------------------------------------------------------------

/// What one emulated upstream sends: its identity and the complete UPDATE stream.
struct Feed {
    index: usize,
    asn: u32,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    bytes: Vec<u8>,
    prefixes: u64,
    v4_prefixes: u64,
    updates: usize,
}

impl Feed {
    /// Encodes `table` as upstream `index` would send it: its AS prepended to every path (eBGP)
    /// and its own link addresses as next hops, so receivers that check next-hop reachability
    /// (BIRD's direct gateway mode) accept every route.
    fn new(table: &FullTable, index: usize) -> Result<Feed> {
        let asn = UPSTREAM_ASN + index as u32;
        let (v4, v6) = upstream_addrs(index);
        let opts = EncodeOptions { four_octet_asn: true, extended_message: false };
        let mut bytes = Vec::with_capacity(table.prefix_count() * 8);
        let (mut updates, mut prefixes, mut v4_prefixes) = (0, 0u64, 0u64);
        for group in &table.groups {
            let mut attrs = group.attrs.clone();
            let mut path = vec![asn];
            if let Some(original) = attrs.as_path.as_ref().and_then(|p| p.segments.first()) {
                path.extend_from_slice(&original.asns);
            }
            attrs.as_path = Some(AsPath::sequence(&path));
            let next_hop = match group.next_hop {
                NextHop::V4(_) => NextHop::V4(v4),
                NextHop::V6 { .. } => NextHop::V6 { global: v6, link_local: None },
            };
            updates += build_announcements(&opts, &attrs, next_hop, &group.prefixes, &mut bytes)
                .context("encoding the synthetic table")?;
            prefixes += group.prefixes.len() as u64;
            v4_prefixes += group.prefixes.iter().filter(|p| matches!(p, Prefix::V4(_))).count() as u64;
        }
        for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            encode_message(&Message::Update(Update::end_of_rib_marker(family)), &opts, &mut bytes)?;
            updates += 1;
        }
        Ok(Feed { index, asn, v4, v6, bytes, prefixes, v4_prefixes, updates })
    }
}

/// The upstream's addresses on the shared link (the receiver is .1 / ::1).
fn upstream_addrs(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + index as u8;
    (Ipv4Addr::new(192, 0, 2, host), Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, u16::from(host)))
}

// ---------------------------------------------------------------------------------------------
// The sending speaker
// ---------------------------------------------------------------------------------------------

/// What an upstream thread reports to the measuring thread, in order.
enum Event {
    /// OPEN and KEEPALIVE exchanged; the handle lets the measuring thread close the socket.
    Established(TcpStream),
    Failed(String),
    FirstWrite(Instant),
    AllWritten(Instant),
}

/// Events from all upstreams, tagged with the upstream's index.
type Events = mpsc::Receiver<(usize, Event)>;

/// A running upstream: dropping `go` before sending on it cancels the thread; after the go
/// signal, dropping it ends the keepalive loop.
struct Upstream {
    control: Option<TcpStream>,
    go: Option<mpsc::Sender<()>>,
    /// Why the receiver ended the session, if it did (NOTIFICATION or close).
    closed: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn stop(&mut self) {
        self.go.take();
        if let Some(stream) = self.control.take() {
            // Unblocks a write_all stuck on a receiver that stopped reading.
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one thread per feed inside `ns`, each connecting to the receiver and, once the go
/// signal comes, writing its stream. Events arrive on the returned channel tagged by index.
fn start_upstreams(ns: &NetNs, feeds: &[Arc<Feed>]) -> Result<(Vec<Upstream>, Events)> {
    let (events_tx, events) = mpsc::channel();
    let mut upstreams = Vec::new();
    for feed in feeds {
        // Opened here so a missing namespace is an error of this function, not of the thread.
        let netns = File::open(Path::new("/run/netns").join(ns.name()))
            .with_context(|| format!("opening /run/netns/{}", ns.name()))?;
        let (go_tx, go_rx) = mpsc::channel();
        let closed = Arc::new(Mutex::new(None));
        let (feed, tx, closed_slot) = (feed.clone(), events_tx.clone(), closed.clone());
        let thread = thread::Builder::new()
            .name(format!("upstream{}", feed.index))
            .spawn(move || {
                let index = feed.index;
                if let Err(e) = upstream(netns, &feed, &tx, go_rx, closed_slot) {
                    let _ = tx.send((index, Event::Failed(format!("{e:#}"))));
                }
            })
            .context("spawning an upstream thread")?;
        upstreams.push(Upstream { control: None, go: Some(go_tx), closed, thread: Some(thread) });
    }
    Ok((upstreams, events))
}

/// One upstream's life: enter the sender namespace (this thread only), establish, wait for
/// go, write the stream, then send keepalives until the measuring thread lets go.
fn upstream(
    netns: File,
    feed: &Feed,
    events: &mpsc::Sender<(usize, Event)>,
    go: mpsc::Receiver<()>,
    closed: Arc<Mutex<Option<String>>>,
) -> Result<()> {
    // A network namespace is per thread: sockets this thread creates live in the sender's.
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns into the sender namespace")?;
    let (stream, reader) = establish(feed)?;
    let _ = events.send((feed.index, Event::Established(stream.try_clone()?)));
    // From here on a separate thread reads (and discards) what the receiver sends, so its
    // keepalives never fill our receive window while we are busy writing.
    let read_half = stream.try_clone()?;
    read_half.set_read_timeout(None)?;
    thread::Builder::new()
        .name(format!("upstream{}-rx", feed.index))
        .spawn(move || drain(read_half, reader, &closed))
        .context("spawning a reader thread")?;
    if go.recv().is_err() {
        return Ok(()); // cancelled before sending
    }
    let _ = events.send((feed.index, Event::FirstWrite(Instant::now())));
    (&stream).write_all(&feed.bytes).context("writing the UPDATE stream")?;
    let _ = events.send((feed.index, Event::AllWritten(Instant::now())));
    let keepalive = encoded(&Message::Keepalive)?;
    loop {
        match go.recv_timeout(Duration::from_secs(u64::from(HOLD_TIME / 3))) {
            Err(RecvTimeoutError::Timeout) => (&stream).write_all(&keepalive).context("sending KEEPALIVE")?,
            // The measuring thread is done: it dropped its end.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn encoded(message: &Message<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_message(message, &EncodeOptions { four_octet_asn: true, extended_message: false }, &mut out)?;
    Ok(out)
}

fn decode_options() -> DecodeOptions {
    DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() }
}

/// Connects from the upstream's address to the receiver's port 179 (retrying while the daemon
/// starts) and exchanges OPEN and KEEPALIVE. Returns the stream and the reader holding any
/// bytes that followed the KEEPALIVE.
fn establish(feed: &Feed) -> Result<(TcpStream, MessageReader)> {
    let stream = connect(feed.v4, RECEIVER_V4)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ESTABLISH_TIMEOUT))?;
    let open = Open {
        my_as: u16::try_from(feed.asn).unwrap_or(AS_TRANS),
        hold_time: HOLD_TIME,
        bgp_id: feed.v4,
        capabilities: vec![
            Capability::Multiprotocol { afi: Afi::IPV4, safi: Safi::UNICAST },
            Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST },
            Capability::RouteRefresh,
            Capability::FourOctetAsn(feed.asn),
        ],
    };
    (&stream).write_all(&encoded(&Message::Open(open))?)?;
    let mut reader = MessageReader::new();
    let mut buf = vec![0u8; 4096];
    let mut got_open = false;
    // Each read waits at most ESTABLISH_TIMEOUT; a handshake is a handful of messages.
    for _ in 0..64 {
        let n = (&stream).read(&mut buf).context("reading the receiver's OPEN")?;
        if n == 0 {
            bail!("the receiver closed the connection during the handshake");
        }
        reader.extend(&buf[..n]);
        while let Some(message) = reader.next_message(&decode_options())? {
            match message {
                Message::Open(o) => {
                    if o.asn() != RECEIVER_ASN {
                        bail!("receiver's OPEN says AS {}, expected {RECEIVER_ASN}", o.asn());
                    }
                    (&stream).write_all(&encoded(&Message::Keepalive)?)?;
                    got_open = true;
                }
                Message::Keepalive if got_open => return Ok((stream, reader)),
                Message::Notification(n) => bail!("the receiver refused the session: {n}"),
                _ => {}
            }
        }
    }
    bail!("no KEEPALIVE after 64 reads from the receiver")
}

fn connect(local: Ipv4Addr, remote: Ipv4Addr) -> Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let remote = SocketAddr::new(IpAddr::V4(remote), 179);
    let mut last = None;
    for _ in 0..CONNECT_TRIES {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        // Bound so that each of several upstreams on one link is its own configured neighbor.
        socket.bind(&SocketAddr::new(IpAddr::V4(local), 0).into()).with_context(|| format!("binding {local}"))?;
        match socket.connect_timeout(&remote.into(), Duration::from_secs(2)) {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(200));
    }
    Err(anyhow!("connecting {local} -> {remote}: {}", last.map(|e| e.to_string()).unwrap_or_default()))
}

/// Reads and discards the receiver's messages (keepalives; exports if any) until the session
/// ends, recording why it ended.
fn drain(stream: TcpStream, mut reader: MessageReader, closed: &Mutex<Option<String>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        match (&stream).read(&mut buf) {
            Ok(0) => break "the receiver closed the connection".to_string(),
            Ok(n) => reader.extend(&buf[..n]),
            Err(e) => break format!("read error: {e}"),
        }
        let mut notification = None;
        loop {
            match reader.next_message(&decode_options()) {
                Ok(Some(Message::Notification(n))) => notification = Some(format!("NOTIFICATION {n}")),
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    notification = Some(format!("undecodable message from the receiver: {e}"));
                    break;
                }
            }
        }
        if let Some(reason) = notification {
            break reason;
        }
    };
    *closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
}

// ---------------------------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ferrule,
    Bird,
    GoBgp,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Ferrule, Kind::Bird, Kind::GoBgp];

    fn key(self) -> &'static str {
        match self {
            Kind::Ferrule => "ferrule",
            Kind::Bird => "bird",
            Kind::GoBgp => "gobgp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Ferrule => "Ferrule",
            Kind::Bird => "BIRD",
            Kind::GoBgp => "GoBGP",
        }
    }
}

/// gobgpd started by the bench itself: the harness starter runs it at debug log level (the
/// interop tests read NOTIFICATION codes from the log), which would log per message here and
/// make GoBGP look slower than it is.
struct GoBgpd {
    daemon: Daemon,
    ns: NetNs,
}

const GOBGP_API: &str = "127.0.0.1:50051";

impl GoBgpd {
    fn start(ns: &NetNs, dir: &Path, feeds: &[Arc<Feed>]) -> Result<GoBgpd> {
        cmd::require_tool("gobgpd", "gobgpd")?;
        let mut toml = format!(
            "[global.config]\n  as = {RECEIVER_ASN}\n  router-id = \"{RECEIVER_V4}\"\n\
             [global.apply-policy.config]\n  default-import-policy = \"accept-route\"\n\
             \x20 default-export-policy = \"reject-route\"\n"
        );
        for feed in feeds {
            let _ = write!(
                toml,
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n\
                 \x20 [neighbors.transport.config]\n    passive-mode = true\n    local-address = \"{RECEIVER_V4}\"\n\
                 \x20 [neighbors.timers.config]\n    hold-time = {HOLD_TIME}\n",
                feed.v4, feed.asn
            );
            for family in ["ipv4-unicast", "ipv6-unicast"] {
                let _ = write!(
                    toml,
                    "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n"
                );
            }
        }
        let config = dir.join("gobgpd.toml");
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        let config = config.display().to_string();
        let args = [
            "-f",
            &config,
            "-t",
            "toml",
            "--api-hosts",
            GOBGP_API,
            "--pprof-disable",
            "--log-plain",
            "--log-level",
            "info",
        ];
        let mut daemon = Daemon::spawn(ns, "gobgpd", "gobgpd", args, &dir.join("gobgpd.log"))?;
        let probe = ns.clone();
        daemon.wait_ready(Duration::from_secs(20), || Ok(gobgp_cli(&probe, &["global"])?.contains("AS:")))?;
        Ok(GoBgpd { daemon, ns: ns.clone() })
    }
}

fn gobgp_cli(ns: &NetNs, args: &[&str]) -> Result<String> {
    let mut full = vec!["-u", "127.0.0.1", "-p", "50051"];
    full.extend_from_slice(args);
    ns.run("gobgp", full)
}

/// One daemon receiving the feeds.
enum Receiver {
    Ferrule(Box<Ferrule>),
    Bird { bird: Box<Bird>, pid: u32 },
    GoBgp(GoBgpd),
}

impl Receiver {
    fn start(kind: Kind, ns: &NetNs, dir: &Path, tag: &str, feeds: &[Arc<Feed>]) -> Result<Receiver> {
        Ok(match kind {
            Kind::Ferrule => {
                let name = format!("fb{tag}{}", std::process::id());
                // Like BIRD here (no kernel protocol), Ferrule keeps the routes in its RIB only:
                // the figure compares the speakers, not the kernel's FIB insertion.
                let mut toml = format!(
                    "[node]\nname = \"{name}\"\nasn = {RECEIVER_ASN}\nrouter_id = \"{RECEIVER_V4}\"\n\
                     [bgp]\ninstall_routes = false\n"
                );
                for feed in feeds {
                    // Passive: the upstream connects; import everything.
                    let _ = write!(
                        toml,
                        "\n[[bgp.peers]]\naddress = \"{}\"\nasn = {}\npassive = true\nhold_time = {HOLD_TIME}\n\
                         import = [\"0.0.0.0/0 le 32\", \"::/0 le 128\"]\n",
                        feed.v4, feed.asn
                    );
                }
                let mut ferrule = Ferrule::new(ns, dir, &name, &toml)?;
                ferrule.start(&[])?;
                Receiver::Ferrule(Box::new(ferrule))
            }
            Kind::Bird => {
                // No kernel protocol: the table must not be installed in the namespace's FIB.
                // The device protocol is needed for BIRD to see directly connected next hops.
                let mut conf = format!(
                    "router id {RECEIVER_V4};\nlog stderr {{ info, remote, warning, error, auth, fatal, bug }};\n\
                     protocol device {{ }}\n"
                );
                for feed in feeds {
                    let _ = write!(
                        conf,
                        "protocol bgp up{} {{\n  local {RECEIVER_V4} as {RECEIVER_ASN};\n  neighbor {} as {};\n\
                         \x20 passive on;\n  hold time {HOLD_TIME};\n  ipv4 {{ import all; export none; }};\n\
                         \x20 ipv6 {{ import all; export none; }};\n}}\n",
                        feed.index, feed.v4, feed.asn
                    );
                }
                let mut bird = Bird::start_raw(ns, dir, &conf)?;
                let pid = bird.daemon().pid();
                Receiver::Bird { bird: Box::new(bird), pid }
            }
            Kind::GoBgp => Receiver::GoBgp(GoBgpd::start(ns, dir, feeds)?),
        })
    }

    fn pid(&self) -> Result<u32> {
        Ok(match self {
            Receiver::Ferrule(f) => f.daemon().context("ferrule is not running")?.pid(),
            Receiver::Bird { pid, .. } => *pid,
            Receiver::GoBgp(g) => g.daemon.pid(),
        })
    }

    /// The receiver's own count of prefixes accepted from all upstreams, summed.
    fn accepted(&self) -> Result<u64> {
        match self {
            Receiver::Ferrule(f) => {
                let summary = f.show(&["bgp", "summary"])?;
                let neighbors = summary.as_array().context("show bgp summary is not a list")?;
                Ok(neighbors.iter().filter_map(|n| n["accepted"].as_u64()).sum())
            }
            Receiver::Bird { bird, .. } => Ok(bird_imported(&bird.birdc(&["show", "protocols", "all"])?)),
            Receiver::GoBgp(g) => gobgp_accepted(&gobgp_cli(&g.ns, &["neighbor", "-j"])?),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Receiver::Ferrule(f) => f.log_tail(),
            Receiver::Bird { bird, .. } => ferrule_tests::BgpPeer::log_tail(bird.as_ref()),
            Receiver::GoBgp(g) => g.daemon.log_tail(),
        }
    }
}

/// Sums `N imported` over every `Routes:` line of `birdc show protocols all` (one per channel:
/// ipv4 and ipv6 of each BGP protocol).
fn bird_imported(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Routes:"))
        .flat_map(|rest| rest.split(','))
        .filter_map(|part| part.trim().strip_suffix(" imported"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// Sums `accepted` over every neighbor and family of `gobgp neighbor -j`. Numbers may be
/// printed as JSON numbers or strings depending on the gobgp version; both are read.
fn gobgp_accepted(json: &str) -> Result<u64> {
    let value: Value = serde_json::from_str(json).with_context(|| format!("gobgp returned non-JSON: {json}"))?;
    let neighbors = match &value {
        Value::Array(list) => list.clone(),
        other => vec![other.clone()],
    };
    let number = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
    Ok(neighbors
        .iter()
        .flat_map(|n| n["afi_safis"].as_array().cloned().unwrap_or_default())
        .map(|af| number(&af["state"]["accepted"]))
        .sum())
}

// ---------------------------------------------------------------------------------------------
// One measurement
// ---------------------------------------------------------------------------------------------

/// A figure that is exact, or only a lower bound because the receiver did not finish in time.
#[derive(Clone, Copy, Debug)]
enum Figure {
    Exact(f64),
    AtLeast(f64),
}

impl Figure {
    fn value(self) -> f64 {
        match self {
            Figure::Exact(v) | Figure::AtLeast(v) => v,
        }
    }

    fn show(self, text: impl Fn(f64) -> String) -> String {
        match self {
            Figure::Exact(v) => text(v),
            Figure::AtLeast(v) => format!("> {}", text(v)),
        }
    }

    /// `self / base`, keeping what is known about bounds.
    fn ratio(self, base: Figure) -> String {
        let r = self.value() / base.value();
        match (self, base) {
            (Figure::Exact(_), Figure::Exact(_)) => format!("{r:.2}x"),
            (Figure::AtLeast(_), Figure::Exact(_)) => format!("> {r:.2}x"),
            (Figure::Exact(_), Figure::AtLeast(_)) => format!("< {r:.2}x"),
            (Figure::AtLeast(_), Figure::AtLeast(_)) => "?".to_string(),
        }
    }
}

struct Measured {
    /// Seconds from the first UPDATE byte to the receiver counting every prefix.
    time: Figure,
    /// Seconds until the last byte was written (the receiver had read all but the socket
    /// buffers by then).
    written: Option<f64>,
    counted: u64,
    target: u64,
    peak_growth: Figure,
    rss_before: u64,
    rss_after: u64,
}

struct Outcome {
    kind: Kind,
    result: Result<Measured>,
}

/// Runs `rounds` independent loads (fresh namespaces and daemon each time) and keeps the
/// median time and the median peak growth: one load of Ferrule or BIRD takes about a second,
/// so a single run would be at the mercy of the 100 ms poll and of the other core's load.
fn scenario(kind: Kind, tag: &str, feeds: &[Arc<Feed>], limit: Duration, rounds: usize) -> Outcome {
    let mut runs = Vec::new();
    for round in 0..rounds {
        let result = measure(kind, tag, feeds, limit);
        match result {
            Ok(m) => {
                println!(
                    "   {} run {}/{rounds}: {}/{} counted, time {}, bytes written in {}, RSS {:.1} MiB before -> \
                     {:.1} MiB after (peak +{})",
                    kind.label(),
                    round + 1,
                    m.counted,
                    m.target,
                    m.time.show(|s| format!("{s:.2} s")),
                    m.written.map_or("(not all)".to_string(), |s| format!("{s:.2} s")),
                    mib(m.rss_before),
                    mib(m.rss_after),
                    m.peak_growth.show(|b| format!("{:.1} MiB", mib(b as u64)))
                );
                runs.push(m);
            }
            Err(e) => {
                println!("   {} run {}/{rounds}: FAILED: {e:#}", kind.label(), round + 1);
                return Outcome { kind, result: Err(e) };
            }
        }
    }
    let median = |mut figures: Vec<Figure>| {
        figures.sort_by(|a, b| a.value().total_cmp(&b.value()));
        figures[figures.len() / 2]
    };
    let time = median(runs.iter().map(|m| m.time).collect());
    let peak_growth = median(runs.iter().map(|m| m.peak_growth).collect());
    let first = runs.swap_remove(0);
    Outcome { kind, result: Ok(Measured { time, peak_growth, ..first }) }
}

fn measure(kind: Kind, tag: &str, feeds: &[Arc<Feed>], limit: Duration) -> Result<Measured> {
    let dir = TestDir::new(&format!("bench-{}", kind.key()))?;
    let rx_ns = NetNs::new("bbrx")?;
    let tx_ns = NetNs::new("bbtx")?;
    net::veth(&rx_ns, "up0", &tx_ns, "down0")?;
    net::add_addr(&rx_ns, "up0", &format!("{RECEIVER_V4}/24"))?;
    net::add_addr(&rx_ns, "up0", &format!("{RECEIVER_V6}/64"))?;
    for feed in feeds {
        net::add_addr(&tx_ns, "down0", &format!("{}/24", feed.v4))?;
        net::add_addr(&tx_ns, "down0", &format!("{}/64", feed.v6))?;
    }
    let receiver = Receiver::start(kind, &rx_ns, dir.path(), tag, feeds)?;
    let pid = receiver.pid()?;
    let target: u64 = feeds.iter().map(|f| f.prefixes).sum();

    let (mut upstreams, events) = start_upstreams(&tx_ns, feeds)?;
    let mut established = 0;
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    while established < feeds.len() {
        let wait = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(wait) {
            Ok((i, Event::Established(stream))) => {
                upstreams[i].control = Some(stream);
                established += 1;
            }
            Ok((i, Event::Failed(e))) => bail!("upstream {i}: {e}\nreceiver log:\n{}", receiver.log_tail()),
            Ok(_) => {}
            Err(_) => bail!(
                "only {established} of {} sessions established after {ESTABLISH_TIMEOUT:?}\nreceiver log:\n{}",
                feeds.len(),
                receiver.log_tail()
            ),
        }
    }
    // Let post-establishment work (initial exports, timers) settle into the baseline.
    thread::sleep(Duration::from_secs(1));
    let rss_before = reset_peak(pid)?;

    let go_at = Instant::now();
    for u in &upstreams {
        if let Some(go) = &u.go {
            go.send(()).map_err(|_| anyhow!("an upstream thread ended before the go signal"))?;
        }
    }
    let mut first_write: Option<Instant> = None;
    let mut all_written: Vec<Instant> = Vec::new();
    let mut counted = 0;
    let mut done = None;
    let mut last_error = None;
    while go_at.elapsed() < limit {
        while let Ok((i, event)) = events.try_recv() {
            match event {
                Event::FirstWrite(t) => first_write = Some(first_write.map_or(t, |f| f.min(t))),
                Event::AllWritten(t) => all_written.push(t),
                Event::Failed(e) => bail!("upstream {i}: {e}\nreceiver log:\n{}", receiver.log_tail()),
                Event::Established(_) => {}
            }
        }
        for (i, u) in upstreams.iter().enumerate() {
            if let Some(reason) = u.closed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                bail!("session {i} ended while loading: {reason}\nreceiver log:\n{}", receiver.log_tail());
            }
        }
        // A busy daemon may answer slowly or not at all; that counts as "not yet".
        match receiver.accepted() {
            Ok(n) => counted = n,
            Err(e) => last_error = Some(e),
        }
        if counted >= target {
            done = Some(Instant::now());
            break;
        }
        thread::sleep(POLL);
    }
    let (rss_after, hwm) = memory(pid)?;
    for u in &mut upstreams {
        u.stop();
    }
    while let Ok((_, event)) = events.try_recv() {
        if let Event::AllWritten(t) = event {
            all_written.push(t);
        }
    }
    let start = first_write.unwrap_or(go_at);
    let time = match done {
        Some(t) => Figure::Exact((t - start).as_secs_f64()),
        None => {
            if let Some(e) = last_error {
                println!("   (last count query error: {e:#})");
            }
            Figure::AtLeast(limit.as_secs_f64())
        }
    };
    let written = (all_written.len() == feeds.len())
        .then(|| all_written.iter().max().map(|t| (*t - start).as_secs_f64()))
        .flatten();
    let growth = hwm.saturating_sub(rss_before) as f64;
    let peak_growth = if done.is_some() { Figure::Exact(growth) } else { Figure::AtLeast(growth) };
    Ok(Measured { time, written, counted, target, peak_growth, rss_before, rss_after })
}

/// (VmRSS, VmHWM) of `pid` in bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets `pid`'s peak-RSS mark to its current RSS (writing 5 to clear_refs, Linux >= 4.0)
/// and returns that RSS, so the peak read later is the peak while loading.
fn reset_peak(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("resetting the peak RSS through {path}"))?;
    Ok(memory(pid)?.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_results(outcomes: &[Outcome]) {
    let base = |kind: Kind| {
        outcomes.iter().find(|o| o.kind == kind).and_then(|o| o.result.as_ref().ok()).map(|m| (m.time, m.peak_growth))
    };
    let (bird, gobgp) = (base(Kind::Bird), base(Kind::GoBgp));
    println!(
        "\n{:<8} {:>12} {:>11} {:>16} {:>12} {:>10} {:>10} {:>11} {:>11}",
        "receiver",
        "time",
        "ns/prefix",
        "peak RSS growth",
        "bytes/route",
        "time/BIRD",
        "mem/BIRD",
        "time/GoBGP",
        "mem/GoBGP"
    );
    for o in outcomes {
        let Ok(m) = &o.result else {
            println!("{:<8} failed (see above)", o.kind.label());
            continue;
        };
        let per_prefix = match m.time {
            Figure::Exact(s) => Figure::Exact(s * 1e9 / m.target as f64),
            Figure::AtLeast(s) => Figure::AtLeast(s * 1e9 / m.target as f64),
        };
        let per_route = match m.peak_growth {
            Figure::Exact(b) => Figure::Exact(b / m.target as f64),
            // Lower bound over the routes counted so far is no bound at all; over the target it is.
            Figure::AtLeast(b) => Figure::AtLeast(b / m.target as f64),
        };
        let vs = |b: Option<(Figure, Figure)>| match b {
            Some((t, mem)) => (m.time.ratio(t), m.peak_growth.ratio(mem)),
            None => ("-".to_string(), "-".to_string()),
        };
        let (tb, mb) = vs(bird);
        let (tg, mg) = vs(gobgp);
        println!(
            "{:<8} {:>12} {:>11} {:>16} {:>12} {:>10} {:>10} {:>11} {:>11}",
            o.kind.label(),
            m.time.show(|s| format!("{s:.2} s")),
            per_prefix.show(|n| format!("{n:.0}")),
            m.peak_growth.show(|b| format!("{:.1} MiB", mib(b as u64))),
            per_route.show(|b| format!("{b:.0}")),
            tb,
            mb,
            tg,
            mg
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Announcement latency to FRR
// ---------------------------------------------------------------------------------------------

fn latency() -> Result<()> {
    let dir = TestDir::new("bench-latency")?;
    let node = NetNs::new("bblf")?;
    let peer_ns = NetNs::new("bblp")?;
    net::veth(&node, "tor0", &peer_ns, "srv0")?;
    net::add_addr(&node, "tor0", "2001:db8:b::1/64")?;
    net::add_addr(&peer_ns, "srv0", "2001:db8:b::2/64")?;
    let (ours, theirs): (IpAddr, IpAddr) = ("2001:db8:b::1".parse()?, "2001:db8:b::2".parse()?);
    let name = format!("fblat{}", std::process::id());
    let config = |announce: bool| {
        let mut text = format!(
            "[node]\nname = \"{name}\"\nasn = {RECEIVER_ASN}\nrouter_id = \"{RECEIVER_V4}\"\n\n\
             [[bgp.peers]]\naddress = \"{theirs}\"\nasn = 65000\nhold_time = {HOLD_TIME}\n"
        );
        if announce {
            let _ = write!(text, "\n[[bgp.announce]]\nprefix = \"{LATENCY_PREFIX}\"\n");
        }
        text
    };
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config(false))?;
    ferrule.start(&[])?;
    let frr = Frr::start(
        &peer_ns,
        dir.path(),
        &BgpConfig::new("192.0.2.2".parse()?, 65000).neighbor(Neighbor::new("ferrule", ours, RECEIVER_ASN)),
    )?;
    ferrule_tests::wait_established(&frr, ours, Duration::from_secs(30))?;

    let visible = || -> Result<bool> {
        let out = frr.vtysh(&[&format!("show bgp ipv6 unicast {LATENCY_PREFIX}")])?;
        Ok(!out.contains("Network not in table"))
    };
    // The probe itself takes time (vtysh is a process talking to bgpd over a socket): that is
    // the resolution of the vtysh figures, together with the 20 ms sleep.
    let probe_started = Instant::now();
    for _ in 0..5 {
        visible()?;
    }
    let probe = probe_started.elapsed() / 5;
    // A second, finer clock: zebra installs the route FRR's bgpd selected into its namespace's
    // kernel table, and `ip monitor` reports that as it happens, without polling.
    let monitor = RouteMonitor::start(&peer_ns)?;

    let mut samples: [Vec<Duration>; 4] = Default::default();
    for round in 0..LATENCY_ROUNDS {
        for announce in [true, false] {
            monitor.clear();
            let started = Instant::now();
            let out = ferrule.apply(&config(announce))?;
            if !out.status.success() {
                bail!("ferrule apply failed: {}", ferrule_tests::ferrule::text(&out.stderr));
            }
            let applied = started.elapsed();
            let what = if announce { "announcement to appear" } else { "withdrawal to take effect" };
            let mut probes = 0;
            cmd::poll_until(&format!("{what} on FRR (round {round})"), LATENCY_LIMIT, LATENCY_POLL, || {
                probes += 1;
                Ok(visible()? == announce)
            })
            .with_context(|| ferrule.log_tail())?;
            let seen = started.elapsed();
            let kernel = monitor.wait(announce, LATENCY_LIMIT)? - started;
            println!(
                "   round {round} {}: in FRR's BGP table after {:.1} ms ({probes} vtysh probe(s)), in FRR's \
                 kernel table after {:.1} ms; `ferrule apply` returned after {:.1} ms",
                if announce { "announce" } else { "withdraw" },
                ms(seen),
                ms(kernel),
                ms(applied)
            );
            let base = if announce { 0 } else { 2 };
            samples[base].push(seen);
            samples[base + 1].push(kernel);
        }
    }
    println!(
        "\none vtysh probe takes {:.1} ms and probes run every {} ms, so the vtysh figures are coarse (the \
         first probe after an apply answers no earlier than that); the kernel figures are exact but include \
         zebra's own install delay after bgpd",
        ms(probe),
        LATENCY_POLL.as_millis()
    );
    println!("{:<34} {:>10} {:>10}", "from `ferrule apply` to", "median", "max");
    let labels = [
        "announce in FRR BGP table (vtysh)",
        "announce in FRR kernel table",
        "withdraw in FRR BGP table (vtysh)",
        "withdraw in FRR kernel table",
    ];
    for (label, samples) in labels.into_iter().zip(&mut samples) {
        samples.sort();
        println!(
            "{label:<34} {:>7.1} ms {:>7.1} ms",
            ms(samples[samples.len() / 2]),
            ms(*samples.last().context("no samples")?)
        );
    }
    Ok(())
}

/// `ip -6 monitor route` in a namespace, each line timestamped by a reader thread as it
/// arrives. The child is ours and killed by its own handle on drop.
struct RouteMonitor {
    child: std::process::Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl RouteMonitor {
    fn start(ns: &NetNs) -> Result<RouteMonitor> {
        let mut child = ns
            .command("ip")
            .args(["-6", "monitor", "route"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting ip monitor")?;
        let stdout = child.stdout.take().context("ip monitor has no stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // Give it time to subscribe before the first change it must see.
        thread::sleep(Duration::from_millis(200));
        Ok(RouteMonitor { child, lines })
    }

    fn clear(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// When the kernel route for the latency prefix was added (`added`) or deleted.
    fn wait(&self, added: bool, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "no kernel route {} for {LATENCY_PREFIX} within {timeout:?}",
                    if added { "add" } else { "delete" }
                )
            })?;
            if line.contains(LATENCY_PREFIX) && line.starts_with("Deleted") != added {
                return Ok(at);
            }
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
