#!/usr/bin/env bash
# Speed and memory of Aaren against a causal Transformer (docs/bench.md holds a measured run).
# On a machine shared with other jobs pass --threads 1 (see docs/bench.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/aaren-rl bench "$@"
