#!/usr/bin/env bash
# The command that ran on a GPU machine for the table of docs/results.md ("Measured").
#
# The device has python3 with torch (CUDA), h5py, numpy, tensorboard, tqdm and pyyaml but no
# gymnasium, mujoco or stable-baselines3: their wheels travel in .gpuwheels (git-ignored). Each
# argument is a task, TASK-LEVEL (a bare TASK means TASK-medium). A dataset carried in .gpudata
# (git-ignored; TASK-LEVEL-v5.hdf5, or .hdf5.xz to fit the 64 MiB the device takes) is used as it
# is; a missing medium dataset is rebuilt there with make-dataset from its behaviour policy
# (POLICIES, default the shipped aaren_rl/assets/policies), with the local build's command and
# seed, or, with SHARDS=N > 1, as N parallel rollouts of TRANSITIONS/N steps (seeds 1000*k, torch
# seeded k) merged into one file, N times faster. Medium-replay datasets (SAC replay buffers)
# cannot be rebuilt from a policy: carry them. Then the 9 runs of each task (3 agents x 3 seeds)
# train as parallel processes on the one GPU, evaluate, and the table is written by
# scripts/results.py.
#
#   MODE=verify bash scripts/gpu_results.sh halfcheetah          # install, small dataset, timing
#   MODE=full STEPS=1500 bash scripts/gpu_results.sh halfcheetah hopper
#   MODE=full STEPS=1500 SHARDS=8 bash scripts/gpu_results.sh walker2d-medium hopper-medium-replay
#
# Environment: STEPS (training steps, every agent), TRANSITIONS (dataset size, 1000000),
# EVAL_EPISODES (per target return, 10), SEEDS ("0 1 2"), OUT (results folder), SHARDS (1),
# WHEELS (.gpuwheels), GPUDATA (.gpudata), POLICIES, PACK_AT (560: seconds before the watchdog
# packs what is there).
set -uo pipefail
MODE=${MODE:-full}
STEPS=${STEPS:-1500}
TRANSITIONS=${TRANSITIONS:-1000000}
EVAL_EPISODES=${EVAL_EPISODES:-10}
SEEDS=${SEEDS:-"0 1 2"}
OUT=${OUT:-/tmp/gpu-out}
SHARDS=${SHARDS:-1}
WHEELS=${WHEELS:-.gpuwheels}
GPUDATA=${GPUDATA:-.gpudata}
POLICIES=${POLICIES:-aaren_rl/assets/policies}
AGENTS=(decision-aaren decision-aaren@window decision-transformer)
RUNS=/tmp/runs
mkdir -p "$OUT" "$RUNS" /tmp/logs
T0=$(date +%s)
stamp() { echo "[gpu_results +$(($(date +%s) - T0))s] $*"; }

specs=()  # TASK-LEVEL per argument; a bare TASK is TASK-medium
for arg in "$@"; do
    case "$arg" in *-*) specs+=("$arg") ;; *) specs+=("$arg-medium") ;; esac
