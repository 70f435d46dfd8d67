#!/usr/bin/env bash
# Background builds of the D4RL-recipe datasets (Gymnasium MuJoCo v5, SB3 SAC), as run for
# aaren-rl on a 2-core CPU. Each command resumes from its last checkpoint when run again and
# skips datasets it already wrote. Datasets go to data/d4rl, checkpoints and TensorBoard logs
# to runs/make-dataset/<task>-seed0, logs to runs/logs.
#   scripts/build_datasets.sh hopper      # medium, medium-replay, random at SAC 230k; then expert
#     and medium-expert from the best-evaluated policy up to 410k SAC steps (--expert-policy best)
#     (as run here: 0 -> 230k in one session, then resumed 230k -> 350k with the final-policy rule
#      and stopped, then 350k -> 410k with --expert-policy best, whose best evaluation was at
#      395k: 3252.6 +- 26.7. A resumed SAC run is reseeded from (seed, step), so a build
#      stopped at other steps trains a different policy: same recipe, not the same bits)
#   scripts/build_datasets.sh others      # halfcheetah then walker2d, SAC only up to medium
#   scripts/build_datasets.sh small       # the shipped hopper-medium-small-v5 (needs the hopper medium policy)
set -euo pipefail
cd "$(dirname "$0")/.."
AAREN=".venv/bin/aaren-rl"
OUT="data/d4rl"
COMMON=(--out "$OUT" --seed 0 --threads 1)
TRAIN=(--train-sac)  # SAC is trained here (medium-replay is its replay buffer)

case "${1:-}" in
  hopper)
    "$AAREN" make-dataset hopper "${COMMON[@]}" "${TRAIN[@]}" \
      --levels medium-replay,medium,expert,medium-expert,random \
      --total-steps 230000 --transitions 1000000
    "$AAREN" make-dataset hopper "${COMMON[@]}" "${TRAIN[@]}" --levels expert,medium-expert --overwrite \
      --total-steps 410000 --transitions 1000000 --expert-policy best
    ;;
  others)
    for task in halfcheetah walker2d; do
      "$AAREN" make-dataset "$task" "${COMMON[@]}" "${TRAIN[@]}" \
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
