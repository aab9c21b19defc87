# Multi-stage build of the llmos operator (`llmos run`), with libtorch for the DQN policy.
#
# Not built on the machines this project is developed on (no container engine there):
# this file is written to the same steps the project's scripts run (scripts/setup-libtorch.sh,
# cargo build --release) but has not been executed; expect to adjust it on first use.
# What runs there instead: `images/build.sh llmos OUTDIR` assembles an image with this
# file's runtime stage settings from a local build, for containerd (docs/node.md).
#
#   docker build -t ghcr.io/llmos/llmos-operator:0.1.0 .
#   docker build --build-arg LLMOS_TORCH=full -t ghcr.io/llmos/llmos-operator:0.1.0-cuda .
#
# LLMOS_TORCH=cpu (default) gives a lean CPU-only libtorch; `full` carries the CUDA
# libraries for a DQN on a GPU (chart value gpu.enabled=true).

ARG RUST_VERSION=1.85
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
RUN bash scripts/setup-libtorch.sh > /opt/libtorch.env
COPY . .
# The rpath points at the builder's torch; the runtime stage sets LD_LIBRARY_PATH instead.
RUN . scripts/env.sh \
 && LLMOS_NO_RPATH=1 cargo build --release --bin llmos \
 && mkdir -p /out/lib \
 && cp target/release/llmos /out/llmos \
 && for d in $(echo "$LLMOS_TORCH_LD_PATH" | tr ':' ' '); do cp -a "$d"/*.so* /out/lib/ 2>/dev/null || true; done

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin llmos
COPY --from=builder /out/lib/ /opt/llmos/lib/
COPY --from=builder /out/llmos /usr/local/bin/llmos
# The shipped learned policies (policies/<name>/, each with its CARD.md), selectable as
# `policy: {kind: dqn, dqn: {checkpoint: /opt/llmos/policies/<name>}}`.
COPY --from=builder /src/policies/ /opt/llmos/policies/
ENV LD_LIBRARY_PATH=/opt/llmos/lib
# Two malloc arenas: with one per thread (glibc's default, up to 8 per core) the operator's
# resident memory at 1,000 workloads grew 100 MiB in 5 min from fragmentation alone,
# against 45 MiB with two (docs/benchmarks.md).
ENV MALLOC_ARENA_MAX=2
USER 65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/llmos"]
CMD ["run", "--metrics-addr=0.0.0.0:8080", "--log-format=json"]
