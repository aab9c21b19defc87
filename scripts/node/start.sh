#!/bin/bash
# Starts a real Kubernetes node on this machine for llmos's tests: containerd + runc
# (Debian's packages) and a kubelet 1.20 (built by scripts/k8s/build.sh) registered with
# the API server of KUBECONFIG (scripts/k8s/start.sh's RUNDIR/kubeconfig), with a bridge
# pod network (Debian's containernetworking-plugins), the Node labelled for a GPU product
# and `nvidia.com/gpu` advertised as an extended resource. Pods then really run: images
# come from containerd's local store only (images/build.sh; nothing can be pulled).
#
#   KUBECONFIG=K8SRUN/kubeconfig scripts/node/start.sh RUNDIR      then: scripts/node/stop.sh RUNDIR
#
# Needs root. What this machine refuses (no cgroup v1 hierarchies, runc cannot start a
# container, no bridge or veth) ends the script with exit status 3 and a line starting
# "node refused:" that names it; a missing part (kubelet not built, a package that does
# not install) with status 2; anything else that fails with 1. docs/node.md lists the
# limits found and what is done about each.
#
# Environment:
#   KUBECONFIG        kubeconfig of the API server (a token user and a certificate-authority
#                     file, as scripts/k8s/start.sh writes; required)
#   LLMOS_K8S_BIN     directory with kubelet and kubectl (default ~/.cache/llmos/k8s-1.20.2/bin)
#   NODE_NAME         Node name (default llmos-node)
#   GPU_PRODUCT       value of the nvidia.com/gpu.product label (default NVIDIA-A100-SXM4-80GB)
#   GPU_COUNT         nvidia.com/gpu capacity advertised on the Node (default 8; 0: none)
#   NODE_LABELS       more labels, k=v,k=v
#   POD_CIDR          the node's pod subnet, a /24 (default 10.244.0.0/24); its .1 is the
#                     bridge's address and the Node's InternalIP
#   BRIDGE            the bridge's name (default: derived from RUNDIR, 12 characters)
#   KUBELET_PORT KUBELET_HEALTHZ_PORT   kubelet ports on the node address (default 10250 10248)
#   IMAGES            OCI layout directories (images/build.sh) to import besides the pause image
#   WATCH_PID=PID     stop the node automatically once process PID exits (used by the tests)
#   READY_TIMEOUT     seconds to wait for the Node to be Ready (default 300)
set -euo pipefail
RUN=${1:?usage: KUBECONFIG=... scripts/node/start.sh RUNDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${LLMOS_K8S_BIN:-$HOME/.cache/llmos/k8s-1.20.2/bin}
KC=${KUBECONFIG:?set KUBECONFIG to the kubeconfig of the API server (scripts/k8s/start.sh RUNDIR writes RUNDIR/kubeconfig)}
NODE=${NODE_NAME:-llmos-node}
GPU_PRODUCT=${GPU_PRODUCT:-NVIDIA-A100-SXM4-80GB}
GPU_COUNT=${GPU_COUNT:-8}
POD_CIDR=${POD_CIDR:-10.244.0.0/24}
KUBELET_PORT=${KUBELET_PORT:-10250}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-10248}
READY_TIMEOUT=${READY_TIMEOUT:-300}
t0=$(date +%s.%N)
say() { echo "$(date +%T) $*"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
refuse() { echo "node refused: $*" >&2; exit 3; }
missing() { echo "node: missing $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || refuse "not root (containerd, runc and the kubelet need root)"
case "$POD_CIDR" in
  */24) NET=${POD_CIDR%.0/24} ;;
  *) echo "POD_CIDR must be a /24 ending in .0 (got $POD_CIDR)" >&2; exit 1 ;;
esac
NODE_IP=$NET.1

# Parts: Debian's containerd, runc and CNI plugins, installed when missing.
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    missing "${need[*]} (apt-get install failed)"
fi
[ -x "$BIN/kubelet" ] || missing "$BIN/kubelet (build it with scripts/k8s/build.sh)"
[ -x "$BIN/kubectl" ] || missing "$BIN/kubectl (scripts/k8s/build.sh)"
SERVER=$(awk '$1 == "server:" { print $2; exit }' "$KC")
CA=$(awk '$1 == "certificate-authority:" { print $2; exit }' "$KC")
TOKEN=$(awk '$1 == "token:" { print $2; exit }' "$KC")
[ -n "$SERVER" ] && [ -f "$CA" ] && [ -n "$TOKEN" ] ||
  { echo "$KC: expected a server, a certificate-authority file and a token (as scripts/k8s/start.sh writes)" >&2; exit 1; }

# What the kernel must allow. The kubelet 1.20 manages pods' cgroups through cgroup v1
# hierarchies (its cgroup v2 support came later).
for s in cpu cpuacct cpuset memory pids; do
  [ -f "/sys/fs/cgroup/$s/cgroup.procs" ] ||
    refuse "no cgroup v1 '$s' hierarchy at /sys/fs/cgroup/$s (kubelet 1.20 needs cgroup v1: cpu, cpuacct, cpuset, memory, pids)"
