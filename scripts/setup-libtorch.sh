#!/usr/bin/env bash
# Prepare libtorch for the `tch` crate from PyTorch's PyPI wheel and print the
# directory to use as LIBTORCH. The result is cached outside the clone
# (LLMOS_CACHE, default ~/.cache/llmos) so it is paid once per machine.
#
#   LLMOS_TORCH=cpu   (default) lean CPU-only install: torch without its CUDA
#                     dependencies, plus the two CUDA runtime libraries that
#                     libtorch_cpu.so links against (~30 s, ~1.3 GB).
#   LLMOS_TORCH=full  the full wheel with CUDA (what a GPU node needs, ~2.7 GB).
#
# tch 0.26.0 requires torch 2.13.0 exactly; the pair is pinned here.
set -euo pipefail
CACHE=${LLMOS_CACHE:-$HOME/.cache/llmos}
MODE=${LLMOS_TORCH:-cpu}
VENV="$CACHE/torch-$MODE-2.13.0"
PY=${PYTHON:-python3}
if [ ! -f "$VENV/.complete" ]; then
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV" >&2
  if [ "$MODE" = full ]; then
    "$VENV/bin/pip" install --no-cache-dir -q torch==2.13.0 >&2
  else
    "$VENV/bin/pip" install --no-cache-dir -q --no-deps torch==2.13.0 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2
  fi
  touch "$VENV/.complete"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
TORCH_DIR="$SITE/torch"
[ -f "$TORCH_DIR/lib/libtorch_cpu.so" ] || { echo "libtorch not found under $TORCH_DIR" >&2; exit 1; }
# Extra library directories the CPU build needs at run time (libcudart, libcupti).
LIBS="$TORCH_DIR/lib"
for d in "$SITE"/nvidia/*/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
echo "LIBTORCH=$TORCH_DIR"
echo "LLMOS_TORCH_LD_PATH=$LIBS"
