//! IPv6 neighbour discovery for unnumbered BGP (`interface = "eth0"` instead of a peer address),
//! the way FRR's `neighbor eth0 interface remote-as external` does it: both ends send Router
//! Advertisements on the link, and each learns the other's link-local address from the source of
//! the other's RAs. This module owns that exchange on each interface it is given: one raw ICMPv6
//! socket, our RAs and one initial RS, and the peer's address published on a `watch` channel.
//!
//! It must not do anything else on the link: it never opens BGP sessions (the BGP driver does,
//! to [`Neighbor::socket_addr`]), never changes a sysctl, an address or a route, and never makes
//! us a router for anybody (see *router lifetime 0* below).
//!
//! ```text
//!   packet.rs     RS/RA codec (sans-IO): NdMessage::decode / encode
//!   discovery.rs  DiscoveryState (sans-IO): handle(now, Tick | Packet) -> [Transmit, Discovered, …]
//!   mod.rs        Discovery::spawn: one tokio task per interface
//!
//!   ┌───────────── discovery task (per interface) ─────────────┐
//!   │ raw ICMPv6 socket ──recvmsg (hop limit)──▶ DiscoveryState │──watch<Option<Neighbor>>──▶ BGP driver
//!   │   ▲ sendto ff02::1 (RA) / ff02::2 (RS) ◀── Transmit       │   (DiscoveryHandle::peer)
//!   └──────────────────────────────────────────────────────────┘
//!        dropping the DiscoveryHandle aborts the task and closes the socket
//! ```
//!
//! # Use from the BGP driver
//!
//! ```no_run
//! # async fn peer() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ferrule_bgp::nd::Discovery;
//!
//! let discovery = Discovery::spawn("eth0", Duration::from_secs(10))?; // fails: no such link, IPv6 off, no CAP_NET_RAW
//! let mut peer = discovery.peer();
//! let neighbor = peer.wait_for(Option::is_some).await?.clone().expect("waited for Some");
//! let _stream = tokio::net::TcpStream::connect(neighbor.socket_addr(179)).await?; // [fe80::…%ifindex]:179
//! // peer.changed() fires when the peer appears, changes address or MAC, or expires (None);
//! // not on every RA: `last_seen` is kept current silently.
//! # Ok(()) }
//! ```
//!
//! Keep the handle for as long as the peer is configured (our RAs are how the ToR finds us); the
//! BGP session's own hold timer, not discovery expiry, is what detects a dead peer quickly.
//! An address change (ToR replaced) shows up as a new `Some(Neighbor)`: reconnect to it.
//!
//! # Why router lifetime 0
//!
//! Our RAs exist only so the ToR learns our link-local address. A non-zero Router Lifetime
//! would also tell every host stack on the link that accepts RAs (a Linux-based ToR with
//! forwarding off, a test box, a misconfigured switch) to install a default route via this
//! server: traffic would be drawn to a node that is not a transit router. Lifetime 0 means
//! "not a default router" (RFC 4861 §4.2), and costs nothing for discovery: FRR's zebra
//! (`rtadv_process_advert`) adds the RA's source as a connected neighbour of the interface, which
//! bgpd then connects to, after checking only the message length, a link-local source and hop
//! limit 255; it never looks at the lifetime. We also send no prefixes (nobody autoconfigures
//! from us), no M/O flags, and reachable time / retransmission timer "unspecified".
//!
//! # Kernel settings that matter (the library reads, never writes, them)
//!
//! * `net.ipv6.conf.<if>.disable_ipv6` must be 0: [`Discovery::spawn`] refuses the interface
//!   otherwise ([`NdError::Ipv6Disabled`]).
//! * The interface needs a link-local address (`addr_gen_mode` other than 1/none, link up, DAD
//!   finished): until it has one, the kernel cannot source our RAs and sending fails; the task
//!   logs once and retries at every interval, so an interface that comes up later just works.
//! * `accept_ra` is **not** needed: a raw ICMPv6 socket receives RAs whatever the kernel does
//!   with them (the integration test runs with `accept_ra = 0`). It does decide what the
//!   *kernel* does with the ToR's RAs: FRR advertises a non-zero lifetime, so a node with
//!   forwarding off and `accept_ra = 1` (the default) gets a kernel default route via the ToR.
//!   Set `accept_ra = 0` on fabric interfaces if BGP alone should decide routes (with
//!   forwarding on, `accept_ra = 1` is already ignored).
//! * `forwarding` is not needed: we join ff02::2 ourselves to hear Router Solicitations.
//! * Raw sockets need `CAP_NET_RAW`.
//!
//! # Peers we interoperate with
//!
//! * FRR processes received RAs only on interfaces where it sends RAs itself; `neighbor <if>
//!   interface` turns that on (10 s interval unless `ipv6 nd ra-interval` says otherwise), unless
//!   the ToR has `no bgp ipv6-auto-ra` (newer FRR): then it needs `no ipv6 nd suppress-ra` on the
//!   interface. It learns us from our first RA within milliseconds (integration test).
//! * BIRD 2 (`protocol radv`) sends RAs we learn from; it insists on `max ra interval` ≥ 4 s and
//!   `min ra interval` ≥ 3 s. Its RAs carry no options (2.0.12), so a BIRD peer's
//!   [`Neighbor::mac`] is `None`.

