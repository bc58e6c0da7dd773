//! OPEN messages and the capabilities they carry (RFC 4271 4.2, RFC 5492). Owns their syntax and
//! the checks RFC 4271 6.2 makes on an OPEN alone; negotiation (which capabilities both sides
//! have, the peer AS being the configured one) is the FSM's job.

use std::net::Ipv4Addr;

use super::notification::{Notification, NotificationError};
use super::types::{Afi, Safi};

/// AS_TRANS (RFC 6793): the 2-octet stand-in for a 4-octet AS number.
pub const AS_TRANS: u16 = 23456;

/// The only BGP version this speaker talks.
pub const BGP_VERSION: u8 = 4;

/// An OPEN message. Capabilities are kept in the order received; all Capabilities optional
/// parameters of the message are flattened into one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet "My Autonomous System" field (AS_TRANS when the real AS needs 4 octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's AS: the 4-octet AS capability when present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAsn(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }
}

/// One capability (RFC 5492). Unknown codes are kept raw so they can be logged and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760 (code 1).
    Multiprotocol {
        afi: Afi,
        safi: Safi,
    },
    /// RFC 2918 (code 2).
    RouteRefresh,
    /// RFC 8950 (code 5).
    ExtendedNextHop(Vec<ExtendedNextHop>),
    /// RFC 8654 (code 6).
    ExtendedMessage,
    /// RFC 4724 (code 64), with the N bit of RFC 8538.
    GracefulRestart(GracefulRestart),
    /// RFC 6793 (code 65).
    FourOctetAsn(u32),
    /// RFC 7313 (code 70).
    EnhancedRouteRefresh,
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

/// One tuple of the Extended Next Hop capability: NLRI of `nlri_afi`/`nlri_safi` may be sent
/// with a next hop of `next_hop_afi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedNextHop {
    pub nlri_afi: Afi,
    /// 16 bits on the wire in this capability, unlike everywhere else.
    pub nlri_safi: u16,
    pub next_hop_afi: Afi,
}

/// The Graceful Restart capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restart_state: bool,
    /// N bit (RFC 8538): the sender supports graceful restart for NOTIFICATIONs.
    pub notification: bool,
    /// Seconds, 12 bits on the wire.
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartFamily {
    pub afi: Afi,
    pub safi: Safi,
    /// F bit: forwarding state was preserved across the restart.
    pub forwarding_preserved: bool,
}

mod code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    pub const EXTENDED_MESSAGE: u8 = 6;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_ASN: u8 = 65;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// Optional parameter type carrying capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;

fn open_error(data: &[u8]) -> Notification {
    Notification::new(NotificationError::OpenUnspecific, data.to_vec())
}

/// Decodes an OPEN body (after the 19-octet header) and applies RFC 4271 6.2's checks that
/// need no configuration: version, hold time, BGP identifier, optional parameter types.
pub(crate) fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    if body.len() < 10 {
        return Err(open_error(&[]));
    }
    let version = body[0];
    if version != BGP_VERSION {
        return Err(Notification::new(
            NotificationError::UnsupportedVersionNumber,
            u16::from(BGP_VERSION).to_be_bytes().to_vec(),
        ));
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    let bgp_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    let opt_len = usize::from(body[9]);
    let params = &body[10..];
    if params.len() != opt_len {
        // The optional parameters do not fill the message exactly: there is no dedicated
        // subcode, RFC 4271 leaves it to the unspecific OPEN error.
        return Err(open_error(&[]));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(Notification::new(NotificationError::UnacceptableHoldTime, vec![]));
    }
    if bgp_id.is_unspecified() {
        return Err(Notification::new(NotificationError::BadBgpIdentifier, vec![]));
    }
    let mut capabilities = Vec::new();
    let mut rest = params;
    while !rest.is_empty() {
        let [ptype, plen, tail @ ..] = rest else {
            return Err(open_error(rest));
        };
        let Some((value, tail)) = tail.split_at_checked(usize::from(*plen)) else {
            return Err(open_error(rest));
        };
        if *ptype != PARAM_CAPABILITIES {
            return Err(Notification::new(NotificationError::UnsupportedOptionalParameter, vec![]));
        }
        decode_capabilities(value, &mut capabilities)?;
        rest = tail;
    }
    Ok(Open { my_as, hold_time, bgp_id, capabilities })
}

fn decode_capabilities(mut b: &[u8], out: &mut Vec<Capability>) -> Result<(), Notification> {
    while !b.is_empty() {
        let [c, len, tail @ ..] = b else {
            return Err(open_error(b));
        };
        let Some((v, tail)) = tail.split_at_checked(usize::from(*len)) else {
            return Err(open_error(b));
        };
        let whole = &b[..2 + v.len()];
        let cap = decode_capability(*c, v).ok_or_else(|| open_error(whole))?;
        out.push(cap);
        b = tail;
    }
    Ok(())
}

