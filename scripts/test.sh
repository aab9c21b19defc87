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
# Extra arguments go to `cargo test` (e.g. a test name filter). Every test binary runs
# even when one fails; the failed tests are listed at the end. Then every fuzz target
# runs LLMOS_FUZZ_RUNS inputs (default 100,000, seed fixed; 0 skips; scripts/fuzz.sh
# installs cargo-fuzz and builds the targets, ~10 min from scratch on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
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
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log" || rc=$?
t2=$(date +%s)
echo "== tests took $((t2 - t1)) s"
# Every fuzz target for a fixed number of inputs with a fixed seed, from the committed
# seeds only (scripts/fuzz.sh; LLMOS_FUZZ_RUNS per target, 0 to skip), so the step does
# not depend on the machine's speed or on a corpus grown earlier. Skipped when arguments
# select tests.
fuzz_rc=0
fuzz_runs=${LLMOS_FUZZ_RUNS:-100000}
if [ $# -eq 0 ] && [ "$fuzz_runs" != 0 ]; then
  echo "== fuzzing, ${fuzz_runs} inputs per target"
  FUZZ_RUNS=$fuzz_runs bash scripts/fuzz.sh || fuzz_rc=$?
fi
t3=$(date +%s)
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
