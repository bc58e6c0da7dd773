//! Arbitrary UPDATE bodies behind a valid header: the RFC 7606 paths must never panic, and an
//! accepted update must be stable through encode and decode.
#![no_main]

use ferrule_bgp::wire::{decode_message, encode_message, DecodeOptions, EncodeOptions, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&o, body)) = data.split_first() else { return };
    if body.len() > 65535 - 19 {
        return;
    }
    let opts = DecodeOptions {
        four_octet_asn: o & 1 != 0,
        extended_message: true,
        ebgp: o & 4 != 0,
        extended_next_hop: o & 8 != 0,
    };
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((body.len() + 19) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(body);
    let Ok(Some((Message::Update(u), _))) = decode_message(&msg, &opts) else { return };
    // Walking the lazily decoded prefixes must not fail either.
    let _ = u.announced().count() + u.withdrawals().count();
    let mut out = Vec::new();
    if encode_message(&Message::Update(u.clone()), &EncodeOptions::from(&opts), &mut out).is_ok() {
        let Ok(Some((Message::Update(again), _))) = decode_message(&out, &opts) else {
            panic!("re-encoded update does not decode");
        };
        assert_eq!(again.attributes, u.attributes);
        assert!(again.withdrawn.iter().eq(u.withdrawn.iter()));
        if !u.is_treat_as_withdraw() {
            assert!(again.announced().eq(u.announced()));
        }
    }
});
