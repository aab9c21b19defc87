#!/bin/bash
# Stop the Prometheus server started by scripts/prometheus/start.sh RUN_DIR.
#   scripts/prometheus/stop.sh RUN_DIR
set -uo pipefail
RUN_DIR=${1:?usage: stop.sh RUN_DIR}
PIDFILE="$RUN_DIR/prometheus.pid"
[ -f "$PIDFILE" ] || exit 0
PID=$(cat "$PIDFILE")
if kill -0 "$PID" 2>/dev/null; then
  kill "$PID"
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && kill -9 "$PID"
fi
rm -f "$PIDFILE"
