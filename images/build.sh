#!/bin/bash
# Builds llmos's container images without a container engine or a registry, as OCI image
# layouts that `ctr images import` (containerd) reads:
#
#   images/build.sh pause OUTDIR          the Pod sandbox ("pause") image, from the pause.c
#                                         of the Kubernetes source tree scripts/k8s/build.sh
#                                         prepared: llmos.local/pause:3.4.1
#   images/build.sh llmos OUTDIR [BIN]    Debian bookworm (debootstrap, minbase) + libtorch's
#                                         shared libraries + the llmos binary BIN (default
#                                         target/release/llmos, else target/debug/llmos),
#                                         policies/, scenarios/ and the Azure traces:
#                                         llmos.local/llmos:dev
#   images/build.sh base OUTDIR           the Debian bookworm base alone (the first layer of
#                                         llmos, with a shell as command): llmos.local/debian:bookworm,
#                                         the base images/dockerfile.sh gives buildah
#
# OUTDIR becomes an OCI image layout (oci-layout, index.json, blobs/sha256/...). Import it
# with `tar -C OUTDIR -cf - . | ctr -n k8s.io images import -` (scripts/node/start.sh does
# this for the images named in its IMAGES variable), or pack it with `tar -C OUTDIR -cf
# image.tar .` for another machine.
#
# Layers are uncompressed tars (no gzip on two cores) and cached under
# $LLMOS_CACHE/node/layers (default ~/.cache/llmos/node/layers), the blobs of OUTDIR being
# hard links to them: the Debian base once per machine (debootstrap, ~40 s, needs root and
# a Debian mirror), the libtorch layer once per libtorch, only the llmos layer per build.
# The image runs as uid 65532 with the Dockerfile's environment and entrypoint.
#
# Environment:
#   IMAGE_NAME     the reference the image gets (defaults above)
#   DEBIAN_MIRROR  the mirror debootstrap uses (default http://deb.debian.org/debian)
set -euo pipefail
WHAT=${1:?usage: images/build.sh base|pause|llmos OUTDIR [BIN]}
OUT=${2:?usage: images/build.sh base|pause|llmos OUTDIR [BIN]}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LLMOS_CACHE:-$HOME/.cache/llmos}
LAYERS=$CACHE/node/layers
K8S_SRC=${K8S_SRC:-$CACHE/k8s-build/gopath/src/k8s.io/kubernetes}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
say() { echo "$(date +%T) $*" >&2; }
mkdir -p "$LAYERS"

