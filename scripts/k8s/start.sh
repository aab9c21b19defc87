#!/bin/bash
# Starts a throw-away Kubernetes control plane on 127.0.0.1 for llmos's integration tests:
# etcd, kube-apiserver 1.20 and, with WITH_KCM=1, kube-controller-manager (and with
# WITH_SCHEDULER=1 kube-scheduler). No kubelet, so pods never run; the tests (or the twin)
# play the data plane.
#
#   scripts/k8s/start.sh RUNDIR
#
# Writes RUNDIR/kubeconfig (admin token user), RUNDIR/kubeconfig-operator (the operator's
# ServiceAccount identity, rights from manifests/02-rbac.yaml once applied), RUNDIR/audit.log
# (that identity's requests), RUNDIR/*.log and RUNDIR/*.pid.
# Environment:
#   LLMOS_K8S_BIN   directory with kube-apiserver / kube-controller-manager
#                   (default ~/.cache/llmos/k8s-1.20.2/bin, made by scripts/k8s/build.sh)
#   ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT   loopback ports
#                   (defaults 23790 23800 26443 20257 20259)
#   WITH_KCM=1      also start kube-controller-manager (Deployments get ReplicaSets and Pods, GC runs)
#   WITH_SCHEDULER=1  also start kube-scheduler (Pods are bound to the Nodes a test creates)
#   SERVICE_ACCOUNT_ADMISSION=1  keep the ServiceAccount admission plugin on: Pods get their
#                   ServiceAccount's token and ca.crt mounted (the token controller of
#                   WITH_KCM=1 makes the tokens), for Pods that run on a real node with the
#                   in-cluster configuration (tests/e2e_chart.rs). Off by default: without a
#                   token controller every Pod would be refused for want of a token.
#   WATCH_PID=PID   stop everything automatically once process PID exits (used by the tests,
#                   so a crashed or aborted test run leaves nothing behind)
set -euo pipefail
BIN=${LLMOS_K8S_BIN:-$HOME/.cache/llmos/k8s-1.20.2/bin}
RUN=${1:?usage: scripts/k8s/start.sh RUNDIR}
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
API_PORT=${API_PORT:-26443}
KCM_PORT=${KCM_PORT:-20257}
SCHED_PORT=${SCHED_PORT:-20259}
HERE=$(cd "$(dirname "$0")" && pwd)

for b in "$BIN/kube-apiserver" "$(command -v etcd || true)"; do
  if [ -z "$b" ] || [ ! -x "$b" ]; then
    echo "missing Kubernetes test binaries (looked for kube-apiserver in $BIN and etcd on PATH); run scripts/k8s/build.sh" >&2
    exit 2
  fi
done

rm -rf "$RUN"
mkdir -p "$RUN/pki" "$RUN/etcd"
RUN=$(cd "$RUN" && pwd)
cd "$RUN"
started=$(date +%s.%N)

