//! The BFD Control packet (RFC 5880 4.1): decoding with a typed error for every reception
//! check of 6.8.6 that needs no session state, and encoding. Pure functions over bytes; it
//! knows nothing about sessions, sockets or time. Authentication is not supported, so a packet
//! with the A bit is refused and the type cannot express one.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |   microseconds
//! |                   Required Min RX Interval                    |   microseconds
//! |                 Required Min Echo RX Interval                 |   microseconds
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;
use std::time::Duration;

/// UDP destination port of single-hop BFD Control packets (RFC 5881 4).
pub const CONTROL_PORT: u16 = 3784;
/// The only version of the protocol.
pub const VERSION: u8 = 1;
/// Length of a Control packet without an authentication section: all we send, and the
/// smallest length accepted.
pub const CONTROL_LEN: usize = 24;

const POLL: u8 = 0x20;
const FINAL: u8 = 0x10;
const CONTROL_PLANE_INDEPENDENT: u8 = 0x08;
const AUTH: u8 = 0x04;
const DEMAND: u8 = 0x02;
const MULTIPOINT: u8 = 0x01;

/// Session state (RFC 5880 4.1, the `Sta` field), in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 0x03 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Diagnostic code (RFC 5880 4.1): why the sender's session last changed state. Five bits;
/// codes 9-31 are reserved and kept as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Diag(u8);

impl Diag {
    pub const NONE: Diag = Diag(0);
    pub const CONTROL_DETECTION_TIME_EXPIRED: Diag = Diag(1);
    pub const ECHO_FUNCTION_FAILED: Diag = Diag(2);
    pub const NEIGHBOR_SIGNALED_SESSION_DOWN: Diag = Diag(3);
    pub const FORWARDING_PLANE_RESET: Diag = Diag(4);
    pub const PATH_DOWN: Diag = Diag(5);
    pub const CONCATENATED_PATH_DOWN: Diag = Diag(6);
    pub const ADMINISTRATIVELY_DOWN: Diag = Diag(7);
    pub const REVERSE_CONCATENATED_PATH_DOWN: Diag = Diag(8);

    /// The code from its low five bits.
    pub const fn new(code: u8) -> Diag {
        Diag(code & 0x1f)
    }

    pub const fn code(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "no diagnostic",
            1 => "control detection time expired",
            2 => "echo function failed",
            3 => "neighbor signaled session down",
            4 => "forwarding plane reset",
            5 => "path down",
            6 => "concatenated path down",
            7 => "administratively down",
            8 => "reverse concatenated path down",
            n => return write!(f, "reserved diagnostic {n}"),
        })
    }
}

impl serde::Serialize for Diag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One BFD Control packet without authentication. Intervals are in microseconds, as on the
/// wire; [`ControlPacket::desired_min_tx`] and friends convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    /// P: the sender asks for verification of a parameter change (Poll Sequence).
    pub poll: bool,
    /// F: the answer to a Poll.
    pub final_: bool,
    /// C: the sender's BFD does not share fate with its control plane.
    pub control_plane_independent: bool,
    /// D: the sender wishes to run Demand mode.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
}

impl ControlPacket {
    pub fn desired_min_tx(&self) -> Duration {
        Duration::from_micros(u64::from(self.desired_min_tx_us))
    }

    pub fn required_min_rx(&self) -> Duration {
        Duration::from_micros(u64::from(self.required_min_rx_us))
    }

