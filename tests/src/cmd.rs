//! Running short-lived external commands with the context a failing test needs: the exact command
//! line, its exit status, stdout and stderr. Long-running processes belong to `daemon.rs`; this
//! module never leaves a process behind.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The command line as a person would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = quote(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion and returns its output whatever the exit status; fails only when the
/// program cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs `cmd`, requires exit status 0 and returns stdout. The error names the command line and
/// carries both output streams, so a failing test shows what was run and what it said.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Looks `program` up in PATH (or checks an absolute path) and explains which Debian package
/// provides it when it is missing, so a fresh machine fails with the fix in the message.
pub fn require_tool(program: &str, package: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|dir| dir.join(program)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("`{program}` not found: install it with `apt-get install -y {package}`"))
}

/// Polls `check` every `interval` until it returns `Ok(true)`, at most `timeout` long (so a bounded
/// number of tries). An `Err` from `check` counts as "not yet" and the last one is reported if
/// time runs out, together with `what` we were waiting for.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let tries = (timeout.as_millis() / interval.as_millis().max(1)).max(1) + 1;
    let started = Instant::now();
    let mut last_error = None;
    for attempt in 0..tries {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => last_error = None,
            Err(e) => last_error = Some(e),
        }
        if attempt + 1 < tries {
            std::thread::sleep(interval);
        }
    }
    let waited = started.elapsed();
    match last_error {
        Some(e) => Err(e.context(format!("timed out after {waited:.1?} ({tries} tries) waiting for {what}"))),
        None => bail!("timed out after {waited:.1?} ({tries} tries) waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_words_with_spaces_and_quotes() {
        let mut cmd = Command::new("vtysh");
        cmd.args(["-c", "show bgp summary", "it's"]);
        assert_eq!(describe(&cmd), r"vtysh -c 'show bgp summary' 'it'\''s'");
    }

    #[test]
    fn run_reports_command_line_and_stderr_on_failure() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn require_tool_names_the_package_when_missing() {
        let err = require_tool("ferrule-no-such-tool", "some-pkg").unwrap_err();
        assert!(format!("{err}").contains("apt-get install -y some-pkg"));
        assert!(require_tool("sh", "dash").is_ok());
    }

    #[test]
    fn poll_until_gives_up_after_bounded_tries() {
        let mut calls = 0;
        let err = poll_until("never", Duration::from_millis(50), Duration::from_millis(10), || {
            calls += 1;
            Ok(false)
        })
        .unwrap_err();
        assert_eq!(calls, 6);
        assert!(format!("{err}").contains("waiting for never"));
    }

    #[test]
    fn poll_until_returns_once_check_passes() {
        let mut calls = 0;
        poll_until("third call", Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            Ok(calls == 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }
}
