//! The sans-IO half of neighbour discovery on one interface: which Router Discovery packets to
//! send and when, which received ones to believe, and who the peer is. No sockets, no clock:
//! `now` comes in with every call and packets go out as [`Output::Transmit`], so the whole
//! behaviour is tested with a fake clock (the tests below) and run by the driver in `mod.rs`.
//!
//! Rules:
//! * Announce: an RS to ff02::2 and an RA to ff02::1 at once, then RAs every
//!   [`Timing::fast_interval`] until [`Timing::fast_count`] have gone, then every
//!   [`Timing::interval`]. A Router Solicitation, or a newly discovered peer, brings the next RA
//!   forward to now, but never closer than `fast_interval` to the previous one.
//! * Believe only RFC 4861 §6.1 valid packets: hop limit 255 (so the sender is on this link),
//!   a link-local source, a well-formed message; and not our own (source address or MAC ours).
//! * The peer is the source of valid RAs. Router Solicitations do not make a peer: anything may
//!   solicit, only routers advertise. The link is point-to-point: a second router's RAs are
//!   ignored while the current peer keeps advertising, and take over once it has been silent
//!   for 3 × `interval`.
//! * The peer expires when not heard for `max(3 × interval, its advertised router lifetime)`.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use super::packet::{Mac, NdDecodeError, NdMessage, RouterAdvertisement, RouterSolicitation};

/// ff02::1, where RAs go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, where RSs go.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// How many RA intervals of silence expire a peer (when its advertised lifetime is shorter).
const HOLD_MULTIPLIER: u32 = 3;

/// When RAs go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The steady RA interval, also the base of the peer's expiry (3 × interval).
    pub interval: Duration,
    /// The interval of the first RAs, and the minimum gap between any two RAs.
    pub fast_interval: Duration,
    /// How many RAs (the first one included) go out at `fast_interval`.
    pub fast_count: u32,
}

impl Timing {
    /// `interval` in steady state; the first 3 RAs (RFC 4861's MAX_INITIAL_RTR_ADVERTISEMENTS)
    /// 1 s apart, or `interval` apart if that is shorter.
    pub fn new(interval: Duration) -> Timing {
        Timing { interval, fast_interval: interval.min(Duration::from_secs(1)), fast_count: 3 }
    }

    /// How long a peer stays known without being heard: 3 × interval, or the router lifetime
    /// it advertised if that is longer.
    pub fn hold(&self, advertised_lifetime: Duration) -> Duration {
        (self.interval * HOLD_MULTIPLIER).max(advertised_lifetime)
    }
}

/// The router found on the link: the address to open the BGP session to
/// (`[address%ifindex]:179`), as the driver publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// The peer's IPv6 link-local address (the source of its RAs).
    pub address: Ipv6Addr,
    /// The interface it was heard on: the scope id to connect with.
    pub ifindex: u32,
    /// The MAC from the RA's Source Link-Layer Address option, if it had one.
    pub mac: Option<Mac>,
    /// When its last valid RA arrived.
    pub last_seen: Instant,
    /// The router lifetime its last RA advertised (0 for a peer that, like us, is not a default
    /// router). Only used for expiry.
    pub router_lifetime: Duration,
}

impl Neighbor {
    /// `[address%ifindex]:port`, ready for `TcpStream::connect`.
    pub fn socket_addr(&self, port: u16) -> std::net::SocketAddrV6 {
        std::net::SocketAddrV6::new(self.address, port, 0, self.ifindex)
    }
}

/// Everything that happens to the discovery state.
#[derive(Debug)]
pub enum Input<'a> {
    /// `now` reached [`DiscoveryState::next_deadline`].
    Tick,
    /// An ICMPv6 message received on the interface (the kernel verified its checksum).
    Packet {
        /// The IPv6 source address.
        source: Ipv6Addr,
        /// The IPv6 hop limit it arrived with; `None` when the kernel did not say (fails
        /// closed: such a packet is ignored).
        hop_limit: Option<u8>,
        /// The ICMPv6 message, type byte first.
        bytes: &'a [u8],
    },
}