pub mod discovery;
pub mod packet;

use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn6};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn, Instrument};

pub use discovery::Neighbor;
use discovery::{DiscoveryState, IgnoreReason, Input, Output, Timing, ALL_ROUTERS};
pub use packet::{Mac, NdDecodeError, NdMessage};

/// The shortest RA interval [`Discovery::spawn`] accepts (FRR goes down to 70 ms; below 100 ms
/// discovery traffic buys nothing).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Linux's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// The largest ICMPv6 message we read: a whole jumbo frame's worth, far above any RA.
const RECV_BUFFER: usize = 9216;

/// Why discovery cannot run on an interface. Each message names the interface and what to do.
#[derive(Debug, Error)]
pub enum NdError {
    #[error("'{interface}' is not a valid interface name (1-15 characters, no '/' or whitespace)")]
    InvalidInterfaceName { interface: String },
    #[error(
        "interface {interface} does not exist in this network namespace: check the peer's `interface` setting, \
         or create the link before starting BGP on it"
    )]
    NoSuchInterface { interface: String },
    #[error(
        "IPv6 is disabled on {interface} (net.ipv6.conf.{interface}.disable_ipv6 = 1): unnumbered BGP needs the \
         interface's IPv6 link-local address; set that sysctl to 0"
    )]
    Ipv6Disabled { interface: String },
    #[error("RA interval {interval:?} on {interface} is too short: use at least {MIN_INTERVAL:?}")]
    IntervalTooShort { interface: String, interval: Duration },
    #[error("{interface}: cannot {action}: {source}{}", permission_hint(.source))]
    System { interface: String, action: &'static str, source: io::Error },
}

fn permission_hint(err: &io::Error) -> &'static str {
    if err.kind() == io::ErrorKind::PermissionDenied {
        " (raw ICMPv6 sockets need CAP_NET_RAW: run ferrule as root or grant it that capability)"
    } else {
        ""
    }
}

/// The task that runs discovery on one interface; start it with [`Discovery::spawn`].
pub struct Discovery {
    ifindex: u32,
    socket: AsyncFd<Socket>,
    state: DiscoveryState,
    peer: watch::Sender<Option<Neighbor>>,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    /// Sending has failed since the last success (logged once, not at every RA).
    send_failing: bool,
    /// The second router we last warned about (warned once, not at every RA).
    warned_second_router: Option<Ipv6Addr>,
}

/// Owns a running discovery task: dropping it stops the task and closes its socket.
pub struct DiscoveryHandle {
    interface: String,
    ifindex: u32,
    /// The interface's MAC when the discovery started (advertised in our RAs).
    mac: Option<Mac>,
    peer: watch::Receiver<Option<Neighbor>>,
    task: JoinHandle<()>,
}

