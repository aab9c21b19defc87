#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (src/fuzz.rs) with cargo-fuzz and libFuzzer on
# stable Rust (`--sanitizer none`: coverage-guided, without AddressSanitizer, which
# needs a nightly compiler; safe Rust has no memory errors for it to find, the
# properties in src/fuzz.rs are what fail).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 30 s, every target)
#   FUZZ_RUNS=N scripts/fuzz.sh                            (N inputs per target instead)
#   FUZZ_BUILD_ONLY=1 scripts/fuzz.sh                      (only build the targets)
#
# With FUZZ_RUNS, each target runs exactly N inputs with libFuzzer's seed fixed, from the
# committed seeds and regressions only (a scratch corpus, not the grown one): the amount
# of fuzzing does not depend on the machine's speed or on earlier runs, and the inputs
# are nearly the same each time (two runs here reached coverage within 1 % of each other;
# libFuzzer is not fully deterministic). The test command uses this mode. Without it the
# runs are timed and build on the corpus grown before.
#
# Each target starts from its committed seeds (fuzz/seeds/<target>, written by
# fuzz/seeds.py), the inputs that once failed (fuzz/regressions/<target>) and the corpus
# grown by earlier runs on this machine, kept outside the clone
# (${LLMOS_CACHE:-~/.cache/llmos}/fuzz-corpus/<target>), where what it finds goes. A
# failed property ends that target's run: the input is written to
# fuzz/artifacts/<target>/, the panic and the command that reproduces it are printed, and
# the script exits 1 after the other targets; copy the input to
# fuzz/regressions/<target>/ once fixed (tests/fuzz_corpus.rs replays it on stable).
# Prints executions, executions per second and coverage per target.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(trace servegen exposition prometheus scenario train_config checkpoint workload)
fi
source scripts/env.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
fi
flags=(--sanitizer none)
cache="${LLMOS_CACHE:-$HOME/.cache/llmos}/fuzz-corpus"
cd fuzz
t0=$(date +%s)
echo "== building the fuzz targets"
cargo fuzz build "${flags[@]}" 2>&1 | grep -E "^(error|warning: unused)|Finished" || true
t1=$(date +%s)
if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
  echo "== fuzz targets built in $((t1 - t0)) s"
  exit 0
fi
if [ -n "${FUZZ_RUNS:-}" ]; then per="$FUZZ_RUNS inputs (seed 1)"; else per="$secs s"; fi
echo "== built in $((t1 - t0)) s; $per per target"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/llmos-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
printf '%-14s %12s %10s %8s %8s %8s\n' target executions "execs/s" cov features corpus > "$scratch/summary"
failed=()
for t in "${targets[@]}"; do
  grown="$cache/$t"
  limit=(-max_total_time="$secs")
  if [ -n "${FUZZ_RUNS:-}" ]; then
    grown="$scratch/corpus-$t"
    limit=(-runs="$FUZZ_RUNS" -seed=1)
  fi
  mkdir -p "$grown" "regressions/$t" "artifacts/$t"
  log="$scratch/$t.log"
  rc=0
  # The first folder receives new inputs; the others are read. -rss_limit_mb: an input
  # that makes a reader allocate gigabytes is a failure too.
  cargo fuzz run "${flags[@]}" "$t" "$grown" "seeds/$t" "regressions/$t" -- \
    "${limit[@]}" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-14s %12s %10s %8s %8s %8s\n' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$(ls "$grown" | wc -l)" >> "$scratch/summary"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "== $t: a property failed (libFuzzer exit $rc):"
    grep -E "panicked at|ERROR: libFuzzer" -A2 "$log" | head -12 || true
    art=$(grep -oE "artifacts/$t/[^ ]+" "$log" | tail -1 || true)
    [ -n "$art" ] && echo "== reproduce: (cd fuzz && cargo fuzz run ${flags[*]} $t $art)"
    continue
  fi
done
cat "$scratch/summary"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== a property failed in: ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
echo "== fuzzed ${#targets[@]} targets in $(( $(date +%s) - t1 )) s, no property failed"
