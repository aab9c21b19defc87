#!/bin/bash
# Stops what scripts/k8s/start.sh started in RUNDIR (by the pid files it wrote), waits
# for the processes to exit, and removes the run directory unless KEEP_RUNDIR=1.
#
#   scripts/k8s/stop.sh RUNDIR
RUN=${1:?usage: scripts/k8s/stop.sh RUNDIR}
[ -d "$RUN" ] || exit 0
for p in scheduler controller-manager apiserver etcd; do
  f="$RUN/$p.pid"
  [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
done
for p in scheduler controller-manager apiserver etcd; do
  f="$RUN/$p.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$f"
done
[ "${KEEP_RUNDIR:-0}" = 1 ] || rm -rf "$RUN"
exit 0
