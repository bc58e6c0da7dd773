//! Sans-IO codec for the two ICMPv6 Router Discovery messages (RFC 4861 §4.1, §4.2): Router
//! Solicitation (133) and Router Advertisement (134), with the Source Link-Layer Address (1) and
//! MTU (5) options. It works on the ICMPv6 message as a raw ICMPv6 socket hands it over (no IPv6
//! header) and never touches the checksum: the kernel verifies it on receipt and fills it in on
//! send, so encoded messages carry 0 there and decoding ignores it.
//!
//! Decoding applies the RFC 4861 §6.1 checks that need only the message bytes (code 0, minimum
//! length, every option length > 0 and inside the message); the checks that need the IPv6
//! header (hop limit 255, link-local source) belong to the caller, which has it.

use std::fmt;

use thiserror::Error;

/// ICMPv6 type of a Router Solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a Router Advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// ND option types this codec understands; every other option is skipped (RFC 4861 §4.6).
pub mod option_type {
    pub const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;
    pub const MTU: u8 = 5;
}

/// RA flag bits (RFC 4861 §4.2): managed address configuration, other configuration.
pub const FLAG_MANAGED: u8 = 0x80;
pub const FLAG_OTHER: u8 = 0x40;

/// ICMPv6 type, code, checksum and the 4 reserved bytes.
const RS_HEADER_LEN: usize = 8;
/// ICMPv6 type, code, checksum, then hop limit, flags, router lifetime, reachable time and
/// retransmission timer.
const RA_HEADER_LEN: usize = 16;
/// Options are counted in units of 8 bytes, type and length included.
const OPTION_UNIT: usize = 8;

/// The cur hop limit we advertise: the Linux default, and FRR's default `AdvCurHopLimit`, which
/// zebra compares with received RAs (a mismatch is logged as a warning there).
pub const OUR_CUR_HOP_LIMIT: u8 = 64;

/// A 48-bit link-layer (Ethernet) address, as carried in a Source Link-Layer Address option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A decoded Router Discovery message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NdMessage {
    RouterSolicitation(RouterSolicitation),
    RouterAdvertisement(RouterAdvertisement),
}

/// RFC 4861 §4.1. Only the Source Link-Layer Address option is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterSolicitation {
    pub source_link_layer: Option<Mac>,
}

/// RFC 4861 §4.2. Options other than Source Link-Layer Address and MTU (prefixes, routes,
/// RDNSS, advertisement interval…) are skipped: discovery needs none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterAdvertisement {
    /// 0 means "unspecified by this router".
    pub cur_hop_limit: u8,
    /// The whole flags byte as received ([`FLAG_MANAGED`], [`FLAG_OTHER`], router preference and
    /// reserved bits), so a decoded RA re-encodes unchanged.
    pub flags: u8,
    /// Seconds this router wants to be a default router for; 0 means "not a default router".
    pub router_lifetime: u16,
    /// Milliseconds; 0 means unspecified.
    pub reachable_time: u32,
    /// Milliseconds; 0 means unspecified.
    pub retrans_timer: u32,
    /// Only a 48-bit address is kept; other lengths (InfiniBand…) are skipped like unknown
    /// options. The first such option wins.
    pub source_link_layer: Option<Mac>,
    /// The first MTU option's value.
    pub mtu: Option<u32>,
}

impl RouterAdvertisement {
    /// The RA Ferrule sends: hop limit 64, no flags, **router lifetime 0** (we must never become
    /// a default router for the ToR or anything else on the link), reachable time and
    /// retransmission timer unspecified, no prefixes, and our MAC when the link has one.
    pub fn ours(mac: Option<Mac>) -> RouterAdvertisement {
        RouterAdvertisement {
            cur_hop_limit: OUR_CUR_HOP_LIMIT,
            flags: 0,
            router_lifetime: 0,
            reachable_time: 0,
            retrans_timer: 0,
            source_link_layer: mac,
            mtu: None,
        }
    }
}

