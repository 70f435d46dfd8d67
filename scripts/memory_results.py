"""Memory tasks: Decision Aaren against DT (K=20) and a full-KV-cache Transformer on the T-maze.

    PYTHONPATH=. .venv/bin/python scripts/memory_results.py --lengths 20 100 --seeds 0 1 2 \\
        --steps 400 --threads 1

For every corridor length L the script builds the T-maze dataset (aaren-rl
make-memory-dataset's behaviour mix, seed 0, the same file for every agent), trains every agent
with every seed on it for the same number of optimiser steps and the same batch (in sequences),
then measures on the trained model:

- success: the fraction of ``--eval-episodes`` T-maze episodes won, conditioned on return 1
  (greedy actions);
- memory per env: the rollout state's bytes per environment at the episode's last step
  (``state_nbytes``; Aaren's is constant, a full KV cache grows by one key and value per token
  and layer, DT's recompute window is bounded);
- time per step at the last step: the median over the last 10 steps of a one-env rollout of
  ``L + 1`` steps (``profile_steps``, one thread), side by side in one process.

Agents (``--agents``): ``aaren`` (Decision Aaren, trained on whole episodes from t = 0, the
prefix sampler's ``full`` mode: the turn is the episode's last step, so a random-length prefix
would hold it only once in L + 1 draws), ``dt`` (Decision Transformer: K = 20 windows, window
recompute at rollout), ``kv`` (the Transformer with full attention and a KV cache, whole
episodes like Aaren) and the Aaren variants ``aaren-heads4``, ``aaren-merged`` (return token
merged into the state token) and ``aaren-deep`` (4 layers).

Length curriculum (``--curriculum-from L0``): every agent and seed is first trained at L0 (a
plain run, ``--steps-at L0=N`` and ``--batch-at L0=B`` set its budget), then each length of
``--lengths`` starts from that run's weights (``aaren-rl train --init-from``: the timestep
table is stretched to L + 1 rows by interpolation, the normalisation stays the L0 run's) and
is fine-tuned for ``--steps`` steps at L, batch ``--batch-size``. Before fine-tuning, the
stretched model is evaluated at L as it is (the zero-shot transfer, recorded with its cue
weight). Every agent gets the same data and steps.

``--train-costs L ...`` measures seconds per training step (forward, backward, AdamW; whole
episodes, or DT's K=20 windows) of ``--agents`` at those lengths with ``--batch-size``
sequences, side by side in one process, on untrained models.

The script is resumable: a finished run keeps its ``run.json`` (under ``--work``, with the
datasets and checkpoints) and is skipped. After every run it writes, over every finished run
under ``--work`` (this call's and earlier ones'), ``OUT/memory-results.json``,
``OUT/memory-results.md`` (the tables and every command that made them) and
``OUT/memory-results.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 1, "dropout": 0.0}
AGENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "aaren": ("decision-aaren", {"train.sampler": "full"}),
    "dt": ("decision-transformer", {"train.sampler": "window", "model.step_mode": "recompute"}),
    "kv": (
        "decision-transformer",
        {"train.sampler": "full", "model.full_attention": True, "model.step_mode": "kv_cache"},
    ),
    "aaren-heads4": ("decision-aaren", {"train.sampler": "full", "model.n_heads": 4}),
    "aaren-merged": ("decision-aaren", {"train.sampler": "full", "model.return_token": "merged"}),
    "aaren-deep": ("decision-aaren", {"train.sampler": "full", "model.n_layers": 4}),
}
LABELS = {
    "aaren": "Decision Aaren",
    "dt": "DT K=20 (recompute)",
    "kv": "Transformer, full KV cache",
    "aaren-heads4": "Decision Aaren, 4 heads",
    "aaren-merged": "Decision Aaren, merged R token",
    "aaren-deep": "Decision Aaren, 4 layers",
}


def overrides_for(agent: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """The preset overrides of one agent at corridor length ``length``."""
    _, extra = AGENTS[agent]
    out: dict[str, Any] = {f"model.{k}": v for k, v in SMALL_MODEL.items()}
    out.update(
        {
            "model.max_timestep": length + 1,
            "model.context": 20,
            "train.max_len": length + 1,
            "train.batch_size": batch_for(length, args),
            "train.steps": steps_for(length, args),
            "train.warmup_steps": max(1, steps_for(length, args) // 10),
            "train.lr": args.lr,
            "train.eval_every": 0,
            "train.eval_episodes": 0,  # evaluated below, with the costs
            "train.checkpoint_every": 100,
            "train.log_every": 25,
        }
    )
    out.update(extra)
    return out


def _value_at(items: list[str] | None, length: int, default: int, flag: str) -> int:
    for item in items or []:
        at, sep, value = item.partition("=")
        if not sep or not at.strip().isdigit() or not value.strip().isdigit():
            raise SystemExit(f"memory_results.py: {flag} {item!r}: expected L=N, e.g. 100=2000")
        if int(at) == length:
            return int(value)
    return int(default)


def steps_for(length: int, args: argparse.Namespace) -> int:
    """Training steps at corridor length ``length`` (``--steps-at L=N``, else ``--steps``)."""
    return _value_at(args.steps_at, length, args.steps, "--steps-at")


def batch_for(length: int, args: argparse.Namespace) -> int:
    """Sequences per batch at ``length`` (``--batch-at L=B``, else ``--batch-size``)."""
    return _value_at(getattr(args, "batch_at", None), length, args.batch_size, "--batch-at")


DEFAULT_LR = 1e-3


def run_name(
    length: int, steps: int, batch: int, init: dict[str, Any] | None = None, lr: float = DEFAULT_LR
) -> str:
    """The run folder of one (L, steps, batch[, curriculum start][, rate]) cell under ``runs/``.

    ``L100-2000steps`` for the default batch of 16 (the folders of earlier calls), with
    ``-bs4`` for another batch, ``-lr0.0001`` for a rate other than 1e-3 and
    ``-from-L100-2000steps`` for a fine-tuned run.
    """
    name = f"L{length}-{steps}steps" + ("" if batch == 16 else f"-bs{batch}")
    if lr != DEFAULT_LR:
        name += f"-lr{lr:g}"
    if init is not None:
        name += "-from-" + run_name(init["length"], init["steps"], init["batch_size"])
    return name


def protocol_of(record: dict[str, Any]) -> str:
    """How a run was trained, in words (empty for a plain run with batch 16)."""
    parts = []
    if int(record.get("batch_size", 16)) != 16:
        parts.append(f"batch {record['batch_size']}")
    if float(record.get("lr", DEFAULT_LR)) != DEFAULT_LR:
        parts.append(f"lr {record['lr']:g}")
    init = record.get("init_from")
    if init:
        parts.append(
            f"fine-tuned from L={init['length']} ({init['steps']} steps, batch "
            f"{init['batch_size']})"
        )
    return ", ".join(parts)


def task_for(length: int, data_file: Path) -> Any:
    from aaren_rl.data.tasks import task_from_dict
    from aaren_rl.envs import register_tmaze

    env_id = "aaren_rl.envs:" + register_tmaze(length)
    raw = {
        "name": f"tmaze-l{length}",
        "env_id": env_id,
        "dataset": str(data_file),
        "dataset_format": "d4rl",
        "max_episode_steps": length + 1,
        "reward_scale": 1.0,
        "target_returns": [1.0],
        "reference_scores": {"success": [0.0, 1.0], "use": "success"},
    }
    return task_from_dict(raw, path=REPO / "envs" / f"tmaze-l{length}.yaml")


def lr_for(args: argparse.Namespace, init: dict[str, Any] | None = None) -> float:
    """The learning rate of a run: ``--finetune-lr`` for a curriculum's fine-tune (if given),
    else ``--lr``."""
    tune = getattr(args, "finetune_lr", None)
    return float(tune if init is not None and tune is not None else args.lr)


def run_dir(agent: str, length: int, seed: int, args, init: dict[str, int] | None = None) -> Path:
    """Where one run's checkpoint and ``run.json`` live."""
    lr = lr_for(args, init)
    name = run_name(length, steps_for(length, args), batch_for(length, args), init, lr)
    return Path(args.work) / "runs" / name / agent / f"seed{seed}"