done
SNAPSHOTTER=overlayfs
grep -qw overlay /proc/filesystems || SNAPSHOTTER=native

rm -rf "$RUN"
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
BRIDGE=${BRIDGE:-llm$(echo "$RUN" | sha256sum | cut -c1-9)}
CGROOT=llmos-$NODE-$(echo "$RUN" | sha256sum | cut -c1-6)
NETNAME=llmos-$NODE
cd "$RUN"
mkdir -p images cni/net.d cni/ipam containerd kubelet/pki probe/rootfs
printf '%s\n' "$BRIDGE" >bridge
printf '%s\n' "$CGROOT" >cgroup-root
printf '%s\n' "$NETNAME" >cni-network
printf '%s\n' "$NODE" >node-name
cp "$KC" kubeconfig-apiserver

if [ -n "${WATCH_PID:-}" ]; then
  # A detached watchdog: when the watched process is gone, stop the node.
  setsid bash -c "while kill -0 $WATCH_PID 2>/dev/null; do sleep 1; done; exec '$HERE/stop.sh' '$RUN'" \
    >/dev/null 2>&1 </dev/null &
fi
fail() {
  echo "$*" >&2
  "$HERE/stop.sh" "$RUN" >/dev/null 2>&1 || true
  exit 1
}

# The sandbox ("pause") image, then a first container straight from runc: namespaces,
# mounts and cgroups as every Pod needs them. A refusal here is the kernel's.
bash "$REPO/images/build.sh" pause "$RUN/images/pause" 2>>images.log || missing "the pause image (images.log)"
# (the pause image has one layer, its largest blob)
tar -C probe/rootfs -xf "$RUN/images/pause/blobs/sha256/$(ls -S "$RUN/images/pause/blobs/sha256" | head -1)"
(cd probe && runc spec)
sed -i -e 's/"terminal": true/"terminal": false/' -e 's#"sh"#"/pause", "-v"#' probe/config.json
if ! out=$(runc --root "$RUN/probe/state" run -b "$RUN/probe" "llmos-probe-$$" 2>&1); then
  runc --root "$RUN/probe/state" delete -f "llmos-probe-$$" >/dev/null 2>&1 || true
  "$HERE/stop.sh" "$RUN" >/dev/null 2>&1 || true
  refuse "runc cannot start a container (new namespaces, mounts, cgroups): $out"
fi
rm -rf probe
# The pod network: a bridge holding the node's address, veths into each pod's namespace.
if ! out=$(ip link add "$BRIDGE" type bridge 2>&1); then
  "$HERE/stop.sh" "$RUN" >/dev/null 2>&1 || true
  refuse "cannot create a network bridge ($out)"
fi
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
if ! out=$(ip link add "v${BRIDGE}a" type veth peer name "v${BRIDGE}b" 2>&1); then
  "$HERE/stop.sh" "$RUN" >/dev/null 2>&1 || true
  refuse "cannot create a veth pair ($out)"
fi
ip link del "v${BRIDGE}a" 2>/dev/null || true
say "machine checks passed ($(since "$t0") s)"

