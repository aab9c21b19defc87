#!/bin/bash
# Renders a Helm chart as `helm template` does, without helm: scripts/chart/render.go
# (Go's text/template + sprig + Helm's own functions), built with Debian's Go and sprig.
#
#   scripts/chart/render.sh [--name NAME] [--namespace NS] [-f VALUES]... [--set a.b=c]... [--include-crds] CHART_DIR
#   e.g. scripts/chart/render.sh --name llmos-operator -n llmos-system --include-crds charts/llmos-operator | kubectl apply -f -
#
# Installs golang-go and golang-github-masterminds-sprig-dev (+ golang-github-ghodss-yaml-dev,
# golang-gopkg-yaml.v2-dev) with apt when they are missing (needs root), and builds the
# renderer once into $LLMOS_CACHE/chart (default ~/.cache/llmos/chart), named after the
# SHA-256 of render.go, so a changed renderer is rebuilt and an unchanged one costs nothing.
#
#   scripts/chart/render.sh --build-only     build (or find) the binary and print its path
#
# Exit status: the renderer's (0 rendered, 1 template or chart error, 2 usage), or 3 when
# Go or the Go packages cannot be had (a line starting "render unavailable:" says why).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${LLMOS_CACHE:-$HOME/.cache/llmos}/chart
SRC=$HERE/render.go
GOPATH_DEB=/usr/share/gocode
unavailable() { echo "render unavailable: $*" >&2; exit 3; }

find_go() {
  local g
  for g in "$(command -v go 2>/dev/null || true)" /usr/lib/go/bin/go /usr/lib/go-1.*/bin/go; do
    [ -n "$g" ] && [ -x "$g" ] && { echo "$g"; return 0; }
  done
  return 1
}

key=$(sha256sum "$SRC" | cut -c1-16)
BIN=$CACHE/render-$key
if [ ! -x "$BIN" ]; then
  need=()
  find_go >/dev/null || need+=(golang-go)
  [ -f "$GOPATH_DEB/src/github.com/Masterminds/sprig/functions.go" ] || need+=(golang-github-masterminds-sprig-dev)
  [ -f "$GOPATH_DEB/src/github.com/ghodss/yaml/yaml.go" ] || need+=(golang-github-ghodss-yaml-dev)
  [ -d "$GOPATH_DEB/src/gopkg.in/yaml.v2" ] || need+=(golang-gopkg-yaml.v2-dev)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || unavailable "missing ${need[*]} (Debian packages; installing them needs root)"
    echo "$(date +%T) installing ${need[*]} (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; } ||
      unavailable "apt-get install ${need[*]} failed"
  fi
  GO=$(find_go) || unavailable "no Go toolchain after installing golang-go"
  mkdir -p "$CACHE"
  echo "$(date +%T) building the chart renderer ($SRC -> $BIN)" >&2
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/llmos-render.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # GOPATH mode over Debian's Go sources; the build cache under the cache directory.
  if ! GO111MODULE=off GOPATH=$GOPATH_DEB GOCACHE=$CACHE/gocache GOFLAGS= \
    "$GO" build -o "$tmp/render" "$SRC" 2>"$tmp/build.log"; then
    cat "$tmp/build.log" >&2
    unavailable "building $SRC failed (above)"
  fi
  mv "$tmp/render" "$BIN"
  # Older builds of the renderer are of no further use.
  find "$CACHE" -maxdepth 1 -name 'render-*' ! -name "render-$key" -delete 2>/dev/null || true
fi
if [ "${1:-}" = --build-only ]; then
  echo "$BIN"
  exit 0
fi
exec "$BIN" "$@"
