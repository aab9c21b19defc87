#!/usr/bin/env bash
# Runs the whole llmos test suite on a fresh clone. Installs what the tests need,
# caching it outside the clone (LLMOS_CACHE, default ~/.cache/llmos) so it is paid
# once per machine:
#   - libtorch from PyTorch's CPU wheel (scripts/setup-libtorch.sh, ~30 s)
#   - etcd, kube-apiserver and kube-controller-manager 1.20 built from Debian's
#     source package (scripts/k8s/build.sh, ~5-12 min once)
#   - Debian's prometheus and a font for the plots
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
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
t1=$(date +%s)
echo "== cargo test (set-up took $((t1 - t0)) s)"
cargo test --locked "$@"
t2=$(date +%s)
echo "== tests took $((t2 - t1)) s; total $((t2 - t0)) s"
