#!/usr/bin/env bash
# Runs the whole llmos test suite on a fresh clone. Installs what the tests need,
# caching it outside the clone (LLMOS_CACHE, default ~/.cache/llmos) so it is paid
# once per machine:
#   - libtorch from PyTorch's CPU wheel (scripts/setup-libtorch.sh, ~30 s)
#   - etcd, kube-apiserver and kube-controller-manager 1.20 built from Debian's
#     source package (scripts/k8s/build.sh, ~5-12 min once)
#   - Debian's prometheus, a font for the plots, and chromium (the decision page is
#     rendered and screenshotted headless by tests/e2e_dqn.rs)
#   - the Helm chart renderer (scripts/chart/render.sh: Debian's golang-go and
#     golang-github-masterminds-sprig-dev, ~10 s to install and build once)
# Without arguments: every test binary is built, then they run in two lanes at once (the
# end-to-end tests one after another, the others beside them: scripts/test-lanes.sh),
# then the doc-tests. Extra arguments go to a plain `cargo test` instead (e.g. a test
# name filter). Every test binary runs even when one fails; the failed tests are listed
# at the end. Then every fuzz target runs LLMOS_FUZZ_RUNS inputs (default 100,000, seed
# fixed; 0 skips; scripts/fuzz.sh installs cargo-fuzz; the targets, ~14 min to build
# from scratch on 2 cores, build at the lowest priority while the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
# A clean machine builds everything once: incremental state would only add gigabytes to
# target/ (the CI disk is shared and was once filled by this suite). Set
# CARGO_INCREMENTAL=1 to keep it for repeated local runs.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# disk_report WHAT: what this suite holds on the disk and what is left, for the log.
disk_report() {
  local used
  used=$(du -sh target fuzz/target 2>/dev/null | awk '{printf "%s %s; ", $2, $1}')
  echo "== disk after $1: ${used}free $(df -h --output=avail . | tail -1 | tr -d ' ')"
}
need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need_apt[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing ${need_apt[*]}: install them with apt-get (needs root)" >&2
    exit 1
  fi
fi
echo "== libtorch"
source scripts/env.sh
echo "LIBTORCH=$LIBTORCH"
echo "== Kubernetes test server (etcd + kube-apiserver + kube-controller-manager 1.20)"
bash scripts/k8s/build.sh
# The chart renderer (tests/chart_render.rs, tests/e2e_chart.rs): Debian's Go and sprig,
# built once into the cache. Without them (not root, apt failing) the render test skips
# and says so; the install test fails, as for any missing end-to-end prerequisite.
echo "== chart renderer (scripts/chart/render.sh: Go text/template + sprig from Debian)"
bash scripts/chart/render.sh --build-only || echo "chart renderer unavailable (see above)"
t1=$(date +%s)
echo "== cargo test (set-up took $((t1 - t0)) s)"
# --no-fail-fast: one failing test binary does not hide the others' results. The output
# is kept so the failed tests can be listed together at the end.
log=$(mktemp "${TMPDIR:-/tmp}/llmos-test.XXXXXX")
trap 'rm -f "$log"' EXIT
rc=0
fuzz_runs=${LLMOS_FUZZ_RUNS:-100000}
if [ $# -gt 0 ]; then
  # Arguments select tests: cargo test runs them as it always does.
  cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log" || rc=$?
else
  # The whole suite: build every test binary and run the doc-tests, then run the test
  # binaries in two lanes at once (scripts/test-lanes.sh: the real-node and chaos tests
  # in turn, the others beside them). The fuzz targets build meanwhile at the lowest CPU
  # priority, in the time the end-to-end tests spend waiting.
  json="$log.json"
  trap 'rm -f "$log" "$log.json" "$log.fuzz-build"' EXIT
  cargo test --locked --no-run --message-format=json-render-diagnostics >"$json" || rc=$?
  t_built=$(date +%s)
  echo "== test binaries built in $((t_built - t1)) s"
  if [ "$rc" -eq 0 ]; then
    cargo test --locked --doc 2>&1 | tee -a "$log" || rc=$?
    fuzz_build=""
    if [ "$fuzz_runs" != 0 ]; then
      FUZZ_BUILD_ONLY=1 nice -n 19 bash scripts/fuzz.sh >"$log.fuzz-build" 2>&1 &
      fuzz_build=$!
    fi
    bash scripts/test-lanes.sh "$json" "$log" || rc=$?
    if [ -n "$fuzz_build" ]; then
      wait "$fuzz_build" || true
      cat "$log.fuzz-build"
    fi
  fi
fi
t2=$(date +%s)
echo "== tests took $((t2 - t1)) s"
disk_report "the tests"
# Every fuzz target for a fixed number of inputs with a fixed seed, from the committed
# seeds only (scripts/fuzz.sh; LLMOS_FUZZ_RUNS per target, 0 to skip), so the step does
# not depend on the machine's speed or on a corpus grown earlier. Skipped when arguments
# select tests.
fuzz_rc=0
if [ $# -eq 0 ] && [ "$fuzz_runs" != 0 ]; then
  echo "== fuzzing, ${fuzz_runs} inputs per target"
  FUZZ_RUNS=$fuzz_runs bash scripts/fuzz.sh || fuzz_rc=$?
fi
t3=$(date +%s)
if [ $# -eq 0 ] && [ "$fuzz_runs" != 0 ]; then disk_report "fuzzing"; fi
echo "== fuzzing took $((t3 - t2)) s; total $((t3 - t0)) s"
# Totals over every test binary and the doc-tests, from cargo's `test result:` lines.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
failed=$(awk '/^ *Running / { bin = $2 } /^ *Doc-tests / { bin = "doc-tests " $2 }
              /^test .* \.\.\. FAILED$/ { t = $0; sub(/^test /, "", t); sub(/ \.\.\. FAILED$/, "", t); print "  " bin ": " t }' "$log")
if [ -n "$failed" ]; then
  echo "== failed tests:"
  echo "$failed"
fi
if [ "$rc" -ne 0 ] && [ -z "$failed" ]; then
  echo "== cargo test exited with $rc (a build error or a crashed test binary: see above)"
fi
if [ "$fuzz_rc" -ne 0 ]; then
  echo "== fuzzing failed (exit $fuzz_rc): a property failed or the targets did not build; see above"
  [ "$rc" -ne 0 ] || rc=$fuzz_rc
fi
exit "$rc"
