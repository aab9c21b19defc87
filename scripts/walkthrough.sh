#!/usr/bin/env bash
# The end-to-end walkthrough of docs/e2e.md on one machine, as one script: a loopback
# Kubernetes control plane (etcd, kube-apiserver and kube-controller-manager 1.20),
# Prometheus, `llmos twin-serve` as the data plane, the operator, and the example
# workloads of manifests/examples/. It waits until every example workload has been
# decided for, prints what a cluster operator looks at (kubectl get/describe, events, the
# decision pages), then stops everything; with --keep it leaves the stack running and
# prints how to stop it. tests/e2e_walkthrough.rs runs this script, and the command
# block in docs/e2e.md is the part between the `walkthrough` markers below, so neither
# can drift.
#
#   scripts/walkthrough.sh [--keep] [RUN_DIR]      (RUN_DIR default /tmp/llmos-e2e)
#
# Environment: PROM_PORT (9090), OPERATOR_ADDR (127.0.0.1:8080), WATCH_S (120, how long
# to wait for decisions), LLMOS (the llmos binary; default: build target/debug/llmos),
# and scripts/k8s/start.sh's ETCD_PORT, ETCD_PEER_PORT, API_PORT, KCM_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
if [ "${1:-}" = "--keep" ]; then KEEP=1; shift; fi
RUN=${1:-/tmp/llmos-e2e}
PROM_PORT=${PROM_PORT:-9090}
OPERATOR_ADDR=${OPERATOR_ADDR:-127.0.0.1:8080}
WATCH_S=${WATCH_S:-120}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
if [ -z "${LLMOS:-}" ]; then
  source scripts/env.sh
  cargo build --bin llmos
  LLMOS=./target/debug/llmos
fi
bash scripts/k8s/build.sh >/dev/null
stop() {
  [ -f "$RUN/twin.pid" ] && kill "$(cat "$RUN/twin.pid")" 2>/dev/null || true
  [ -f "$RUN/operator.pid" ] && kill "$(cat "$RUN/operator.pid")" 2>/dev/null || true
  bash scripts/prometheus/stop.sh "$RUN/prom" 2>/dev/null || true
  bash scripts/k8s/stop.sh "$RUN/k8s" 2>/dev/null || true
}
if [ "$KEEP" = 0 ]; then trap stop EXIT; fi

# --- walkthrough ---
WITH_KCM=1 scripts/k8s/start.sh $RUN/k8s               # etcd + apiserver + controller-manager
export KUBECONFIG=$RUN/k8s/kubeconfig
KUBECTL=${LLMOS_K8S_BIN:-$HOME/.cache/llmos/k8s-1.20.2/bin}/kubectl

$LLMOS crdgen | $KUBECTL apply -f -
$KUBECTL wait --for condition=established crd/llmworkloads.llmos.dev

echo "[{\"targets\": [\"$OPERATOR_ADDR\"]}]" > $RUN/operator-targets.json
OPERATOR_TARGETS=$RUN/operator-targets.json RULE_FILES=$PWD/charts/llmos-operator/files/alerts.yaml \
    scripts/prometheus/start.sh $RUN/prom $RUN/targets.json $PROM_PORT
$LLMOS twin-serve --scenario scenarios/tiny-step-two-pools.toml \
    --namespace default --speed 10 --targets-file $RUN/targets.json > $RUN/twin.log 2>&1 &
echo $! > $RUN/twin.pid
LLMOS_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT $LLMOS run \
    --metrics-addr $OPERATOR_ADDR --lease-namespace default > $RUN/operator.log 2>&1 &
echo $! > $RUN/operator.pid

# The examples name the in-cluster Prometheus; here it is on loopback.
for f in manifests/examples/*.yaml; do
  sed "s#http://prometheus.monitoring.svc:9090#http://127.0.0.1:$PROM_PORT#" $f | $KUBECTL apply -f -
done
# --- end walkthrough ---

# Wait until every example workload has a decision (active or shadow) in its status.
names=$($KUBECTL get llmworkloads -o jsonpath='{.items[*].metadata.name}')
deadline=$(( $(date +%s) + WATCH_S ))
for n in $names; do
  until [ -n "$($KUBECTL get llmworkload "$n" -o jsonpath='{.status.lastDecision.policy}{.status.shadowDecision.policy}')" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "no decision for $n within ${WATCH_S}s; the operator's log:" >&2
      tail -n 30 "$RUN/operator.log" >&2
      exit 1
    fi
    sleep 2
  done
done

echo "== kubectl get llmworkloads -o wide"
$KUBECTL get llmworkloads -o wide
echo "== kubectl get deployments,pods"
$KUBECTL get deployments,pods
for n in $names; do
  echo "== kubectl describe llmworkload $n (conditions and events)"
  $KUBECTL describe llmworkload "$n" | sed -n '/Conditions:/,$p'
done
echo "== the operator's own events"
$KUBECTL get events --field-selector involvedObject.kind=LLMWorkload
echo "== the decision pages: http://$OPERATOR_ADDR/decisions"
curl -fsS "http://$OPERATOR_ADDR/decisions" | grep -o 'href="/decisions/[^"]*"' | sort -u
for n in $names; do
  echo "== the last tick of $n (http://$OPERATOR_ADDR/decisions/default/$n/json)"
  curl -fsS "http://$OPERATOR_ADDR/decisions/default/$n/json" | python3 -c '
import json, sys
e = json.load(sys.stdin)[-1]
p = e.get("proposal") or {}
print("kind", e["kind"], "| policy", p.get("policy"), "|", p.get("reason") or e.get("heldBecause"))'
done
echo "== Prometheus: http://127.0.0.1:$PROM_PORT"
curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query?query=llmos_workload_arrival_rate_rps" | head -c 400; echo

if [ "$KEEP" = 1 ]; then
  echo "running; stop with: kill \$(cat $RUN/twin.pid) \$(cat $RUN/operator.pid); scripts/prometheus/stop.sh $RUN/prom; scripts/k8s/stop.sh $RUN/k8s"
fi
