#!/bin/bash
# Builds the operator image from the repository's Dockerfile itself, with buildah, on a
# machine without a registry or Docker, and writes it as an OCI image layout that
# `ctr images import` (containerd) reads:
#
#   images/dockerfile.sh OUTDIR          llmos.local/llmos:dockerfile (LLMOS_TORCH=cpu)
#
# The Dockerfile's two FROM images cannot be pulled, so they are made here and kept in
# buildah's storage (once per machine; LLMOS_REFRESH_BASES=1 makes them again):
#   debian:bookworm-slim     the Debian bookworm minbase layer of images/build.sh
#                            (debootstrap, cached under ~/.cache/llmos/node/layers)
#   rust:RUST-bookworm       that base + build-essential (apt) + this machine's Rust
#                            toolchain (`rustc --print sysroot`: bin and lib, no docs)
#                            under /usr/local/rustup, with cargo and rustc on PATH from
#                            /usr/local/cargo/bin, as the official image lays them out
# then runs `buildah bud --pull=never --layers` on the Dockerfile at nice 10 (the machine's
# cores are shared), and pushes the image to OUTDIR with gzip-compressed layers and the
# containerd name annotation images/build.sh writes (OUTDIR/name holds the reference):
# `tar -C OUTDIR -cf - . | ctr -n k8s.io images import -`, or IMAGES=OUTDIR for
# scripts/node/start.sh, or LLMOS_OPERATOR_IMAGE_OCI=OUTDIR for tests/e2e_chart.rs.
#
# A build step reaches what the host reaches (buildah's default network): apt over http
# works; PyPI and crates.io over https need the CA of a TLS-intercepting proxy where
# there is one (docs/node.md). The host's CA bundle (CA_BUNDLE) is given to the build as the Dockerfile's
# optional secret `ca-bundle`: pip and cargo trust it during their steps, no image keeps
# it. Cargo's registry and target directory are the Dockerfile's cache mounts (buildah
# keeps them under /var/tmp/buildah-cache-*), so a rebuild after a code change compiles
# the llmos crate only.
#
# Needs root (buildah's storage in /var/lib/containers; debootstrap for the base). Installs
# Debian's buildah when missing. Prints the time of each step and the image's sizes.
#
# Environment:
#   IMAGE_NAME            the reference the image gets (default llmos.local/llmos:dockerfile)
#   LLMOS_TORCH           the Dockerfile's build argument: cpu (default) or full
#   RUST_VERSION          the builder's Rust, major.minor (default: this machine's rustc);
#                         the toolchain `rustc --print sysroot` finds must be that version
#   CA_BUNDLE             PEM bundle given as the secret ca-bundle (default
#                         /etc/ssl/certs/ca-certificates.crt; empty: no secret)
#   LLMOS_REFRESH_BASES   1: make the two FROM images again
#   LLMOS_CONTEXT         tree (default): build the working tree; head: the committed HEAD
#                         (git archive); a directory: that one (with its own Dockerfile)
#   BUILDAH_EXTRA         more arguments for `buildah bud` (e.g. --no-cache)
set -euo pipefail
OUT=${1:?usage: images/dockerfile.sh OUTDIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE_NAME=${IMAGE_NAME:-llmos.local/llmos:dockerfile}
LLMOS_TORCH=${LLMOS_TORCH:-cpu}
SYSROOT=$(rustc --print sysroot)
HOST_RUST=$("$SYSROOT/bin/rustc" --version | awk '{ print $2 }')
RUST_VERSION=${RUST_VERSION:-$(echo "$HOST_RUST" | cut -d. -f1,2)}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
BASE=docker.io/library/debian:bookworm-slim
BUILDER=docker.io/library/rust:$RUST_VERSION-bookworm
t0=$(date +%s)
say() { echo "$(date +%T) $*" >&2; }
since() { echo $(($(date +%s) - $1)); }

[ "$(id -u)" = 0 ] || { echo "images/dockerfile.sh needs root (buildah's storage, debootstrap)" >&2; exit 1; }
command -v buildah >/dev/null || {
  say "installing buildah (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
}
have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# debian:bookworm-slim: images/build.sh's cached minbase layer as a one-layer image.
base_image() {
  if [ "${LLMOS_REFRESH_BASES:-}" != 1 ] && have "$BASE"; then return; fi
  # (a lower-case path: buildah names the pulled image after it)
  local dir=/tmp/llmos-base-$$
  bash "$REPO/images/build.sh" base "$dir"
  buildah pull --quiet "oci:$dir:bookworm" >/dev/null
  buildah tag "localhost$dir:latest" "$BASE"
  buildah rmi "localhost$dir:latest" >/dev/null
  rm -rf "$dir"
  say "$BASE: the debootstrap minbase"
}

# rust:RUST-bookworm: the base, a C/C++ toolchain for the crates' build scripts
# (torch-sys, ring, zstd-sys), and this machine's Rust toolchain.
builder_image() {
  if [ "${LLMOS_REFRESH_BASES:-}" != 1 ] && have "$BUILDER"; then return; fi
  case "$HOST_RUST" in
    "$RUST_VERSION" | "$RUST_VERSION".*) ;;
    *) echo "RUST_VERSION=$RUST_VERSION but the toolchain at $SYSROOT is $HOST_RUST" >&2; exit 1 ;;
  esac
  local c mnt tc=/usr/local/rustup/toolchains/$HOST_RUST-x86_64-unknown-linux-gnu
  c=$(buildah from --pull=never "$BASE")
  buildah run "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends build-essential ca-certificates curl git pkg-config >/dev/null \
    && rm -rf /var/lib/apt/lists/*'
  mnt=$(buildah mount "$c")
  mkdir -p "$mnt$tc" "$mnt/usr/local/cargo/bin"
  cp -a "$SYSROOT/bin" "$SYSROOT/lib" "$mnt$tc/"
  [ -d "$SYSROOT/libexec" ] && cp -a "$SYSROOT/libexec" "$mnt$tc/"
  for b in "$mnt$tc"/bin/*; do ln -s "$tc/bin/$(basename "$b")" "$mnt/usr/local/cargo/bin/"; done
  buildah umount "$c" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$HOST_RUST" "$c"
  buildah commit --quiet --rm "$c" "$BUILDER" >/dev/null
  say "$BUILDER: $BASE + build-essential + Rust $HOST_RUST"
}

t=$(date +%s)
base_image
builder_image
say "bases ready ($(since "$t") s)"

# The build context: the working tree, or with LLMOS_CONTEXT=head the committed HEAD
# (`git archive`, without uncommitted edits of the tree).
CONTEXT=$REPO
case "${LLMOS_CONTEXT:-tree}" in
  tree) ;;
  head)
    CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/llmos-context.XXXXXX")
    trap 'rm -rf "$CONTEXT"' EXIT
    git -C "$REPO" archive --format=tar HEAD | tar -C "$CONTEXT" -xf -
    say "context: HEAD $(git -C "$REPO" rev-parse --short HEAD)"
    ;;
  *) CONTEXT=$(cd "$LLMOS_CONTEXT" && pwd) ;;
esac

secret=()
[ -n "$CA_BUNDLE" ] && secret=(--secret "id=ca-bundle,src=$CA_BUNDLE")
t=$(date +%s)
say "buildah bud (LLMOS_TORCH=$LLMOS_TORCH, RUST_VERSION=$RUST_VERSION)"
# shellcheck disable=SC2086
nice -n 10 buildah bud --pull=never --layers "${secret[@]}" \
  --build-arg "RUST_VERSION=$RUST_VERSION" --build-arg "LLMOS_TORCH=$LLMOS_TORCH" \
  ${BUILDAH_EXTRA:-} -f "$CONTEXT/Dockerfile" -t "$IMAGE_NAME" "$CONTEXT" 2>&1 |
  while IFS= read -r line; do
    case $line in
      *STEP* | "--> "* | COMMIT*) echo "$(date +%T) $line" ;;
      *) echo "$line" ;;
    esac
  done >&2
say "built $IMAGE_NAME ($(since "$t") s)"

# The OCI layout, named for containerd's import.
t=$(date +%s)
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
nice -n 10 buildah push --quiet "$IMAGE_NAME" "oci:$OUT:$IMAGE_NAME" >&2
python3 - "$OUT/index.json" "$IMAGE_NAME" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"))
EOF
printf '%s\n' "$IMAGE_NAME" >"$OUT/name"
unpacked=$(buildah inspect --type image --format '{{range .OCIv1.RootFS.DiffIDs}}{{.}} {{end}}' "$IMAGE_NAME" | wc -w)
packed=$(du -sb "$OUT/blobs" | cut -f1)
raw=$(buildah images --format '{{.Size}}' --filter "reference=$IMAGE_NAME" | head -1)
say "image $IMAGE_NAME in $OUT ($(since "$t") s): $unpacked layers, $((packed / 1048576)) MiB compressed, $raw unpacked (buildah)"
say "done in $(since "$t0") s"