/// What the driver must do or know, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to `destination` ([`ALL_NODES`] or [`ALL_ROUTERS`]) on the interface,
    /// with hop limit 255.
    Transmit { destination: Ipv6Addr, message: NdMessage },
    /// A peer was found, or the peer changed (another address took over, or its MAC changed).
    Discovered(Neighbor),
    /// The current peer advertised again; only `last_seen` and `router_lifetime` moved.
    Refreshed(Neighbor),
    /// The peer was not heard for its hold time and is forgotten.
    Expired(Neighbor),
    /// A received packet was not believed, and why (for logs and counters).
    Ignored { source: Ipv6Addr, reason: IgnoreReason },
}

/// Why a received packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Not 255: it was routed here, or forged off-link (RFC 4861 §6.1).
    HopLimit(Option<u8>),
    /// Router Discovery must come from a link-local address (RFC 4861 §6.1.2).
    NotLinkLocal,
    /// Not a valid RS or RA (including every other ICMPv6 type, which a raw ICMPv6 socket
    /// also receives).
    Malformed(NdDecodeError),
    /// Sent by us (our address or our MAC).
    Own,
    /// Another router advertising while the current peer is still heard.
    SecondRouter { current: Ipv6Addr },
}

/// The discovery state of one interface.
#[derive(Debug)]
pub struct DiscoveryState {
    timing: Timing,
    ifindex: u32,
    mac: Option<Mac>,
    own_addresses: Vec<Ipv6Addr>,
    /// The RS goes out with the first RA.
    solicit_pending: bool,
    ras_sent: u32,
    last_ra: Option<Instant>,
    next_ra: Instant,
    peer: Option<Neighbor>,
}

impl DiscoveryState {
    /// State for the interface with index `ifindex`, MAC `mac` (None on links without one) and
    /// addresses `own_addresses` (to recognise our own packets). The first RS and RA are due at
    /// `now`.
    pub fn new(now: Instant, timing: Timing, ifindex: u32, mac: Option<Mac>, own_addresses: Vec<Ipv6Addr>) -> Self {
        DiscoveryState {
            timing,
            ifindex,
            mac,
            own_addresses,
            solicit_pending: true,
            ras_sent: 0,
            last_ra: None,
            next_ra: now,
            peer: None,
        }
    }

    /// The peer currently believed, if any.
    pub fn peer(&self) -> Option<&Neighbor> {
        self.peer.as_ref()
    }

    /// When [`Input::Tick`] is next due: the next RA or the peer's expiry, whichever is first.
    pub fn next_deadline(&self) -> Instant {
        match &self.peer {
            Some(peer) => self.next_ra.min(self.expiry(peer)),
            None => self.next_ra,
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Packet { source, hop_limit, bytes } => self.receive(now, source, hop_limit, bytes, &mut out),
        }
        self.expire(now, &mut out);
        self.advertise(now, &mut out);
        out
    }

    fn expiry(&self, peer: &Neighbor) -> Instant {
        peer.last_seen + self.timing.hold(peer.router_lifetime)
    }

    fn receive(&mut self, now: Instant, source: Ipv6Addr, hop_limit: Option<u8>, bytes: &[u8], out: &mut Vec<Output>) {
        let message = match self.validate(source, hop_limit, bytes) {
            Ok(message) => message,
            Err(reason) => {
                out.push(Output::Ignored { source, reason });
                return;
            }
        };
        match message {
            NdMessage::RouterSolicitation(_) => self.bring_ra_forward(now),
            NdMessage::RouterAdvertisement(ra) => self.learn(now, source, &ra, out),
        }
    }

    fn validate(&self, source: Ipv6Addr, hop_limit: Option<u8>, bytes: &[u8]) -> Result<NdMessage, IgnoreReason> {
        if hop_limit != Some(255) {
            return Err(IgnoreReason::HopLimit(hop_limit));
        }
        if !source.is_unicast_link_local() {
            return Err(IgnoreReason::NotLinkLocal);
        }
        let message = NdMessage::decode(bytes).map_err(IgnoreReason::Malformed)?;
        let own_mac = self.mac.is_some() && message.source_link_layer() == self.mac;
        if own_mac || self.own_addresses.contains(&source) {
            return Err(IgnoreReason::Own);
        }
        Ok(message)
    }

