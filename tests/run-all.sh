#!/usr/bin/env bash
# THE test command of lcs-bridge: what the README names and what CI (.ci/run) runs.
#
#   tests/run-all.sh
#
# 1. installs missing real peers (tests/install-peers.sh),
# 2. makes sure rustfmt and clippy are there,
# 3. cargo fmt --check, cargo clippy -D warnings,
# 4. LCS_BRIDGE_REQUIRE_PEERS=1 cargo test --all-targets (unit, integration, and the
#    criterion benches once in test mode), then the doc tests,
# 5. tests/fuzz/smoke.sh, if present.
# Fails fast: the first failing step ends the run with a non-zero exit.
# See docs/testing.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

# cargo from rustup may not be on a non-login PATH.
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH="$d:$PATH" ;; esac
done
export PATH
export CARGO_TERM_PROGRESS_WHEN=never
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

START=$(date +%s)
SECTION=""
SECTION_START=$START

section() {
    local now
    now=$(date +%s)
    if [ -n "$SECTION" ]; then
        printf '=== done: %s (%ss)\n' "$SECTION" "$((now - SECTION_START))"
    fi
    SECTION=$1
    SECTION_START=$now
    printf '\n'
    printf '=%.0s' {1..78}
    printf '\n=== %s\n' "$SECTION"
    printf '=%.0s' {1..78}
    printf '\n'
}

on_exit() {
    local rc=$?
    local now
    [ -n "${TEST_LOG:-}" ] && rm -f "$TEST_LOG"
    now=$(date +%s)
    if [ "$rc" -ne 0 ]; then
        printf '\n=== FAILED: %s (exit %s) after %ss in all\n' "${SECTION:-setup}" "$rc" "$((now - START))" >&2
    fi
}
trap on_exit EXIT

section "install peers (tests/install-peers.sh)"
bash "$ROOT/tests/install-peers.sh"

section "rust toolchain"
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
missing=()
cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v rustup >/dev/null 2>&1 || { echo "missing ${missing[*]} and no rustup to add them" >&2; exit 1; }
    rustup component add "${missing[@]}"
fi
cargo --version
rustc --version
cargo fmt --version
cargo clippy --version

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

TEST_LOG=$(mktemp "${TMPDIR:-/tmp}/lcsb-run-all.XXXXXX")
cleanup_log() { rm -f "$TEST_LOG"; }

section "cargo test --all-targets (LCS_BRIDGE_REQUIRE_PEERS=1)"
export LCS_BRIDGE_REQUIRE_PEERS=1
cargo test --all-targets 2>&1 | tee -a "$TEST_LOG"

section "cargo test --doc"
cargo test --doc 2>&1 | tee -a "$TEST_LOG"

if [ -f "$ROOT/tests/fuzz/smoke.sh" ]; then
    section "fuzz smoke (tests/fuzz/smoke.sh)"
    bash "$ROOT/tests/fuzz/smoke.sh"
fi

section "summary"
END=$(date +%s)
# Sum libtest's "test result: ok. N passed; M failed; ..." lines.
read -r passed failed < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$TEST_LOG" |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}')
cleanup_log
printf 'all steps passed in %ss\n' "$((END - START))"
SECTION=""
printf 'run-all: %s passed, %s failed\n' "$passed" "$failed"
