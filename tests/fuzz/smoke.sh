#!/usr/bin/env bash
# Smoke-runs every fuzz target for FUZZ_SECONDS (default 30) each, starting from the seeds in
# tests/fuzz/seeds/. Long runs (the 10-minute campaigns recorded in docs/testing.md) use the
# same command with a larger FUZZ_SECONDS. cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP
# lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1
SECONDS_EACH=${FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
for target in sip_parse sip_framing pidf_parse im_body stanza_build; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "--- fuzz $target for ${SECONDS_EACH}s"
    log="$corpus.log"
    if ! cargo fuzz run --fuzz-dir . "$target" "$corpus" -- \
        -max_total_time="$SECONDS_EACH" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target FAILED (reproducer under tests/fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "$log" || tail -n 3 "$log"
done
echo "fuzz smoke: all targets clean"
