#!/usr/bin/env bash
# Smoke-runs every fuzz target (or those named as arguments) for FUZZ_SECONDS (default 30)
# each, starting from the seeds in tests/fuzz/seeds/. The campaigns recorded in
# docs/testing.md use the same command with a larger FUZZ_SECONDS (one target per core:
# `FUZZ_SECONDS=3600 tests/fuzz/smoke.sh sip_parse & FUZZ_SECONDS=3600 tests/fuzz/smoke.sh
# pidf_parse`); the CPU time each run took is printed at its end. cargo-fuzz needs nightly
# features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1
TIMEFORMAT="%R s wall, %U s user CPU, %S s system CPU"
SECONDS_EACH=${FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(sip_parse sip_framing pidf_parse ms_presence_parse im_body stanza_build xml_reader)
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "--- fuzz $target for ${SECONDS_EACH}s"
    log="$corpus.log"
    if ! { time cargo fuzz run --fuzz-dir . "$target" "$corpus" -- \
        -max_total_time="$SECONDS_EACH" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; } \
        2>"$corpus.time"; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target FAILED (reproducer under tests/fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || tail -n 3 "$log"
    echo "$target: $(cat "$corpus.time")"
done
echo "fuzz smoke: all targets clean"
