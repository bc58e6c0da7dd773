//! Golden bytes for each message type, written out by hand from the RFC layouts, decoded and
//! re-encoded; plus framing and OPEN error notifications.

use std::net::{Ipv4Addr, Ipv6Addr};

use ferrule_bgp::wire::*;

const M: [u8; 16] = [0xff; 16];

fn msg(len: u16, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = M.to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

fn decode<'a>(bytes: &'a [u8], opts: &DecodeOptions) -> Message<'a> {
    let (m, used) = decode_message(bytes, opts).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    m
}

fn encode(m: &Message<'_>, opts: &EncodeOptions) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(m, opts, &mut out).unwrap();
    out
}

fn v4(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

#[test]
fn keepalive_is_a_bare_header() {
    let bytes = msg(19, 4, &[]);
    assert_eq!(decode(&bytes, &DecodeOptions::default()), Message::Keepalive);
    assert_eq!(encode(&Message::Keepalive, &EncodeOptions::default()), bytes);
}

#[test]
fn open_with_capabilities_matches_rfc_layout() {
    #[rustfmt::skip]
    let body = [
        4,                      // version
        0x5b, 0xa0,             // my AS: 23456 (AS_TRANS)
        0, 90,                  // hold time 90 s
        192, 0, 2, 1,           // BGP identifier
        36,                     // optional parameters length
        2, 34,                  // parameter type 2 (capabilities), length 34
        1, 4, 0, 2, 0, 1,       // multiprotocol: AFI 2 (IPv6), reserved, SAFI 1
        2, 0,                   // route refresh
        65, 4, 0x00, 0x03, 0x0d, 0x40, // 4-octet AS 200000
        64, 6, 0x80, 120, 0, 1, 1, 0x80, // graceful restart: R bit, 120 s; IPv4/unicast F bit
        5, 6, 0, 1, 0, 1, 0, 2, // extended next hop: IPv4/unicast over IPv6
        6, 0,                   // extended message
        70, 0,                  // enhanced route refresh
    ];
    let bytes = msg(19 + body.len() as u16, 1, &body);
    let expected = Open {
        my_as: AS_TRANS,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol { afi: Afi::IPV6, safi: Safi::UNICAST },
            Capability::RouteRefresh,
            Capability::FourOctetAsn(200_000),
            Capability::GracefulRestart(GracefulRestart {
                restart_state: true,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    afi: Afi::IPV4,
                    safi: Safi::UNICAST,
                    forwarding_preserved: true,
                }],
            }),
            Capability::ExtendedNextHop(vec![ExtendedNextHop {
                nlri_afi: Afi::IPV4,
                nlri_safi: 1,
                next_hop_afi: Afi::IPV6,
            }]),
            Capability::ExtendedMessage,
            Capability::EnhancedRouteRefresh,
        ],
    };
    let m = decode(&bytes, &DecodeOptions::default());
    assert_eq!(m, Message::Open(expected.clone()));
    assert_eq!(expected.asn(), 200_000);
    assert_eq!(encode(&m, &EncodeOptions::default()), bytes);
}

#[test]
fn unknown_capability_is_kept_raw() {
    let body = [4, 0xfd, 0xe8, 0, 180, 192, 0, 2, 1, 6, 2, 4, 128, 2, 0xab, 0xcd];
    let bytes = msg(19 + 16, 1, &body);
    let m = decode(&bytes, &DecodeOptions::default());
    let Message::Open(o) = m else { panic!() };
    assert_eq!(o.capabilities, vec![Capability::Unknown { code: 128, value: vec![0xab, 0xcd] }]);
}

fn open_error(body: &[u8]) -> Notification {
    decode_message(&msg(19 + body.len() as u16, 1, body), &DecodeOptions::default()).unwrap_err().notification
}

#[test]
fn open_errors_map_to_rfc4271_notifications() {
    let n = open_error(&[3, 0xfd, 0xe8, 0, 180, 192, 0, 2, 1, 0]);
    assert_eq!((n.error(), n.data), (Some(NotificationError::UnsupportedVersionNumber), vec![0, 4]));
    let n = open_error(&[4, 0xfd, 0xe8, 0, 2, 192, 0, 2, 1, 0]);
    assert_eq!(n.error(), Some(NotificationError::UnacceptableHoldTime));
    let n = open_error(&[4, 0xfd, 0xe8, 0, 180, 0, 0, 0, 0, 0]);
    assert_eq!(n.error(), Some(NotificationError::BadBgpIdentifier));
    let n = open_error(&[4, 0xfd, 0xe8, 0, 180, 192, 0, 2, 1, 3, 1, 1, 0]);
    assert_eq!(n.error(), Some(NotificationError::UnsupportedOptionalParameter));
    let n = open_error(&[4, 0xfd, 0xe8, 0, 180, 192, 0, 2, 1, 8, 2, 6, 65, 4, 0, 0]);
    assert_eq!(n.error(), Some(NotificationError::OpenUnspecific), "opt length overruns");
    let n = open_error(&[4, 0xfd, 0xe8, 0, 180, 192, 0, 2, 1, 5, 2, 3, 65, 1, 0]);
    assert_eq!(n.error(), Some(NotificationError::OpenUnspecific), "4-octet AS of length 1");
}

