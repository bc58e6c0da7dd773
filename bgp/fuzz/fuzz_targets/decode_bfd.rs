//! Any bytes as a BFD Control packet: decoding never panics, and every accepted packet
//! re-encodes to 24 bytes that decode to the same packet and match the input's first 24 bytes
//! except the Length field.
#![no_main]

use ferrule_bgp::bfd::ControlPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = ControlPacket::decode(data) {
        let bytes = packet.encode();
        assert_eq!(ControlPacket::decode(&bytes), Ok(packet));
        assert_eq!(bytes[..3], data[..3]);
        assert_eq!(bytes[4..], data[4..24]);
    }
});
