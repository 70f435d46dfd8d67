"""Task specs: the shipped YAML files, reference tables, loading a dataset, and field errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from data_helpers import write_d4rl

from aaren_rl import presets
from aaren_rl.data.errors import DatasetError
from aaren_rl.data.scores import D4RL_REF_SCORES
from aaren_rl.data.tasks import TaskSpec, load_task

SHIPPED = {
    "hopper-medium": ("Hopper-v5", "hopper-medium-v5", (3600.0, 1800.0), "hopper"),
    "hopper-medium-replay": ("Hopper-v5", "hopper-medium-replay-v5", (3600.0, 1800.0), "hopper"),
    "hopper-medium-expert": ("Hopper-v5", "hopper-medium-expert-v5", (3600.0, 1800.0), "hopper"),
    "halfcheetah-medium": (
        "HalfCheetah-v5",
        "halfcheetah-medium-v5",
        (12000.0, 6000.0),
        "halfcheetah",
    ),
    "walker2d-medium": ("Walker2d-v5", "walker2d-medium-v5", (5000.0, 2500.0), "walker2d"),
    "hopper-medium-small": (
        "Hopper-v5",
        "builtin:hopper-medium-small-v5.hdf5",
        (3600.0, 1800.0),
        "hopper",
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_task_specs(name):
    env_id, dataset, targets, family = SHIPPED[name]
    task = load_task(name)
    assert isinstance(task, TaskSpec)
    assert (task.name, task.env_id, task.dataset, task.dataset_format) == (
        name,
        env_id,
        dataset,
        "d4rl",
    )
    assert task.max_episode_steps == 1000
    assert task.reward_scale == pytest.approx(1e-3)
    assert task.target_returns == targets
    assert task.reference_source == "d4rl-v2"
    assert task.reference_scores == D4RL_REF_SCORES[family]
    low, high = D4RL_REF_SCORES[family]
    assert task.normalized_score(high) == pytest.approx(100.0)
    np.testing.assert_allclose(task.normalized_score(np.array([low, high])), [0.0, 100.0])


def test_every_shipped_spec_is_tested():
    assert set(presets.available("envs")) >= set(SHIPPED)


def _spec(tmp_path, **fields) -> dict:
    spec = {
        "name": "toy",
        "env_id": "Hopper-v5",
        "dataset": "toy.hdf5",
        "max_episode_steps": 3,
        "reward_scale": 0.5,
        "target_returns": [10, 5],
        "reference_scores": {
            "d4rl-v2": [0.0, 20.0],
            "measured-v5": [2.0, 12.0],
            "use": "measured-v5",
        },
    }
    spec.update(fields)
    return {k: v for k, v in spec.items() if v is not None}


def _write_spec(tmp_path, spec: dict):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_reference_tables_and_relative_dataset_path(tmp_path):
    arrays = {
        "observations": np.arange(16, dtype=np.float32).reshape(8, 2),
        "actions": np.zeros((8, 1), np.float32),
        "rewards": np.ones(8, np.float32),
        "terminals": np.zeros(8, bool),  # no flags: the time limit (3) splits the episodes
    }
    write_d4rl(tmp_path / "toy.hdf5", **arrays)
    path = _write_spec(tmp_path, _spec(tmp_path, episode_ends="time-limit"))
    task = load_task(path)
    assert task.spec_path == str(path)
    assert task.reference_source == "measured-v5" and task.reference_scores == (2.0, 12.0)
    assert task.normalized_score(7.0) == pytest.approx(50.0)  # 100 * (7 - 2) / (12 - 2)
    other = task.with_reference("d4rl-v2")
    assert other.reference_scores == (0.0, 20.0) and other.normalized_score(5.0) == pytest.approx(
        25.0
    )
    assert load_task(path, reference="d4rl-v2") == other
    with pytest.raises(KeyError, match="has no reference table 'v9'"):
        task.with_reference("v9")
    # the dataset path is relative to the spec file, and episodes are cut at max_episode_steps
    # (asked for by `episode_ends: time-limit`: the file has no flags)
    ds = task.load_dataset(check_spaces=False)
    assert [len(e) for e in ds.episodes] == [3, 3, 2]
    # Hopper-v5 observes 11 numbers, acts with 3; this toy file does not fit it
    with pytest.raises(DatasetError, match="'observations'.*\\(11,\\)"):
        task.load_dataset()


def test_plain_reference_pair_with_source(tmp_path):
    spec = _spec(tmp_path, reference_scores=[1.0, 3.0], reference_source="mine")
    task = load_task(_write_spec(tmp_path, spec))
    assert task.reference_scores == (1.0, 3.0) and task.reference_source == "mine"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("env_id", None, "'env_id': is missing.*env_id: Hopper-v5"),
        ("max_episode_steps", "long", "'max_episode_steps': is 'long', not a number.*1000"),
        ("max_episode_steps", 2.5, "'max_episode_steps'.*not a positive integer"),
        ("reward_scale", -1.0, "'reward_scale': is -1.0, not positive"),
        ("target_returns", "high", "'target_returns'.*not a list of numbers.*\\[3600, 1800\\]"),
        ("reference_scores", [3.0], "'reference_scores'.*not a \\[random, expert\\] pair"),
        (
            "reference_scores",
            [0.0, 1.0],
            "'reference_scores': is a bare .* pair, and `reference_source` is missing",
        ),
        ("reference_scores", {"a": [5.0, 1.0], "use": "a"}, "expert return must exceed"),
        ("reference_scores", {"a": [0, 1], "use": "b"}, "has no table 'b'"),
        ("dataset_format", "csv", "'dataset_format'.*not one of"),
    ],
)
def test_field_errors_name_file_field_and_example(tmp_path, field, value, expected):
    spec = _spec(tmp_path, **{field: value})
    if value is None:
        spec.pop(field, None)
    path = _write_spec(tmp_path, spec)
    with pytest.raises(DatasetError, match=expected) as err:
        load_task(path)
    assert str(path) in str(err.value)


def test_unknown_field_is_a_typo(tmp_path):
    path = _write_spec(tmp_path, _spec(tmp_path, reward_scal=0.001))
    with pytest.raises(DatasetError, match="'reward_scal': is not a task field"):
        load_task(path)


def test_missing_dataset_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AAREN_RL_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="aaren-rl make-dataset walker2d-medium"):
        load_task("walker2d-medium").load_dataset(check_spaces=False)
