//! Any bytes, any negotiated options: decoding never panics, and every accepted message
//! re-encodes to bytes that decode to the same message.
#![no_main]

use ferrule_bgp::wire::{decode_message, encode_message, DecodeOptions, EncodeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&o, bytes)) = data.split_first() else { return };
    let opts = DecodeOptions {
        four_octet_asn: o & 1 != 0,
        extended_message: o & 2 != 0,
        ebgp: o & 4 != 0,
        extended_next_hop: o & 8 != 0,
    };
    if let Ok(Some((m, used))) = decode_message(bytes, &opts) {
        assert!(used <= bytes.len());
        let mut out = Vec::new();
        if encode_message(&m, &EncodeOptions::from(&opts), &mut out).is_ok() {
            let (again, n) = decode_message(&out, &opts).expect("re-encoded message decodes").expect("complete");
            assert_eq!(n, out.len());
            ferrule_bgp_fuzz_check::same(&m, &again);
        }
    }
});

mod ferrule_bgp_fuzz_check {
    use ferrule_bgp::wire::Message;

    /// Re-decoding loses only what the first decode already reported as a fault (dropped
    /// attributes), so compare the route-relevant content.
    pub fn same(a: &Message<'_>, b: &Message<'_>) {
        match (a, b) {
            (Message::Update(a), Message::Update(b)) => {
                assert_eq!(a.attributes, b.attributes);
                if !a.is_treat_as_withdraw() {
                    assert!(a.announced().eq(b.announced()));
                }
                assert!(a.withdrawn.iter().eq(b.withdrawn.iter()));
            }
            _ => assert_eq!(a, b),
        }
    }
}
