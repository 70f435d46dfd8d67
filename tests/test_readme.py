"""Every ```python block of README.md runs as written, top to bottom, so none can go stale.

How (README.md says the same where its examples start):

- Each Python block runs in a fresh namespace (it carries its own imports and data), in order,
  in one shared working folder: files an earlier block or command writes there (such as
  ``runs/my-run/checkpoint.pt``) are there for the later ones, as on a user's disk.
- A ```bash block right after the line ``<!-- readme-test: run -->`` is a prerequisite the
  README asks the reader to run (``aaren-rl make-dataset hopper-medium``); it runs, exactly as
  written, at its place in the README, with the installed ``aaren-rl`` first on ``PATH``.
- The blocks run in this process on one torch thread; ``AAREN_RL_DATA_DIR`` points at a fresh
  folder, and ``AAREN_RL_EXAMPLE_STEPS`` (the one
  variable the blocks read for their training steps) shrinks every training run. Nothing is
  downloaded: ``ETTh1.csv``, which users bring themselves, is a synthetic file in ETT's layout.

A block that raises fails the test, naming the block and its README line. New blocks are picked
up with no change here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_MARK = "<!-- readme-test: run -->"
EXAMPLE_STEPS = "4"

FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(kind, first line, code)`` for every fenced block: ``kind`` is ``python``, ``run``
    (a bash block marked with :data:`RUN_MARK`) or ``other``."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        lang, start = match.group(1), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        code = "\n".join(lines[start:end]) + "\n"
        marked = i > 0 and lines[i - 1].strip() == RUN_MARK
        kind = "python" if lang == "python" else ("run" if marked and lang == "bash" else "other")
        if marked and kind != "run":
            raise ValueError(f"README.md line {i}: {RUN_MARK} must precede a ```bash block")
        blocks.append((kind, start + 1, code))
        i = end + 1
    return blocks


def write_synthetic_etth1(path: Path, rows: int = 14_400) -> None:
    """A stand-in for ETTh1.csv in its layout: ``date`` hourly from 2016-07-01, then HUFL, HULL,
    MUFL, MULL, LUFL, LULL, OT; 20 months of 30 days (ETT's 12/4/4-month split). Daily and
    weekly cycles plus noise, so a forecaster has something to learn."""
    rng = np.random.default_rng(0)
    t = np.arange(rows)[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 7))
    values = (
        5 * np.sin(2 * np.pi * t / 24 + phase)
        + 2 * np.sin(2 * np.pi * t / 168 + phase)
        + rng.normal(scale=0.5, size=(rows, 7))
    )
    start = np.datetime64("2016-07-01T00:00")
    dates = start + np.arange(rows).astype("timedelta64[h]")
    with open(path, "w") as handle:
        handle.write("date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n")
        for d, row in zip(dates, values, strict=True):
            stamp = str(d).replace("T", " ") + ":00"
            handle.write(stamp + "," + ",".join(f"{v:.3f}" for v in row) + "\n")


def test_readme_blocks_are_found():
    blocks = readme_blocks(README.read_text())
    assert sum(kind == "python" for kind, *_ in blocks) >= 8
    assert any(
        "aaren-rl make-dataset hopper-medium" in code for kind, _, code in blocks if kind == "run"
    )


def run_block(kind: str, line: int, code: str, work: Path, env: dict[str, str]) -> None:
    """Run one README block (``python`` in a fresh namespace here, ``run`` with bash in ``work``);
    raise AssertionError naming its README line when it fails."""
    if kind == "run":
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (
            f"README.md line {line}: the bash block failed ({done.returncode}):\n"
            f"{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    elif kind == "python":
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(
                f"README.md line {line}: the python block raised {type(exc).__name__}: {exc}\n"
                f"{code}"
            ) from exc


def test_a_broken_block_fails_with_its_line(tmp_path):
    text = "x\n```python\nimport os\n```\n\n<!-- readme-test: run -->\n```bash\nexit 3\n```\n"
    text += "```python\nprint(model)\n```\n"
    blocks = readme_blocks(text)
    assert [(kind, line) for kind, line, _ in blocks] == [("python", 3), ("run", 8), ("python", 11)]
    run_block(*blocks[0], tmp_path, dict(os.environ))
    with pytest.raises(AssertionError, match="line 8: the bash block failed"):
        run_block(*blocks[1], tmp_path, dict(os.environ))
    with pytest.raises(AssertionError, match="line 11: the python block raised NameError"):
        run_block(*blocks[2], tmp_path, dict(os.environ))


@pytest.mark.slow
def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir()
    data.mkdir()
    write_synthetic_etth1(work / "ETTh1.csv")
    monkeypatch.chdir(work)
    monkeypatch.setenv("AAREN_RL_DATA_DIR", str(data))
    monkeypatch.setenv("AAREN_RL_EXAMPLE_STEPS", EXAMPLE_STEPS)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small models: 1 thread is fastest on a shared CPU
    ran = []
    try:
        for kind, line, code in readme_blocks(README.read_text()):
            if kind in ("run", "python"):
                run_block(kind, line, code, work, env)
                ran.append((kind, line))
    finally:
        torch.set_num_threads(threads)
    assert sum(kind == "python" for kind, _ in ran) >= 8