impl DiscoveryHandle {
    /// The peer found on the link, `None` until an RA arrives and after the peer expires.
    pub fn peer(&self) -> watch::Receiver<Option<Neighbor>> {
        self.peer.clone()
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface index: the scope id of the peer's link-local address.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether the interface is still the one the discovery started on: same index, same MAC.
    /// An interface deleted and created again (a VLAN or veth recreated, a driver reset) has a
    /// new index, to which the socket is not bound; a changed MAC (bond failover, `ip link set
    /// address`) would still be advertised as ours. Either way the discovery must start over.
    /// An interface that cannot be read just now (another error than its absence) counts as
    /// unchanged: a restart would only lose the neighbour for nothing.
    pub fn interface_unchanged(&self) -> bool {
        match lookup(&self.interface) {
            Ok(link) => link.ifindex == self.ifindex && link.mac == self.mac,
            Err(NdError::NoSuchInterface { .. }) => false,
            Err(_) => true,
        }
    }
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `lookup` found out about the interface.
struct Link {
    ifindex: u32,
    mac: Option<Mac>,
    addresses: Vec<Ipv6Addr>,
}

impl Discovery {
    /// Opens the raw ICMPv6 socket on `ifname`, then runs discovery on it in a task of the
    /// current tokio runtime (panics outside one, like `tokio::spawn`): an RS and an RA at once,
    /// the first RAs 1 s apart, then one every `interval`; the peer expires after
    /// `max(3 × interval, its advertised router lifetime)` without an RA, so a peer that, like
    /// us, advertises lifetime 0 must send RAs at least every 3 × `interval` (FRR's default for
    /// unnumbered peers is every 10 s with a 30 s lifetime).
    ///
    /// The interface is looked up, and the socket created, in the network namespace of the
    /// calling thread.
    pub fn spawn(ifname: &str, interval: Duration) -> Result<DiscoveryHandle, NdError> {
        let link = lookup(ifname)?;
        if interval < MIN_INTERVAL {
            return Err(NdError::IntervalTooShort { interface: ifname.to_string(), interval });
        }
        if !link.addresses.iter().any(Ipv6Addr::is_unicast_link_local) {
            warn!(
                interface = ifname,
                "no IPv6 link-local address yet (link down, DAD running, or addr_gen_mode none): \
                 Router Advertisements cannot be sent until it has one"
            );
        }
        let socket = open_socket(ifname, link.ifindex)?;
        // tokio 1.54 deprecates `AsyncFd::new` because a borrowed fd could be closed while still
        // registered; here the AsyncFd owns the socket, so that cannot happen. Its replacement,
        // `AsyncFd::register`, is an `unsafe fn`, which this crate forbids.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket).map_err(|source| NdError::System {
            interface: ifname.to_string(),
            action: "register the socket with the tokio reactor",
            source,
        })?;
        let state = DiscoveryState::new(Instant::now(), Timing::new(interval), link.ifindex, link.mac, link.addresses);
        let (peer_tx, peer_rx) = watch::channel(None);
        let task = Discovery {
            ifindex: link.ifindex,
            socket,
            state,
            peer: peer_tx,
            buf: vec![0; RECV_BUFFER],
            cmsg: nix::cmsg_space!(i32),
            send_failing: false,
            warned_second_router: None,
        };
        info!(interface = ifname, ifindex = link.ifindex, mac = ?link.mac.map(|m| m.to_string()), ?interval, "starting neighbour discovery");
        let span = tracing::info_span!("nd", interface = ifname);
        let task = tokio::spawn(task.run().instrument(span));
        Ok(DiscoveryHandle { interface: ifname.to_string(), ifindex: link.ifindex, mac: link.mac, peer: peer_rx, task })
    }

