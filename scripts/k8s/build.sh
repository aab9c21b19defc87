#!/bin/bash
# From a fresh Debian 12 (bookworm), as root, with only deb.debian.org reachable:
# build kube-apiserver + kube-controller-manager v1.20.2 from Debian's `kubernetes` source package,
# install etcd 3.4.23 from Debian. Result: $PREFIX/bin/{kube-apiserver,kube-controller-manager,kubectl}
set -euo pipefail
PREFIX=${PREFIX:-$HOME/.cache/llmos/k8s-1.20.2}         # where binaries end up (keep it to reuse across runs)
WORK=${WORK:-$HOME/.cache/llmos/k8s-build}            # scratch (source tree, GOPATH, GOCACHE)
WITH_KCM=${WITH_KCM:-1}
ts() { date +%T; }
if [ -x "$PREFIX/bin/kube-apiserver" ] && { [ "$WITH_KCM" != 1 ] || [ -x "$PREFIX/bin/kube-controller-manager" ]; } && command -v etcd >/dev/null; then
  echo "already built: $("$PREFIX/bin/kube-apiserver" --version)"; exit 0
fi
echo "$(ts) [1/5] apt: deb-src + packages"
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/debian-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends dpkg-dev golang-1.19-go etcd-server openssl curl ca-certificates \
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null
echo "$(ts) [2/5] apt-get source kubernetes"
rm -rf "$WORK"; mkdir -p "$WORK/gopath/src/k8s.io" "$PREFIX/bin"
cd "$WORK"
apt-get source -qq kubernetes 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
SRC=$(ls -d "$WORK"/kubernetes-*/ | head -1); SRC=${SRC%/}
ln -s "$SRC" "$WORK/gopath/src/k8s.io/kubernetes"
# kubectl 1.20 from Debian, unpacked (does not clash with another /usr/bin/kubectl)
apt-get download -qq kubernetes-client 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
dpkg-deb -x kubernetes-client_*.deb "$WORK/kc" && cp "$WORK/kc/usr/bin/kubectl" "$PREFIX/bin/kubectl"
echo "$(ts) [3/5] patch vendor: reflect2 1.0.2 + json-iterator 1.1.12 from Debian (vendored reflect2 1.0.1 segfaults with Go>=1.18)"
for p in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "$SRC/vendor/$p"; mkdir -p "$SRC/vendor/$p"
  find /usr/share/gocode/src/$p -maxdepth 1 -type f \( -name '*.go' -o -name LICENSE \) ! -name '*_test.go' -exec cp {} "$SRC/vendor/$p/" \;
done
export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$WORK/gopath GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$WORK/gocache
cd "$WORK/gopath/src/k8s.io/kubernetes"; export PWD="$WORK/gopath/src/k8s.io/kubernetes"
echo "$(ts) [4/5] generate pkg/generated/openapi (what 'make generated_files' does for the KUBE target)"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
DIRS=$(find -H . \( -not \( \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune \) \) -type f -name '*.go' \
  | sed 's|^./staging/src|vendor|; s|^./||' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
  | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$WORK/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report"
cmp -s <(sort "$WORK/openapi-violations.report") <(sort api/api-rules/violation_exceptions.list) || echo "WARN: openapi rule report differs"
echo "$(ts) [5/5] go build"
P=k8s.io/kubernetes/vendor/k8s.io; LD="-s -w"
for k in client-go/pkg/version component-base/version; do
  LD="$LD -X $P/$k.gitVersion=v1.20.2 -X $P/$k.gitMajor=1 -X $P/$k.gitMinor=20 -X $P/$k.gitTreeState=clean"
done
CMDS=./cmd/kube-apiserver; [ "$WITH_KCM" = 1 ] && CMDS="$CMDS ./cmd/kube-controller-manager"
go build -trimpath -ldflags "$LD" -o "$PREFIX/bin/" $CMDS
ls -la "$PREFIX/bin"; "$PREFIX/bin/kube-apiserver" --version; etcd --version | head -1
echo "$(ts) done"
