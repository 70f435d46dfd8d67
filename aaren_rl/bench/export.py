"""``aaren-rl bench export``: the exported step against the numba fast step, one thread.

At the agent presets' size (width 128, 3 layers, 1 head, Hopper's 11 observation and 3 action
features; weights drawn at random: costs do not depend on them) it measures, in one run:

1. Latency per environment step, at 1, 16 and 64 environments: ONNX Runtime float32, ONNX
   Runtime int8 (dynamic quantisation) and :class:`~aaren_rl.agents.fast_step.FastDecisionStep`
   on numba (``act`` + clip + ``observe_action``, as the rollout calls it). ONNX Runtime runs
   with one intra-op thread and torch with one thread. Each ONNX variant is timed twice: the
   bare ``InferenceSession.run`` ("bare run") and :meth:`~aaren_rl.deploy.runtime.OnnxStep.step` (what a runner
   calls: input checks and the state dict). The steppers take turns in rounds, so a load
   change on a shared machine hits them alike; the median and the 10th percentile are
   reported.
2. The files' sizes (float32, int8).
3. Peak memory (``VmHWM``: the peak resident set) of a fresh process that loads the float32 file and runs 2,000
   steps at 16 environments, with torch never imported (the import is blocked), against the
   same process that imports torch first; and of one that runs the numba fast step (torch
   needed).
4. The state bytes per environment of the exported step against the fast step's, after step
   1 and step 100,000 (one environment).

Everything goes to ``OUT/bench-export.json`` and ``OUT/bench-export.md`` (and a plot,
``OUT/bench-export.png``), stamped with the machine, the load and the versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaren_rl.bench.common import cpu_name, git_commit, package_version
from aaren_rl.files import save_figure_atomic, write_json_atomic, write_text_atomic

OBS_DIM, ACT_DIM = 11, 3
STEM = "bench-export"
VARIANTS = ("onnx-float32", "onnx-int8", "fast-numba")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aaren-rl bench export``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench-export"),
        help="output folder (runs/bench-export; the docs' run is in docs/benchmarks/bench-export)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of turns (7)")
    parser.add_argument("--block-seconds", type=float, default=0.3, help="per turn (0.3)")
    parser.add_argument("--long-steps", type=int, default=100_000, help="state check (100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run (small sizes)")


def _model(seed: int):
    from aaren_rl.agents.decision_model import build_decision_model

    torch.manual_seed(seed)
    model = build_decision_model(
        {"backbone": "aaren", "d_model": 128, "n_layers": 3, "n_heads": 1},
        OBS_DIM,
        ACT_DIM,
        reward_scale=1e-3,
    )
    return model.eval()


def export_files(model: Any, folder: Path) -> dict[str, Path]:
    """The float32 and int8 files of ``model`` (Hopper's action bounds, +-1) in ``folder``."""
    from aaren_rl.deploy.export import export_decision_step
    from aaren_rl.deploy.quantize import quantize_int8

    f32 = export_decision_step(
        model, folder / "step.onnx", action_low=[-1.0] * ACT_DIM, action_high=[1.0] * ACT_DIM
    )
    int8 = quantize_int8(f32, folder / "step.int8.onnx", overwrite=True)
    return {"onnx-float32": f32, "onnx-int8": int8}


class _Stepper:
    """One variant at one batch size; ``block`` steps it for a while and records the times."""

    def __init__(self, name: str, fn: Any, n_envs: int) -> None:
        self.name, self.fn, self.n_envs = name, fn, n_envs
        self.times: list[float] = []

    def block(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            self.fn()
            t1 = time.perf_counter()
            self.times.append(t1 - t0)
            if t1 > end:
                return


def _onnx_steppers(path: Path, label: str, n: int, inputs: dict) -> list[_Stepper]:
    from aaren_rl.deploy.runtime import OnnxStep

    step = OnnxStep(path, threads=1)
    holder = {"state": step.initial_state(n), "raw": step.initial_state(n)}
    names = [o.name for o in step.session.get_outputs()]
    state_names = step.state_names

    def wrapped() -> None:
        _, holder["state"] = step.step(holder["state"], **inputs)

    def raw() -> None:
        out = step.session.run(names, {**inputs, **holder["raw"]})
        holder["raw"] = dict(zip(state_names, out[1:], strict=True))

    return [_Stepper(label, wrapped, n), _Stepper(label + " (bare run)", raw, n)]


def _numba_stepper(model: Any, n: int, inputs: dict) -> _Stepper | None:
    from aaren_rl.agents import fast_step_numba
    from aaren_rl.agents.fast_step import FastDecisionStep

    if not fast_step_numba.AVAILABLE:
        return None
    fast = FastDecisionStep(model, backend="numba")
    holder = {"state": fast.initial_state(n)}
    obs = torch.as_tensor(inputs["observation"])
    rtg = torch.as_tensor(inputs["return_to_go"])
    t = torch.as_tensor(inputs["timestep"])
    low, high = torch.full((ACT_DIM,), -1.0), torch.full((ACT_DIM,), 1.0)

    def step() -> None:
        with torch.inference_mode():
            a, s = fast.act(obs, rtg, t, holder["state"])
            a = torch.maximum(torch.minimum(a, high), low)
            holder["state"] = fast.observe_action(a, t, s)

    return _Stepper("fast-numba", step, n)


def measure_latency(model: Any, files: dict[str, Path], args: argparse.Namespace, log) -> list:
    """Median µs per environment step of every variant at every batch size."""
    records = []
    for n in args.envs:
        rng = np.random.default_rng(args.seed)
        inputs = {
            "observation": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "return_to_go": np.full(n, 3600.0, dtype=np.float32),
            "timestep": np.full(n, 25, dtype=np.int64),
        }
        steppers = []
        for label, path in files.items():
            steppers += _onnx_steppers(path, label, n, inputs)
        numba_step = _numba_stepper(model, n, inputs)
        if numba_step is not None:
            steppers.append(numba_step)
        for s in steppers:  # warm-up (numba's compile, ONNX Runtime's first run)
            s.block(0.05)
            s.times.clear()
        for _ in range(args.rounds):
            for s in steppers:
                s.block(args.block_seconds)
        for s in steppers:
            med = statistics.median(s.times)
            p10 = float(np.percentile(s.times, 10))
            records.append(
                {
                    "variant": s.name,
                    "n_envs": n,
                    "steps_timed": len(s.times),
                    "step_us": med * 1e6,
                    "us_per_env": med * 1e6 / n,
                    "us_per_env_p10": p10 * 1e6 / n,
                }
            )
            log(
                f"latency {s.name:30s} envs={n:3d}: {med * 1e6 / n:8.1f} µs/env "
                f"(p10 {p10 * 1e6 / n:.1f})"
            )
    return records


RSS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, resource, sys
    mode, path, steps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "no-torch":
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, p=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked")
        sys.meta_path.insert(0, NoTorch())
    else:
        import torch
        torch.set_num_threads(1)
    import numpy as np
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    rtg = np.full(n, 3600.0, np.float32)
    if mode == "fast-numba":
        from aaren_rl.agents.decision_model import build_decision_model
        from aaren_rl.agents.fast_step import FastDecisionStep
        torch.manual_seed(0)
        model = build_decision_model({"d_model": 128, "n_layers": 3, "n_heads": 1}, 11, 3).eval()
        fast = FastDecisionStep(model, backend="numba")
        state = fast.initial_state(n)
        with torch.inference_mode():
            for t in range(steps):
                ts = torch.full((n,), t)
                a, state = fast.act(torch.as_tensor(obs), torch.as_tensor(rtg), ts, state)
                state = fast.observe_action(a.clamp(-1, 1), ts, state)
    else:
        from aaren_rl.deploy import OnnxStep
        step = OnnxStep(path, threads=1)
        state = step.initial_state(n)
        for t in range(steps):
            _, state = step.step(state, observation=obs, return_to_go=rtg,
                                 timestep=np.full(n, t, np.int64))
    # VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's across exec)
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")]
    peak = int(hwm[0].split()[1]) * 1024 if hwm else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss_bytes": peak, "torch_imported": "torch" in sys.modules}))
    """
)


def measure_peak_rss(f32: Path, steps: int, n: int, log) -> dict[str, Any]:
    """Peak RSS of a fresh process per mode (see the module docstring)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "rss.py"
        script.write_text(RSS_SCRIPT)
        for mode in ("no-torch", "with-torch", "fast-numba"):
            proc = subprocess.run(
                [sys.executable, str(script), mode, str(f32), str(steps), str(n)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                raise RuntimeError(f"peak-memory probe {mode} failed: {proc.stderr[-2000:]}")
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"peak RSS {mode:12s}: {out[mode]['peak_rss_bytes'] / 2**20:7.1f} MiB")
    return {"steps": steps, "n_envs": n, **out}


def measure_state(model: Any, f32: Path, long_steps: int, log) -> dict[str, Any]:
    """State bytes per env of the exported step after step 1 and step ``long_steps`` (one env),
    against the fast step's."""
    from aaren_rl.agents.fast_step import FastDecisionStep
    from aaren_rl.deploy.runtime import OnnxStep
    from aaren_rl.nn.backbone import state_nbytes

    step = OnnxStep(f32, threads=1)
    state = step.initial_state(1)
    names = [o.name for o in step.session.get_outputs()]
    feed = {
        "observation": np.random.default_rng(0).normal(size=(1, OBS_DIM)).astype(np.float32),
        "return_to_go": np.full(1, 3600.0, dtype=np.float32),
    }
    at: dict[int, int] = {}
    shapes_first = None
    for t in range(1, long_steps + 1):
        feed["timestep"] = np.full(1, t - 1, dtype=np.int64)
        out = step.session.run(names, {**feed, **state})
        state = dict(zip(step.state_names, out[1:], strict=True))
        if t in (1, 1000, long_steps):
            at[t] = step.state_nbytes(state)
            shapes = {k: list(v.shape) for k, v in state.items()}
            shapes_first = shapes_first or shapes
            if shapes != shapes_first:
                raise AssertionError(f"the state's shapes changed at step {t}: {shapes}")
    fast = FastDecisionStep(model, backend="torch")
    fast_bytes = state_nbytes(fast.initial_state(1))
    log(f"state bytes per env: exported {at}, fast step {fast_bytes}")
    return {
        "exported_bytes_by_step": {str(k): v for k, v in at.items()},
        "fast_step_bytes": fast_bytes,
        "shapes": shapes_first,
        "equal_and_constant": all(v == fast_bytes for v in at.values()),
    }


def stamp(args: argparse.Namespace) -> dict[str, Any]:
    """Machine, threads, versions and the command."""
    import os
    import platform

    names = ("torch", "numpy", "numba", "onnx", "onnxruntime", "gymnasium", "aaren-rl")
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "load_average": list(os.getloadavg()),
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": 1},
        "versions": {"python": sys.version.split()[0], **{n: package_version(n) for n in names}},
        "git_commit": git_commit(),
        "quick": bool(args.quick),
        "command": "aaren-rl bench export " + " ".join(sys.argv[3:]),
    }


def _lat(results: dict, variant: str, n: int, key: str = "us_per_env") -> float | None:
    for r in results["latency"]:
        if r["variant"] == variant and r["n_envs"] == n:
            return r[key]
    return None


def markdown(results: dict) -> str:
    """The report's tables."""
    st = results["stamp"]
    envs = sorted({r["n_envs"] for r in results["latency"]})
    variants = list(dict.fromkeys(r["variant"] for r in results["latency"]))
    lines = [
        f"Measured {st['date_utc']} UTC on {st['machine']} (load average "
        f"{', '.join(f'{x:.1f}' for x in st['load_average'])}); one thread (torch 1, "
        f"ONNX Runtime intra-op 1); `{st['command']}`.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items() if v),
        "",
        "µs per env step, median (10th percentile): on a loaded machine the low percentile is "
        "the closer estimate of the unloaded cost (a long step is preempted more often).",
        "",
        "| µs per env step | " + " | ".join(f"{n} env{'s' if n > 1 else ''}" for n in envs) + " |",
        "|---|" + "---:|" * len(envs),
    ]
    for v in variants:
        cells = [
            f"{_lat(results, v, n):.1f} ({_lat(results, v, n, 'us_per_env_p10'):.1f})" for n in envs
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    sizes = results["file_bytes"]
    lines += [
        "",
        "| file | bytes |",
        "|---|---:|",
        *(f"| {k} | {v:,} |" for k, v in sizes.items()),
    ]
    rss = results["peak_rss"]
    lines += [
        "",
        f"Peak RSS of a fresh process running {rss['steps']:,} steps at {rss['n_envs']} envs:",
        "",
        "| process | peak RSS (MiB) | torch imported |",
        "|---|---:|---|",
    ]
    for mode, label in (
        ("no-torch", "exported float32, torch blocked"),
        ("with-torch", "exported float32, torch imported first"),
        ("fast-numba", "numba fast step (torch)"),
    ):
        lines.append(
            f"| {label} | {rss[mode]['peak_rss_bytes'] / 2**20:.1f} | "
            f"{'yes' if rss[mode]['torch_imported'] else 'no'} |"
        )
    s = results["state"]
    lines += [
        "",
        f"State bytes per env: exported step {s['exported_bytes_by_step']} (after step t), "
        f"fast step {s['fast_step_bytes']}; equal and constant: {s['equal_and_constant']}.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["n_envs"] for r in results["latency"]})
    variants = list(dict.fromkeys(r["variant"] for r in results["latency"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [_lat(results, v, n) or 0.0 for n in envs]
        ax.bar(np.arange(len(envs)) + i * width, ys, width, label=v)
    ax.set_xticks(np.arange(len(envs)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{n} envs" for n in envs])
    ax.set_ylabel("µs per environment step (median)")
    ax.set_yscale("log")
    ax.set_title("Decision Aaren step, hopper size, one thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure_atomic(fig, out / f"{STEM}.png")
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    if args.quick:
        args.envs = [1, 4]
        args.rounds, args.block_seconds, args.long_steps = 2, 0.02, 200
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{STEM}.json"
    if target.exists() and not getattr(args, "overwrite", False):
        print(f"error: {target} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    model = _model(args.seed)
    results: dict[str, Any] = {"stamp": stamp(args)}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_files(model, Path(tmp))
        results["file_bytes"] = {k: p.stat().st_size for k, p in files.items()}
        results["latency"] = measure_latency(model, files, args, log)
        rss_steps = 200 if args.quick else 2000
        results["peak_rss"] = measure_peak_rss(files["onnx-float32"], rss_steps, 16, log)
        results["state"] = measure_state(model, files["onnx-float32"], args.long_steps, log)
    write_json_atomic(target, results)
    md = markdown(results)
    write_text_atomic(out / f"{STEM}.md", md)
    plot(results, out)
    print(md)
    return 0
