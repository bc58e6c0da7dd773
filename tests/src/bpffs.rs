//! The host's bpffs for tests that run ferrule's datapath: makes sure /sys/fs/bpf is a bpffs in
//! the test process's mount namespace. Mounts it when absent and never unmounts it, because other
//! tests and daemons on the machine share it.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::cmd;

/// Where bpffs lives on every Linux system (systemd mounts it at boot).
pub const HOST_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf unless one is already there, and returns the path.
///
/// Note that `ip netns exec` gives its child a fresh /sys without this mount; a daemon that
/// must pin into the host's bpffs (to survive its own restart) has to be started in the test's
/// mount namespace (e.g. `nsenter --mount=/proc/<test pid>/ns/mnt`) or be given a bind mount of
/// it outside /sys (as deploy/lab/lab.sh does).
pub fn ensure_host_bpffs() -> Result<&'static Path> {
    // Two tests racing here would stack two bpffs instances, hiding the first one's pins.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = Path::new(HOST_BPFFS);
    if !is_bpffs(path) {
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", HOST_BPFFS]))
            .context("mounting bpffs at /sys/fs/bpf")?;
    }
    Ok(path)
}