# A tar of directory $1 as layer file $2, the same bytes for the same files: sorted,
# numeric owners, and (with $3 = clamp) every mtime set to 0.
tar_layer() {
  local dir=$1 out=$2 opts=(--sort=name --numeric-owner --format=posix
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
  [ "${3:-}" = clamp ] && opts+=(--mtime=@0 --owner=0 --group=0)
  tar -C "$dir" "${opts[@]}" -cf "$out.tmp" . && mv "$out.tmp" "$out"
}
# The sha256 of file $1, remembered next to a cached layer (the libtorch layer is 400+ MiB).
sha() {
  if [ "${1%/*}" = "$LAYERS" ] && [ "$1.sha256" -nt "$1" ]; then
    cat "$1.sha256"
  else
    sha256sum "$1" | cut -d' ' -f1 | tee "$1.sha256.tmp"
    [ "${1%/*}" = "$LAYERS" ] && mv "$1.sha256.tmp" "$1.sha256" || rm -f "$1.sha256.tmp"
  fi
}
size() { stat -c %s "$1"; }

# The Debian bookworm base: debootstrap's minbase without apt's caches, lists and /dev
# entries (the runtime mounts /dev). Built once per machine.
base_layer() {
  local out=$LAYERS/bookworm-minbase.tar
  if [ ! -f "$out" ]; then
    command -v debootstrap >/dev/null || {
      say "installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/llmos-rootfs.XXXXXX")
    say "debootstrap --variant=minbase bookworm (once; cached as $out)"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$LAYERS/debootstrap.log" 2>&1 || {
      tail -20 "$LAYERS/debootstrap.log" >&2
      rm -rf "$root"
      return 1
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
      "$root"/var/log/* "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/run/* "$root"/tmp/*
    tar_layer "$root" "$out"
    rm -rf "$root"
  fi
  echo "$out"
}

# libtorch's shared libraries that BIN loads from the libtorch install (scripts/env.sh),
# under /opt/llmos/lib. One layer per libtorch install, cached by its directory.
torch_layer() {
  local bin=$1 key libs root out
  # shellcheck disable=SC1091
  source "$REPO/scripts/env.sh" >/dev/null
  libs=$(ldd "$bin" | awk -v t="$LLMOS_TORCH_LD_PATH" '
    BEGIN { n = split(t, d, ":") }
    $3 ~ /^\// { for (i = 1; i <= n; i++) if (index($3, d[i]) == 1 || index($3, d[i] "/../../") == 1) { print $3; break } }' |
    sort -u)
  [ -n "$libs" ] || { echo "ldd $bin shows no library from libtorch ($LLMOS_TORCH_LD_PATH)" >&2; return 1; }
  key=$(for l in $libs; do echo "$(basename "$l") $(size "$l")"; done | sha256sum | cut -c1-16)
  out=$LAYERS/libtorch-$key.tar
  if [ ! -f "$out" ]; then
    say "libtorch layer: $(echo "$libs" | xargs -n1 basename | paste -sd' ')"
    root=$(mktemp -d "${TMPDIR:-/tmp}/llmos-torch.XXXXXX")
    mkdir -p "$root/opt/llmos/lib"
    for l in $libs; do cp -L "$l" "$root/opt/llmos/lib/$(basename "$l")"; done
    tar_layer "$root" "$out" clamp
    rm -rf "$root"
  fi
  echo "$out"
}

# The llmos binary (debug sections stripped), the shipped policies, and the scenarios,
# training configs and Azure traces that LLMPolicyTraining Jobs name (working directory
# /opt/llmos: `scenarios/train/azure-code-ppo.toml`, `data/traces/...csv`; 1.2 MB).
app_layer() {
  local bin=$1 root out
  root=$(mktemp -d "${TMPDIR:-/tmp}/llmos-app.XXXXXX")
  mkdir -p "$root/usr/local/bin" "$root/opt/llmos/data/traces"
  objcopy --strip-debug "$bin" "$root/usr/local/bin/llmos"
  cp -r "$REPO/policies" "$root/opt/llmos/policies"
  cp -r "$REPO/scenarios" "$root/opt/llmos/scenarios"
  cp "$REPO"/data/traces/AzureLLMInferenceTrace_*.csv "$root/opt/llmos/data/traces/"
  chmod -R u+rwX,go+rX "$root/opt"
  out=$LAYERS/llmos-app.$$.tar
  tar_layer "$root" "$out" clamp
  rm -rf "$root"
  echo "$out"
}

# The pause binary of the Kubernetes source tree, statically linked.
pause_layer() {
  local src=$K8S_SRC/build/pause/linux/pause.c root out=$LAYERS/pause-3.4.1.tar
  if [ ! -f "$out" ]; then
    [ -f "$src" ] || { echo "missing $src: run scripts/k8s/build.sh" >&2; return 1; }
    root=$(mktemp -d "${TMPDIR:-/tmp}/llmos-pause.XXXXXX")
    gcc -Os -Wall -static -DVERSION=v3.4.1-llmos -o "$root/pause" "$src"
    strip "$root/pause"
    tar_layer "$root" "$out" clamp
    rm -rf "$root"
  fi
  echo "$out"
}

# write_image NAME CONFIG_JSON_TAIL LAYER...: OUTDIR as an OCI layout with those layers
# (bottom first); CONFIG_JSON_TAIL is the image config's "config" object.
write_image() {
  local name=$1 cfg=$2
  shift 2
  rm -rf "$OUT"
  mkdir -p "$OUT/blobs/sha256"
  local layers_json="" diffs="" history="" d l
  for l in "$@"; do
    d=$(sha "$l")
    history+="${history:+,}{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"images/build.sh: $(basename "$l")\"}"
    ln -f "$l" "$OUT/blobs/sha256/$d" 2>/dev/null || cp "$l" "$OUT/blobs/sha256/$d"
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$(size "$l")}"
    diffs+="${diffs:+,}\"sha256:$d\""
  done
  local config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":$cfg,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]},\"history\":[$history]}"
  printf '%s' "$config" >"$OUT/config.json"
  local cd cs
  cd=$(sha "$OUT/config.json")
  cs=$(size "$OUT/config.json")
  mv "$OUT/config.json" "$OUT/blobs/sha256/$cd"
  local manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd\",\"size\":$cs},\"layers\":[$layers_json]}"
  printf '%s' "$manifest" >"$OUT/manifest.json"
  local md ms
  md=$(sha "$OUT/manifest.json")
  ms=$(size "$OUT/manifest.json")
  mv "$OUT/manifest.json" "$OUT/blobs/sha256/$md"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$OUT/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$name" "${name##*:}" >"$OUT/index.json"
  printf '%s\n' "$name" >"$OUT/name"
  local total=0
  for l in "$@"; do total=$((total + $(size "$l"))); done
  say "image $name in $OUT: $# layers, $((total / 1048576)) MiB"
}

case "$WHAT" in
  base)
    write_image "${IMAGE_NAME:-llmos.local/debian:bookworm}" \
      '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["bash"]}' "$(base_layer)"
    ;;
  pause)
    write_image "${IMAGE_NAME:-llmos.local/pause:3.4.1}" \
      '{"User":"65535:65535","Entrypoint":["/pause"]}' "$(pause_layer)"
    ;;
  llmos)
    BIN=${3:-}
    if [ -z "$BIN" ]; then
      for b in "$REPO/target/release/llmos" "$REPO/target/debug/llmos"; do
        [ -x "$b" ] && { BIN=$b; break; }
      done
    fi
    [ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no llmos binary (cargo build --release, or pass BIN)" >&2; exit 1; }
    base=$(base_layer)
    torch=$(torch_layer "$BIN")
    app=$(app_layer "$BIN")
    write_image "${IMAGE_NAME:-llmos.local/llmos:dev}" \
      '{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LD_LIBRARY_PATH=/opt/llmos/lib","MALLOC_ARENA_MAX=2"],"Entrypoint":["/usr/local/bin/llmos"],"Cmd":["run","--metrics-addr=0.0.0.0:8080","--log-format=json"],"ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/"}' \
      "$base" "$torch" "$app"
    rm -f "$app" "$app.sha256"
    ;;
  *)
    echo "unknown image $WHAT (base, pause or llmos)" >&2
    exit 2
    ;;
esac
