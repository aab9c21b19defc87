#!/bin/bash
# Builds the Kubernetes control plane llmos's integration tests run against:
# kube-apiserver, kube-controller-manager, kube-scheduler and the kubelet v1.20.2 from Debian 12's `kubernetes`
# source package (with Debian's Go 1.19), kubectl 1.20 from Debian's binary package, and
# etcd 3.4 from Debian. No container engine, no Go module proxy needed: only a Debian
# mirror. Run as root (it installs packages). Takes ~5-12 minutes once; the result is
# cached outside the clone and reused by every later run.
#
#   scripts/k8s/build.sh            then: scripts/k8s/start.sh RUNDIR / scripts/k8s/stop.sh RUNDIR
#
# Environment:
#   PREFIX    where bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl} go
#             (default ~/.cache/llmos/k8s-1.20.2; the tests look there or in $LLMOS_K8S_BIN)
#   WORK      scratch space for the source tree and Go caches (default ~/.cache/llmos/k8s-build)
#   WITH_KCM  1 (default) also builds kube-controller-manager and kube-scheduler
#   WITH_KUBELET  1 (default) also builds the kubelet (scripts/node/start.sh runs it)
set -euo pipefail
PREFIX=${PREFIX:-$HOME/.cache/llmos/k8s-1.20.2}
WORK=${WORK:-$HOME/.cache/llmos/k8s-build}
WITH_KCM=${WITH_KCM:-1}
WITH_KUBELET=${WITH_KUBELET:-1}
say() { echo "$(date +%T) $*"; }

have_all() {
  [ -x "$PREFIX/bin/kube-apiserver" ] && [ -x "$PREFIX/bin/kubectl" ] && command -v etcd >/dev/null &&
    { [ "$WITH_KCM" != 1 ] || { [ -x "$PREFIX/bin/kube-controller-manager" ] && [ -x "$PREFIX/bin/kube-scheduler" ]; }; } &&
    { [ "$WITH_KUBELET" != 1 ] || [ -x "$PREFIX/bin/kubelet" ]; }
}
if have_all; then
  echo "already built: $("$PREFIX/bin/kube-apiserver" --version) in $PREFIX/bin"
  exit 0
fi

LDFLAGS="-s -w"
V=k8s.io/kubernetes/vendor/k8s.io
for pkg in client-go/pkg/version component-base/version; do
  LDFLAGS="$LDFLAGS -X $V/$pkg.gitVersion=v1.20.2 -X $V/$pkg.gitMajor=1 -X $V/$pkg.gitMinor=20 -X $V/$pkg.gitTreeState=clean"
done
TARGETS=./cmd/kube-apiserver
[ "$WITH_KCM" = 1 ] && TARGETS="$TARGETS ./cmd/kube-controller-manager ./cmd/kube-scheduler"
# The kubelet builds without cgo like the rest (CGO_ENABLED=0 below).
[ "$WITH_KUBELET" = 1 ] && TARGETS="$TARGETS ./cmd/kubelet"
go_env() {
  export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$WORK/gopath GO111MODULE=off GOPROXY=off GOFLAGS= \
    GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$WORK/gocache
  cd "$WORK/gopath/src/k8s.io/kubernetes"
  export PWD="$WORK/gopath/src/k8s.io/kubernetes"
}

# A source tree prepared by an earlier run (a binary added since): only compile.
if [ -f "$WORK/gopath/src/k8s.io/kubernetes/pkg/generated/openapi/zz_generated.openapi.go" ] &&
  [ -x "$PREFIX/bin/kubectl" ] && command -v etcd >/dev/null && [ -x /usr/lib/go-1.19/bin/go ]; then
  say "compiling what is missing in the prepared tree $WORK"
  go_env
  # shellcheck disable=SC2086
  go build -trimpath -ldflags "$LDFLAGS" -o "$PREFIX/bin/" $TARGETS
  have_all && { say "done: binaries in $PREFIX/bin"; exit 0; }
fi

say "packages: Debian sources, Go 1.19, etcd, and the newer reflect2/json-iterator"
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
  cat >/etc/apt/sources.list.d/llmos-debian-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends dpkg-dev golang-1.19-go etcd-server openssl curl ca-certificates \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null

say "fetching the kubernetes source package and kubectl"
rm -rf "$WORK"
mkdir -p "$WORK/gopath/src/k8s.io" "$PREFIX/bin"
cd "$WORK"
apt-get source -qq kubernetes 2>&1 | grep -v 'Download is performed unsandboxed' || true
SRC=$(ls -d "$WORK"/kubernetes-*/ | head -1)
SRC=${SRC%/}
ln -s "$SRC" "$WORK/gopath/src/k8s.io/kubernetes"
# kubectl: unpack the .deb rather than install it, so no other kubectl on the machine is replaced.
apt-get download -qq kubernetes-client 2>&1 | grep -v 'Download is performed unsandboxed' || true
dpkg-deb -x kubernetes-client_*.deb "$WORK/kubectl-deb"
cp "$WORK/kubectl-deb/usr/bin/kubectl" "$PREFIX/bin/kubectl"

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 as soon as a custom resource is
# stored (the apiserver dies, clients see "unexpected EOF"). Debian ships fixed versions.
say "replacing vendored reflect2 and json-iterator with Debian's"
for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "${SRC:?}/vendor/$pkg"
  mkdir -p "$SRC/vendor/$pkg"
  find "/usr/share/gocode/src/$pkg" -maxdepth 1 -type f \( -name '*.go' -o -name LICENSE \) ! -name '*_test.go' \
    -exec cp {} "$SRC/vendor/$pkg/" \;
done

go_env

# The release tarball lacks the generated OpenAPI definitions the apiserver needs
# ("undefined: openapi.GetOpenAPIDefinitions"); generate them as `make generated_files` would.
say "generating pkg/generated/openapi"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
INPUTS=$(find -H . \( -not \( \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune \) \) -type f -name '*.go' |
  sed 's|^./staging/src|vendor|; s|^./||' |
  grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
  xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' |
  xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$WORK/openapi-gen" -i "$INPUTS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report"

say "compiling (GOPATH mode, no network)"
# shellcheck disable=SC2086
go build -trimpath -ldflags "$LDFLAGS" -o "$PREFIX/bin/" $TARGETS

"$PREFIX/bin/kube-apiserver" --version
etcd --version | head -1
say "done: binaries in $PREFIX/bin"