#[test]
fn hold_time_zero_is_accepted() {
    let bytes = msg(29, 1, &[4, 0xfd, 0xe8, 0, 0, 192, 0, 2, 1, 0]);
    let m = decode(&bytes, &DecodeOptions::default());
    assert!(matches!(m, Message::Open(Open { hold_time: 0, .. })));
}

#[test]
fn notification_round_trips_with_data() {
    // Cease / Administrative Shutdown with a 3-octet shutdown communication.
    let bytes = msg(24, 3, &[6, 2, 2, b'h', b'i']);
    let m = decode(&bytes, &DecodeOptions::default());
    let Message::Notification(n) = &m else { panic!() };
    assert_eq!(n.error(), Some(NotificationError::AdministrativeShutdown));
    assert_eq!(encode(&m, &EncodeOptions::default()), bytes);
}

#[test]
fn route_refresh_subtypes_round_trip() {
    for (sub, expected) in [(0, RefreshSubtype::Request), (1, RefreshSubtype::Begin), (2, RefreshSubtype::End)] {
        // AFI 2, subtype, SAFI 1.
        let bytes = msg(23, 5, &[0, 2, sub, 1]);
        let m = decode(&bytes, &DecodeOptions::default());
        assert_eq!(m, Message::RouteRefresh(RouteRefresh { afi: Afi::IPV6, safi: Safi::UNICAST, subtype: expected }));
        assert_eq!(encode(&m, &EncodeOptions::default()), bytes);
    }
}

#[test]
fn eorr_with_trailing_data_is_invalid_length() {
    let bytes = msg(24, 5, &[0, 2, 2, 1, 0]);
    let n = decode_message(&bytes, &DecodeOptions::default()).unwrap_err().notification;
    assert_eq!(n.error(), Some(NotificationError::RouteRefreshInvalidLength));
    assert_eq!(n.data, bytes, "data is the whole message (RFC 7313)");
}

#[test]
fn ipv4_update_matches_rfc_layout() {
    #[rustfmt::skip]
    let body = [
        0, 4, 24, 203, 0, 113,            // withdrawn: 203.0.113.0/24
        0, 42,                            // total path attribute length
        0x40, 1, 1, 0,                    // ORIGIN IGP
        0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe8, 0, 0x03, 0x0d, 0x40, // AS_PATH 65000 200000
        0x40, 3, 4, 192, 0, 2, 1,         // NEXT_HOP
        0x80, 4, 4, 0, 0, 0, 10,          // MED 10
        0xc0, 8, 8, 0xff, 0xff, 0xff, 0x01, 0xfd, 0xe8, 0, 100, // no-export, 65000:100
        24, 198, 51, 100,                 // NLRI 198.51.100.0/24
        22, 192, 0, 0,                    // NLRI 192.0.0.0/22
    ];
    let bytes = msg(19 + body.len() as u16, 2, &body);
    let opts = DecodeOptions { four_octet_asn: true, ..Default::default() };
    let m = decode(&bytes, &opts);
    let Message::Update(u) = &m else { panic!() };
    assert_eq!(u.decision(), Decision::Accept);
    assert_eq!(u.withdrawals().collect::<Vec<_>>(), vec![v4("203.0.113.0/24")]);
    assert_eq!(u.announced().collect::<Vec<_>>(), vec![v4("198.51.100.0/24"), v4("192.0.0.0/22")]);
    let a = &u.attributes;
    assert_eq!(a.origin, Some(Origin::Igp));
    assert_eq!(a.as_path, Some(AsPath::sequence(&[65000, 200_000])));
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(a.med, Some(10));
    assert_eq!(a.communities, vec![Community::NO_EXPORT, Community::new(65000, 100)]);
    assert_eq!(encode(&m, &EncodeOptions { four_octet_asn: true, ..Default::default() }), bytes);
}