# Certificates: a CA of our own, the apiserver's serving certificate, a service-account key pair.
quiet() { "$@" >/dev/null 2>&1; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=llmos-test-ca" -keyout pki/ca.key -out pki/ca.crt
quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout pki/apiserver.key -out pki/apiserver.csr
echo "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" > pki/san.cnf
quiet openssl x509 -req -in pki/apiserver.csr -CA pki/ca.crt -CAkey pki/ca.key -CAcreateserial -days 365 \
  -extfile pki/san.cnf -out pki/apiserver.crt
quiet openssl genrsa -out pki/sa.key 2048
quiet openssl rsa -in pki/sa.key -pubout -out pki/sa.pub
TOKEN=llmos-test-admin
echo "$TOKEN,llmos-admin,llmos-admin,system:masters" > pki/tokens.csv
# The operator's own identity: the ServiceAccount of manifests/02-rbac.yaml (no token
# controller runs, so a static token stands in for its projected token). Tests that
# apply that RBAC run the operator with kubeconfig-operator and get exactly its rights.
OP_TOKEN=llmos-test-operator
OP_USER=system:serviceaccount:llmos-system:llmos-operator
echo "$OP_TOKEN,$OP_USER,llmos-operator-sa,\"system:serviceaccounts,system:serviceaccounts:llmos-system,system:authenticated\"" >> pki/tokens.csv
# Audit log of the operator's requests only (verb, resource, response code), so a test
# can list what the operator does against what its ClusterRole grants.
cat >audit-policy.yaml <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["$OP_USER"]
  - level: None
EOF

# Each server's command line goes into RUNDIR/<name>.sh, so scripts/k8s/chaos.sh can stop
# and start it again mid-test with the same flags and data.
cat >etcd.sh <<EOF
exec etcd --name llmos-test --data-dir "$RUN/etcd" \\
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \\
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \\
  --initial-cluster "llmos-test=http://127.0.0.1:$ETCD_PEER_PORT" \\
  --unsafe-no-fsync --quota-backend-bytes=1073741824
EOF
bash etcd.sh >etcd.log 2>&1 &
echo $! >etcd.pid

# On loopback without a kubelet: no endpoint reconciler, no ServiceAccount admission
# (there is no token controller unless the controller-manager runs) unless asked.
DISABLED_ADMISSION=--disable-admission-plugins=ServiceAccount
[ "${SERVICE_ACCOUNT_ADMISSION:-0}" = 1 ] && DISABLED_ADMISSION=
cat >apiserver.sh <<EOF
exec "$BIN/kube-apiserver" \\
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \\
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \\
  --tls-cert-file=pki/apiserver.crt --tls-private-key-file=pki/apiserver.key --client-ca-file=pki/ca.crt \\
  --token-auth-file=pki/tokens.csv --authorization-mode=RBAC \\
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \\
  --service-account-key-file=pki/sa.pub --service-account-signing-key-file=pki/sa.key \\
  --service-cluster-ip-range=10.0.0.0/16 --allow-privileged=true \\
  --audit-policy-file=audit-policy.yaml --audit-log-path=audit.log --audit-log-maxbackup=1 \\
  $DISABLED_ADMISSION --endpoint-reconciler-type=none
EOF
bash apiserver.sh >apiserver.log 2>&1 &
echo $! >apiserver.pid

cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: llmos-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $RUN/pki/ca.crt
users:
- name: llmos-admin
  user:
    token: $TOKEN
contexts:
- name: llmos-test
  context: {cluster: llmos-test, user: llmos-admin, namespace: default}
current-context: llmos-test
EOF

sed -e "s/token: $TOKEN/token: $OP_TOKEN/" -e "s/name: llmos-admin/name: llmos-operator/" \
  -e "s/user: llmos-admin/user: llmos-operator/" kubeconfig >kubeconfig-operator

if [ "${WITH_KCM:-0}" = 1 ]; then
  "$BIN/kube-controller-manager" --kubeconfig=kubeconfig \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$RUN/kcm-certs" \
    --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file=pki/sa.key --root-ca-file=pki/ca.crt \
    --cluster-signing-cert-file=pki/ca.crt --cluster-signing-key-file=pki/ca.key \
    --controllers='*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner' \
    >controller-manager.log 2>&1 &
  echo $! >controller-manager.pid
fi

if [ "${WITH_SCHEDULER:-0}" = 1 ]; then
  "$BIN/kube-scheduler" --kubeconfig=kubeconfig --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --port=0 \
    --cert-dir="$RUN/scheduler-certs" --leader-elect=false >scheduler.log 2>&1 &
  echo $! >scheduler.pid
fi

if [ -n "${WATCH_PID:-}" ]; then
  # A detached watchdog: when the watched process is gone, stop the control plane.
  setsid bash -c "while kill -0 $WATCH_PID 2>/dev/null; do sleep 1; done; exec '$HERE/stop.sh' '$RUN'" \
    >/dev/null 2>&1 </dev/null &
fi

for _ in $(seq 1 900); do
  if curl -fsS --cacert pki/ca.crt -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
    awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "kube-apiserver ready after %.1f s\n", b - a }'
    exit 0
  fi
  if ! kill -0 "$(cat apiserver.pid)" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "kube-apiserver did not become ready; last lines of $RUN/apiserver.log:" >&2
tail -30 apiserver.log >&2
"$HERE/stop.sh" "$RUN" >/dev/null 2>&1 || true
exit 1
