//! Property-style round trips with a deterministic generator: what the encoder writes decodes
//! to the same value, packing respects the size limit and loses no prefix, and mutated
//! messages never panic the decoder.

use std::net::Ipv4Addr;

use ferrule_bgp::testutil::full_table::generate;
use ferrule_bgp::testutil::Rng;
use ferrule_bgp::wire::*;

fn random_attrs(rng: &mut Rng) -> PathAttributes {
    let segs = (0..rng.below(3))
        .map(|_| AsSegment {
            kind: [SegmentType::Sequence, SegmentType::Set, SegmentType::ConfedSequence, SegmentType::ConfedSet]
                [rng.below(4) as usize],
            asns: (0..1 + rng.below(6)).map(|_| 1 + rng.below(300_000) as u32).collect(),
        })
        .collect();
    PathAttributes {
        origin: Some([Origin::Igp, Origin::Egp, Origin::Incomplete][rng.below(3) as usize]),
        as_path: Some(AsPath { segments: segs }),
        next_hop: None,
        med: (rng.below(2) == 0).then(|| rng.next_u64() as u32),
        local_pref: (rng.below(2) == 0).then(|| rng.next_u64() as u32),
        atomic_aggregate: rng.below(2) == 0,
        aggregator: (rng.below(2) == 0)
            .then(|| Aggregator { asn: 1 + rng.below(300_000) as u32, addr: Ipv4Addr::new(192, 0, 2, 7) }),
        communities: (0..rng.below(4)).map(|_| Community(rng.next_u64() as u32)).collect(),
        ext_communities: (0..rng.below(3)).map(|_| ExtCommunity(rng.next_u64().to_be_bytes())).collect(),
        large_communities: (0..rng.below(3))
            .map(|_| LargeCommunity { global_admin: 1, local_data1: rng.next_u64() as u32, local_data2: 3 })
            .collect(),
        unknown: (0..rng.below(2))
            .map(|_| RawAttribute { flags: 0xe0, type_code: 200, value: vec![1, 2, 3] })
            .collect(),
    }
}

/// Decodes a stream of messages into (attributes, prefix) pairs, asserting none is faulty.
fn decode_stream(stream: &[u8], opts: &DecodeOptions, max: usize) -> Vec<(PathAttributes, Prefix)> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (m, used) = decode_message(rest, opts).unwrap().expect("whole messages only");
        assert!(used <= max, "message of {used} octets over {max}");
        let Message::Update(u) = m else { panic!("not an update") };
        assert_eq!(u.decision(), Decision::Accept, "{:?}", u.faults);
        for p in u.announced() {
            let mut a = u.attributes.clone();
            a.next_hop = None;
            out.push((a, p));
        }
        rest = &rest[used..];
    }
    out
}

#[test]
fn packed_announcements_decode_to_the_same_routes_for_both_as_sizes() {
    let table = generate(3_000, 1_000, 11);
    for four in [true, false] {
        let mut rng = Rng::new(5);
        let enc = EncodeOptions { four_octet_asn: four, extended_message: false };
        let dec = DecodeOptions { four_octet_asn: four, extended_next_hop: true, ..Default::default() };
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for g in &table.groups {
            let mut attrs = random_attrs(&mut rng);
            // AS4_PATH cannot carry confederation segments, so a 2-octet session only
            // round-trips paths whose 4-octet ASes sit outside them.
            // An AGGREGATOR that is not AS_TRANS tells the receiver to ignore AS4_PATH
            // (RFC 6793 4.2.3), so 2-octet round trips use 4-octet aggregators only.
            if !four {
                attrs.as_path = g.attrs.as_path.clone();
                if let Some(ag) = attrs.aggregator.as_mut() {
                    ag.asn |= 0x10000;
                }
            }
            let nh = match g.next_hop {
                NextHop::V4(a) if rng.below(4) == 0 => {
                    let _ = a;
                    NextHop::V6 { global: "2001:db8::9".parse().unwrap(), link_local: None }
                }
                nh => nh,
            };
            build_announcements(&enc, &attrs, nh, &g.prefixes, &mut stream).unwrap();
            expected.extend(g.prefixes.iter().map(|p| (attrs.clone(), *p)));
        }
        let got = decode_stream(&stream, &dec, MAX_MESSAGE_LEN);
        assert_eq!(got.len(), expected.len());
        if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
            panic!("four_octet_asn={four}: route {i} differs:\n got {:?}\nwant {:?}", got[i], expected[i]);
        }
    }
}