/// `None` when a known capability has a value of the wrong shape.
fn decode_capability(c: u8, v: &[u8]) -> Option<Capability> {
    Some(match c {
        code::MULTIPROTOCOL => {
            let [a0, a1, _reserved, safi] = *v else { return None };
            Capability::Multiprotocol { afi: Afi(u16::from_be_bytes([a0, a1])), safi: Safi(safi) }
        }
        code::ROUTE_REFRESH if v.is_empty() => Capability::RouteRefresh,
        code::EXTENDED_MESSAGE if v.is_empty() => Capability::ExtendedMessage,
        code::ENHANCED_ROUTE_REFRESH if v.is_empty() => Capability::EnhancedRouteRefresh,
        code::ROUTE_REFRESH | code::EXTENDED_MESSAGE | code::ENHANCED_ROUTE_REFRESH => return None,
        code::EXTENDED_NEXT_HOP => {
            if v.len() % 6 != 0 {
                return None;
            }
            Capability::ExtendedNextHop(
                v.chunks_exact(6)
                    .map(|t| ExtendedNextHop {
                        nlri_afi: Afi(u16::from_be_bytes([t[0], t[1]])),
                        nlri_safi: u16::from_be_bytes([t[2], t[3]]),
                        next_hop_afi: Afi(u16::from_be_bytes([t[4], t[5]])),
                    })
                    .collect(),
            )
        }
        code::GRACEFUL_RESTART => {
            let (head, tuples) = v.split_at_checked(2)?;
            if tuples.len() % 4 != 0 {
                return None;
            }
            let flags_time = u16::from_be_bytes([head[0], head[1]]);
            Capability::GracefulRestart(GracefulRestart {
                restart_state: flags_time & 0x8000 != 0,
                notification: flags_time & 0x4000 != 0,
                restart_time: flags_time & 0x0fff,
                families: tuples
                    .chunks_exact(4)
                    .map(|t| GracefulRestartFamily {
                        afi: Afi(u16::from_be_bytes([t[0], t[1]])),
                        safi: Safi(t[2]),
                        forwarding_preserved: t[3] & 0x80 != 0,
                    })
                    .collect(),
            })
        }
        code::FOUR_OCTET_ASN => {
            let b: [u8; 4] = v.try_into().ok()?;
            Capability::FourOctetAsn(u32::from_be_bytes(b))
        }
        _ => Capability::Unknown { code: c, value: v.to_vec() },
    })
}

impl Capability {
    /// Appends code, length and value.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), super::EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        let c = match self {
            Capability::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&afi.0.to_be_bytes());
                out.extend_from_slice(&[0, safi.0]);
                code::MULTIPROTOCOL
            }
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::ExtendedMessage => code::EXTENDED_MESSAGE,
            Capability::EnhancedRouteRefresh => code::ENHANCED_ROUTE_REFRESH,
            Capability::ExtendedNextHop(list) => {
                for t in list {
                    out.extend_from_slice(&t.nlri_afi.0.to_be_bytes());
                    out.extend_from_slice(&t.nlri_safi.to_be_bytes());
                    out.extend_from_slice(&t.next_hop_afi.0.to_be_bytes());
                }
                code::EXTENDED_NEXT_HOP
            }
            Capability::GracefulRestart(gr) => {
                let mut v = gr.restart_time & 0x0fff;
                if gr.restart_state {
                    v |= 0x8000;
                }
                if gr.notification {
                    v |= 0x4000;
                }
                out.extend_from_slice(&v.to_be_bytes());
                for f in &gr.families {
                    out.extend_from_slice(&f.afi.0.to_be_bytes());
                    out.push(f.safi.0);
                    out.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                code::GRACEFUL_RESTART
            }
            Capability::FourOctetAsn(asn) => {
                out.extend_from_slice(&asn.to_be_bytes());
                code::FOUR_OCTET_ASN
            }
            Capability::Unknown { code, value } => {
                out.extend_from_slice(value);
                *code
            }
        };
        let len = out.len() - start - 2;
        let len = u8::try_from(len).map_err(|_| super::EncodeError::CapabilityTooLong { code: c, len })?;
        out[start] = c;
        out[start + 1] = len;
        Ok(())
    }
}

/// Appends the OPEN body; all capabilities go in one Capabilities optional parameter.
pub(crate) fn encode_open(open: &Open, out: &mut Vec<u8>) -> Result<(), super::EncodeError> {
    out.push(BGP_VERSION);
    out.extend_from_slice(&open.my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.bgp_id.octets());
    let opt_len_at = out.len();
    out.push(0);
    if !open.capabilities.is_empty() {
        out.extend_from_slice(&[PARAM_CAPABILITIES, 0]);
        let caps_start = out.len();
        for c in &open.capabilities {
            c.encode(out)?;
        }
        let caps_len = out.len() - caps_start;
        // RFC 9072 extended optional parameters are not implemented: 255 octets is the limit.
        let too_long = super::EncodeError::OptionalParametersTooLong { len: caps_len + 2 };
        out[caps_start - 1] = u8::try_from(caps_len).map_err(|_| too_long.clone())?;
        out[opt_len_at] = u8::try_from(caps_len + 2).map_err(|_| too_long)?;
    }
    Ok(())
}