# containerd: everything of its own under RUNDIR (state, content, snapshots, network
# namespaces), the CRI plugin with runc and the bridge network. Without CAP_SYS_RESOURCE
# runc cannot lower a process's oom_score_adj (the kubelet asks -998 for sandboxes), so
# the CRI plugin clamps it to containerd's own.
restrict_oom=false
capbnd=$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)
(( (16#$capbnd >> 24) & 1 )) || restrict_oom=true
cat >containerd.toml <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd.sock"
[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "llmos.local/pause:3.4.1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = $restrict_oom
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$SNAPSHOTTER"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
EOF
cat >cni/net.d/10-llmos.conflist <<EOF
{"cniVersion": "0.4.0", "name": "$NETNAME", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$RUN/cni/ipam"}}]}
EOF
t1=$(date +%s.%N)
setsid containerd --config "$RUN/containerd.toml" >containerd.log 2>&1 </dev/null &
echo $! >containerd.pid
CTR=(ctr --address "$RUN/containerd.sock" -n k8s.io)
for _ in $(seq 1 300); do
  "${CTR[@]}" version >/dev/null 2>&1 && break
  kill -0 "$(cat containerd.pid)" 2>/dev/null || fail "containerd exited: $(tail -5 containerd.log)"
  sleep 0.1
done
"${CTR[@]}" version >/dev/null 2>&1 || fail "containerd did not answer on $RUN/containerd.sock in 30 s"
say "containerd up ($(since "$t1") s)"

t2=$(date +%s.%N)
for img in "$RUN/images/pause" ${IMAGES:-}; do
  [ -f "$img/index.json" ] || fail "$img is not an OCI layout (images/build.sh)"
  tar -C "$img" -cf - . | "${CTR[@]}" images import - >>images.log 2>&1 || fail "importing $img: $(tail -3 images.log)"
  printf '%s\n' "$(cat "$img/name" 2>/dev/null || echo "$img")" >>images.list
done
say "images imported: $(paste -sd' ' images.list) ($(since "$t2") s)"

# The kubelet's pods live in cgroups under /$CGROOT of each hierarchy (so several nodes
# can share the machine, and stop.sh removes exactly these).
for d in /sys/fs/cgroup/*/; do
  s=$(basename "$d")
  [ "$s" = unified ] && continue
  [ -f "$d/cgroup.procs" ] || continue
  mkdir -p "$d$CGROOT"
  if [ "$s" = cpuset ]; then
    cat "$d/cpuset.cpus" >"$d$CGROOT/cpuset.cpus"
    cat "$d/cpuset.mems" >"$d$CGROOT/cpuset.mems"
  fi
done

# The kubelet: cgroupfs driver, no swap check, lenient eviction (a shared CI disk),
# its server on the node address only and open to nobody (no client CA is configured,
# so the API server cannot reach it: no `kubectl logs`/`exec`; logs are files).
cat >kubelet.yaml <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROOT
failSwapOn: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 4s
serializeImagePulls: false
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
volumePluginDir: $RUN/kubelet/volume-plugins
maxPods: 32
EOF
labels="nvidia.com/gpu.product=$GPU_PRODUCT,nvidia.com/gpu.count=$GPU_COUNT,llmos.dev/node=real${NODE_LABELS:+,$NODE_LABELS}"
cat >kubelet.sh <<EOF
exec "$BIN/kubelet" --config="$RUN/kubelet.yaml" --kubeconfig="$RUN/kubeconfig-apiserver" \\
  --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet/pki" \\
  --container-runtime=remote --container-runtime-endpoint="unix://$RUN/containerd.sock" \\
  --pod-infra-container-image=llmos.local/pause:3.4.1 \\
  --hostname-override="$NODE" --node-ip="$NODE_IP" --node-labels="$labels" --v=2
EOF
t3=$(date +%s.%N)
setsid bash kubelet.sh >kubelet.log 2>&1 </dev/null &
echo $! >kubelet.pid

KUBECTL=("$BIN/kubectl" --kubeconfig "$RUN/kubeconfig-apiserver")
ready=""
for _ in $(seq 1 $((READY_TIMEOUT * 2))); do
  kill -0 "$(cat kubelet.pid)" 2>/dev/null || fail "the kubelet exited; last lines of $RUN/kubelet.log:
$(tail -20 kubelet.log)"
  ready=$("${KUBECTL[@]}" get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$ready" = True ] && break
  sleep 0.5
done
[ "$ready" = True ] || fail "Node $NODE not Ready after $READY_TIMEOUT s (Ready=$ready); last lines of $RUN/kubelet.log:
$(tail -20 kubelet.log)"
say "kubelet registered $NODE, Ready ($(since "$t3") s)"

# The API server taints a new Node not-ready (admission), and the node lifecycle
# controller lifts the taint once the kubelet reports Ready; scripts/k8s/start.sh does not
# run that controller (its tests make Nodes without kubelets), so the taint goes here.
"${KUBECTL[@]}" taint nodes "$NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
# No device plugin can run without GPUs: the GPUs are advertised as an extended resource
# on the Node's status, which the kubelet keeps (and copies to allocatable).
if [ "$GPU_COUNT" != 0 ]; then
  code=$(curl -sS -o patch.out -w '%{http_code}' --cacert "$CA" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json-patch+json' -X PATCH "$SERVER/api/v1/nodes/$NODE/status" \
    -d "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPU_COUNT\"},
         {\"op\":\"add\",\"path\":\"/status/allocatable/nvidia.com~1gpu\",\"value\":\"$GPU_COUNT\"}]")
  [ "$code" = 200 ] || fail "patching $NODE's status with nvidia.com/gpu=$GPU_COUNT: HTTP $code $(cat patch.out)"
fi
for _ in $(seq 1 600); do
  taints=$("${KUBECTL[@]}" get node "$NODE" -o 'jsonpath={.spec.taints}' 2>/dev/null || echo '?')
  gpus=$("${KUBECTL[@]}" get node "$NODE" -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}' 2>/dev/null || true)
  [ -z "$taints" ] && { [ "$GPU_COUNT" = 0 ] || [ "$gpus" = "$GPU_COUNT" ]; } && break
  sleep 0.5
done
say "node $NODE ready after $(since "$t0") s: $NODE_IP, pods on $BRIDGE ($POD_CIDR), nvidia.com/gpu=$GPU_COUNT, $GPU_PRODUCT"
