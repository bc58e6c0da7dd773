//! The gate every privileged test passes first: root plus the ability to create a network
//! namespace. Outside CI a test that cannot run is skipped loudly; in CI (`CI=true`) it fails,
//! because a silently skipped interop test is a test that does not exist.

use std::io::Write as _;
use std::process::Command;
use std::sync::OnceLock;

use crate::cmd;

/// Returns true when this process can run privileged tests (euid 0 and `ip netns add` works).
///
/// Otherwise: with `CI=true` it panics with the reason; elsewhere it prints
/// `SKIP <test>: needs root (...)` to stderr and returns false, and the test returns early.
pub fn privileged() -> bool {
    match probe() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("privileged test cannot run in CI: {reason} (needs root, netns)");
            }
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("<unnamed test>");
            // Written to the stderr handle, not with eprintln!, which libtest captures and
            // hides for passing tests: a skip must be visible in a normal run.
            let _ = writeln!(std::io::stderr(), "SKIP {test}: needs root ({reason})");
            false
        }
    }
}

/// The probe runs once per test binary: creating and deleting a namespace is the only reliable
/// check (root in a container without CAP_SYS_ADMIN still cannot do it).
fn probe() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let euid = nix::unistd::geteuid();
            if !euid.is_root() {
                return Err(format!("running as uid {euid}, not root"));
            }
            cmd::require_tool("ip", "iproute2").map_err(|e| e.to_string())?;
            let name = format!("ft-probe-{}", std::process::id());
            cmd::run(Command::new("ip").args(["netns", "add", &name]))
                .map_err(|e| format!("cannot create a network namespace: {e:#}"))?;
            cmd::run(Command::new("ip").args(["netns", "delete", &name]))
                .map_err(|e| format!("cannot delete probe namespace {name}: {e:#}"))?;
            Ok(())
        })
        .clone()
}
