"""Property tests over the text inputs: agent presets, task specs and ``--set`` overrides.

Whatever a user writes, loading it either works, giving values of the right type, or fails with
a ValueError (DatasetError for task specs) whose message is ONE line naming the file and the key.
Any other exception (TypeError, AttributeError, OverflowError, a YAML error...) is a traceback a
user would see, and fails the test.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aaren_rl import presets
from aaren_rl.agents.decision_model import DecisionModelConfig
from aaren_rl.agents.train_cli import parse_overrides, resolve_agent
from aaren_rl.agents.trainer import TrainConfig
from aaren_rl.cli import main
from aaren_rl.data.tasks import load_task

AGENT_FILE = presets.resolve("agents", "decision-aaren")
AGENT = yaml.safe_load(AGENT_FILE.read_text())
TASK = {
    "name": "toy",
    "env_id": "Hopper-v5",
    "dataset": "toy.hdf5",
    "max_episode_steps": 1000,
    "reward_scale": 0.001,
    "target_returns": [3600, 1800],
    "reference_scores": {"d4rl-v2": [-20.272305, 3234.3], "use": "d4rl-v2"},
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1e-4", "1e5", "abc", "", "yes", "~", "0x10", "-1", ".nan", "[1", "a: b"]),
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, 0, -1, 0.5, 2.5]),
    st.dates(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), scalars, max_size=2),
)


def clean_error(call, path: str | Path | None, key: str | None):
    """``call()``'s result, or None after checking that it failed the way a user should see."""
    try:
        return call()
    except ValueError as exc:  # DatasetError is one
        message = str(exc)
        assert "\n" not in message, f"more than one line: {message!r}"
        if path is not None:
            assert str(path) in message, f"the file is not named: {message!r}"
        if key is not None:
            assert key in message, f"the key {key!r} is not named: {message!r}"
        return None


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def assert_typed_agent(resolved: dict) -> None:
    """A preset that loads holds values of the types the model and the loop use."""
    train = TrainConfig.from_dict(resolved["train"])
    for name in ("steps", "batch_size", "warmup_steps", "eval_every", "checkpoint_every", "seed"):
        value = getattr(train, name)
        assert type(value) is int, (name, value)
    for name in ("lr", "weight_decay", "min_lr_ratio"):
        assert type(getattr(train, name)) is float and math.isfinite(getattr(train, name))
    assert len(train.betas) == 2 and all(0 <= b < 1 for b in train.betas)
    model = DecisionModelConfig.from_dict(resolved["model"])
    for name in ("d_model", "n_layers", "n_heads", "context", "max_timestep"):
        assert type(getattr(model, name)) is int
    assert isinstance(resolved["name"], str) and "/" not in resolved["name"]


@FUZZ
@given(
    section=st.sampled_from(["model", "train"]),
    key=st.one_of(
        st.sampled_from(sorted(AGENT["model"]) + sorted(AGENT["train"]) + ["betas", "bogus"]),
    ),
    value=values,
)
def test_agent_preset_values(tmp_path_factory, section, key, value):
    data = copy.deepcopy(AGENT)
    data[section][key] = value
    path = write_yaml(tmp_path_factory.mktemp("agent") / "agent.yaml", data)
    resolved = clean_error(lambda: resolve_agent(path), path, key)
    if resolved is not None:
        assert_typed_agent(resolved)


@FUZZ
@given(
    key=st.sampled_from(["name", "description", "model", "train", "protocols", 7, "extra"]),
    value=values,
    protocol=st.sampled_from([None, "cpu"]),
)
def test_agent_preset_sections(tmp_path_factory, key, value, protocol):
    data = copy.deepcopy(AGENT)
    data[key] = value
    path = write_yaml(tmp_path_factory.mktemp("agent") / "agent.yaml", data)
    named = str(key) if key != "protocols" or protocol else None
    resolved = clean_error(lambda: resolve_agent(path, protocol=protocol), path, named)
    if resolved is not None:
        assert_typed_agent(resolved)


@FUZZ
@given(key=st.sampled_from(sorted(AGENT["protocols"]["cpu"]["train"]) + ["lr"]), value=values)
def test_agent_preset_protocol_values(tmp_path_factory, key, value):
    data = copy.deepcopy(AGENT)
    data["protocols"]["cpu"]["train"][key] = value
    path = write_yaml(tmp_path_factory.mktemp("agent") / "agent.yaml", data)
    resolved = clean_error(lambda: resolve_agent(path, protocol="cpu"), path, key)
    if resolved is not None:
        assert_typed_agent(resolved)


