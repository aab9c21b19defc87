#!/usr/bin/env bash
# Runs the test binaries that `cargo test --no-run --message-format=json` built, in two
# lanes at once, and appends their output to LOG in cargo test's own format (a
# `Running SRC (EXE)` line, then what the binary printed), one binary's output whole at a
# time. Called by scripts/test.sh; the lanes are what made the suite fit its time.
#
#   scripts/test-lanes.sh CARGO_JSON LOG
#
# Lane "apart": the tests that must not overlap each other and should not overlap much
# else: the real-node tests (one kubelet, one bridge, one node name) and the chaos tests
# (they kill and partition their own control plane and measure how long recovery takes),
# one after another. Lane "beside": every other binary (unit tests, the twin, the
# learning tests, the other end-to-end tests: each starts its own API server and
# Prometheus on free ports, and every `twin-serve` of the tests has its own loopback
# address range), one after another, beside the first lane. Each binary runs from the
# repository root with stdin closed, as `cargo test` runs it. Exits 1 if any binary
# failed, after all of them ran.
set -uo pipefail
json=${1:?usage: scripts/test-lanes.sh CARGO_JSON LOG}
log=${2:?usage: scripts/test-lanes.sh CARGO_JSON LOG}
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/llmos-lanes.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The test executables, once each, in cargo's order: "KIND NAME SHOWN EXE" per line,
# tab-separated (SHOWN is what cargo prints after `Running`).
python3 - "$json" >"$work/plan" <<'EOF'
import json, os, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test") or m["executable"] in seen:
        continue
    seen.add(m["executable"])
    t = m["target"]
    src = os.path.relpath(t["src_path"])
    kind = t["kind"][0]
    shown = src if kind == "test" else "unittests " + src
    print(kind, t["name"], shown, m["executable"], sep="\t")
EOF
apart='^e2e_(chart|node|node_workload|training|learning_loop|chaos|chaos_api|chaos_many)$'
awk -F'\t' -v re="$apart" '$1 == "test" && $2 ~ re' "$work/plan" >"$work/apart"
awk -F'\t' -v re="$apart" '!($1 == "test" && $2 ~ re)' "$work/plan" >"$work/beside"
echo "== $(wc -l <"$work/plan") test binaries: $(wc -l <"$work/apart") real-node and chaos tests in one lane, $(wc -l <"$work/beside") others beside them"

# run_lane NAME: every binary of the lane in turn; the lane's status goes to $work/NAME.rc.
run_lane() {
  local lane=$1 rc=0 kind name src exe out code t
  while IFS=$'\t' read -r kind name src exe; do
    out="$work/$lane.out"
    t=$(date +%s)
    code=0
    "$exe" </dev/null >"$out" 2>&1 || code=$?
    [ "$code" -eq 0 ] || rc=1
    {
      flock 9
      {
        echo "     Running $src ($exe)"
        cat "$out"
        echo "     ($lane lane: $name took $(($(date +%s) - t)) s, exit $code)"
      } | tee -a "$log"
    } 9>"$work/lock"
  done <"$work/$lane"
  echo "$rc" >"$work/$lane.rc"
}
run_lane apart &
run_lane beside &
wait
[ "$(cat "$work/apart.rc")" = 0 ] && [ "$(cat "$work/beside.rc")" = 0 ]