#[test]
fn packing_fills_messages_close_to_the_limit() {
    let prefixes: Vec<Prefix> =
        (0..5000u32).map(|i| Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).unwrap()).collect();
    let attrs =
        PathAttributes { origin: Some(Origin::Igp), as_path: Some(AsPath::sequence(&[65000])), ..Default::default() };
    let mut out = Vec::new();
    let opts = EncodeOptions { four_octet_asn: true, extended_message: false };
    let n = build_announcements(&opts, &attrs, NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)), &prefixes, &mut out).unwrap();
    // 5000 /24s at 4 octets each need 20000 octets: five full 4096-octet messages + 1.
    assert_eq!(n, 5);
    let ext = EncodeOptions { extended_message: true, ..opts };
    let mut big = Vec::new();
    assert_eq!(
        build_announcements(&ext, &attrs, NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)), &prefixes, &mut big).unwrap(),
        1
    );
}

#[test]
fn withdrawals_pack_and_decode_for_both_families() {
    let table = generate(4_000, 2_000, 3);
    let all: Vec<Prefix> = table.groups.iter().flat_map(|g| g.prefixes.iter().copied()).collect();
    let mut out = Vec::new();
    build_withdrawals(&EncodeOptions::default(), &all, &mut out).unwrap();
    let mut rest = &out[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (m, used) = decode_message(rest, &DecodeOptions::default()).unwrap().unwrap();
        let Message::Update(u) = m else { panic!() };
        got.extend(u.withdrawals());
        rest = &rest[used..];
    }
    let mut want = all.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn random_updates_round_trip_through_encode_message() {
    let mut rng = Rng::new(99);
    for _ in 0..500 {
        let attrs = random_attrs(&mut rng);
        let v6: Vec<Prefix> = (0..rng.below(5))
            .map(|i| Prefix::new(std::net::Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 0).into(), 48).unwrap())
            .collect();
        let v4: Vec<Prefix> =
            (0..rng.below(5)).map(|i| Prefix::new(Ipv4Addr::new(198, 51, i as u8, 0).into(), 24).unwrap()).collect();
        let mut a = attrs.clone();
        a.next_hop = Some(Ipv4Addr::new(192, 0, 2, 1));
        let u = Update {
            withdrawn: Prefixes::List(&v4),
            attributes: a,
            mp_reach: Some(MpReach {
                family: Family::Ipv6Unicast,
                next_hop: NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: None },
                nlri: Prefixes::List(&v6),
            }),
            mp_unreach: None,
            nlri: Prefixes::List(&v4),
            faults: vec![],
            carried_attributes: true,
        };
        let mut out = Vec::new();
        encode_message(
            &Message::Update(u.clone()),
            &EncodeOptions { four_octet_asn: true, ..Default::default() },
            &mut out,
        )
        .unwrap();
        let opts = DecodeOptions { four_octet_asn: true, ..Default::default() };
        let (m, _) = decode_message(&out, &opts).unwrap().unwrap();
        assert_eq!(m, Message::Update(u));
    }
}

#[test]
fn mutated_messages_never_panic_and_stay_stable_when_accepted() {
    let table = generate(200, 100, 1);
    let (stream, _) = table.encode(&EncodeOptions { four_octet_asn: true, extended_message: false }).unwrap();
    let opts = DecodeOptions { four_octet_asn: true, extended_next_hop: true, ..Default::default() };
    let mut rng = Rng::new(1234);
    let mut msgs = Vec::new();
    let mut rest = &stream[..];
    while let Some((_, used)) = decode_message(rest, &opts).unwrap() {
        msgs.push(rest[..used].to_vec());
        rest = &rest[used..];
    }
    for i in 0..20_000 {
        let mut m = msgs[i % msgs.len()].clone();
        for _ in 0..1 + rng.below(4) {
            let at = 19 + rng.below((m.len() - 19) as u64) as usize;
            m[at] = rng.next_u64() as u8;
        }
        if let Ok(Some((Message::Update(u), _))) = decode_message(&m, &opts) {
            let mut again = Vec::new();
            let enc = EncodeOptions::from(&opts);
            if encode_message(&Message::Update(u.clone()), &enc, &mut again).is_ok() {
                let (m2, _) = decode_message(&again, &opts).unwrap().unwrap();
                let Message::Update(u2) = m2 else { panic!() };
                assert_eq!(u2.attributes, u.attributes);
                assert!(u2.announced().eq(u.announced()) || u.is_treat_as_withdraw());
            }
        }
    }
}
