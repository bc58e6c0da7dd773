//! The replay-script format the sans-IO state machines are tested with (the BGP session in
//! `session/testdata/*.fsm`, BFD in `bfd/testdata/*.bfd`): one input per line at a time,
//! `@SECONDS input…`, followed by exactly the outputs it must produce, in order, on `>` lines;
//! `? assertion` lines; `config …` lines; `#` comments. This module reads the format and checks
//! the outputs; each machine's `replay.rs` parses its own inputs, renders its own outputs and
//! answers its own assertions.

use std::time::{Duration, Instant};

/// Where in which script we are, for failure messages.
pub(crate) struct Script {
    pub name: String,
    pub line: usize,
}

impl Script {
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{}:{}: {msg}", self.name, self.line)
    }
}

/// A line for the machine under test.
pub(crate) enum Line<'a> {
    /// `config …`: the words after `config`.
    Config(&'a [&'a str]),
    /// `@SECONDS input…`: the time and the words of the input.
    Input { now: Instant, words: &'a [&'a str] },
    /// `? assertion…`: the words after `?`, and the whole line (comments stripped).
    Assert { words: &'a [&'a str], line: &'a str },
}

/// `words` of the form `key=value`.
pub(crate) fn key_values<'s>(words: &[&'s str], at: &Script) -> Vec<(&'s str, &'s str)> {
    words
        .iter()
        .map(|w| w.split_once('=').unwrap_or_else(|| at.fail(format!("expected key=value, got {w:?}"))))
        .collect()
}

/// A script time: seconds after `t0`, with up to microsecond precision.
pub(crate) fn secs_after(t0: Instant, s: &str, at: &Script) -> Instant {
    let secs: f64 = s.parse().unwrap_or_else(|_| at.fail(format!("bad time {s:?}")));
    t0 + Duration::from_micros((secs * 1e6).round() as u64)
}

/// Every script in `dir` (relative to the crate) ending in `.ext`, sorted, as (path, text); at
/// least three, so a moved test-data directory cannot pass silently.
pub(crate) fn scripts(dir: &str, ext: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "expected the event scripts in {}", dir.display());
    paths
        .iter()
        .map(|p| {
            (p.display().to_string(), std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        })
        .collect()
}

/// Reads the script `text` named `name`, whose times count from `t0`: hands each config, input
/// and assertion line to `step`, which returns an input's rendered outputs (nothing for the other
/// lines); those must match the `>` lines that follow, in order, with none left over. Panics at
/// the first difference, naming the script and line.
pub(crate) fn replay(name: &str, text: &str, t0: Instant, mut step: impl FnMut(Line<'_>, &Script) -> Vec<String>) {
    let mut at = Script { name: name.to_string(), line: 0 };
    let mut now = t0;
    // Outputs of the last input not yet matched against `>` lines.
    let mut pending: Vec<String> = Vec::new();
    let mut pending_from = 0;
    let check_done = |pending: &[String], from: usize, at: &Script| {
        if !pending.is_empty() {
            at.fail(format!("input on line {from} produced unexpected outputs: {pending:#?}"));
        }
    };
    for (i, raw) in text.lines().enumerate() {
        at.line = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(expected) = line.strip_prefix('>') {
            let expected = expected.trim();
            if pending.is_empty() {
                at.fail(format!("expected `{expected}`, but the input on line {pending_from} produced nothing more"));
            }
            let got = pending.remove(0);
            if got != expected {
                at.fail(format!("expected `{expected}`\n     got `{got}`\n  then {pending:#?}"));
            }
            continue;
        }
        check_done(&pending, pending_from, &at);
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] == "config" {
            step(Line::Config(&words[1..]), &at);
        } else if let Some(time) = words[0].strip_prefix('@') {
            let t = secs_after(t0, time, &at);
            if t < now {
                at.fail("time goes backwards");
            }
            now = t;
            pending = step(Line::Input { now, words: &words[1..] }, &at);
            pending_from = at.line;
        } else if words[0] == "?" {
            step(Line::Assert { words: &words[1..], line }, &at);
        } else {
            at.fail(format!("a line starts with @time, >, ? or config: {line}"));
        }
    }
    check_done(&pending, pending_from, &at);
}
