#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable Rust (the
# flags cargo-fuzz passes, without a sanitizer) and runs each one from its seed corpus.
#
#   fuzz/run.sh                       every target for 15 s (what CI runs)
#   FUZZ_SECONDS=600 fuzz/run.sh http one target for 10 minutes
#   FUZZ_RUNS=10000000 fuzz/run.sh    every target for 10 million inputs
#
# Each run works on a copy of the seed corpus (fuzz/corpus/<target>) in fuzz/runs/, so the
# committed corpus changes only by hand. A crash stops the script with the input that caused
# it in fuzz/runs/<target>/artifacts/; turn it into a regression test (see docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")"
TARGETS=(frame method field_table content_header sasl http stream_frame)
[ $# -gt 0 ] && TARGETS=("$@")
FLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
FLAGS+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
FLAGS+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the flags off build scripts and proc macros, which are not
# linked with libFuzzer.
HOST="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="$FLAGS" cargo build --release --locked --quiet --target "$HOST" --target-dir target --bins
for t in "${TARGETS[@]}"; do
  work="${FUZZ_WORK:-runs}/$t"
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
  cp corpus/"$t"/* "$work/corpus/" 2>/dev/null || true
  limit=(-max_total_time="${FUZZ_SECONDS:-15}")
  [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
  echo "== fuzz $t ${limit[*]}"
  # -rss_limit_mb bounds memory per input as the broker's own limits do; -timeout flags
  # an input that takes a second.
  if ! target/"$HOST"/release/"$t" "$work/corpus" "${limit[@]}" -max_len=65536 -rss_limit_mb=2048 -timeout=1 \
      -artifact_prefix="$work/artifacts/" -print_final_stats=1 >"$work/log" 2>&1; then
    tail -40 "$work/log"
    echo "fuzz target $t failed: the input is in fuzz/$work/artifacts/" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "$work/log" | tr '\n' ' '
  echo
done
