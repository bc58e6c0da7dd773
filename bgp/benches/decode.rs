//! Full-table decode benchmark: ferrule's codec vs netgauze-bgp-pkt on the same byte stream
//! in the same run, plus the RFC 7606 corpus fed to netgauze. Run with
//! `cargo bench -p ferrule-bgp --bench decode`. Plain `Instant` loop: this is a bench binary,
//! not protocol logic.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ferrule_bgp::testutil::full_table::full_table;
use ferrule_bgp::testutil::malformed::{cases, Expected};
use ferrule_bgp::wire::{decode_message, DecodeOptions, EncodeOptions, Message, Prefix};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

const ROUNDS: usize = 5;

fn ours(stream: &[u8], opts: &DecodeOptions) -> (usize, u64) {
    let mut rest = stream;
    let (mut prefixes, mut sum) = (0usize, 0u64);
    while let Some((m, used)) = decode_message(rest, opts).expect("valid stream") {
        if let Message::Update(u) = &m {
            // NLRI decode lazily: iterate them so the work is really done.
            for p in u.announced() {
                prefixes += 1;
                sum = sum.wrapping_add(match p {
                    Prefix::V4(p) => u64::from(u32::from(p.addr())) ^ u64::from(p.len()),
                    Prefix::V6(p) => (u128::from(p.addr()) >> 64) as u64 ^ u64::from(p.len()),
                });
            }
            sum = sum.wrapping_add(u.attributes.as_path.as_ref().map_or(0, |p| p.route_len() as u64));
        }
        black_box(&m);
        rest = &rest[used..];
    }
    (prefixes, sum)
}

fn netgauze_ctx(fail_on_malformed: bool) -> BgpParsingContext {
    BgpParsingContext::new(true, HashMap::new(), HashMap::new(), true, true, true, fail_on_malformed)
}

fn netgauze(stream: &[u8]) -> usize {
    let mut ctx = netgauze_ctx(true);
    let mut rest = stream;
    let mut messages = 0;
    while rest.len() >= 19 {
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let mut cur = SliceReader::new(&rest[..len]);
        let m = BgpMessage::parse(&mut cur, &mut ctx).expect("netgauze decodes the valid stream");
        black_box(&m);
        messages += 1;
        rest = &rest[len..];
    }
    messages
}

fn best<F: FnMut()>(mut f: F) -> Duration {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let t = Instant::now();
    let table = full_table();
    let (stream, messages) =
        table.encode(&EncodeOptions { four_octet_asn: true, extended_message: false }).expect("table encodes");
    let total = table.prefix_count();
    println!(
        "table: {total} prefixes in {} attribute groups, {messages} UPDATEs, {} MiB (built in {:.1?})",
        table.groups.len(),
        stream.len() >> 20,
        t.elapsed()
    );
    let opts = DecodeOptions { four_octet_asn: true, ebgp: true, ..DecodeOptions::default() };
    let (n, _) = ours(&stream, &opts);
    assert_eq!(n, total, "ferrule decoded every prefix");

    let ours_t = best(|| {
        black_box(ours(&stream, &opts));
    });
    let ng_t = best(|| {
        black_box(netgauze(&stream));
    });
    let per = |d: Duration| d.as_nanos() as f64 / total as f64;
    println!("ferrule-bgp:      {:>8.1?} per table, {:>6.1} ns/prefix (best of {ROUNDS})", ours_t, per(ours_t));
    println!("netgauze-bgp-pkt: {:>8.1?} per table, {:>6.1} ns/prefix (best of {ROUNDS})", ng_t, per(ng_t));
    println!("ratio netgauze / ferrule: {:.2}x", per(ng_t) / per(ours_t));

    println!("\nRFC 7606 corpus through netgauze (fail_on_malformed_path_attr = false, its lenient mode):");
    let mut whole_message_failures = 0;
    let mut accepted_resets = 0;
    for case in cases() {
        let mut ctx = netgauze_ctx(false);
        ctx.set_asn4(case.opts.four_octet_asn);
        let mut cur = SliceReader::new(&case.bytes);
        let ng = match BgpMessage::parse(&mut cur, &mut ctx) {
            Err(_) => "whole message rejected".to_string(),
            Ok(_) => {
                let ignored = ctx.parsing_errors().path_attr_errors().len();
                if ignored == 0 {
                    "accepted".to_string()
                } else {
                    format!("accepted, {ignored} attribute error(s) recorded")
                }
            }
        };
        let bad =
            matches!(case.expected, Expected::Accept | Expected::AttributeDiscard(_) | Expected::TreatAsWithdraw(_))
                && ng == "whole message rejected";
        if bad {
            whole_message_failures += 1;
        }
        if matches!(case.expected, Expected::SessionReset(..)) && ng != "whole message rejected" {
            accepted_resets += 1;
        }
        println!(
            "  {:<48} RFC: {:<22} netgauze: {ng}{}",
            case.name,
            format!("{:?}", case.expected),
            if bad { "  <-- fails whole message" } else { "" }
        );
    }
    println!("netgauze accepts {accepted_resets} messages RFC 4271/7606 answer with a session reset");
    println!("netgauze rejects {whole_message_failures} messages RFC 7606 keeps (treat-as-withdraw / discard / accept); it never reports treat-as-withdraw itself");
}