    fn learn(&mut self, now: Instant, source: Ipv6Addr, ra: &RouterAdvertisement, out: &mut Vec<Output>) {
        let heard = Neighbor {
            address: source,
            ifindex: self.ifindex,
            mac: ra.source_link_layer,
            last_seen: now,
            router_lifetime: Duration::from_secs(ra.router_lifetime.into()),
        };
        match &mut self.peer {
            Some(peer) if peer.address == source => {
                // An RA without SLLA does not make us forget the MAC we know.
                let mac = heard.mac.or(peer.mac);
                let changed = mac != peer.mac;
                *peer = Neighbor { mac, ..heard };
                out.push(if changed { Output::Discovered(peer.clone()) } else { Output::Refreshed(peer.clone()) });
            }
            Some(peer) if now.saturating_duration_since(peer.last_seen) <= self.timing.interval * HOLD_MULTIPLIER => {
                out.push(Output::Ignored { source, reason: IgnoreReason::SecondRouter { current: peer.address } });
            }
            _ => {
                self.peer = Some(heard.clone());
                out.push(Output::Discovered(heard));
                // Let the new peer learn us now rather than at our next interval.
                self.bring_ra_forward(now);
            }
        }
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(peer) = self.peer.take_if(|peer| now >= peer.last_seen + self.timing.hold(peer.router_lifetime)) {
            out.push(Output::Expired(peer));
        }
    }

    /// Schedules an RA as soon as allowed: now, or `fast_interval` after the previous one.
    fn bring_ra_forward(&mut self, now: Instant) {
        let earliest = match self.last_ra {
            Some(last) => (last + self.timing.fast_interval).max(now),
            None => now,
        };
        self.next_ra = self.next_ra.min(earliest);
    }

