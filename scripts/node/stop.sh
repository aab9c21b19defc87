#!/bin/bash
# Stops the node scripts/node/start.sh started in RUNDIR and removes what it left on the
# machine: the kubelet, every container of its containerd (tasks, shims and any process
# still in the node's cgroups), containerd, the mounts under RUNDIR (pod volumes,
# container root filesystems, network namespaces), the bridge, the node's cgroups, the
# pods' log directories and the CNI cache entries of its network; then RUNDIR itself
# unless KEEP_RUNDIR=1. The Node object stays in the API server (it goes NotReady).
#
#   scripts/node/stop.sh RUNDIR
RUN=${1:?usage: scripts/node/stop.sh RUNDIR}
[ -d "$RUN" ] || exit 0
RUN=$(cd "$RUN" && pwd)
cd "$RUN" || exit 0

# stop_pid FILE SECONDS: SIGTERM, up to SECONDS for the exit, then SIGKILL.
stop_pid() {
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$1"
}

stop_pid kubelet.pid 10

# Every container of this containerd, the sandboxes included: killed, deleted, removed.
CTR=(ctr --address "$RUN/containerd.sock" -n k8s.io)
uids=""
ids=""
if [ -f containerd.pid ] && kill -0 "$(cat containerd.pid)" 2>/dev/null; then
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
    uid=$("${CTR[@]}" containers info "$c" 2>/dev/null | grep -o '"io.kubernetes.pod.uid": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
    [ -n "$uid" ] && uids="$uids $uid"
    ids="$ids $c"
    "${CTR[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1
  done
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
    for _ in $(seq 1 20); do
      "${CTR[@]}" tasks delete -f "$c" >/dev/null 2>&1 && break
      "${CTR[@]}" tasks ls -q 2>/dev/null | grep -qx "$c" || break
      sleep 0.1
    done
    "${CTR[@]}" containers rm "$c" >/dev/null 2>&1
  done
fi
stop_pid containerd.pid 10
# Shims of this containerd (their command line names its socket) and any process still
# in the node's cgroups.
for pid in $(pgrep -f -- "-address $RUN/containerd.sock" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
CGROOT=$(cat cgroup-root 2>/dev/null)
if [ -n "$CGROOT" ]; then
  for _ in 1 2 3; do
    pids=$(cat /sys/fs/cgroup/pids/"$CGROOT"/cgroup.procs /sys/fs/cgroup/pids/"$CGROOT"/*/cgroup.procs \
      $(find /sys/fs/cgroup/pids/"$CGROOT" -name cgroup.procs 2>/dev/null) 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null
    sleep 0.2
  done
fi

# Mounts under RUNDIR, deepest first: the kubelet's own root-dir bind mount, pod volumes,
# container root filesystems (overlay), network namespaces.
for _ in 1 2 3; do
  mounts=$(findmnt -rn -o TARGET | grep -F "$RUN/" | sort -r)
  [ -z "$mounts" ] && break
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done

BRIDGE=$(cat bridge 2>/dev/null)
if [ -n "$BRIDGE" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null
  done
  ip link del "$BRIDGE" 2>/dev/null
fi

if [ -n "$CGROOT" ]; then
  for d in /sys/fs/cgroup/*/"$CGROOT"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
fi

# The kubelet writes container logs to /var/log/pods/NS_NAME_UID (fixed in 1.20), links
# them from /var/log/containers, and removes them a minute or so after a Pod is deleted;
# the Pods it ran are in its log ("SyncLoop (ADD" lines name NAME_NS(UID)). libcni caches
# results in /var/lib/cni.
uids="$uids $(grep -o 'SyncLoop (ADD, "api"): "[^"]*' kubelet.log 2>/dev/null | grep -o '([0-9a-f-]*)' | tr -d '()' | sort -u)"
for uid in $uids; do
  rm -rf /var/log/pods/*_"$uid"
done
find /var/log/containers -maxdepth 1 -xtype l -delete 2>/dev/null
NETNAME=$(cat cni-network 2>/dev/null)
[ -n "$NETNAME" ] && rm -f /var/lib/cni/results/"$NETNAME"-* 2>/dev/null
for c in $ids; do rm -f /var/lib/cni/results/*-"$c"-* 2>/dev/null; done

cd /
if [ "${KEEP_RUNDIR:-0}" != 1 ]; then
  if findmnt -rn -o TARGET | grep -qF "$RUN/"; then
    echo "mounts under $RUN remain; not removing it" >&2
  else
    rm -rf --one-file-system "$RUN"
  fi
fi
exit 0
