#!/bin/bash
# Stops, kills or starts again one server of a control plane made by scripts/k8s/start.sh
# (same flags, same data), for the chaos tests (tests/e2e_chaos.rs).
#
#   scripts/k8s/chaos.sh RUNDIR stop|kill|start etcd|apiserver
#
# stop sends SIGTERM and waits up to 10 s for the exit (then SIGKILL); kill sends SIGKILL;
# start runs RUNDIR/<server>.sh again in the background and updates its pid file, so
# scripts/k8s/stop.sh still stops it.
set -euo pipefail
RUN=${1:?usage: scripts/k8s/chaos.sh RUNDIR stop|kill|start etcd|apiserver}
ACTION=${2:?usage: scripts/k8s/chaos.sh RUNDIR stop|kill|start etcd|apiserver}
WHAT=${3:?usage: scripts/k8s/chaos.sh RUNDIR stop|kill|start etcd|apiserver}
case "$WHAT" in
  etcd|apiserver) ;;
  *) echo "unknown server $WHAT (etcd or apiserver)" >&2; exit 2 ;;
esac
cd "$RUN"
case "$ACTION" in
  stop|kill)
    pid=$(cat "$WHAT.pid")
    if [ "$ACTION" = kill ]; then kill -9 "$pid" 2>/dev/null || true; else kill "$pid" 2>/dev/null || true; fi
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "$(date +%T) $WHAT stopped ($ACTION)" >>chaos.log
    ;;
  start)
    setsid bash "$WHAT.sh" >>"$WHAT.log" 2>&1 </dev/null &
    echo $! >"$WHAT.pid"
    echo "$(date +%T) $WHAT started again" >>chaos.log
    ;;
  *) echo "unknown action $ACTION (stop, kill or start)" >&2; exit 2 ;;
esac