done
[ ${#specs[@]} -gt 0 ] || { echo "usage: bash scripts/gpu_results.sh TASK[-LEVEL] ..." >&2; exit 2; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
unset MUJOCO_GL
export AAREN_RL_DATA_DIR=/tmp/d4rl-$TRANSITIONS PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$AAREN_RL_DATA_DIR"
nvidia-smi -L
python3 -c "import torch, gymnasium, mujoco, stable_baselines3 as sb3; print('torch', torch.__version__, torch.cuda.get_device_name(), 'gymnasium', gymnasium.__version__, 'mujoco', mujoco.__version__, 'sb3', sb3.__version__)" || exit 1
stamp "installed"

# Carried datasets (the same bytes as the local files) go where the runs look for them.
if [ -d "$GPUDATA" ]; then
    python3 - "$GPUDATA" "$AAREN_RL_DATA_DIR" <<'EOF' || exit 1
import lzma, os, pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(src.rglob("*.hdf5*")):
    name = f.name.removesuffix(".xz")
    if not name.endswith(".hdf5"):
        continue
    tmp = dst / f".{name}.tmp"
    with (lzma.open(f) if f.name.endswith(".xz") else open(f, "rb")) as i, open(tmp, "wb") as o:
        shutil.copyfileobj(i, o, 1 << 22)
    os.replace(tmp, dst / name)
    print("carried dataset", f, "->", dst / name, (dst / name).stat().st_size, "bytes")
EOF
fi

build() {  # the medium dataset of task $1 from its policy, as the local build does it
    python3 -m aaren_rl.cli make-dataset "$1" --levels medium --policies "$POLICIES" --out "$AAREN_RL_DATA_DIR" \
        --work-dir "/tmp/mdwork/$1" --transitions "$TRANSITIONS" --rollout-envs 8 --seed 0 \
        --device cpu --threads 1 --quiet
}

build_sharded() {  # the same, as SHARDS parallel rollouts merged into one file
    local task=$1 k n pids=() rc=0
    for ((k = 0; k < SHARDS; k++)); do
        n=$((TRANSITIONS / SHARDS + (k < TRANSITIONS % SHARDS ? 1 : 0)))
        python3 -c 'import sys, torch; torch.manual_seed(int(sys.argv[1])); from aaren_rl.cli import main; sys.exit(main(sys.argv[2:]))' \
            "$k" make-dataset "$task" --levels medium --policies "$POLICIES" --out "/tmp/shards/$task/$k" \
            --work-dir "/tmp/mdwork/$task-$k" --transitions "$n" --rollout-envs 8 --seed $((1000 * k)) \
            --device cpu --threads 1 --quiet &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ $rc = 0 ] || return 1
    python3 - "$task" "$SHARDS" <<'EOF'
import json, os, sys
from pathlib import Path

import h5py
import numpy as np

from aaren_rl.data.d4rl_writer import episode_bounds

task, shards = sys.argv[1], int(sys.argv[2])
out_dir = Path(os.environ["AAREN_RL_DATA_DIR"])
files = [Path(f"/tmp/shards/{task}/{k}/{task}-medium-v5.hdf5") for k in range(shards)]
out = out_dir / f"{task}-medium-v5.hdf5"
tmp = out_dir / f".{out.name}.tmp"
with h5py.File(tmp, "w") as dst:
    srcs = [h5py.File(f, "r") for f in files]
    keys = []
    srcs[0].visititems(lambda n, o: keys.append(n) if isinstance(o, h5py.Dataset) and not n.startswith("metadata") else None)
    for key in keys:  # per-transition arrays, in shard order
        dst.create_dataset(key, data=np.concatenate([s[key][()] for s in srcs]))
    srcs[0].copy(srcs[0]["metadata"], dst, name="metadata")
    meta = dst["metadata"]
    for key in ("episode_returns", "episode_lengths"):
        del meta[key]
        meta.create_dataset(key, data=np.concatenate([s["metadata"][key][()] for s in srcs]))
    del meta["seed"]
    meta.create_dataset("seed", data=np.array([int(s["metadata"]["seed"][()]) for s in srcs]))
    meta.create_dataset("shards", data=f"{shards} make-dataset rollouts (seeds 1000*k, torch seeded k) concatenated by scripts/gpu_results.sh", dtype=h5py.string_dtype())
    for s in srcs:
        s.close()
    rewards = dst["rewards"][()].astype(np.float64)
    bounds = episode_bounds(dst["terminals"][()], dst["timeouts"][()])
    terminals = dst["terminals"][()]
os.replace(tmp, out)
returns = np.array([rewards[a:b].sum() for a, b in bounds])
lengths = np.array([b - a for a, b in bounds])
summaries = [json.loads(Path(f"/tmp/shards/{task}/{k}/{task}-v5-summary.json").read_text()) for k in range(shards)]
ref = summaries[0]["references"]
lo, hi = ref["d4rl_random"], ref["d4rl_expert"]
complete = terminals[[b - 1 for _, b in bounds]] | (lengths == 1000)
merged = {
    "generator": "scripts/gpu_results.sh build_sharded: concatenation of the shards below",
    "task": task,
    "env_id": summaries[0]["env_id"],
    "shards": summaries,
    "references": ref,
    "datasets": {f"{task}-medium-v5": {
        "transitions": int(len(rewards)), "episodes": int(len(bounds)),
        "complete_episodes": int(complete.sum()),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "return_min": float(returns.min()), "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
        "d4rl_normalised_mean": float(100 * (returns.mean() - lo) / (hi - lo)),
    }},
}
(out_dir / f"{task}-v5-summary.json").write_text(json.dumps(merged, indent=2))
print("merged", len(files), "shards into", out, merged["datasets"])
EOF
}

train_task() {  # the 9 runs of task $1 in parallel on the one GPU
    local task=$1 pids=() agent seed
    for seed in $SEEDS; do
        for agent in "${AGENTS[@]}"; do
            python3 scripts/results.py --tasks "$task" --agents "$agent" --seeds "$seed" \
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

pipeline() {  # $1 = TASK-LEVEL
    local spec=$1 task=${1%%-*} level=${1#*-}
    local file="$AAREN_RL_DATA_DIR/$spec-v5.hdf5"
    if [ -f "$file" ]; then
        stamp "$spec: carried dataset, no build"
    elif [ "$level" = medium ]; then
        if [ "$SHARDS" -gt 1 ]; then
            build_sharded "$task" >"/tmp/logs/$task-make-dataset.log" 2>&1
        else
            build "$task" >"/tmp/logs/$task-make-dataset.log" 2>&1
        fi || { stamp "$spec: make-dataset FAILED"; return 1; }
        stamp "$spec: dataset built"
    else
        stamp "$spec: $file missing; a $level dataset cannot be rebuilt here, carry it in $GPUDATA"
        return 1
    fi
    python3 - "$file" <<'EOF'
import hashlib, json, sys, h5py, numpy as np
path = sys.argv[1]
with h5py.File(path, "r") as f:
    digest = {k: hashlib.sha256(np.ascontiguousarray(f[k][()]).tobytes()).hexdigest()[:16]
              for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    ends = np.flatnonzero(f["terminals"][()] | f["timeouts"][()])
    rets = np.array([s.sum() for s in np.split(f["rewards"][()].astype(np.float64), ends[:-1] + 1)])
print(path, "transitions", len(ends) and int(ends[-1] + 1), "episodes", len(rets), "return mean %.3f std %.3f min %.3f max %.3f" % (rets.mean(), rets.std(), rets.min(), rets.max()))
print(path, "sha256[:16]", json.dumps(digest))
EOF
    if [ "$MODE" = verify ]; then
        python3 scripts/results.py --time-steps 20 --tasks "$spec" --protocol gpu --device cuda
        stamp "$spec: timed"
    fi
    train_task "$spec"
}

pack() {  # metrics, evaluations, configs, TensorBoard logs and process logs (no checkpoints)
    cp "$AAREN_RL_DATA_DIR"/*summary.json "$OUT/" 2>/dev/null
    tar czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.tmp' -C /tmp runs logs
}
# The watchdog's sleep is killed with it, so it does not hold the console pipe open to PACK_AT.
(trap 'kill $s 2>/dev/null; exit 0' TERM; sleep "${PACK_AT:-560}" & s=$!; wait $s
 stamp "watchdog: packing what is there"; pack) &
WATCHDOG=$!
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 >/tmp/logs/gpu.csv 2>&1 &
pids=()
for spec in "${specs[@]}"; do pipeline "$spec" & pids+=($!); done
wait "${pids[@]}"
kill "$WATCHDOG" 2>/dev/null
stamp "all tasks done"

python3 scripts/results.py --tasks "${specs[@]}" --seeds $SEEDS --protocol gpu --steps "$STEPS" \
    --eval-episodes "$EVAL_EPISODES" --runs "$RUNS" --doc "$OUT/results-block.md" --device cuda \
    --no-progress | tail -n 40
pack
ls -la "$OUT"
for f in /tmp/logs/*.log; do echo "== $f"; tail -n 3 "$f"; done
stamp "end"
