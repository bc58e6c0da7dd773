//! Arbitrary ICMPv6 messages into the Router Solicitation / Advertisement decoder: never panic;
//! whatever decodes re-encodes to bytes that decode to the same message.
#![no_main]

use ferrule_bgp::nd::NdMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(msg) = NdMessage::decode(bytes) else { return };
    let again = NdMessage::decode(&msg.to_bytes()).expect("re-encoded ND message does not decode");
    assert_eq!(again, msg);
});
