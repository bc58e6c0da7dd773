#!/usr/bin/env bash
# Runs every Ferrule test on a fresh Debian machine, as root: installs the system packages the
# tests need, then format and lint checks, unit + datapath (BPF_PROG_TEST_RUN) + netns end-to-end
# and interop tests, and a bounded fuzzing run of every decoder. CI runs exactly this (.ci/run).
#
# Privileged tests need root: with CI=true a privileged test that cannot run fails, never skips.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test-all.sh: run as root (the datapath and netns tests need it): sudo $0" >&2
    exit 1
fi

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "system packages"
# One package list for the lab and the tests: lab.sh deps runs apt-get update and install -y for
# whatever is missing, without starting the routing daemons' system services.
bash deploy/lab/lab.sh deps

if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (binaries used by the end-to-end tests)"
cargo build --workspace --all-targets --locked

step "tests"
FERRULE_BIN="$repo/target/debug/ferrule" cargo test --workspace --locked --no-fail-fast

step "fuzz (bounded)"
fuzz_seconds=${FUZZ_SECONDS:-30}
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
for dir in */fuzz; do
    [ -f "$dir/Cargo.toml" ] || continue
    for target in $(cd "$dir" && cargo fuzz list); do
        echo "fuzz $dir $target for ${fuzz_seconds}s"
        # pipefail makes a crash (non-zero cargo fuzz) fail the run; the tail keeps the artifact path.
        (cd "$dir" && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$repo/target/fuzz" \
            cargo fuzz run "$target" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 2>&1 | tail -n 30)
    done
done

step "all tests passed"