/// Why a message was refused. Every variant is a malformed or foreign message: RFC 4861 says to
/// discard it silently, so callers log and drop.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NdDecodeError {
    #[error("empty ICMPv6 message")]
    Empty,
    #[error("ICMPv6 type {0} is neither a Router Solicitation (133) nor a Router Advertisement (134)")]
    UnexpectedType(u8),
    #[error("{message} with code {code}: RFC 4861 requires code 0")]
    NonZeroCode { message: &'static str, code: u8 },
    #[error("{message} of {len} bytes is shorter than its {needed}-byte fixed part")]
    Truncated { message: &'static str, len: usize, needed: usize },
    #[error("option header at byte {offset} is cut off: {remaining} byte(s) left")]
    TruncatedOption { offset: usize, remaining: usize },
    #[error("option type {option_type} at byte {offset} has length 0 (RFC 4861 §4.6: discard the packet)")]
    ZeroLengthOption { offset: usize, option_type: u8 },
    #[error("option type {option_type} at byte {offset} claims {claimed} bytes but only {remaining} remain")]
    OptionOverrun { offset: usize, option_type: u8, claimed: usize, remaining: usize },
    #[error("MTU option at byte {offset} has length {units} (x8 bytes); it must be 1")]
    BadMtuLength { offset: usize, units: u8 },
}

impl NdMessage {
    /// Decodes one ICMPv6 message (type byte first). The checksum is not verified (the kernel
    /// has). Messages of any other ICMPv6 type give [`NdDecodeError::UnexpectedType`].
    pub fn decode(bytes: &[u8]) -> Result<NdMessage, NdDecodeError> {
        let (&icmp_type, _) = bytes.split_first().ok_or(NdDecodeError::Empty)?;
        let (message, needed) = match icmp_type {
            ROUTER_SOLICITATION => ("Router Solicitation", RS_HEADER_LEN),
            ROUTER_ADVERTISEMENT => ("Router Advertisement", RA_HEADER_LEN),
            other => return Err(NdDecodeError::UnexpectedType(other)),
        };
        if bytes.len() < needed {
            return Err(NdDecodeError::Truncated { message, len: bytes.len(), needed });
        }
        if bytes[1] != 0 {
            return Err(NdDecodeError::NonZeroCode { message, code: bytes[1] });
        }
        let options = parse_options(bytes, needed)?;
        Ok(match icmp_type {
            ROUTER_SOLICITATION => {
                NdMessage::RouterSolicitation(RouterSolicitation { source_link_layer: options.source_link_layer })
            }
            _ => NdMessage::RouterAdvertisement(RouterAdvertisement {
                cur_hop_limit: bytes[4],
                flags: bytes[5],
                router_lifetime: u16::from_be_bytes([bytes[6], bytes[7]]),
                reachable_time: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
                retrans_timer: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
                source_link_layer: options.source_link_layer,
                mtu: options.mtu,
            }),
        })
    }

    /// Appends the encoded message to `out`, checksum 0 (the kernel fills it in).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NdMessage::RouterSolicitation(rs) => {
                out.extend_from_slice(&[ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]);
                encode_slla(rs.source_link_layer, out);
            }
            NdMessage::RouterAdvertisement(ra) => {
                out.extend_from_slice(&[ROUTER_ADVERTISEMENT, 0, 0, 0, ra.cur_hop_limit, ra.flags]);
                out.extend_from_slice(&ra.router_lifetime.to_be_bytes());
                out.extend_from_slice(&ra.reachable_time.to_be_bytes());
                out.extend_from_slice(&ra.retrans_timer.to_be_bytes());
                encode_slla(ra.source_link_layer, out);
                if let Some(mtu) = ra.mtu {
                    out.extend_from_slice(&[option_type::MTU, 1, 0, 0]);
                    out.extend_from_slice(&mtu.to_be_bytes());
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RA_HEADER_LEN + 2 * OPTION_UNIT);
        self.encode(&mut out);
        out
    }

    /// The Source Link-Layer Address option, whichever the message.
    pub fn source_link_layer(&self) -> Option<Mac> {
        match self {
            NdMessage::RouterSolicitation(rs) => rs.source_link_layer,
            NdMessage::RouterAdvertisement(ra) => ra.source_link_layer,
        }
    }
}

fn encode_slla(mac: Option<Mac>, out: &mut Vec<u8>) {
    if let Some(Mac(mac)) = mac {
        out.extend_from_slice(&[option_type::SOURCE_LINK_LAYER_ADDRESS, 1]);
        out.extend_from_slice(&mac);
    }
}

#[derive(Default)]
struct Options {
    source_link_layer: Option<Mac>,
    mtu: Option<u32>,
}