    /// The wire form: always 24 bytes, version 1, A and M bits clear.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = (VERSION << 5) | self.diag.code();
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        b[1] = ((self.state as u8) << 6)
            | flag(self.poll, POLL)
            | flag(self.final_, FINAL)
            | flag(self.control_plane_independent, CONTROL_PLANE_INDEPENDENT)
            | flag(self.demand, DEMAND);
        b[2] = self.detect_mult;
        b[3] = CONTROL_LEN as u8;
        b[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx_us.to_be_bytes());
        b
    }

    /// Decodes one UDP payload and applies the reception checks of RFC 5880 6.8.6 that need
    /// no session: anything refused here must be discarded. Bytes after `Length` are ignored.
    pub fn decode(buf: &[u8]) -> Result<ControlPacket, DecodeError> {
        if buf.len() < CONTROL_LEN {
            return Err(DecodeError::Truncated { available: buf.len() });
        }
        let version = buf[0] >> 5;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let flags = buf[1];
        let length = buf[3];
        // The A bit is checked before the length: with it the minimum would be 26, and we
        // refuse authenticated packets whatever their length.
        if flags & AUTH != 0 {
            return Err(DecodeError::Authenticated);
        }
        if usize::from(length) < CONTROL_LEN {
            return Err(DecodeError::LengthTooSmall(length));
        }
        if usize::from(length) > buf.len() {
            return Err(DecodeError::LengthBeyondPayload { length, available: buf.len() });
        }
        let detect_mult = buf[2];
        if detect_mult == 0 {
            return Err(DecodeError::DetectMultZero);
        }
        if flags & MULTIPOINT != 0 {
            return Err(DecodeError::Multipoint);
        }
        let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let my_discr = word(4);
        if my_discr == 0 {
            return Err(DecodeError::MyDiscriminatorZero);
        }
        let your_discr = word(8);
        let state = State::from_bits(flags >> 6);
        if your_discr == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DecodeError::YourDiscriminatorZero(state));
        }
        Ok(ControlPacket {
            diag: Diag::new(buf[0]),
            state,
            poll: flags & POLL != 0,
            final_: flags & FINAL != 0,
            control_plane_independent: flags & CONTROL_PLANE_INDEPENDENT != 0,
            demand: flags & DEMAND != 0,
            detect_mult,
            my_discr,
            your_discr,
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
        })
    }
}

