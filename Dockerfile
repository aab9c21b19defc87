# syntax=docker/dockerfile:1
# Multi-stage build of the llmos operator (`llmos run`), with libtorch for the DQN policy.
#
#   docker build -t ghcr.io/llmos/llmos-operator:0.1.0 .
#   docker build --build-arg LLMOS_TORCH=full -t ghcr.io/llmos/llmos-operator:0.1.0-cuda .
#
# LLMOS_TORCH=cpu (default) gives a lean CPU-only libtorch: the libraries the binary
# loads; `full` carries the whole wheel's libraries with CUDA, for a DQN on a GPU (chart
# value gpu.enabled=true).
#
# `RUN --mount` (secrets, caches) needs BuildKit (Docker's default builder since 23.0) or
# buildah; the classic `DOCKER_BUILDKIT=0` builder refuses it.
#
# The network a build needs: apt (deb.debian.org), PyPI (the torch wheel,
# scripts/setup-libtorch.sh) and crates.io (cargo). Behind a proxy that re-signs TLS with
# its own CA, give the build that CA as the optional secret `ca-bundle` (a PEM bundle; pip
# and cargo trust it, nothing of it stays in an image):
#
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t ... .
#
# Cargo's registry and target directory are cache mounts, so a rebuild after a code change
# compiles what changed (the llmos crate; dependencies only when Cargo.lock changed).
#
# Built (2026-12-02) on a Debian 12 machine with 2 shared cores, no registry and no Docker,
# with buildah 1.28 (`buildah bud --pull=never --layers`) by images/dockerfile.sh, which
# makes the two FROM images locally (debian:bookworm-slim from debootstrap;
# rust:1.95-bookworm from that base, build-essential and the machine's Rust 1.95 toolchain)
# and exports the image for containerd: 23 min cold, the cargo release build 20.5 min of
# it (docs/benchmarks.md). Its image ran as the chart's two operator Pods on a real node
# (kubelet 1.20, containerd; LLMOS_OPERATOR_IMAGE_OCI=DIR cargo test --test e2e_chart).
# Not built with Docker itself, nor with LLMOS_TORCH=full. The tests' default image is
# images/build.sh llmos's instead: this file's runtime settings around a local cargo build,
# assembled in seconds (docs/node.md).

# The dependencies (kube 5) need Rust 1.89 or later; built with 1.95.
ARG RUST_VERSION=1.95
ARG LLMOS_TORCH=cpu

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG LLMOS_TORCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# libtorch from PyTorch's wheel (the pinned torch 2.13.0 that tch 0.26 needs), cached in
# its own layer so code changes do not download it again.
COPY scripts/setup-libtorch.sh scripts/env.sh scripts/
ENV LLMOS_CACHE=/opt/llmos LLMOS_TORCH=${LLMOS_TORCH}
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && bash scripts/setup-libtorch.sh
COPY . .
# RUN's shell is /bin/sh (dash), which cannot source scripts/env.sh (bash), so its two lines
# are here. The rpath points at the builder's torch; the runtime stage sets LD_LIBRARY_PATH.
# cpu: the libtorch libraries the binary loads (ldd); full: every library of the wheel
# (CUDA's are partly loaded at run time, which ldd does not show).
RUN --mount=type=secret,id=ca-bundle \
    --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ -s /run/secrets/ca-bundle ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca-bundle; fi \
 && eval "$(bash scripts/setup-libtorch.sh | sed 's/^/export /')" \
 && export LD_LIBRARY_PATH="$LLMOS_TORCH_LD_PATH" \
 && LLMOS_NO_RPATH=1 cargo build --release --locked --bin llmos \
 && mkdir -p /out/lib \
 && objcopy --strip-debug target/release/llmos /out/llmos \
 && if [ "$LLMOS_TORCH" = full ]; then \
      for d in $(echo "$LLMOS_TORCH_LD_PATH" | tr ':' ' '); do cp -a "$d"/*.so* /out/lib/; done; \
    else \
      ldd /out/llmos | awk '$3 ~ /^\/opt\/llmos\// { print $3 }' | xargs -r cp -L -t /out/lib/; \
    fi \
 && ls -l /out/lib

FROM debian:bookworm-slim AS runtime
# apt-get clean: apt's package caches (/var/cache/apt/*.bin, 78 MB, and the .debs) would
# stay in the layer on a base without the official image's docker-clean apt setting.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin llmos
COPY --from=builder /out/lib/ /opt/llmos/lib/
COPY --from=builder /out/llmos /usr/local/bin/llmos
# The shipped learned policies (policies/<name>/, each with its CARD.md), selectable as
# `policy: {kind: dqn, dqn: {checkpoint: /opt/llmos/policies/<name>}}`; the scenarios,
# training configs and Azure traces that LLMPolicyTraining Jobs name relative to
# /opt/llmos (as images/build.sh's image has them).
COPY policies/ /opt/llmos/policies/
COPY scenarios/ /opt/llmos/scenarios/
COPY data/traces/AzureLLMInferenceTrace_code.csv data/traces/AzureLLMInferenceTrace_conv.csv /opt/llmos/data/traces/
ENV LD_LIBRARY_PATH=/opt/llmos/lib
# Two malloc arenas: with one per thread (glibc's default, up to 8 per core) the operator's
# resident memory at 1,000 workloads grew 100 MiB in 5 min from fragmentation alone,
# against 45 MiB with two (docs/benchmarks.md).
ENV MALLOC_ARENA_MAX=2
USER 65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/llmos"]
CMD ["run", "--metrics-addr=0.0.0.0:8080", "--log-format=json"]
