#!/usr/bin/env bash
# The built-in default job: trains a small PPO ensemble in the twin on the training window of
# a real trace, then compares it with HPA, KPA, the queue policy and a static fleet on
# the test window, prints the table and writes the plots (default: out/demo/).
# Prepares libtorch on first use (cached in ~/.cache/llmos). Extra arguments go to
# `llmos demo` (see `llmos demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo run --locked --quiet -- demo "$@"