    fn advertise(&mut self, now: Instant, out: &mut Vec<Output>) {
        if now < self.next_ra {
            return;
        }
        if std::mem::take(&mut self.solicit_pending) {
            let rs = RouterSolicitation { source_link_layer: self.mac };
            out.push(Output::Transmit { destination: ALL_ROUTERS, message: NdMessage::RouterSolicitation(rs) });
        }
        let ra = RouterAdvertisement::ours(self.mac);
        out.push(Output::Transmit { destination: ALL_NODES, message: NdMessage::RouterAdvertisement(ra) });
        self.ras_sent = self.ras_sent.saturating_add(1);
        self.last_ra = Some(now);
        let gap = if self.ras_sent < self.timing.fast_count { self.timing.fast_interval } else { self.timing.interval };
        self.next_ra = now + gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IFINDEX: u32 = 7;
    const OUR_MAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);
    const TOR_MAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x53, 0x02]);

    fn ours() -> Ipv6Addr {
        "fe80::1".parse().unwrap()
    }
    fn tor() -> Ipv6Addr {
        "fe80::2".parse().unwrap()
    }
    fn other_tor() -> Ipv6Addr {
        "fe80::3".parse().unwrap()
    }

    /// A fake clock: seconds since the test's start.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
    }

    fn setup(interval_secs: u64) -> (Clock, DiscoveryState) {
        let clock = Clock(Instant::now());
        let state = DiscoveryState::new(
            clock.at(0.0),
            Timing::new(Duration::from_secs(interval_secs)),
            IFINDEX,
            Some(OUR_MAC),
            vec![ours()],
        );
        (clock, state)
    }

    fn ra_bytes(lifetime: u16, mac: Option<Mac>) -> Vec<u8> {
        NdMessage::RouterAdvertisement(RouterAdvertisement {
            router_lifetime: lifetime,
            ..RouterAdvertisement::ours(mac)
        })
        .to_bytes()
    }

    fn rs_bytes() -> Vec<u8> {
        NdMessage::RouterSolicitation(RouterSolicitation::default()).to_bytes()
    }

    fn packet(source: Ipv6Addr, bytes: &[u8]) -> Input<'_> {
        Input::Packet { source, hop_limit: Some(255), bytes }
    }

    fn sent_ras(outputs: &[Output]) -> usize {
        outputs
            .iter()
            .filter(|o| matches!(o, Output::Transmit { destination, message: NdMessage::RouterAdvertisement(_) } if *destination == ALL_NODES))
            .count()
    }

    /// Ticks at every deadline up to `until` seconds and returns the times RAs went out.
    fn run_until(clock: &Clock, state: &mut DiscoveryState, until: f64) -> Vec<Duration> {
        let mut times = Vec::new();
        while state.next_deadline() <= clock.at(until) {
            let now = state.next_deadline();
            let outputs = state.handle(now, Input::Tick);
            for _ in 0..sent_ras(&outputs) {
                times.push(now - clock.0);
            }
        }
        times
    }

    #[test]
    fn first_tick_solicits_routers_and_advertises_lifetime_zero() {
        let (clock, mut state) = setup(10);
        assert_eq!(state.next_deadline(), clock.at(0.0));
        let outputs = state.handle(clock.at(0.0), Input::Tick);
        assert_eq!(
            outputs,
            vec![
                Output::Transmit {
                    destination: ALL_ROUTERS,
                    message: NdMessage::RouterSolicitation(RouterSolicitation { source_link_layer: Some(OUR_MAC) }),
                },
                Output::Transmit {
                    destination: ALL_NODES,
                    message: NdMessage::RouterAdvertisement(RouterAdvertisement::ours(Some(OUR_MAC))),
                },
            ]
        );
        let Output::Transmit { message: NdMessage::RouterAdvertisement(ra), .. } = &outputs[1] else { unreachable!() };
        assert_eq!(ra.router_lifetime, 0);
        // The RS is sent once only.
        let later = state.handle(clock.at(1.0), Input::Tick);
        assert_eq!(later.len(), 1);
        assert_eq!(sent_ras(&later), 1);
    }

    #[test]
    fn sends_first_three_ras_a_second_apart_then_every_interval() {
        let (clock, mut state) = setup(10);
        let times = run_until(&clock, &mut state, 35.0);
        let secs: Vec<u64> = times.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [0, 1, 2, 12, 22, 32]);
    }

    #[test]
    fn interval_shorter_than_a_second_is_used_from_the_start() {
        let clock = Clock(Instant::now());
        let mut state =
            DiscoveryState::new(clock.at(0.0), Timing::new(Duration::from_millis(500)), IFINDEX, None, vec![]);
        let times = run_until(&clock, &mut state, 2.0);
        let millis: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [0, 500, 1000, 1500, 2000]);
    }

    #[test]
    fn learns_peer_from_valid_ra_and_answers_at_once() {
        let (clock, mut state) = setup(10);
        run_until(&clock, &mut state, 5.0); // fast phase over, next RA at 12 s
        let bytes = ra_bytes(30, Some(TOR_MAC));
        let outputs = state.handle(clock.at(5.5), packet(tor(), &bytes));
        let expected = Neighbor {
            address: tor(),
            ifindex: IFINDEX,
            mac: Some(TOR_MAC),
            last_seen: clock.at(5.5),
            router_lifetime: Duration::from_secs(30),
        };
        assert_eq!(outputs[0], Output::Discovered(expected.clone()));
        assert_eq!(sent_ras(&outputs), 1, "a new peer gets our RA now: {outputs:?}");
        assert_eq!(state.peer(), Some(&expected));
        assert_eq!(expected.socket_addr(179).to_string(), "[fe80::2%7]:179");
    }

    #[test]
    fn refreshes_peer_without_rediscovering_it() {
        let (clock, mut state) = setup(10);
        state.handle(clock.at(0.0), Input::Tick);
        let bytes = ra_bytes(0, Some(TOR_MAC));
        state.handle(clock.at(0.1), packet(tor(), &bytes));
        let outputs = state.handle(clock.at(4.0), packet(tor(), &bytes));
        let Some(Output::Refreshed(peer)) = outputs.first() else { panic!("{outputs:?}") };
        assert_eq!(peer.last_seen, clock.at(4.0));
        // An RA without SLLA keeps the MAC we know.
        let bare = ra_bytes(0, None);
        let outputs = state.handle(clock.at(5.0), packet(tor(), &bare));
        assert!(matches!(&outputs[0], Output::Refreshed(p) if p.mac == Some(TOR_MAC)), "{outputs:?}");
        // A new MAC for the same address is a change.
        let moved = ra_bytes(0, Some(Mac([2, 0, 0, 0, 0, 9])));
        let outputs = state.handle(clock.at(6.0), packet(tor(), &moved));
        assert!(matches!(&outputs[0], Output::Discovered(p) if p.mac == Some(Mac([2, 0, 0, 0, 0, 9]))), "{outputs:?}");
    }

    #[test]
    fn expires_peer_after_three_intervals_when_lifetime_is_shorter() {
        let (clock, mut state) = setup(10);
        state.handle(clock.at(0.0), Input::Tick);
        let bytes = ra_bytes(0, Some(TOR_MAC));
        let outputs = state.handle(clock.at(1.0), packet(tor(), &bytes));
        assert_eq!(sent_ras(&outputs), 1, "the new peer is answered at once");
        run_until(&clock, &mut state, 30.9);
        assert!(state.peer().is_some());
        let outputs = state.handle(clock.at(31.0), Input::Tick);
        assert!(matches!(&outputs[0], Output::Expired(p) if p.address == tor()), "{outputs:?}");
        assert_eq!(state.peer(), None);
    }

    #[test]
    fn expires_peer_after_its_advertised_lifetime_when_longer() {
        let (clock, mut state) = setup(1);
        state.handle(clock.at(0.0), Input::Tick);
        let bytes = ra_bytes(12, Some(TOR_MAC));
        state.handle(clock.at(0.0), packet(tor(), &bytes));
        let mut expired_at = None;
        while expired_at.is_none() {
            let now = state.next_deadline();
            assert!(now <= clock.at(60.0), "never expired");
            if state.handle(now, Input::Tick).iter().any(|o| matches!(o, Output::Expired(_))) {
                expired_at = Some(now);
            }
        }
        assert_eq!(expired_at, Some(clock.at(12.0)));
    }

    #[test]
    fn answers_router_solicitation_with_an_ra_but_not_faster_than_fast_interval() {
        let (clock, mut state) = setup(30);
        run_until(&clock, &mut state, 3.0); // RAs at 0, 1, 2; next at 32
        let rs = rs_bytes();
        let outputs = state.handle(clock.at(10.0), packet(tor(), &rs));
        assert_eq!(sent_ras(&outputs), 1);
        assert_eq!(state.peer(), None, "a solicitation does not make a peer");
        // A second RS right after: the RA waits for the minimum gap.
        let outputs = state.handle(clock.at(10.2), packet(tor(), &rs));
        assert_eq!(sent_ras(&outputs), 0);
        assert_eq!(state.next_deadline(), clock.at(11.0));
        assert_eq!(sent_ras(&state.handle(clock.at(11.0), Input::Tick)), 1);
        // And the steady interval resumes from there.
        assert_eq!(state.next_deadline(), clock.at(41.0));
    }

    #[test]
    fn ignores_packets_with_hop_limit_other_than_255() {
        let (clock, mut state) = setup(10);
        let bytes = ra_bytes(30, Some(TOR_MAC));
        for hop_limit in [Some(254), Some(64), None] {
            let outputs = state.handle(clock.at(0.0), Input::Packet { source: tor(), hop_limit, bytes: &bytes });
            assert_eq!(outputs[0], Output::Ignored { source: tor(), reason: IgnoreReason::HopLimit(hop_limit) });
        }
        assert_eq!(state.peer(), None);
    }

    #[test]
    fn ignores_ras_from_non_link_local_sources() {
        let (clock, mut state) = setup(10);
        let bytes = ra_bytes(30, Some(TOR_MAC));
        for source in ["2001:db8::2", "fd00::2", "::", "ff02::1"] {
            let source: Ipv6Addr = source.parse().unwrap();
            let outputs = state.handle(clock.at(0.0), packet(source, &bytes));
            assert_eq!(outputs[0], Output::Ignored { source, reason: IgnoreReason::NotLinkLocal });
        }
        assert_eq!(state.peer(), None);
    }

    #[test]
    fn ignores_our_own_packets_by_address_or_mac() {
        let (clock, mut state) = setup(10);
        let by_address = ra_bytes(0, None);
        let outputs = state.handle(clock.at(0.0), packet(ours(), &by_address));
        assert_eq!(outputs[0], Output::Ignored { source: ours(), reason: IgnoreReason::Own });
        // Our MAC from another of our addresses (a second link-local, say).
        let by_mac = ra_bytes(0, Some(OUR_MAC));
        let outputs = state.handle(clock.at(0.0), packet("fe80::99".parse().unwrap(), &by_mac));
        assert!(matches!(&outputs[0], Output::Ignored { reason: IgnoreReason::Own, .. }), "{outputs:?}");
        assert_eq!(state.peer(), None);
    }

    #[test]
    fn ignores_malformed_and_foreign_icmpv6() {
        let (clock, mut state) = setup(10);
        let mut bytes = ra_bytes(30, Some(TOR_MAC));
        bytes[17] = 0; // SLLA of length 0
        let outputs = state.handle(clock.at(0.0), packet(tor(), &bytes));
        assert!(matches!(&outputs[0], Output::Ignored { reason: IgnoreReason::Malformed(_), .. }), "{outputs:?}");
        let ns = [135, 0, 0, 0, 0, 0, 0, 0];
        let outputs = state.handle(clock.at(0.0), packet(tor(), &ns));
        assert_eq!(
            outputs[0],
            Output::Ignored { source: tor(), reason: IgnoreReason::Malformed(NdDecodeError::UnexpectedType(135)) }
        );
        assert_eq!(state.peer(), None);
    }

    #[test]
    fn second_router_takes_over_only_once_the_first_falls_silent() {
        let (clock, mut state) = setup(10);
        state.handle(clock.at(0.0), Input::Tick);
        let first = ra_bytes(1800, Some(TOR_MAC));
        state.handle(clock.at(1.0), packet(tor(), &first));
        let second = ra_bytes(0, None);
        let outputs = state.handle(clock.at(20.0), packet(other_tor(), &second));
        assert!(
            outputs.contains(&Output::Ignored {
                source: other_tor(),
                reason: IgnoreReason::SecondRouter { current: tor() }
            }),
            "{outputs:?}"
        );
        assert_eq!(state.peer().map(|p| p.address), Some(tor()));
        // The first peer's lifetime (1800 s) keeps it from expiring, but after 30 s of silence
        // the newcomer wins.
        let outputs = state.handle(clock.at(31.5), packet(other_tor(), &second));
        assert!(matches!(&outputs[0], Output::Discovered(p) if p.address == other_tor()), "{outputs:?}");
    }

    #[test]
    fn deadline_is_the_earlier_of_next_ra_and_peer_expiry() {
        let (clock, mut state) = setup(100);
        run_until(&clock, &mut state, 2.0); // next RA at 102
        let bytes = ra_bytes(0, None);
        state.handle(clock.at(2.5), packet(tor(), &bytes));
        state.handle(clock.at(3.5), Input::Tick); // the answering RA, next at 103.5
        assert_eq!(state.next_deadline(), clock.at(103.5));
        state.handle(clock.at(3.5), packet(tor(), &bytes)); // expiry 3.5 + 300
        assert_eq!(state.next_deadline(), clock.at(103.5));
        let (clock, mut state) = setup(1);
        state.handle(clock.at(0.0), Input::Tick);
        state.handle(clock.at(0.0), packet(tor(), &bytes));
        state.handle(clock.at(1.0), Input::Tick);
        state.handle(clock.at(2.0), Input::Tick);
        state.handle(clock.at(2.5), packet(tor(), &bytes)); // expiry 5.5, next RA 3
        assert_eq!(state.next_deadline(), clock.at(3.0));
        assert_eq!(state.expiry(state.peer().unwrap()), clock.at(5.5));
    }
}
