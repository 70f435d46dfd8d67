#!/usr/bin/env bash
# The exact command run on the lent GPU machine for docs/results.md (issue 4, "Measured").
#
# The device has python3 with torch (CUDA), h5py, numpy, tensorboard, tqdm and pyyaml but no
# gymnasium, mujoco or stable-baselines3: their wheels travel in .gpuwheels (git-ignored),
# the behaviour policies TASK-medium-sac.zip in .gpupol (git-ignored). Each medium dataset is
# rebuilt there with make-dataset from its policy (same command and seed as the local build),
# then the 9 runs of the task (3 agents x 3 seeds) train as parallel processes on the one GPU,
# evaluate, and the table is written by scripts/results.py.
#
#   MODE=verify bash scripts/gpu_results.sh halfcheetah          # install, small dataset, timing
#   MODE=full STEPS=1500 bash scripts/gpu_results.sh halfcheetah hopper
#
# Environment: STEPS (training steps, every agent), TRANSITIONS (dataset size, 1000000),
# EVAL_EPISODES (per target return, 10), SEEDS ("0 1 2"), OUT (results folder).
set -uo pipefail
MODE=${MODE:-full}
STEPS=${STEPS:-1500}
TRANSITIONS=${TRANSITIONS:-1000000}
EVAL_EPISODES=${EVAL_EPISODES:-10}
SEEDS=${SEEDS:-"0 1 2"}
OUT=${OUT:-/tmp/gpu-out}
AGENTS=(decision-aaren decision-aaren@window decision-transformer)
RUNS=/tmp/runs
mkdir -p "$OUT" "$RUNS" /tmp/logs
T0=$(date +%s)
stamp() { echo "[gpu_results +$(($(date +%s) - T0))s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .gpuwheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
unset MUJOCO_GL
export AAREN_RL_DATA_DIR=/tmp/d4rl-$TRANSITIONS PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
python3 -c "import torch, gymnasium, mujoco, stable_baselines3 as sb3; print('torch', torch.__version__, torch.cuda.get_device_name(), 'gymnasium', gymnasium.__version__, 'mujoco', mujoco.__version__, 'sb3', sb3.__version__)" || exit 1
stamp "installed"

build() {  # the medium dataset of task $1 from its carried policy, as the local build does it
    python3 -m aaren_rl.cli make-dataset "$1" --levels medium --policies .gpupol --out "$AAREN_RL_DATA_DIR" \
        --work-dir "/tmp/mdwork/$1" --transitions "$TRANSITIONS" --rollout-envs 8 --seed 0 \
        --device cpu --threads 1 --quiet
}

train_task() {  # the 9 runs of task $1 in parallel on the one GPU
    local task=$1 pids=() agent seed
    for seed in $SEEDS; do
        for agent in "${AGENTS[@]}"; do
            python3 scripts/results.py --tasks "$task-medium" --agents "$agent" --seeds "$seed" \
                --protocol gpu --steps "$STEPS" --eval-episodes "$EVAL_EPISODES" --runs "$RUNS" \
                --doc "/tmp/logs/unused.md" --device cuda --no-progress \
                >"/tmp/logs/$task-$agent-$seed.log" 2>&1 &
            pids+=($!)
        done
    done
    local rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    stamp "$task: 9 runs done (rc $rc)"
}

pipeline() {
    build "$1" >"/tmp/logs/$1-make-dataset.log" 2>&1 || { stamp "$1: make-dataset FAILED"; return 1; }
    stamp "$1: dataset built"
    python3 - "$1" <<'EOF'
import hashlib, json, os, sys, h5py, numpy as np
task = sys.argv[1]
with h5py.File(f"{os.environ['AAREN_RL_DATA_DIR']}/{task}-medium-v5.hdf5", "r") as f:
    digest = {k: hashlib.sha256(np.ascontiguousarray(f[k][()]).tobytes()).hexdigest()[:16]
              for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    ends = np.flatnonzero(f["terminals"][()] | f["timeouts"][()])
    rets = np.array([s.sum() for s in np.split(f["rewards"][()].astype(np.float64), ends[:-1] + 1)])
print(task, "transitions", len(ends) and int(ends[-1] + 1), "episodes", len(rets), "return mean %.3f std %.3f min %.3f max %.3f" % (rets.mean(), rets.std(), rets.min(), rets.max()))
print(task, "sha256[:16]", json.dumps(digest))
EOF
    if [ "$MODE" = verify ]; then
        python3 scripts/results.py --time-steps 20 --tasks "$1-medium" --protocol gpu --device cuda
        stamp "$1: timed"
    fi
    train_task "$1"
}

pack() {  # metrics, evaluations, configs, TensorBoard logs and process logs (no checkpoints)
    cp "$AAREN_RL_DATA_DIR"/*summary.json "$OUT/" 2>/dev/null
    tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.tmp' -C /tmp runs logs
}
(sleep "${PACK_AT:-560}"; stamp "watchdog: packing what is there"; pack) &
WATCHDOG=$!
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 >/tmp/logs/gpu.csv 2>&1 &
pids=()
for task in "$@"; do pipeline "$task" & pids+=($!); done
wait "${pids[@]}"
kill "$WATCHDOG" 2>/dev/null
stamp "all tasks done"

tasks=()
for task in "$@"; do tasks+=("$task-medium"); done
python3 scripts/results.py --tasks "${tasks[@]}" --seeds $SEEDS --protocol gpu --steps "$STEPS" \
    --eval-episodes "$EVAL_EPISODES" --runs "$RUNS" --doc "$OUT/results-block.md" --device cuda \
    --no-progress | tail -n 40
pack
ls -la "$OUT"
for f in /tmp/logs/*.log; do echo "== $f"; tail -n 3 "$f"; done
stamp "end"