/// Why a received payload is not a Control packet we accept (RFC 5880 6.8.6: discard it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{available} bytes, shorter than a BFD Control packet (24)")]
    Truncated { available: usize },
    #[error("BFD version {0}, only version 1 exists")]
    Version(u8),
    #[error("Length field {0} is below the minimum of 24")]
    LengthTooSmall(u8),
    #[error("Length field {length} exceeds the {available} bytes received")]
    LengthBeyondPayload { length: u8, available: usize },
    #[error("Detect Mult is 0")]
    DetectMultZero,
    #[error("Multipoint (M) bit set")]
    Multipoint,
    #[error("My Discriminator is 0")]
    MyDiscriminatorZero,
    #[error("Your Discriminator is 0 in state {0}: only Down and AdminDown may not know the peer yet")]
    YourDiscriminatorZero(State),
    #[error("Authentication (A) bit set, and authentication is not configured")]
    Authenticated,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up, P set, mult 3, 0x01020304 -> 0x0a0b0c0d, 100 ms / 100 ms, no echo.
    const GOLDEN_UP_POLL: [u8; 24] = [
        0x20, 0xe0, 0x03, 0x18, // version 1 diag 0 | Up, P | mult 3 | length 24
        0x01, 0x02, 0x03, 0x04, // my discriminator
        0x0a, 0x0b, 0x0c, 0x0d, // your discriminator
        0x00, 0x01, 0x86, 0xa0, // desired min tx 100000 us
        0x00, 0x01, 0x86, 0xa0, // required min rx 100000 us
        0x00, 0x00, 0x00, 0x00, // required min echo rx 0
    ];

    fn up_poll() -> ControlPacket {
        ControlPacket {
            diag: Diag::NONE,
            state: State::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discr: 0x0102_0304,
            your_discr: 0x0a0b_0c0d,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            required_min_echo_rx_us: 0,
        }
    }

    fn with(mut bytes: [u8; 24], at: usize, value: u8) -> [u8; 24] {
        bytes[at] = value;
        bytes
    }

    #[test]
    fn encodes_golden_bytes_and_decodes_them_back() {
        assert_eq!(up_poll().encode(), GOLDEN_UP_POLL);
        assert_eq!(ControlPacket::decode(&GOLDEN_UP_POLL), Ok(up_poll()));
        assert_eq!(up_poll().desired_min_tx(), Duration::from_millis(100));
    }

    #[test]
    fn encodes_down_with_diag_and_final_and_unknown_peer() {
        let p = ControlPacket {
            diag: Diag::CONTROL_DETECTION_TIME_EXPIRED,
            state: State::Down,
            poll: false,
            final_: true,
            your_discr: 0,
            desired_min_tx_us: 1_000_000,
            ..up_poll()
        };
        let bytes = p.encode();
        assert_eq!(&bytes[..4], &[0x21, 0x50, 0x03, 0x18]);
        assert_eq!(&bytes[8..16], &[0, 0, 0, 0, 0x00, 0x0f, 0x42, 0x40]);
        assert_eq!(ControlPacket::decode(&bytes), Ok(p));
    }

    #[test]
    fn every_flag_and_state_round_trips() {
        for state in [State::AdminDown, State::Down, State::Init, State::Up] {
            for bits in 0..16u8 {
                let p = ControlPacket {
                    state,
                    diag: Diag::new(bits + 3),
                    poll: bits & 1 != 0,
                    final_: bits & 2 != 0,
                    control_plane_independent: bits & 4 != 0,
                    demand: bits & 8 != 0,
                    your_discr: u32::from(bits) + 1,
                    required_min_echo_rx_us: 50_000,
                    ..up_poll()
                };
                assert_eq!(ControlPacket::decode(&p.encode()), Ok(p), "{p:?}");
            }
        }
    }

    #[test]
    fn ignores_bytes_after_the_length_field() {
        let mut long = GOLDEN_UP_POLL.to_vec();
        long.extend_from_slice(&[0xde, 0xad]);
        assert_eq!(ControlPacket::decode(&long), Ok(up_poll()));
        // A Length of 26 with 26 bytes present is accepted too (the extra bytes are ignored).
        long[3] = 26;
        assert_eq!(ControlPacket::decode(&long), Ok(up_poll()));
    }

    #[test]
    fn refuses_every_malformed_input_with_its_reason() {
        let g = GOLDEN_UP_POLL;
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![], DecodeError::Truncated { available: 0 }),
            (g[..23].to_vec(), DecodeError::Truncated { available: 23 }),
            (with(g, 0, 0x40).to_vec(), DecodeError::Version(2)),
            (with(g, 0, 0x00).to_vec(), DecodeError::Version(0)),
            (with(g, 3, 23).to_vec(), DecodeError::LengthTooSmall(23)),
            (with(g, 3, 0).to_vec(), DecodeError::LengthTooSmall(0)),
            (with(g, 3, 25).to_vec(), DecodeError::LengthBeyondPayload { length: 25, available: 24 }),
            (with(g, 2, 0).to_vec(), DecodeError::DetectMultZero),
            (with(g, 1, 0xe1).to_vec(), DecodeError::Multipoint),
            (with(g, 1, 0xe4).to_vec(), DecodeError::Authenticated),
            // An authenticated packet is refused for the A bit even at its proper length.
            (with(with(g, 1, 0xc4), 3, 26).to_vec(), DecodeError::Authenticated),
        ];
        for (bytes, want) in cases {
            assert_eq!(ControlPacket::decode(&bytes), Err(want), "{bytes:02x?}");
        }
        let mut no_my = g;
        no_my[4..8].fill(0);
        assert_eq!(ControlPacket::decode(&no_my), Err(DecodeError::MyDiscriminatorZero));
    }

    #[test]
    fn your_discriminator_zero_is_only_valid_while_down() {
        let mut g = GOLDEN_UP_POLL;
        g[8..12].fill(0);
        assert_eq!(ControlPacket::decode(&g), Err(DecodeError::YourDiscriminatorZero(State::Up)));
        assert_eq!(ControlPacket::decode(&with(g, 1, 0x80)), Err(DecodeError::YourDiscriminatorZero(State::Init)));
        for flags in [0x40, 0x00] {
            let p = ControlPacket::decode(&with(g, 1, flags)).expect("Down/AdminDown without your discriminator");
            assert_eq!(p.your_discr, 0);
        }
    }

    #[test]
    fn names_diagnostics_and_keeps_reserved_codes() {
        assert_eq!(Diag::ADMINISTRATIVELY_DOWN.to_string(), "administratively down");
        assert_eq!(Diag::new(0x3f).code(), 31);
        assert_eq!(Diag::new(31).to_string(), "reserved diagnostic 31");
        let reserved = with(GOLDEN_UP_POLL, 0, 0x20 | 17);
        assert_eq!(ControlPacket::decode(&reserved).map(|p| p.diag), Ok(Diag::new(17)));
    }
}
