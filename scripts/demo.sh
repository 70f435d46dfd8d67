#!/usr/bin/env bash
# The README's main-job command: set-up, then the demo on the embedded default dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/aaren-rl demo "$@"
