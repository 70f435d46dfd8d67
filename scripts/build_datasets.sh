#!/usr/bin/env bash
# Background builds of the D4RL-recipe datasets (Gymnasium MuJoCo v5, SB3 SAC), as run for
# aaren-rl on a 2-core CPU. Each command resumes from its last checkpoint when run again and
# skips datasets it already wrote. Datasets go to data/d4rl, checkpoints and TensorBoard logs
# to runs/make-dataset/<task>-seed0, logs to runs/logs.
#   scripts/build_datasets.sh hopper      # SAC 230k steps: medium, medium-replay, expert, medium-expert, random
#     (the build here was planned for 300k SAC steps and cut to 230k by the deadline: the run
#      trained to 230k, was stopped, and this command resumed it with --total-steps 230000;
#      raise --total-steps to train a stronger expert: the build resumes and grows its buffer)
#   scripts/build_datasets.sh others      # halfcheetah then walker2d, SAC only up to medium
#   scripts/build_datasets.sh small       # the shipped hopper-medium-small-v5 (needs the hopper medium policy)
set -euo pipefail
cd "$(dirname "$0")/.."
AAREN=".venv/bin/aaren-rl"
OUT="data/d4rl"
COMMON=(--out "$OUT" --seed 0 --threads 1)

case "${1:-}" in
  hopper)
    "$AAREN" make-dataset hopper "${COMMON[@]}" \
      --levels medium-replay,medium,expert,medium-expert,random \
      --total-steps 230000 --transitions 1000000
    ;;
  others)
    for task in halfcheetah walker2d; do
      "$AAREN" make-dataset "$task" "${COMMON[@]}" \
        --levels medium-replay,medium --total-steps 300000 --transitions 1000000
    done
    ;;
  small)
    "$AAREN" make-dataset hopper "${COMMON[@]}" --levels medium --suffix small \
      --out aaren_rl/assets/datasets --policies "$OUT/policies" \
      --work-dir runs/make-dataset/hopper-small-seed0 \
      --transitions 50000 --max-episodes 100 --compression gzip
    ;;
  *)
    echo "usage: $0 hopper|others|small" >&2
    exit 2
    ;;
esac
