//! Arbitrary OPEN bodies behind a valid header: never panic; accepted OPENs round-trip exactly.
#![no_main]

use ferrule_bgp::wire::{decode_message, encode_message, DecodeOptions, EncodeOptions, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if body.len() > 4096 - 19 {
        return;
    }
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((body.len() + 19) as u16).to_be_bytes());
    msg.push(1);
    msg.extend_from_slice(body);
    let opts = DecodeOptions::default();
    let Ok(Some((Message::Open(open), _))) = decode_message(&msg, &opts) else { return };
    let mut out = Vec::new();
    if encode_message(&Message::Open(open.clone()), &EncodeOptions::default(), &mut out).is_ok() {
        let Ok(Some((Message::Open(again), _))) = decode_message(&out, &opts) else {
            panic!("re-encoded OPEN does not decode");
        };
        assert_eq!(again, open);
    }
});