#[test]
fn ipv6_update_with_link_local_next_hop_matches_rfc_layout() {
    #[rustfmt::skip]
    let body = [
        0, 0,                       // no withdrawn routes
        0, 59,                      // total path attribute length
        0x40, 1, 1, 0,              // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8, // AS_PATH 65000
        0x90, 14, 0, 42,            // MP_REACH_NLRI, extended length 42
        0, 2, 1, 32,                // AFI IPv6, SAFI unicast, next hop length 32
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // 2001:db8::1
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,       // fe80::1
        0,                          // reserved
        32, 0x20, 0x01, 0x0d, 0xb8, // 2001:db8::/32
    ];
    let bytes = msg(19 + body.len() as u16, 2, &body);
    let opts = DecodeOptions { four_octet_asn: true, ..Default::default() };
    let m = decode(&bytes, &opts);
    let Message::Update(u) = &m else { panic!() };
    assert_eq!(
        u.next_hop(Family::Ipv6Unicast),
        Some(NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: Some("fe80::1".parse().unwrap()) })
    );
    assert_eq!(u.announced().map(|p| p.to_string()).collect::<Vec<_>>(), vec!["2001:db8::/32"]);
    assert_eq!(encode(&m, &EncodeOptions { four_octet_asn: true, ..Default::default() }), bytes);
}