    async fn run(mut self) {
        loop {
            let deadline = tokio::time::Instant::from_std(self.state.next_deadline());
            let outputs = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => self.state.handle(Instant::now(), Input::Tick),
                received = receive(&self.socket, &mut self.buf, &mut self.cmsg) => match received {
                    Ok(Received { len, source: Some(source), hop_limit, truncated: false }) => {
                        let input = Input::Packet { source, hop_limit, bytes: &self.buf[..len] };
                        self.state.handle(Instant::now(), input)
                    }
                    Ok(received) => {
                        debug!(?received.source, received.len, "dropping a truncated or sourceless ICMPv6 packet");
                        Vec::new()
                    }
                    Err(err) => {
                        // Not expected on a raw socket; pause so a persistent error cannot spin.
                        warn!(%err, "receiving on the ICMPv6 socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Vec::new()
                    }
                },
            };
            self.perform(outputs);
        }
    }

    fn perform(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Transmit { destination, message } => self.transmit(destination, &message),
                Output::Discovered(peer) => {
                    info!(peer = %peer.address, mac = ?peer.mac.map(|m| m.to_string()), "found the peer's link-local address");
                    self.peer.send_replace(Some(peer));
                }
                Output::Refreshed(peer) => {
                    // Keep last_seen current without waking receivers: nothing they act on changed.
                    self.peer.send_if_modified(|current| {
                        *current = Some(peer);
                        false
                    });
                }
                Output::Expired(peer) => {
                    warn!(peer = %peer.address, "no Router Advertisement from the peer for its hold time: forgetting it");
                    self.peer.send_replace(None);
                }
                Output::Ignored { source, reason } => self.log_ignored(source, reason),
            }
        }
    }

    fn transmit(&mut self, destination: Ipv6Addr, message: &NdMessage) {
        let bytes = message.to_bytes();
        let to = SockAddr::from(SocketAddrV6::new(destination, 0, 0, self.ifindex));
        match self.socket.get_ref().send_to(&bytes, &to) {
            Ok(_) => {
                if std::mem::take(&mut self.send_failing) {
                    info!(%destination, "sending Router Discovery packets works again");
                }
                trace!(%destination, ?message, "sent");
            }
            Err(err) if !self.send_failing => {
                self.send_failing = true;
                warn!(%destination, %err, "cannot send Router Discovery packets (link down or no link-local address yet?); retrying at every interval");
            }
            Err(err) => debug!(%destination, %err, "sending still fails"),
        }
    }

    fn log_ignored(&mut self, source: Ipv6Addr, reason: IgnoreReason) {
        match reason {
            // Neighbour solicitations, echo requests…: a raw ICMPv6 socket sees all of them.
            IgnoreReason::Malformed(NdDecodeError::UnexpectedType(_)) | IgnoreReason::Own => {}
            IgnoreReason::SecondRouter { current } => {
                if self.warned_second_router.replace(source) != Some(source) {
                    warn!(%source, %current, "a second router advertises on this point-to-point link; keeping the current peer");
                }
            }
            reason => debug!(%source, ?reason, "ignoring an invalid Router Discovery packet"),
        }
    }
}

/// Resolves `ifname` in the calling thread's network namespace.
fn lookup(ifname: &str) -> Result<Link, NdError> {
    let interface = || ifname.to_string();
    if ifname.is_empty() || ifname.len() > MAX_IFNAME || ifname.contains(|c: char| c == '/' || c.is_whitespace()) {
        return Err(NdError::InvalidInterfaceName { interface: interface() });
    }
    let ifindex =
        nix::net::if_::if_nametoindex(ifname).map_err(|_| NdError::NoSuchInterface { interface: interface() })?;
    // The sysctl tree under /proc/sys/net belongs to the reading thread's namespace. Without it
    // IPv6 is off for the whole kernel, and creating the socket reports that.
    let sysctl = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if std::fs::read_to_string(sysctl).is_ok_and(|v| v.trim() == "1") {
        return Err(NdError::Ipv6Disabled { interface: interface() });
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|errno| NdError::System {
        interface: interface(),
        action: "list the interface's addresses",
        source: errno.into(),
    })?;
    let mut link = Link { ifindex, mac: None, addresses: Vec::new() };
    for entry in addrs.filter(|a| a.interface_name == ifname) {
        let Some(address) = entry.address else { continue };
        if let Some(mac) = address.as_link_addr().and_then(|l| l.addr()) {
            link.mac = (mac != [0; 6]).then_some(Mac(mac));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            link.addresses.push(v6.ip());
        }
    }
    Ok(link)
}