/// Walks the options after the fixed part. Every option is length-checked before it is read,
/// so a bad length anywhere refuses the whole message, as RFC 4861 §6.1 asks.
fn parse_options(bytes: &[u8], start: usize) -> Result<Options, NdDecodeError> {
    let mut options = Options::default();
    let mut offset = start;
    while offset < bytes.len() {
        let remaining = bytes.len() - offset;
        if remaining < 2 {
            return Err(NdDecodeError::TruncatedOption { offset, remaining });
        }
        let option_type = bytes[offset];
        let units = bytes[offset + 1];
        if units == 0 {
            return Err(NdDecodeError::ZeroLengthOption { offset, option_type });
        }
        let claimed = usize::from(units) * OPTION_UNIT;
        if claimed > remaining {
            return Err(NdDecodeError::OptionOverrun { offset, option_type, claimed, remaining });
        }
        let body = &bytes[offset + 2..offset + claimed];
        match option_type {
            // Length 1 is exactly a 6-byte address; longer link-layer addresses are not Ethernet.
            option_type::SOURCE_LINK_LAYER_ADDRESS if units == 1 && options.source_link_layer.is_none() => {
                let mut mac = [0; 6];
                mac.copy_from_slice(body);
                options.source_link_layer = Some(Mac(mac));
            }
            option_type::MTU => {
                if units != 1 {
                    return Err(NdDecodeError::BadMtuLength { offset, units });
                }
                if options.mtu.is_none() {
                    options.mtu = Some(u32::from_be_bytes([body[2], body[3], body[4], body[5]]));
                }
            }
            _ => {}
        }
        offset += claimed;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7042 documentation MAC.
    const MAC: Mac = Mac([0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);

    #[test]
    fn encodes_our_ra_with_lifetime_zero_and_mac() {
        let bytes = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(Some(MAC))).to_bytes();
        #[rustfmt::skip]
        let golden = [
            134, 0, 0, 0,           // type RA, code 0, checksum left to the kernel
            64, 0, 0, 0,            // cur hop limit 64, no flags, router lifetime 0
            0, 0, 0, 0,             // reachable time: unspecified
            0, 0, 0, 0,             // retrans timer: unspecified
            1, 1, 0x00, 0x00, 0x5e, 0x00, 0x53, 0x01, // SLLA, 1 unit, MAC
        ];
        assert_eq!(bytes, golden);
    }

    #[test]
    fn encodes_ra_without_mac_as_bare_header() {
        let bytes = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(None)).to_bytes();
        assert_eq!(bytes, [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn encodes_rs_with_and_without_mac() {
        let rs = NdMessage::RouterSolicitation(RouterSolicitation { source_link_layer: Some(MAC) });
        assert_eq!(rs.to_bytes(), [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);
        let bare = NdMessage::RouterSolicitation(RouterSolicitation::default());
        assert_eq!(bare.to_bytes(), [133, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// An RA as a router sends it (the shape FRR's zebra uses): lifetime, a prefix option and an
    /// advertisement-interval option we skip, SLLA and MTU; the checksum is whatever it is.
    #[test]
    fn decodes_router_ra_skipping_unknown_options() {
        #[rustfmt::skip]
        let bytes = [
            134, 0, 0xab, 0xcd,
            64, 0x40, 0x00, 0x03,   // hop limit 64, O flag, lifetime 3 s
            0, 0, 0x75, 0x30,       // reachable 30000 ms
            0, 0, 0x03, 0xe8,       // retrans 1000 ms
            7, 1, 0, 0, 0, 0, 0x03, 0xe8, // advertisement interval (RFC 6275): skipped
            3, 4, 64, 0xc0, 0, 0, 0, 0xff, 0, 0, 0, 0xff, 0, 0, 0, 0, // prefix info: skipped
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            1, 1, 0x00, 0x00, 0x5e, 0x00, 0x53, 0x01,
            5, 1, 0, 0, 0, 0, 0x05, 0xdc, // MTU 1500
        ];
        let msg = NdMessage::decode(&bytes).unwrap();
        let expected = RouterAdvertisement {
            cur_hop_limit: 64,
            flags: FLAG_OTHER,
            router_lifetime: 3,
            reachable_time: 30_000,
            retrans_timer: 1_000,
            source_link_layer: Some(MAC),
            mtu: Some(1500),
        };
        assert_eq!(msg, NdMessage::RouterAdvertisement(expected));
        assert_eq!(msg.source_link_layer(), Some(MAC));
    }

    /// Captured from BIRD 2.0.12 (`protocol radv`, `max ra interval 4`): no options at all.
    #[test]
    fn decodes_bird_ra_captured_on_a_veth() {
        let bytes = [0x86, 0x00, 0x4c, 0x6d, 0x40, 0x00, 0x00, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0];
        let expected = RouterAdvertisement { router_lifetime: 12, ..RouterAdvertisement::ours(None) };
        assert_eq!(NdMessage::decode(&bytes), Ok(NdMessage::RouterAdvertisement(expected)));
    }

    #[test]
    fn round_trips_every_field() {
        let messages = [
            NdMessage::RouterAdvertisement(RouterAdvertisement {
                cur_hop_limit: 255,
                flags: FLAG_MANAGED | FLAG_OTHER | 0x08,
                router_lifetime: 9000,
                reachable_time: u32::MAX,
                retrans_timer: 1,
                source_link_layer: Some(MAC),
                mtu: Some(9000),
            }),
            NdMessage::RouterAdvertisement(RouterAdvertisement { mtu: Some(1280), ..RouterAdvertisement::ours(None) }),
            NdMessage::RouterAdvertisement(RouterAdvertisement::ours(Some(MAC))),
            NdMessage::RouterSolicitation(RouterSolicitation { source_link_layer: Some(MAC) }),
            NdMessage::RouterSolicitation(RouterSolicitation::default()),
        ];
        for msg in messages {
            assert_eq!(NdMessage::decode(&msg.to_bytes()), Ok(msg.clone()), "{msg:?}");
        }
    }

    #[test]
    fn keeps_first_slla_and_skips_non_ethernet_ones() {
        let mut bytes = vec![133, 0, 0, 0, 0, 0, 0, 0];
        // A 20-byte InfiniBand address: 3 units of 8 bytes with the type and length.
        bytes.extend_from_slice(&[1, 3]);
        bytes.extend_from_slice(&[0xaa; 22]);
        bytes.extend_from_slice(&[1, 1, 0x00, 0x00, 0x5e, 0x00, 0x53, 0x01]);
        bytes.extend_from_slice(&[1, 1, 0x00, 0x00, 0x5e, 0x00, 0x53, 0x02]);
        let msg = NdMessage::decode(&bytes).unwrap();
        assert_eq!(msg, NdMessage::RouterSolicitation(RouterSolicitation { source_link_layer: Some(MAC) }));
    }

    #[test]
    fn refuses_option_of_length_zero() {
        let mut bytes = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(Some(MAC))).to_bytes();
        bytes[17] = 0;
        assert_eq!(NdMessage::decode(&bytes), Err(NdDecodeError::ZeroLengthOption { offset: 16, option_type: 1 }));
        // An unknown option of length 0 is just as fatal: it would loop forever otherwise.
        let rs = [133, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(NdMessage::decode(&rs), Err(NdDecodeError::ZeroLengthOption { offset: 8, option_type: 99 }));
    }

    #[test]
    fn refuses_truncated_messages_and_options() {
        assert_eq!(NdMessage::decode(&[]), Err(NdDecodeError::Empty));
        assert_eq!(
            NdMessage::decode(&[134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(NdDecodeError::Truncated { message: "Router Advertisement", len: 15, needed: 16 })
        );
        assert_eq!(
            NdMessage::decode(&[133, 0, 0, 0, 0, 0, 0]),
            Err(NdDecodeError::Truncated { message: "Router Solicitation", len: 7, needed: 8 })
        );
        let full = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(Some(MAC))).to_bytes();
        assert_eq!(
            NdMessage::decode(&full[..full.len() - 1]),
            Err(NdDecodeError::OptionOverrun { offset: 16, option_type: 1, claimed: 8, remaining: 7 })
        );
        assert_eq!(NdMessage::decode(&full[..17]), Err(NdDecodeError::TruncatedOption { offset: 16, remaining: 1 }));
    }

    #[test]
    fn refuses_non_zero_code_and_other_icmp_types() {
        let mut bytes = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(None)).to_bytes();
        bytes[1] = 1;
        assert_eq!(
            NdMessage::decode(&bytes),
            Err(NdDecodeError::NonZeroCode { message: "Router Advertisement", code: 1 })
        );
        let mut rs = NdMessage::RouterSolicitation(RouterSolicitation::default()).to_bytes();
        rs[1] = 7;
        assert_eq!(NdMessage::decode(&rs), Err(NdDecodeError::NonZeroCode { message: "Router Solicitation", code: 7 }));
        // A Neighbor Solicitation (135): raw ICMPv6 sockets see those too.
        assert_eq!(NdMessage::decode(&[135, 0, 0, 0, 0, 0, 0, 0]), Err(NdDecodeError::UnexpectedType(135)));
    }

    #[test]
    fn refuses_mtu_option_of_wrong_length() {
        let mut bytes = NdMessage::RouterAdvertisement(RouterAdvertisement::ours(None)).to_bytes();
        bytes.extend_from_slice(&[5, 2, 0, 0, 0, 0, 5, 0xdc, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(NdMessage::decode(&bytes), Err(NdDecodeError::BadMtuLength { offset: 16, units: 2 }));
    }

    #[test]
    fn error_messages_say_what_was_wrong_and_where() {
        let err = NdDecodeError::ZeroLengthOption { offset: 16, option_type: 1 };
        assert_eq!(err.to_string(), "option type 1 at byte 16 has length 0 (RFC 4861 §4.6: discard the packet)");
        assert_eq!(MAC.to_string(), "00:00:5e:00:53:01");
    }
}