#[test]
fn ipv4_nlri_with_ipv6_next_hop_needs_extended_next_hop() {
    let mut mp = vec![0x90, 14, 0, 25, 0, 1, 1, 16];
    mp.extend_from_slice(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
    mp.extend_from_slice(&[0, 24, 198, 51, 100]);
    let bytes = ferrule_bgp::testutil::malformed::update_bytes(&[], &[&[0x40, 1, 1, 0], &[0x40, 2, 0], &mp], &[]);
    let without = DecodeOptions { four_octet_asn: true, ..Default::default() };
    assert_eq!(
        decode_message(&bytes, &without).unwrap_err().notification.error(),
        Some(NotificationError::OptionalAttributeError)
    );
    let with = DecodeOptions { extended_next_hop: true, ..without };
    let m = decode(&bytes, &with);
    let Message::Update(u) = m else { panic!() };
    assert_eq!(u.announced().collect::<Vec<_>>(), vec![v4("198.51.100.0/24")]);
    assert!(matches!(u.next_hop(Family::Ipv4Unicast), Some(NextHop::V6 { .. })));
}

#[test]
fn end_of_rib_is_recognised_for_both_families() {
    let v4 = msg(23, 2, &[0, 0, 0, 0]);
    let Message::Update(u) = decode(&v4, &DecodeOptions::default()) else { panic!() };
    assert_eq!(u.end_of_rib(), Some(Family::Ipv4Unicast));
    // MP_UNREACH_NLRI with AFI 2 SAFI 1 and nothing withdrawn.
    let v6 = msg(29, 2, &[0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]);
    let Message::Update(u) = decode(&v6, &DecodeOptions::default()) else { panic!() };
    assert_eq!(u.end_of_rib(), Some(Family::Ipv6Unicast));
    let mut out = Vec::new();
    let marker = Update::end_of_rib_marker(Family::Ipv6Unicast);
    encode_message(&Message::Update(marker), &EncodeOptions::default(), &mut out).unwrap();
    let Message::Update(u) = decode(&out, &DecodeOptions::default()) else { panic!() };
    assert_eq!(u.end_of_rib(), Some(Family::Ipv6Unicast));
}

/// Attributes disregarded without a fault (LOCAL_PREF from an external peer, an unknown optional
/// non-transitive one) leave nothing in the decoded attributes, but a message that carried them
/// is no End-of-RIB marker (RFC 4724 2): a graceful-restart helper would sweep the peer's stale
/// routes on it.
#[test]
fn an_update_carrying_only_disregarded_attributes_is_no_end_of_rib() {
    let ebgp = DecodeOptions { ebgp: true, ..DecodeOptions::default() };
    for attr in [&[0x40u8, 5, 4, 0, 0, 0, 100][..], &[0x80, 0x63, 1, 0]] {
        let mut body = vec![0, 0, 0, attr.len() as u8];
        body.extend_from_slice(attr);
        let bytes = msg(19 + body.len() as u16, 2, &body);
        let Message::Update(u) = decode(&bytes, &ebgp) else { panic!() };
        assert!(u.faults.is_empty() && u.attributes == PathAttributes::default(), "{attr:?}: disregarded");
        assert_eq!(u.end_of_rib(), None, "{attr:?}");
    }
}

#[test]
fn two_octet_session_merges_as4_path_and_as4_aggregator() {
    #[rustfmt::skip]
    let attrs: [&[u8]; 6] = [
        &[0x40, 1, 1, 0],
        &[0x40, 2, 6, 2, 2, 0xfd, 0xe8, 0x5b, 0xa0],        // AS_PATH 65000 AS_TRANS
        &[0x40, 3, 4, 192, 0, 2, 1],
        &[0xc0, 7, 6, 0x5b, 0xa0, 192, 0, 2, 9],             // AGGREGATOR AS_TRANS 192.0.2.9
        &[0xc0, 17, 6, 2, 1, 0, 0x03, 0x0d, 0x40],           // AS4_PATH 200000
        &[0xc0, 18, 8, 0, 0x03, 0x0d, 0x40, 192, 0, 2, 9],   // AS4_AGGREGATOR 200000
    ];
    let bytes = ferrule_bgp::testutil::malformed::update_bytes(&[], &attrs, &[24, 198, 51, 100]);
    let Message::Update(u) = decode(&bytes, &DecodeOptions::default()) else { panic!() };
    assert_eq!(u.decision(), Decision::Accept);
    assert_eq!(u.attributes.as_path.as_ref().unwrap().to_string(), "65000 200000");
    assert_eq!(u.attributes.aggregator.unwrap().asn, 200_000);
    // Re-encoding for a 2-octet peer produces AS_TRANS + AS4_* again, which decodes the same.
    let mut out = Vec::new();
    encode_message(&Message::Update(u.clone()), &EncodeOptions::default(), &mut out).unwrap();
    let Message::Update(again) = decode(&out, &DecodeOptions::default()) else { panic!() };
    assert_eq!(again.attributes, u.attributes);
}

fn header_error(bytes: &[u8], opts: &DecodeOptions) -> Notification {
    decode_message(bytes, opts).unwrap_err().notification
}

#[test]
fn header_errors_send_the_rfc4271_notifications() {
    let d = DecodeOptions::default();
    let mut bad_marker = msg(19, 4, &[]);
    bad_marker[3] = 0;
    assert_eq!(header_error(&bad_marker, &d).error(), Some(NotificationError::ConnectionNotSynchronized));
    // A bad marker is reported before the rest of the header arrives.
    assert!(decode_message(&bad_marker[..5], &d).is_err());

    let n = header_error(&msg(18, 4, &[]), &d);
    assert_eq!((n.error(), n.data), (Some(NotificationError::BadMessageLength), vec![0, 18]));
    let n = header_error(&msg(4097, 2, &[]), &d);
    assert_eq!((n.error(), n.data), (Some(NotificationError::BadMessageLength), vec![0x10, 0x01]));
    let n = header_error(&msg(20, 4, &[0]), &d);
    assert_eq!(n.error(), Some(NotificationError::BadMessageLength), "KEEPALIVE must be 19");
    let n = header_error(&msg(22, 2, &[0, 0, 0]), &d);
    assert_eq!(n.error(), Some(NotificationError::BadMessageLength), "UPDATE minimum is 23");
    let n = header_error(&msg(19, 9, &[]), &d);
    assert_eq!((n.error(), n.data), (Some(NotificationError::BadMessageType), vec![9]));
}

#[test]
fn extended_message_raises_the_update_limit_but_not_open() {
    let ext = DecodeOptions { extended_message: true, ..Default::default() };
    // A 5000-octet UPDATE header is fine with Extended Message: decoding waits for the body.
    assert_eq!(decode_message(&msg(5000, 2, &[]), &ext).unwrap(), None);
    assert!(decode_message(&msg(5000, 2, &[]), &DecodeOptions::default()).is_err());
    assert!(decode_message(&msg(5000, 1, &[]), &ext).is_err(), "OPEN stays at 4096 (RFC 8654)");
}

#[test]
fn reader_returns_messages_only_when_complete() {
    let mut stream = msg(19, 4, &[]);
    stream.extend(msg(23, 2, &[0, 0, 0, 0]));
    let d = DecodeOptions::default();
    let mut r = MessageReader::new();
    let mut got = Vec::new();
    for b in &stream {
        r.extend(std::slice::from_ref(b));
        while let Some(m) = r.next_message(&d).unwrap() {
            got.push(m.type_code());
        }
    }
    assert_eq!(got, vec![msg_type::KEEPALIVE, msg_type::UPDATE]);
    assert_eq!(r.buffered(), 0);
}