/// The socket RFC 4861 asks for: sends with hop limit 255 out of this interface only, hears
/// RSs (ff02::2) and RAs (ff02::1) on it, reports each packet's hop limit, and does not hear
/// its own multicasts.
fn open_socket(ifname: &str, ifindex: u32) -> Result<Socket, NdError> {
    let fail = |action: &'static str| move |source| NdError::System { interface: ifname.to_string(), action, source };
    let socket =
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(fail("open a raw ICMPv6 socket"))?;
    socket.bind_device(Some(ifname.as_bytes())).map_err(fail("bind the ICMPv6 socket to the interface"))?;
    socket.set_multicast_if_v6(ifindex).map_err(fail("send multicast out of the interface"))?;
    socket.set_multicast_hops_v6(255).map_err(fail("set the multicast hop limit to 255"))?;
    socket.set_unicast_hops_v6(255).map_err(fail("set the unicast hop limit to 255"))?;
    socket.set_multicast_loop_v6(false).map_err(fail("turn multicast loopback off"))?;
    socket.join_multicast_v6(&ALL_ROUTERS, ifindex).map_err(fail("join ff02::2 (all routers)"))?;
    socket.set_recv_hoplimit_v6(true).map_err(fail("ask for the hop limit of received packets"))?;
    socket.set_nonblocking(true).map_err(fail("make the socket non-blocking"))?;
    Ok(socket)
}

#[derive(Debug)]
struct Received {
    len: usize,
    source: Option<Ipv6Addr>,
    hop_limit: Option<u8>,
    truncated: bool,
}

async fn receive(socket: &AsyncFd<Socket>, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Received> {
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|socket| recv_one(socket.get_ref().as_raw_fd(), buf, cmsg)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// One `recvmsg`: the ICMPv6 message into `buf`, its source, and the IPV6_HOPLIMIT control
/// message (requested with IPV6_RECVHOPLIMIT).
fn recv_one(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(cmsg), MsgFlags::empty())?;
    let mut hop_limit = None;
    for control in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv6HopLimit(hops) = control {
            hop_limit = u8::try_from(hops).ok();
        }
    }
    Ok(Received {
        len: msg.bytes,
        source: msg.address.map(|a| a.ip()),
        hop_limit,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_invalid_interface_names() {
        for name in ["", "a-name-longer-than-15", "eth0/../lo", "eth 0"] {
            let err = lookup(name).err().unwrap();
            assert!(matches!(err, NdError::InvalidInterfaceName { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn missing_interface_error_names_it_and_says_what_to_do() {
        let err = lookup("ferrule-nd-none").err().unwrap();
        assert!(matches!(err, NdError::NoSuchInterface { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("interface ferrule-nd-none does not exist"), "{text}");
        assert!(text.contains("create the link"), "{text}");
    }

    #[test]
    fn loopback_lookup_finds_its_index_and_no_mac() {
        // Every namespace has lo; it has no link-layer address worth advertising.
        let link = lookup("lo").unwrap();
        assert!(link.ifindex > 0);
        assert_eq!(link.mac, None);
    }

    #[test]
    fn permission_errors_point_at_cap_net_raw() {
        let err = NdError::System {
            interface: "eth0".into(),
            action: "open a raw ICMPv6 socket",
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let text = err.to_string();
        assert!(text.starts_with("eth0: cannot open a raw ICMPv6 socket: "), "{text}");
        assert!(text.contains("CAP_NET_RAW"), "{text}");
    }

    #[tokio::test]
    async fn spawn_refuses_too_short_interval() {
        let err = Discovery::spawn("lo", Duration::from_millis(10)).err().unwrap();
        assert!(matches!(err, NdError::IntervalTooShort { .. }), "{err}");
    }
}
