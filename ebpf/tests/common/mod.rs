//! Helpers shared by this crate's integration tests: unique node names, RAII cleanup of pins, and
//! compiling a C fixture with the flags build.rs uses. (The root gate is `ferrule_tests::privileged`,
//! shared with every other crate's kernel tests.)
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use ferrule_ebpf::DEFAULT_BPFFS;

/// A node name no other test (or concurrent test run) uses.
pub fn unique_node(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // The dot exercises the node-name mapping (bpffs refuses `.` in names).
    format!("test-{tag}.{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The real bpffs, mounted if needed.
pub fn bpffs() -> PathBuf {
    let root = PathBuf::from(DEFAULT_BPFFS);
    ferrule_ebpf::ensure_bpffs(&root).expect("mounting bpffs at /sys/fs/bpf");
    root
}

/// Removes a node's pins when dropped, whatever the test did (unpinning a link detaches it).
pub struct PinGuard {
    pub dir: PathBuf,
}

impl PinGuard {
    pub fn new(root: &Path, node: &str) -> Self {
        Self { dir: ferrule_ebpf::node_pin_dir(root, node).unwrap() }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("cleanup: removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// Compiles `source` (C) for BPF with build.rs's flags plus `-I extra_include` (searched first),
/// into `out`.
pub fn compile_bpf(source: &Path, extra_include: &Path, out: &Path) {
    let clang = env!("FERRULE_BPF_CLANG");
    let flags = env!("FERRULE_BPF_CFLAGS").split('\x1f');
    let output = Command::new(clang)
        .arg(format!("-I{}", extra_include.display()))
        .args(flags)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        output.status.success(),
        "clang failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a command and returns its stdout, failing the test with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
