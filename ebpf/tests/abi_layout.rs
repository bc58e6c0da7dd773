//! Proves that every Rust mirror in `src/abi.rs` matches its C struct as clang laid it out in the
//! embedded objects, and that the check catches a drift (fields swapped in the header).

mod common;

use std::path::Path;

use ferrule_ebpf::{
    abi::{mirrors, IfaceStats, MirrorLayout},
    btf::{check_struct, struct_names, CheckError, LayoutProblem},
    objects,
};

fn check(obj: &[u8], mirror: &MirrorLayout) -> Result<(), CheckError> {
    check_struct(obj, mirror.c_name, &mirror.fields, mirror.size)
}

#[test]
fn every_mirror_matches_the_btf_of_every_object_that_uses_it() {
    for mirror in mirrors() {
        let mut checked = 0;
        for (object, bytes) in objects::ALL {
            let names = struct_names(bytes).expect("embedded objects carry BTF");
            if names.iter().any(|n| n == mirror.c_name) {
                check(bytes, &mirror).unwrap_or_else(|e| panic!("{object}.bpf.o: {e}"));
                checked += 1;
            }
        }
        assert!(checked > 0, "no embedded object uses struct {}", mirror.c_name);
    }
}

#[test]
fn every_abi_struct_in_the_objects_has_a_mirror() {
    let mirrored: Vec<_> = mirrors().into_iter().map(|m| m.c_name).collect();
    for (object, bytes) in objects::ALL {
        for name in struct_names(bytes).unwrap() {
            // Our ABI structs are `fr_*`; kernel structs (xdp_md, ...) are not ours to mirror.
            if name.starts_with("fr_") {
                assert!(
                    mirrored.contains(&name.as_str()),
                    "{object}.bpf.o defines struct {name} without a Rust mirror in src/abi.rs"
                );
            }
        }
    }
}

/// Compiles a one-map object against `header_text` as `ferrule_abi.h` and returns its bytes.
fn compile_with_header(dir: &Path, header_text: &str) -> Vec<u8> {
    std::fs::write(dir.join("ferrule_abi.h"), header_text).unwrap();
    let source = dir.join("probe.bpf.c");
    // The struct must be used by a map for clang to keep it in BTF.
    std::fs::write(
        &source,
        r#"#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "ferrule_abi.h"
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fr_iface_stats);
} probe SEC(".maps");
"#,
    )
    .unwrap();
    let out = dir.join("probe.bpf.o");
    common::compile_bpf(&source, dir, &out);
    std::fs::read(out).unwrap()
}

#[test]
fn reports_swapped_fields_of_a_drifted_header_by_name() {
    let header = include_str!("../include/ferrule_abi.h");
    let stats = mirrors().into_iter().find(|m| m.c_name == "fr_iface_stats").expect("IfaceStats mirror");
    assert_eq!(stats.size, std::mem::size_of::<IfaceStats>());
    let dir = tempfile::tempdir().unwrap();

    // Control: the unmodified header, through the same path, passes.
    let original = compile_with_header(dir.path(), header);
    check(&original, &stats).expect("the real header matches the mirror");

    let (packets, bytes) = ("\t__u64 packets;\n", "\t__u64 bytes;\n");
    assert!(header.contains(packets) && header.contains(bytes), "header layout changed; update this test");
    let swapped =
        header.replacen(packets, "@@PACKETS@@", 1).replacen(bytes, packets, 1).replacen("@@PACKETS@@", bytes, 1);
    assert_ne!(swapped, header);

    let drifted = compile_with_header(dir.path(), &swapped);
    let err = check(&drifted, &stats).expect_err("swapped fields must be caught");
    let CheckError::Mismatch(mismatch) = &err else {
        panic!("expected a layout mismatch, got {err}");
    };
    assert_eq!(mismatch.c_name, "fr_iface_stats");
    // Problems come in the C struct's member order, where `bytes` is now first.
    assert_eq!(
        mismatch.problems,
        vec![
            LayoutProblem::Offset { field: "bytes".into(), c: 0, rust: 8 },
            LayoutProblem::Offset { field: "packets".into(), c: 8, rust: 0 },
        ]
    );
    let message = err.to_string();
    assert!(message.contains("`packets`") && message.contains("`bytes`"), "{message}");
}