@FUZZ
@given(text=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode)))
def test_any_bytes_as_a_preset_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("agent") / "agent.yaml"
    path.write_bytes(text)
    resolved = clean_error(lambda: resolve_agent(path), path, None)
    if resolved is not None:
        assert_typed_agent(resolved)
    task = clean_error(lambda: load_task(path), path, None)
    assert task is None or task.spec_path == str(path)


@FUZZ
@given(
    key=st.sampled_from(
        ["train.steps", "train.lr", "train.betas", "model.d_model", "model.dropout",
         "model.backbone", "train.bogus", "model", "x.y", "train.steps.extra", "train."]
    ),
    raw=st.one_of(st.text(max_size=15), values.map(lambda v: yaml.safe_dump(v).strip())),
)  # fmt: skip
@example(key="model.dropout", raw="1" + "0" * 400)  # an int past float's range: no OverflowError
def test_set_overrides(key, raw):
    item = f"{key}={raw}"
    overrides = clean_error(lambda: parse_overrides([item]), None, key)
    if overrides is None:
        return
    resolved = clean_error(
        lambda: resolve_agent(AGENT_FILE, overrides=overrides), AGENT_FILE, key.split(".")[-1]
    )
    if resolved is not None:
        assert_typed_agent(resolved)


@FUZZ
@given(
    key=st.sampled_from([*TASK, "reference_source", "bogus", 3]), value=values, drop=st.booleans()
)
@example(key="reference_scores", value=[0, 1], drop=False)  # once named reference_source only
def test_task_spec_values(tmp_path_factory, key, value, drop):
    data = copy.deepcopy(TASK)
    if drop and key in data:
        del data[key]
    else:
        data[key] = value
    path = write_yaml(tmp_path_factory.mktemp("task") / "toy.yaml", data)
    task = clean_error(lambda: load_task(path), path, str(key))
    if task is None:
        return
    assert type(task.max_episode_steps) is int and task.max_episode_steps >= 1
    assert math.isfinite(task.reward_scale) and task.reward_scale > 0
    assert task.target_returns and all(math.isfinite(t) for t in task.target_returns)
    low, high = task.reference_scores
    assert math.isfinite(low) and math.isfinite(high) and high > low
    assert all(isinstance(v, str) and v for v in (task.name, task.env_id, task.dataset))


@FUZZ
@given(use=values, table=values)
@example(use=["d4rl-v2"], table=[0, 1])  # an unhashable `use`: TypeError
@example(use="d4rl-v2", table=[0, math.inf])
def test_task_reference_tables(tmp_path_factory, use, table):
    data = copy.deepcopy(TASK)
    data["reference_scores"] = {"d4rl-v2": table, "use": use}
    path = write_yaml(tmp_path_factory.mktemp("task") / "toy.yaml", data)
    task = clean_error(lambda: load_task(path), path, "reference_scores")
    if task is not None:
        assert all(math.isfinite(x) for x in task.reference_scores)


@pytest.mark.parametrize(
    ("agent_text", "sets", "named"),
    [
        ("name: a\nmodel: {d_model: 64\ntrain: {}\n", [], "line 3"),  # YAML syntax
        ("name: a\ntrain: {lr: 1e-4}\n", [], "lr='1e-4'"),  # YAML 1.1 reads 1e-4 as text
        ("name: a\ntrain: {steps: 10}\n", ["train.steps=["], "train.steps"),
        ("name: a\ntrain: {steps: 10}\n", ["train.betas=0.9"], "betas=0.9"),
        ("name: a\nmodel: {1: 2}\n", [], "['1']"),
    ],
)
def test_cli_prints_one_line_naming_file_and_key(tmp_path, capsys, agent_text, sets, named):
    agent = tmp_path / "agent.yaml"
    agent.write_text(agent_text)
    task = write_yaml(tmp_path / "toy.yaml", TASK)
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(tmp_path / "run")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert named in err and (str(agent) in err or "--set" in err)


def test_cli_task_spec_error_is_one_line(tmp_path, capsys):
    task = write_yaml(tmp_path / "toy.yaml", {**TASK, "reward_scale": float("inf")})
    argv = ["train", "--task", str(task), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(task) in err and "'reward_scale'" in err