def success_rate(model: Any, task: Any, seed: int, args) -> float:
    """Fraction of ``--eval-episodes`` T-maze episodes won at target return 1 (greedy)."""
    from aaren_rl.agents.rollout import evaluate_agent

    res = evaluate_agent(
        model,
        task.env_id,
        target_return=1.0,
        n_episodes=args.eval_episodes,
        n_envs=args.eval_envs,
        seed=10_000 + seed,
        device="cpu",
        max_episode_steps=task.max_episode_steps,
    )
    return float(np.mean(res.returns))


def cue_share(length: int, n_episodes: int, n_envs: int, seed: int) -> float:
    """The share of 'up' cues among the episodes ``evaluate_agent`` plays at ``length``.

    The rollout gives env ``i`` (seeded ``seed + i``) ``(n_episodes + i) // n_envs`` episodes,
    and a T-maze draws its cue from its own random stream at each reset, whatever the policy
    does; so the evaluation's cues are fixed by (``n_episodes``, ``n_envs``, ``seed``). A policy
    that ignores the cue and always turns up scores exactly this share, one that always turns
    down ``1 -`` it: that is chance for this evaluation set.
    """
    import gymnasium as gym

    from aaren_rl.envs import register_tmaze

    env_id = "aaren_rl.envs:" + register_tmaze(length)
    cues = []
    for i in range(min(n_envs, n_episodes)):
        env = gym.make(env_id)
        for k in range((n_episodes + i) // min(n_envs, n_episodes)):
            _, info = env.reset(seed=seed + i) if k == 0 else env.reset()
            cues.append(int(info["cue"]))
        env.close()
    return 1.0 - float(np.mean(cues))  # cue 0 is up


def clamped_success(init: dict[str, Any], task: Any, seed: int, args) -> float:
    """Success at ``task``'s length of the ``init`` run's model as it is (its own timestep
    table: ``act`` clamps every later timestep at the table's last row)."""
    from aaren_rl.agents.checkpoint import load_agent

    model, _ = load_agent(init["checkpoint"])
    return success_rate(model, task, seed, args)


def one_run(
    agent: str,
    length: int,
    seed: int,
    task: Any,
    dataset: Any,
    args,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or read back) one agent at one L and seed, then measure it.

    ``init`` (the curriculum): ``{"length", "steps", "batch_size", "checkpoint"}`` of the run
    whose weights this one starts from; the zero-shot success of those weights at ``length``
    is measured first (once: kept in ``zero_shot.json`` for a resumed run), with the timestep
    table stretched (what fine-tuning starts from) and as they are (``act`` then clamps every
    timestep past the table at its last row; ``zero_shot_clamped_success``). A finished run
    recorded without the clamped figure gets it added.
    """
    from aaren_rl.agents.rollout import profile_steps
    from aaren_rl.agents.train_cli import init_model_from, resolve_agent, run_training
    from aaren_rl.files import write_json_atomic

    init_key = None if init is None else {k: init[k] for k in ("length", "steps", "batch_size")}
    out_dir = run_dir(agent, length, seed, args, init_key)
    record_path = out_dir / "run.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if init is not None and "zero_shot_clamped_success" not in record:
            record["zero_shot_clamped_success"] = clamped_success(init, task, seed, args)
            write_json_atomic(record_path, record)
        return record
    preset, _ = AGENTS[agent]
    overrides = {**overrides_for(agent, length, args), "train.lr": lr_for(args, init_key)}
    zero_shot: dict[str, Any] = {}
    if init is not None:
        zero_path = out_dir / "zero_shot.json"
        if zero_path.is_file():
            zero_shot = json.loads(zero_path.read_text())
        else:
            spec = resolve_agent(preset, overrides=overrides)
            spec["model"]["action_space"] = "discrete"
            start = init_model_from(init["checkpoint"], spec, dataset).eval()
            zero_shot = {
                "zero_shot_success": success_rate(start, task, seed, args),
                "zero_shot_cue_weight_by_layer": cue_weight(start, dataset),
            }
        if "zero_shot_clamped_success" not in zero_shot:
            zero_shot["zero_shot_clamped_success"] = clamped_success(init, task, seed, args)
            write_json_atomic(zero_path, zero_shot)
            print(
                f"L={length} {agent} seed{seed}: zero-shot from L={init['length']}: "
                f"success {zero_shot['zero_shot_success']:.2f} (timesteps clamped: "
                f"{zero_shot['zero_shot_clamped_success']:.2f})",
                flush=True,
            )
    t0 = time.perf_counter()
    result = run_training(
        preset,
        task,
        out_dir=out_dir,
        seed=seed,
        device="cpu",
        resume=(out_dir / "checkpoint.pt").is_file(),
        overrides=overrides,
        progress=not args.no_progress,
        dataset=dataset,
        init_from=None if init is None else init["checkpoint"],
    )
    train_s = time.perf_counter() - t0
    model = result.model
    prof = profile_steps(model, n_steps=length + 1, n_envs=1, seed=seed, device="cpu")
    ms_last, bytes_last = prof.at(length + 1)
    record = {
        "agent": agent,
        "length": length,
        "seed": seed,
        "steps": result.end_step,
        "batch_size": batch_for(length, args),
        "init_from": init_key,
        "lr": lr_for(args, init_key),
        "final_loss": float(np.mean(result.losses[-25:])) if result.losses else None,
        "success": success_rate(model, task, seed, args),
        "episodes": args.eval_episodes,
        "state_bytes_per_env_last": bytes_last,
        "ms_per_step_last": ms_last,
        "ms_per_step_first": float(np.median(prof.latency_ms[:10])),
        "train_seconds": train_s,
        "cue_weight_by_layer": cue_weight(model, dataset),
        "early_weight_by_layer": cue_weight(model, dataset, first_steps=EARLY_STEPS),
        **zero_shot,
    }
    write_json_atomic(record_path, record)
    return record


EARLY_STEPS = 10


def cue_weight(
    model: Any, dataset: Any, n_episodes: int = 32, first_steps: int | None = None
) -> list[float] | None:
    """Aaren only: per layer, the softmax weight the turn's s_t token gives to s_0 (the cue).

    On up to ``n_episodes`` data episodes that reached the junction, forward hooks take each
    layer's scores ``[batch, tokens, heads]``; at the last state token the weight of token s_0
    is ``softmax(scores[: last + 1])[s_0]``. Returns, per layer, the mean over episodes of the
    largest weight over heads (1 would be a head that reads the cue alone; 1 / tokens uniform).

    ``first_steps=k``: the summed weight of every token of steps 0 .. k - 1 instead. Above the
    first layer the cue need not sit in s_0 alone: layer 1's output at an early token is an
    average over a few tokens, s_0 among them, so it carries the cue strongly, and a later
    layer can read the cue there.
    """
    import torch

    from aaren_rl.nn.aaren import AarenAttention

    layers = [m for m in model.backbone.modules() if isinstance(m, AarenAttention)]
    if not layers:
        return None
    episodes = [ep for ep in dataset.episodes if ep.observations[-1][2] > 0.5][:n_episodes]
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda mod, inputs, output: captured.append(mod.scores_and_values(inputs[0])[0])
        )
        for layer in layers
    ]
    n_tok = model.config.tokens_per_step
    s_index = n_tok - 2
    weights = np.zeros((len(episodes), len(layers)))
    model.eval()
    try:
        with torch.no_grad():
            for i, ep in enumerate(episodes):
                captured.clear()
                rtg = np.cumsum(ep.rewards[::-1])[::-1].copy()
                model(
                    torch.as_tensor(ep.observations)[None],
                    torch.as_tensor(ep.actions)[None],
                    torch.as_tensor(rtg, dtype=torch.float32)[None],
                    torch.arange(len(ep))[None],
                )
                last = (len(ep) - 1) * n_tok + s_index
                for j, scores in enumerate(captured):
                    w = torch.softmax(scores[0, : last + 1].double(), dim=0)  # [tokens, heads]
                    if first_steps is None:
                        weights[i, j] = float(w[s_index].max())
                    else:
                        weights[i, j] = float(w[: first_steps * n_tok].sum(0).max())
    finally:
        for h in hooks:
            h.remove()
    return [round(float(v), 4) for v in weights.mean(axis=0)]


def summarise(records: list[dict[str, Any]]) -> dict[tuple[str, int, int, str], dict[str, Any]]:
    """Rows keyed by (agent, L, training steps, protocol) (:func:`protocol_of`)."""
    table: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    for r in records:
        key = (r["agent"], r["length"], r["steps"], protocol_of(r))
        table.setdefault(key, {"runs": []})["runs"].append(r)
    for row in table.values():
        runs = sorted(row["runs"], key=lambda r: r["seed"])
        row["runs"] = runs
        succ = np.array([r["success"] for r in runs])
        zero = [r.get("zero_shot_success") for r in runs]
        clamped = [r.get("zero_shot_clamped_success") for r in runs]
        row.update(
            zero_shot=None if None in zero else [round(float(z), 3) for z in zero],
            zero_shot_clamped=None if None in clamped else [round(float(z), 3) for z in clamped],
            success_mean=float(succ.mean()),
            success_std=float(succ.std()),
            seeds=len(runs),
            steps=runs[0]["steps"],
            state_bytes=int(np.median([r["state_bytes_per_env_last"] for r in runs])),
            ms_last=float(np.median([r["ms_per_step_last"] for r in runs])),
            per_seed=[round(float(s), 3) for s in succ],
            cue_weight=_mean_cue(runs),
            early_weight=_mean_cue(runs, "early_weight_by_layer"),
        )
    return table


def _mean_cue(runs: list[dict[str, Any]], key: str = "cue_weight_by_layer") -> list[float] | None:
    cues = [r.get(key) for r in runs]
    if any(c is None for c in cues):
        return None
    return [round(float(v), 3) for v in np.mean(np.array(cues), axis=0)]


def _fmt_bytes(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1024:.1f} KiB"


def measure_costs(lengths: list[int], agents: list[str], args) -> list[dict[str, Any]]:
    """Memory and time per step at the last step of an L + 1-step episode, per agent and L.

    Cost does not depend on what the weights learned, so these use freshly built models of
    the trained size (no training): every agent at every L, side by side in one process.
    """
    import torch

    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.rollout import profile_steps
    from aaren_rl.agents.train_cli import resolve_agent

    rows = []
    for length in lengths:
        for agent in agents:
            preset, _ = AGENTS[agent]
            spec = resolve_agent(preset, overrides=overrides_for(agent, length, args))
            model_cfg = {**spec["model"], "action_space": "discrete"}
            torch.manual_seed(0)
            model = build_decision_model(model_cfg, 3, 4)
            # best of 3 passes per step: the machine is shared, a busy core only adds time
            profs = [
                profile_steps(model, n_steps=length + 1, n_envs=1, seed=0, device="cpu")
                for _ in range(3)
            ]
            latency = np.min([p.latency_ms for p in profs], axis=0)
            nbytes = int(profs[0].state_bytes_per_env[-1])
            ms = float(np.median(latency[-10:]))
            rows.append(
                {
                    "agent": agent,
                    "length": length,
                    "state_bytes_per_env_last": nbytes,
                    "ms_per_step_last": ms,
                    "ms_per_step_first": float(np.median(latency[:10])),
                }
            )
            print(f"cost L={length} {agent}: {nbytes} B/env, {ms:.2f} ms/step", flush=True)
    return rows


def finished_records(work: Path, earlier: Path | None = None) -> list[dict[str, Any]]:
    """Every finished run under ``work/runs`` (all lengths and agents, earlier calls too).

    ``earlier``: a ``memory-results.json`` this script wrote before; its records of runs that
    are not (or no longer) under ``work`` are kept, so the tables stay whole when the run
    folders (checkpoints, not committed) are gone. A run under ``work`` replaces its old record.
    """
    paths = sorted((work / "runs").glob("L*/*/seed*/run.json"))
    records = [json.loads(p.read_text()) for p in paths]
    if earlier is not None and earlier.is_file():
        have = {record_key(r) for r in records}
        old = json.loads(earlier.read_text()).get("records", [])
        records = [r for r in old if record_key(r) not in have] + records
    return records


def record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a run unique: agent, L, steps, protocol and seed."""
    return (record["agent"], record["length"], record["steps"], protocol_of(record), record["seed"])


def backfill_cue_weights(work: Path) -> None:
    """Add the cue weights to finished Aaren runs recorded before they were measured."""
    from aaren_rl.agents.checkpoint import load_agent
    from aaren_rl.data.d4rl_reader import load_d4rl
    from aaren_rl.files import write_json_atomic

    for path in sorted((work / "runs").glob("L*/aaren*/seed*/run.json")):
        record = json.loads(path.read_text())
        missing = [k for k in ("cue_weight_by_layer", "early_weight_by_layer") if k not in record]
        if not missing or not (path.parent / "checkpoint.pt").is_file():
            continue
        length = int(record["length"])
        data = work / "data" / f"tmaze-l{length}-mixed-v0.hdf5"
        model, _ = load_agent(path.parent / "checkpoint.pt")
        dataset = load_d4rl(data, max_episode_steps=length + 1)
        record["cue_weight_by_layer"] = cue_weight(model, dataset)
        record["early_weight_by_layer"] = cue_weight(model, dataset, first_steps=EARLY_STEPS)
        write_json_atomic(path, record)


def write_outputs(args: argparse.Namespace, command: str) -> None:
    """Tables, JSON and plot of every finished run under ``--work``."""
    import torch

    from aaren_rl.files import save_figure_atomic, write_json_atomic, write_text_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = finished_records(Path(args.work), earlier=out / "memory-results.json")
    table = summarise(records)
    agents = [a for a in AGENTS if any(k[0] == a for k in table)]
    lengths = sorted({k[1] for k in table})
    budgets = sorted({k[2] for k in table})
    protocols = sorted({k[3] for k in table})
    stamp = (
        f"{platform.node()} ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    log = Path(args.work) / "commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    if command not in commands:
        commands.append(command)
        log.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(log, "\n".join(commands) + "\n")
    earlier = out / "memory-results.json"
    earlier_data = json.loads(earlier.read_text()) if earlier.is_file() else {}
    # the commands of the earlier records kept from that file come first
    commands = [c for c in earlier_data.get("commands", []) if c not in commands] + commands
    lines = [
        "# T-maze: whole-episode memory against a 20-step window",
        "",
        f"Tables written on {stamp}, from the runs of:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Success = fraction of evaluation episodes that turned the cued way (target return 1,",
        f"greedy actions, {args.eval_episodes} episodes per run), mean ± std over seeds (per-seed",
        "values in brackets). Memory = rollout state bytes per env at the last step; time = median",
        "ms per env step over the last 10 steps of a one-env rollout of L + 1 steps, one thread.",
        "Cue weight (Aaren): per layer, the softmax weight the turn's s_t token puts on s_0 (the",
        "cue), largest over heads, mean over 32 data episodes and the seeds. Weight on steps",
        f"0-{EARLY_STEPS - 1}: the same, summed over every token of the first {EARLY_STEPS} steps"
        " (above layer 1",
        "those tokens carry the cue too).",
        "Protocol: empty = trained from scratch at L with batch 16; 'fine-tuned from L=100' = the",
        "length curriculum (--curriculum-from), where 'steps' counts the steps at L only and",
        "'zero-shot' is the per-seed success of the L=100 weights at L before fine-tuning, with",
        "the timestep table stretched to L + 1 rows (and, 'clamped', with the L=100 table as it",
        "is: every timestep past 100 then shares row 100).",
        "",
        "| agent | L | steps | protocol | seeds | success | per seed | zero-shot per seed "
        "| memory/env at last step | ms/step at last step | cue weight by layer "
        f"| weight on steps 0-{EARLY_STEPS - 1} by layer |",
        "|---|---:|---:|---|---:|---:|---|---|---:|---:|---|---|",
    ]
    for agent in agents:
        for protocol in protocols:
            for length in lengths:
                for steps in budgets:
                    row = table.get((agent, length, steps, protocol))
                    if row is None:
                        continue
                    cue = row["cue_weight"] if row["cue_weight"] is not None else ""
                    zero = row["zero_shot"] if row["zero_shot"] is not None else ""
                    if row["zero_shot_clamped"] is not None:
                        zero = f"{zero} (clamped: {row['zero_shot_clamped']})"
                    early = row["early_weight"] if row["early_weight"] is not None else ""
                    lines.append(
                        f"| {LABELS[agent]} | {length} | {steps} | {protocol} | {row['seeds']} | "
                        f"{100 * row['success_mean']:.0f}% ± {100 * row['success_std']:.0f} | "
                        f"{row['per_seed']} | {zero} | {_fmt_bytes(row['state_bytes'])} | "
                        f"{row['ms_last']:.2f} | {cue} | {early} |"
                    )
    costs_path = Path(args.work) / "costs.json"
    costs = (
        json.loads(costs_path.read_text())["rows"]
        if costs_path.is_file()
        else earlier_data.get("costs", [])
    )
    train_costs_path = Path(args.work) / "train-costs.json"
    train_costs = (
        json.loads(train_costs_path.read_text())["rows"]
        if train_costs_path.is_file()
        else earlier_data.get("train_costs", [])
    )
    if costs:
        lines += [
            "",
            "## Cost per env at the last step of an L + 1-step episode",
            "",
            "Untrained models of the same size (cost does not depend on the weights), all in one",
            "process, one env, one thread: state bytes per env after the last step, median ms",
            "per step over the last 10 steps (and over the first 10), each step the best of 3",
            "passes (the CPU is shared with other jobs).",
            "",
            "| agent | L | memory/env at last step | ms/step at last step | ms/step at t<10 |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in sorted(costs, key=lambda c: (list(AGENTS).index(c["agent"]), c["length"])):
            lines.append(
                f"| {LABELS[c['agent']]} | {c['length']} | "
                f"{_fmt_bytes(c['state_bytes_per_env_last'])} | {c['ms_per_step_last']:.2f} | "
                f"{c['ms_per_step_first']:.2f} |"
            )
    if train_costs:
        lines += [
            "",
            "## Cost of one training step",
            "",
            "Seconds per optimiser step (forward, backward, AdamW) on untrained models of the",
            "trained size, median of 3 steps after a warm-up step, all in one process, one",
            "thread. Aaren and the full KV cache train on whole episodes (3 (L + 1) tokens per",
            "sequence); DT on K = 20 windows, whatever L is.",
            "",
            "| agent | L | batch (sequences) | s per training step |",
            "|---|---:|---:|---:|",
        ]
        for c in sorted(train_costs, key=lambda c: (list(AGENTS).index(c["agent"]), c["length"])):
            lines.append(
                f"| {LABELS[c['agent']]} | {c['length']} | {c['batch_size']} | "
                f"{c['seconds_per_step']:.3f} |"
            )
    write_text_atomic(out / "memory-results.md", "\n".join(lines) + "\n")
    write_json_atomic(
        out / "memory-results.json",
        {
            "commands": commands,
            "stamp": stamp,
            "records": records,
            "costs": costs,
            "train_costs": train_costs,
        },
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {a: f"C{i}" for i, a in enumerate(agents)}
    for agent, protocol, rows in success_series(table, agents):
        xs = [r["runs"][0]["length"] for r in rows]
        axes[0].errorbar(
            xs,
            [100 * r["success_mean"] for r in rows],
            yerr=[100 * r["success_std"] for r in rows],
            color=colours[agent],
            marker="o" if not protocol else "s",
            ls="-" if not protocol else "--",
            capsize=3,
            label=LABELS[agent] + (f" ({short_protocol(rows)})" if protocol else ""),
        )
    for agent in agents:
        by_length: dict[int, dict[str, Any]] = {}  # one row per L: the first curve's first
        for a, _, series in success_series(table, agents):
            for r in series if a == agent else []:
                by_length.setdefault(r["runs"][0]["length"], r)
        xs = sorted(by_length)
        rows = [by_length[L] for L in xs]
        mine = sorted((c for c in costs if c["agent"] == agent), key=lambda c: c["length"])
        if mine:  # the cost sweep covers more lengths than the trained runs
            cx = [c["length"] for c in mine]
            kib = [c["state_bytes_per_env_last"] / 1024 for c in mine]
            ms = [c["ms_per_step_last"] for c in mine]
        else:
            cx, kib, ms = xs, [r["state_bytes"] / 1024 for r in rows], [r["ms_last"] for r in rows]
        axes[1].plot(cx, kib, marker="o", color=colours[agent], label=LABELS[agent])
        axes[2].plot(cx, ms, marker="o", color=colours[agent], label=LABELS[agent])
    axes[0].axhline(50, color="grey", ls=":", lw=1, label="chance (50%)")
    axes[0].set(
        xscale="log",
        xlabel="corridor length L",
        ylabel="success % (most-trained runs)",
        ylim=(0, 105),
    )
    axes[1].set(xscale="log", yscale="log", xlabel="L", ylabel="state KiB per env, last step")
    axes[2].set(xscale="log", xlabel="L", ylabel="ms per step, last step (1 thread)")
    axes[0].set_title("success", fontsize=9)
    axes[1].set_title("state per environment", fontsize=9)
    axes[2].set_title("time per step", fontsize=9)
    from aaren_rl.plots import readable_log_axes

    for ax in axes:
        readable_log_axes(ax)
    axes[0].legend(fontsize=6.5, loc="lower left")
    for ax in axes[1:]:
        ax.legend(fontsize=6.5)
    fig.suptitle(
        "Passive T-maze: Decision Aaren vs Decision Transformer (K = 20) and a full-KV-cache "
        "Transformer: success, memory and time per step against corridor length"
    )
    fig.tight_layout()
    save_figure_atomic(fig, out / "memory-results.png", dpi=110)
    plt.close(fig)


def short_protocol(rows: list[dict[str, Any]]) -> str:
    """A curriculum curve's legend note: ``curriculum from L=100``."""
    inits = [r["init_from"] for row in rows for r in row["runs"] if r.get("init_from")]
    return f"curriculum from L={inits[0]['length']}" if inits else protocol_of(rows[0]["runs"][0])


def success_series(
    table: dict[tuple[str, int, int, str], dict[str, Any]], agents: list[str]
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The plot's success curves: ``(agent, protocol, rows by L)``.

    A plain curve (trained from scratch) takes, per L, the run with the most steps; a
    curriculum curve starts at the run it was fine-tuned from (its L0 point), then its own
    fine-tuned runs at each L (the most steps, again).
    """
    out = []
    for agent in agents:
        for protocol in sorted({k[3] for k in table if k[0] == agent}):
            best: dict[int, tuple[int, dict[str, Any]]] = {}
            for (a, length, steps, p), row in table.items():
                if a == agent and p == protocol and steps >= best.get(length, (0, None))[0]:
                    best[length] = (steps, row)
            inits = [r.get("init_from") for _, row in best.values() for r in row["runs"]]
            init = next((i for i in inits if i), None)
            if init is not None:
                start = table.get(
                    (agent, init["length"], init["steps"], protocol_of({**init, "init_from": None}))
                )
                if start is not None and init["length"] not in best:
                    best[init["length"]] = (init["steps"], start)
            out.append((agent, protocol, [best[L][1] for L in sorted(best)]))
    return out


def measure_train_costs(lengths: list[int], agents: list[str], args) -> list[dict[str, Any]]:
    """Seconds per training step of each agent at each L (untrained models, one process).

    One batch of ``--batch-size`` sequences of the real T-maze dataset (whole episodes, or
    DT's K = 20 windows), then forward + loss + backward + AdamW step: one warm-up step, the
    median of the next 3.
    """
    import torch

    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.train_cli import resolve_agent
    from aaren_rl.agents.trainer import TrainConfig, decision_loss, make_sampler

    rows = []
    for length in lengths:
        dataset = load_dataset(length, args)
        for agent in agents:
            preset, _ = AGENTS[agent]
            spec = resolve_agent(preset, overrides=overrides_for(agent, length, args))
            torch.manual_seed(0)
            model = build_decision_model(
                {**spec["model"], "action_space": "discrete"}, dataset.obs_dim, dataset.act_dim
            )
            train_cfg = TrainConfig.from_dict(spec["train"])
            sampler = make_sampler(dataset, train_cfg, model.config.context, seed=0)
            optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
            times = []
            for _ in range(4):
                batch = sampler.sample(args.batch_size).to_torch()
                t0 = time.perf_counter()
                loss = decision_loss(model, batch)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times[1:]))
            rows.append(
                {
                    "agent": agent,
                    "length": length,
                    "batch_size": args.batch_size,
                    "seconds_per_step": sec,
                }
            )
            print(f"train cost L={length} {agent} batch {args.batch_size}: {sec:.3f} s", flush=True)
    return rows


def data_path(length: int, args) -> Path:
    """The T-maze dataset file at ``length`` under ``--work``."""
    return Path(args.work) / "data" / f"tmaze-l{length}-mixed-v0.hdf5"


def load_dataset(length: int, args) -> Any:
    """The T-maze dataset at ``length`` (built once under ``--work/data``, seed 0)."""
    from aaren_rl.data.d4rl_reader import load_d4rl
    from aaren_rl.envs.memory_datasets import Mix, build_dataset

    data_file = data_path(length, args)
    if not data_file.is_file():
        build_dataset(task_for(length, data_file), data_file, n_episodes=args.episodes, mix=Mix())
    return load_d4rl(data_file, max_episode_steps=length + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--agents", nargs="+", default=["aaren", "dt", "kv"], choices=AGENTS)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--steps-at", nargs="*", default=None, metavar="L=STEPS", help="other steps at length L"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    parser.add_argument(
        "--batch-at", nargs="*", default=None, metavar="L=B", help="another batch at length L"
    )
    parser.add_argument(
        "--curriculum-from",
        type=int,
        default=None,
        metavar="L0",
        help="train every agent and seed at L0 first, then fine-tune that run at each --lengths",
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="the curriculum's fine-tune rate (default: --lr); the tmaze-finetune preset uses 1e-4",
    )
    parser.add_argument("--episodes", type=int, default=300, help="dataset episodes per L")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--eval-envs", type=int, default=25)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "memory"), help="tables")
    parser.add_argument(
        "--work", default=str(REPO / "runs" / "memory"), help="datasets and runs (checkpoints)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="only the tables of finished runs"
    )
    parser.add_argument(
        "--costs",
        type=int,
        nargs="*",
        default=None,
        metavar="L",
        help="instead of training: measure memory and time per step of --agents at these L",
    )
    parser.add_argument(
        "--train-costs",
        type=int,
        nargs="*",
        default=None,
        metavar="L",
        help="instead of training: seconds per training step of --agents at these L",
    )
    parser.add_argument(
        "--cue-shares",
        type=int,
        nargs="*",
        default=None,
        metavar="L",
        help="instead of training: print, per seed, the share of 'up' cues among the evaluation "
        "episodes (--eval-episodes in --eval-envs envs, env seeds 10000 + seed + i): what a "
        "policy that ignores the cue and always turns up scores",
    )
    args = parser.parse_args(argv)
    if args.cue_shares:
        for length in args.cue_shares:
            for seed in args.seeds:
                share = cue_share(length, args.eval_episodes, args.eval_envs, 10_000 + seed)
                print(
                    f"L={length} seed {seed} ({args.eval_episodes} episodes, {args.eval_envs} "
                    f"envs, env seeds {10_000 + seed}..): up {share:.0%}, down {1 - share:.0%}"
                )
        return 0

    import torch

    torch.set_num_threads(args.threads)

    command = "PYTHONPATH=. .venv/bin/python scripts/memory_results.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    out = Path(args.out)
    if args.costs:
        from aaren_rl.files import write_json_atomic

        rows = measure_costs(args.costs, args.agents, args)
        write_json_atomic(Path(args.work) / "costs.json", {"command": command, "rows": rows})
        args.report_only = True
    if args.train_costs:
        from aaren_rl.files import write_json_atomic

        rows = measure_train_costs(args.train_costs, args.agents, args)
        write_json_atomic(Path(args.work) / "train-costs.json", {"command": command, "rows": rows})
        args.report_only = True
    start = args.curriculum_from
    for length in [] if args.report_only else args.lengths:
        task = task_for(length, data_path(length, args))
        dataset = load_dataset(length, args)
        for agent in args.agents:
            for seed in args.seeds:
                init = None
                if start is not None and start != length:
                    pre = one_run(
                        agent, start, seed, task_for(start, data_path(start, args)),
                        load_dataset(start, args), args,
                    )  # fmt: skip
                    init = {
                        "length": start,
                        "steps": pre["steps"],
                        "batch_size": batch_for(start, args),
                        "checkpoint": run_dir(agent, start, seed, args) / "checkpoint.pt",
                    }
                rec = one_run(agent, length, seed, task, dataset, args, init=init)
                print(
                    f"L={length} {agent} seed{seed}: success {rec['success']:.2f}, "
                    f"state {rec['state_bytes_per_env_last']} B/env, "
                    f"{rec['ms_per_step_last']:.2f} ms/step, trained {rec['train_seconds']:.0f} s",
                    flush=True,
                )
                write_outputs(args, command)
    backfill_cue_weights(Path(args.work))
    write_outputs(args, command)
    print(f"wrote {out / 'memory-results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
