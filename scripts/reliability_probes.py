"""Run the reliability probes of docs/reliability.md and print (or write) their table.

    python scripts/reliability_probes.py                 # print the markdown table
    python scripts/reliability_probes.py --write docs/reliability.md

Each probe runs what a user would run (the ``aaren-rl`` command in a fresh process, or a few
lines of Python for the Stable-Baselines3 API) on small files it writes into a temp folder,
and records what the user sees: the first and the last line printed to stderr, and the exit
code. Its verdict is checked, not typed: a clear error must be one line that names the file
or setting and says ``Fix``/what to do, with no traceback; "correct" probes compare against an
uninterrupted run or the file on disk. ``--write`` replaces the part of the page between the
``<!-- probes:start -->`` and ``<!-- probes:end -->`` markers. Takes about two minutes on one
CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
START, END = "<!-- probes:start -->", "<!-- probes:end -->"


@dataclass
class Seen:
    """What a user saw: exit code and stderr."""

    code: int
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.strip().splitlines() if line.strip()]

    def one_clear_line(self, *words: str) -> bool:
        """One line (argparse's usage lines aside), no traceback, exit 2, naming ``words``."""
        lines = [x for x in self.lines if not x.startswith(("usage:", " "))]
        return (
            self.code == 2
            and len(lines) == 1
            and "Traceback" not in self.err
            and all(w in lines[0] for w in words)
        )


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> Seen:
    proc = subprocess.run(
        [sys.executable, "-m", "aaren_rl.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
    )
    return Seen(proc.returncode, proc.stderr)


def python(code: str, timeout: float = 300) -> Seen:
    """Run Python; an uncaught exception is reported as ``Type: message`` (one line)."""
    wrapped = (
        "import sys\ntry:\n"
        + textwrap.indent(textwrap.dedent(code), "    ")
        + "\nexcept Exception as exc:\n"
        + "    print(f'{type(exc).__name__}: {exc}', file=sys.stderr)\n    sys.exit(1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapped], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    return Seen(proc.returncode, proc.stderr)


# ----------------------------------------------------------------------------- inputs


def toy_arrays(n_episodes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Hopper-shaped episodes (obs 11, actions 3 in [-1, 1]) of 12..30 steps."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 31, size=n_episodes)
    n = int(lengths.sum())
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[ends[::2]] = True
    timeouts[ends[1::2]] = True
    return {
        "observations": obs,
        "actions": np.tanh(obs[:, :3]).astype(np.float32),
        "rewards": (1.0 + 0.1 * obs[:, 0]).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_task(root: Path, name: str, arrays: dict[str, np.ndarray], **fields) -> Path:
    with h5py.File(root / f"{name}.hdf5", "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    spec = {
        "name": name,
        "env_id": "Hopper-v5",
        "dataset": f"{name}.hdf5",
        "max_episode_steps": 40,
        "reward_scale": 0.01,
        "target_returns": [30.0],
        "reference_scores": [-5.0, 95.0],
        "reference_source": "hand-made",
        **fields,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_agent(root: Path, text: str | None = None, **train) -> Path:
    path = root / f"agent{len(list(root.glob('agent*.yaml')))}.yaml"
    if text is None:
        model = {"backbone": "aaren", "d_model": 16, "n_layers": 1, "n_heads": 1}
        model |= {"context": 5, "max_timestep": 64}
        settings = {"sampler": "prefix", "max_len": 40, "batch_size": 4, "steps": 30}
        settings |= {"warmup_steps": 2, "eval_episodes": 0, "log_every": 5}
        settings |= {"checkpoint_every": 5} | train
        text = yaml.safe_dump({"name": "tiny", "model": model, "train": settings})
    path.write_text(text)
    return path


def write_csv(path: Path, n: int = 300, header: str = "date,a,b", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    lines = [header]
    for i in range(n):
        stamp = f"2020-01-{1 + i // 24 % 28:02d} {i % 24:02d}:00:00"
        values = [np.sin(2 * np.pi * t[i] / 12 + k) + 0.1 * rng.normal() for k in range(2)]
        lines.append(stamp + "," + ",".join(f"{v:.5f}" for v in values))
    path.write_text("\n".join(lines) + "\n")
    return path


def event_rows(n: int = 8, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        t = np.cumsum(rng.exponential(size=int(rng.integers(2, 9))))
        gaps = np.diff(t, prepend=0.0)
        rows.append(
            [
                {
                    "idx_event": i + 1,
                    "time_since_start": float(t[i]),
                    "time_since_last_event": float(gaps[i]),
                    "time_since_last_same_event": float(gaps[i]),
                    "type_event": int(rng.integers(0, 3)),
                }
                for i in range(len(t))
            ]
        )
    return rows


def json_events(rows: list[list[dict]], **extra) -> list[dict]:
    keys = ("time_since_start", "time_since_last_event", "type_event")
    return [{k: [e[k] for e in seq] for k in keys} | extra for seq in rows]


# ----------------------------------------------------------------------------- probes


@dataclass
class Probe:
    group: str
    name: str
    run: Callable[[Path], tuple[Seen, bool, str]]  # -> what was seen, verdict ok, verdict text


PROBES: list[Probe] = []


def probe(group: str, name: str):
    def register(fn):
        PROBES.append(Probe(group, name, fn))
        return fn

    return register


TINY = ["--no-progress", "--threads", "1"]


def _train(root: Path, task: Path, agent: Path, out: str, *more: str) -> Seen:
    return cli(
        "train", "--agent", str(agent), "--task", str(task), "--out", out, *TINY, *more, cwd=root
    )


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["model_state"]


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _scalars(tb: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), purge_orphaned_data=True)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@probe("1 resume", "Ctrl-C twice (0.08 s apart) mid-run, then `--resume`")
def _double_ctrl_c(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root, steps=400)
    args = ["train", "--agent", str(agent), "--task", str(task), "--out", "run", *TINY]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aaren_rl.cli", *args],
        cwd=root,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (root / "run" / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.08)
    proc.send_signal(signal.SIGINT)
    seen = Seen(proc.wait(timeout=300), proc.communicate()[1])
    _train(root, task, agent, str(root / "run"), "--resume")
    _train(root, task, agent, str(root / "straight"))
    same = _same_weights(root / "run" / "checkpoint.pt", root / "straight" / "checkpoint.pt")
    logged = _scalars(root / "run" / "tb", "train/loss")
    same_tb = logged == _scalars(root / "straight" / "tb", "train/loss")
    ok = seen.code == 130 and "Traceback" not in seen.err and same and same_tb
    return (
        seen,
        ok,
        (
            f"resumed to the end: final weights {'bitwise equal to' if same else 'DIFFER from'} an "
            f"uninterrupted run's; TensorBoard's {len(logged)} loss points "
            f"{'equal' if same_tb else 'DIFFER from'} its"
        ),
    )


@probe("1 resume", "SIGTERM at step 4 with `log_every 10`, `--resume`: loss logged at step 10")
def _window(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root, steps=10, log_every=10)
    code = f"""
        import signal
        from aaren_rl.training import TrainingLoop
        from aaren_rl.cli import main
        original = TrainingLoop.compute_loss
        def loss(self, batch):
            if self.step + 1 == 4:
                signal.raise_signal(signal.SIGTERM)
            return original(self, batch)
        TrainingLoop.compute_loss = loss
        sys.exit(main(["train", "--agent", {str(agent)!r}, "--task", {str(task)!r},
                       "--out", {str(root / "run")!r}, "--no-progress"]))
    """
    seen = python(code)
    _train(root, task, agent, str(root / "run"), "--resume")
    _train(root, task, agent, str(root / "straight"))
    got, want = (
        _scalars(root / "run" / "tb", "train/loss"),
        _scalars(root / "straight" / "tb", "train/loss"),
    )
    ok = seen.code == 143 and got == want and got[0][0] == 10
    return (
        seen,
        ok,
        f"step-10 loss {got[0][1]:.6f} vs uninterrupted {want[0][1]:.6f} (mean of steps 1-10)",
    )


@probe("1 resume", "`--resume` of a finished run with another task (same shapes)")
def _other_task(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root, steps=10)
    other = write_task(root, "other", toy_arrays(seed=1))
    _train(root, task, agent, str(root / "run"))
    before = (root / "run" / "config.yaml").read_text()
    seen = _train(root, other, agent, str(root / "run"), "--resume")
    kept = (root / "run" / "config.yaml").read_text() == before
    ok = seen.one_clear_line("cannot resume", "toy", "other") and kept
    return seen, ok, f"refused naming both; config.yaml {'unchanged' if kept else 'REWRITTEN'}"


def _fit_forecast(csv: Path, out: Path, *more: str) -> Seen:
    return cli(
        "fit", "forecast", "--data", str(csv), "--input-len", "24", "--horizon", "6",
        "--patch-len", "4", "--d-model", "16", "--n-layers", "1", "--batch-size", "8",
        "--out", str(out), "--no-progress", *more,
    )  # fmt: skip


@probe("1 resume", "`fit forecast --resume` on another CSV")
def _other_csv(root: Path):
    _fit_forecast(write_csv(root / "a.csv"), root / "run", "--steps", "2")
    seen = _fit_forecast(
        write_csv(root / "b.csv", seed=1), root / "run", "--steps", "4", "--resume"
    )
    return seen, seen.one_clear_line("cannot resume", "a.csv", "b.csv"), "refused naming both files"


@probe("1 resume", "SIGTERM to `aaren-rl fit`")
def _sigterm_fit(root: Path):
    csv = write_csv(root / "s.csv")
    cmd = [sys.executable, "-m", "aaren_rl.cli", "fit", "forecast", "--data", str(csv)]
    cmd += ["--input-len", "24", "--horizon", "6", "--patch-len", "4", "--d-model", "16"]
    cmd += ["--out", str(root / "run"), "--no-progress", "--steps", "100000"]
    cmd += ["--checkpoint-every", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    while not (root / "run" / "aaren" / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    seen = Seen(proc.wait(timeout=120), proc.communicate()[1])
    ok = seen.code == 143 and len(seen.lines) == 1 and "--resume" in seen.err
    return seen, ok, "checkpoint written, one line, exit 143 (128 + SIGTERM) as `train`"


def _bad_train(root: Path, arrays: dict, *words: str, **task_fields) -> tuple[Seen, bool, str]:
    task, agent = write_task(root, "bad", arrays, **task_fields), write_agent(root, steps=4)
    seen = _train(root, task, agent, str(root / "run"))
    return seen, seen.one_clear_line("bad.hdf5", *words), "one line naming the file and key"


@probe("2 data", "D4RL file with `terminals` all 0 and no `timeouts`")
def _no_flags(root: Path):
    arrays = toy_arrays()
    arrays.pop("timeouts")
    arrays["terminals"][:] = False
    return _bad_train(root, arrays, "'terminals'", "cannot be delimited", "episode_ends")


@probe("2 data", "actions 1000x outside the env's Box")
def _big_actions(root: Path):
    arrays = toy_arrays()
    arrays["actions"] *= 1000
    return _bad_train(root, arrays, "'actions'", "range [-1, 1]")


@probe("2 data", "rewards of 3e36")
def _big_rewards(root: Path):
    arrays = toy_arrays()
    arrays["rewards"][:] = 3e36
    return _bad_train(root, arrays, "'rewards'", "reward_scale")


def _csv_probe(root: Path, text: str, *words: str) -> tuple[Seen, bool, str]:
    path = root / "bad.csv"
    path.write_text(text)
    seen = _fit_forecast(path, root / "run", "--steps", "1")
    return seen, seen.one_clear_line("bad.csv", *words), "one line naming the file, line and column"


ROWS = [f"2020-01-01 {i % 24:02d}:00:00,{np.sin(i):.4f},{np.cos(i):.4f}" for i in range(60)]


@probe("2 data", "forecast CSV without a date column")
def _no_date(root: Path):
    rows = [r.split(",", 1)[1] for r in ROWS]
    return _csv_probe(root, "a,b\n" + "\n".join(rows), "holds a number", "date column")


@probe("2 data", "forecast CSV with a duplicated header name")
def _dup_header(root: Path):
    return _csv_probe(root, "date,a,a\n" + "\n".join(ROWS), "'a' 2 times")


@probe("2 data", "forecast CSV with a cell of 1e39")
def _cell_1e39(root: Path):
    rows = list(ROWS)
    rows[9] = rows[9].rsplit(",", 1)[0] + ",1e39"
    return _csv_probe(root, "date,a,b\n" + "\n".join(rows), "line 11", "overflows float32")


def _events_probe(root: Path, records: list[dict], *words: str) -> tuple[Seen, bool, str]:
    path = root / "bad.json"
    path.write_text(json.dumps(records))
    seen = cli(
        "fit", "events", "--train", str(path), "--val", str(path), "--test", str(path),
        "--d-model", "16", "--n-layers", "1", "--steps", "1", "--out", str(root / "run"),
        "--no-progress",
    )  # fmt: skip
    return seen, seen.one_clear_line("bad.json", *words), "one line naming the file and sequence"


@probe("2 data", "events with `end_time` Infinity")
def _end_inf(root: Path):
    return _events_probe(root, json_events(event_rows(), end_time=float("inf")), "end_time")


@probe("2 data", "events with `end_time` NaN")
def _end_nan(root: Path):
    return _events_probe(root, json_events(event_rows(), end_time=float("nan")), "end_time")


@probe("2 data", "agent preset with a key given twice")
def _dup_key(root: Path):
    task = write_task(root, "toy", toy_arrays())
    agent = write_agent(root, text="name: x\ntrain:\n  lr: 1.0e-3\n  lr: 1.0e-4\n")
    seen = _train(root, task, agent, str(root / "run"))
    return (
        seen,
        seen.one_clear_line("agent", "line 4", "appears twice"),
        "one line naming both lines",
    )


@probe("3 formats", "EasyTPP's own `.pkl` layout (`fit events`)")
def _pkl(root: Path):
    files = []
    for i, split in enumerate(("train", "dev", "test")):
        path = root / f"{split}.pkl"
        path.write_bytes(pickle.dumps({"dim_process": 3, split: event_rows(seed=i)}, protocol=2))
        files.append(str(path))
    seen = cli(
        "fit", "events", "--train", files[0], "--val", files[1], "--test", files[2],
        "--d-model", "16", "--n-layers", "1", "--steps", "2", "--out", str(root / "run"),
        "--no-progress",
    )  # fmt: skip
    done = (root / "run" / "aaren" / "results.json").is_file()
    return seen, seen.code == 0 and done, "trains; results.json written"


def _classify(root: Path, path: Path) -> Seen:
    return cli(
        "fit", "classify", "--train", str(path), "--test", str(path), "--d-model", "16",
        "--n-layers", "1", "--steps", "1", "--out", str(root / "run"), "--no-progress",
    )  # fmt: skip


NPZ_X = np.zeros((3, 5, 2), np.float32)
NPZ_Y = np.array(["a", "b", "a"])
NPZ = {
    "truncated": None,
    "holding objects": {"X": np.array([np.zeros(2), np.zeros(3)], dtype=object), "y": NPZ_Y},
    "holding strings": {"X": np.full((3, 5, 2), "x"), "y": NPZ_Y},
    "with wrong `lengths`": {"X": NPZ_X, "y": NPZ_Y, "lengths": np.array([5, 5])},
}


def _npz_probe(case: str):
    def run(root: Path):
        path = root / "bad.npz"
        if NPZ[case] is None:
            np.savez(path, X=NPZ_X, y=NPZ_Y)
            path.write_bytes(path.read_bytes()[:200])
        else:
            np.savez(path, **NPZ[case])
        seen = _classify(root, path)
        return seen, seen.one_clear_line("bad.npz"), "one line naming the file (and the key)"

    return run


for _case in NPZ:
    probe("3 formats", f"`.npz` {_case}")(_npz_probe(_case))

TS = (
    "@problemName toy\n@timeStamps false\n@dimensions {dims}\n@equalLength false\n"
    "@classLabel true a b\n@data\n1,2,3:4,5,6:a\n1,2:3,4:b\n2,3,4:1,1,1:a\n"
)


@probe("3 formats", "`.ts` with a non-numeric `@dimensions`")
def _ts_dims(root: Path):
    path = root / "bad.ts"
    path.write_text(TS.format(dims="two"))
    seen = _classify(root, path)
    return seen, seen.one_clear_line("bad.ts", "line 3", "@dimensions"), "one line naming the line"


@probe("3 formats", "`.ts` with a Latin-1 byte")
def _ts_latin1(root: Path):
    path = root / "bad.ts"
    path.write_bytes(TS.format(dims="2").replace("toy", "caf\xe9").encode("latin-1"))
    seen = _classify(root, path)
    return seen, seen.one_clear_line("bad.ts", "line 1", "UTF-8"), "one line naming the line"


@probe("3 formats", "ETT split of `etth2.csv` (lower case)")
def _ett(root: Path):
    csv = write_csv(root / "etth2.csv", n=20 * 720)
    seen = _fit_forecast(csv, root / "run", "--steps", "1", "--batch-size", "64")
    split = json.loads((root / "run" / "aaren" / "results.json").read_text())["split"]
    ok = seen.code == 0 and split["kind"] == "ett-hour" and split["borders"]["train"] == [0, 8640]
    return seen, ok, f'12/4/4 months; results.json: split {split["kind"]}, "{split["chosen"]}"'


@probe("4 machine", "disk full inside a checkpoint write (ENOSPC injected)")
def _disk_full(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root, steps=20)
    code = f"""
        import errno, torch
        import aaren_rl.training.checkpoint as ckpt
        from aaren_rl.cli import main
        real, calls = torch.save, []
        def save(obj, f, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
            real(obj, f, *a, **k)
        ckpt.torch.save = save
        sys.exit(main(["train", "--agent", {str(agent)!r}, "--task", {str(task)!r},
                       "--out", {str(root / "run")!r}, "--no-progress"]))
    """
    seen = python(code)
    import torch

    kept = torch.load(root / "run" / "checkpoint.pt", weights_only=True)["step"]
    ok = seen.one_clear_line("no space left", "previous checkpoint is intact") and kept == 5
    return seen, ok, f"checkpoint of step {kept} intact and loadable, no temp file left"


@probe("4 machine", "output folder that cannot be written (`--out /sys/aaren/run`)")
def _read_only(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root)
    seen = _train(root, task, agent, "/sys/aaren/run")
    return seen, seen.one_clear_line("/sys/aaren", "choose a writable --out"), "one line"


@probe("4 machine", "`--seed 1e23`")
def _seed(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root)
    seen = _train(root, task, agent, str(root / "run"), "--seed", "1e23")
    return seen, seen.one_clear_line("--seed", "4294967295"), "argparse's usage line, then one line"


@probe("4 machine", "`--set model.d_model=100000000`")
def _d_model(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root)
    seen = _train(root, task, agent, str(root / "run"), "--set", "model.d_model=100000000")
    ok = seen.one_clear_line("model.d_model=100000000", "free", "lower model.d_model")
    return seen, ok, "counted on the meta device, nothing allocated"


@probe("4 machine", "`--device tpu:7`")
def _device(root: Path):
    task, agent = write_task(root, "toy", toy_arrays()), write_agent(root)
    seen = _train(root, task, agent, str(root / "run"), "--device", "tpu:7")
    return seen, seen.one_clear_line("tpu:7", "this machine has: auto, cpu"), "lists the devices"


SB3 = """
    import numpy as np, torch
    from stable_baselines3.common.env_util import make_vec_env
    from aaren_rl.sb3 import AarenPPO
    def model(**policy):
        policy = {"d_model": 16, "n_layers": 1, "n_heads": 2, **policy}
        return AarenPPO("MlpAarenPolicy", make_vec_env("CartPole-v1", 2, seed=0), n_steps=16,
                        batch_size=16, n_epochs=1, device="cpu", seed=0, policy_kwargs=policy)
"""


def _sb3(name: str, body: str, *words: str):
    def run(root: Path):
        seen = python(textwrap.dedent(SB3) + textwrap.dedent(body).replace("ROOT", str(root)))
        ok = (
            seen.code == 1
            and len(seen.lines) == 1
            and seen.lines[0].startswith("SB3InputError: ")
            and all(w in seen.err for w in words)
        )
        return seen, ok, "one line naming the problem and the fix"

    probe("5 SB3", name)(run)


_sb3(
    "`AarenPPO.load` of a truncated zip",
    """
    model().save("ROOT/m.zip")
    data = open("ROOT/m.zip", "rb").read()
    open("ROOT/m.zip", "wb").write(data[: len(data) // 2])
    AarenPPO.load("ROOT/m.zip")
    """,
    "m.zip",
    "truncated",
)
_sb3(
    "`AarenPPO.load` of a RecurrentPPO zip",
    """
    from sb3_contrib import RecurrentPPO
    RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16).save("ROOT/r.zip")
    AarenPPO.load("ROOT/r.zip")
    """,
    "r.zip",
    "RecurrentPPO",
)
_sb3(
    "`predict` with another model's state",
    """
    obs = np.zeros((2, 4), np.float32)
    model().predict(obs, state=model(d_model=32).predict(obs)[1])
    """,
    "another model",
)
_sb3(
    "`predict` with a wrong `episode_start` length",
    """
    m, obs = model(), np.zeros((2, 4), np.float32)
    m.predict(obs, state=m.predict(obs)[1], episode_start=np.array([True, False, True]))
    """,
    "episode_start holds 3",
)
_sb3(
    "`predict` with a NaN observation",
    "model().predict(np.array([[0.0, np.nan, 0.0, 0.0]], np.float32))",
    "env 0 is nan",
)


@probe("5 SB3", "`learn` with NaN rewards")
def _nan_rewards(root: Path):
    body = """
    from stable_baselines3.common.vec_env import VecEnvWrapper
    class Poison(VecEnvWrapper):
        def reset(self):
            return self.venv.reset()
        def step_wait(self):
            obs, rew, done, info = self.venv.step_wait()
            return obs, np.where(np.arange(len(rew)) == 1, np.nan, rew), done, info
    m = model()
    m.learn(16)
    before = [p.detach().clone() for p in m.policy.parameters()]
    m.set_env(Poison(make_vec_env("CartPole-v1", 2, seed=1)))
    try:
        m.learn(32, reset_num_timesteps=False)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    same = all(torch.equal(a, b) for a, b in zip(before, m.policy.parameters()))
    print("WEIGHTS", "unchanged" if same else "CHANGED")
    sys.exit(1)
    """
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\n" + textwrap.dedent(SB3) + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    last = proc.stderr.strip().splitlines()[-1]
    seen = Seen(proc.returncode, proc.stderr)
    unchanged = "WEIGHTS unchanged" in proc.stdout
    ok = last.startswith("SB3InputError: AarenPPO.learn: the reward") and unchanged
    return (
        seen,
        ok,
        f"stopped before the update; weights {'bitwise unchanged' if unchanged else 'CHANGED'}",
    )


# ----------------------------------------------------------------------------- table


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 240 else text[:237] + "..."


def run_all(only: str | None = None) -> str:
    rows = [
        "| class | probe | first line | last line | exit | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    failed = 0
    for p in PROBES:
        if only and only not in p.name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            seen, ok, text = p.run(Path(tmp))
            seconds = time.perf_counter() - t0
        tmp_free = [line.replace(tmp, "TMP") for line in seen.lines] or ["(nothing)"]
        failed += not ok
        verdict = ("ok: " if ok else "**FAIL**: ") + text
        last = "(the same)" if len(tmp_free) == 1 else f"`{_cell(tmp_free[-1])}`"
        rows.append(
            f"| {p.group} | {p.name} | `{_cell(tmp_free[0])}` | {last} | {seen.code} | {verdict} |"
        )
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:5.1f}s {p.name}", file=sys.stderr)
    rows.append("")
    rows.append(f"{len(rows) - 3} probes, {failed} failing.")
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", default=None, help="replace the probes table in this page")
    parser.add_argument("--only", default=None, help="run the probes whose name contains this")
    args = parser.parse_args()
    table = run_all(args.only)
    if args.write:
        page = Path(args.write)
        text = page.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        page.write_text(f"{head}{START}\n{table}{END}{tail}")
    else:
        print(table)
    return 1 if "**FAIL**" in table else 0


if __name__ == "__main__":
    sys.exit(main())
