"""Formats users bring: EasyTPP's own pickles (read, and read safely), malformed .npz and .ts
files (one DatasetError line naming the file), and the ETT split chosen whatever the file
name's case, recorded in results.json."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_heads_classify import _toy_series, _write_ts
from test_heads_forecast import _write_csv

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.events import EventSequences, load_event_json, write_event_json
from aaren_rl.data.labelled_series import load_labelled_series


def _one_line(fn, *args) -> str:
    with pytest.raises(DatasetError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(args[0])), message
    return message


# ------------------------------------------------------------------ EasyTPP pickles


def _sequences(seed: int = 0) -> EventSequences:
    rng = np.random.default_rng(seed)
    times = [np.cumsum(rng.exponential(size=int(rng.integers(2, 9)))) for _ in range(6)]
    marks = [rng.integers(0, 3, size=len(t)) for t in times]
    return EventSequences(times, marks, np.array([t[-1] for t in times]), 3)


def _gatech_pickle(path: Path, seqs: EventSequences, split: str, numpy_values: bool) -> Path:
    """EasyTPP's pickle layout: {'dim_process': K, split: [[{event}, ...], ...]}."""
    rows = []
    for t, k in zip(seqs.times, seqs.marks, strict=True):
        gaps = np.diff(t, prepend=0.0)
        events = []
        for i in range(len(t)):
            value = (lambda v: np.float64(v)) if numpy_values else float
            events.append(
                {
                    "idx_event": i + 1,
                    "time_since_start": value(t[i]),
                    "time_since_last_event": value(gaps[i]),
                    "time_since_last_same_event": value(gaps[i]),
                    "type_event": np.int64(k[i]) if numpy_values else int(k[i]),
                }
            )
        rows.append(events)
    with open(path, "wb") as handle:
        pickle.dump({"dim_process": seqs.n_marks, split: rows}, handle, protocol=2)
    return path


@pytest.mark.parametrize("numpy_values", [False, True])
def test_easytpp_pickle_reads_as_the_json_layout_does(tmp_path, numpy_values):
    seqs = _sequences()
    write_event_json(tmp_path / "dev.json", seqs)
    from_json = load_event_json(tmp_path / "dev.json")
    from_pkl = load_event_json(_gatech_pickle(tmp_path / "dev.pkl", seqs, "dev", numpy_values))
    assert from_pkl.n_marks == from_json.n_marks == 3
    for a, b in zip(from_pkl.times, from_json.times, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(from_pkl.marks, from_json.marks, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_pkl.end, from_json.end)


def test_a_pickle_holding_an_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "train.pkl"
    path.write_bytes(pickle.dumps({"dim_process": 2, "train": [Payload()]}))
    message = _one_line(load_event_json, path)
    assert "refused: it holds a pathlib" in message and "only plain dicts" in message
    assert not marker.exists()
    truncated = tmp_path / "cut.pkl"
    whole = _gatech_pickle(tmp_path / "t.pkl", _sequences(), "train", False).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    message = _one_line(load_event_json, truncated)
    assert "could not be read (" in message and "check that the file is complete" in message


def test_a_pickle_whose_length_field_is_corrupt_is_one_line(tmp_path):
    path = tmp_path / "train.pkl"  # BINBYTES8 of 2**62 bytes: pickle allocates before reading
    path.write_bytes(b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc")
    assert "could not be read" in _one_line(load_event_json, path)


def test_fit_events_trains_on_easytpp_pickles(tmp_path):
    from aaren_rl.cli import main

    files = [
        str(_gatech_pickle(tmp_path / f"{s}.pkl", _sequences(i), s, False))
        for i, s in enumerate(("train", "dev", "test"))
    ]
    argv = ["fit", "events", "--train", files[0], "--val", files[1], "--test", files[2]]
    argv += ["--d-model", "16", "--n-layers", "1", "--steps", "2", "--batch-size", "4"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "aaren" / "results.json").read_text())["step"] == 2


# ------------------------------------------------------------------ .npz and .ts


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


X = np.zeros((3, 5, 2), np.float32)
Y = np.array(["a", "b", "a"])
NPZ_CASES = {
    "strings": ({"X": np.full((3, 5, 2), "x"), "y": Y}, "key 'X': has dtype <U1"),
    "objects": (
        {"X": np.array([np.zeros(2), np.zeros(3)], dtype=object), "y": Y},
        "key 'X': holds Python objects",
    ),
    "lengths of another count": (
        {"X": X, "y": Y, "lengths": np.array([5, 5])},
        "key 'lengths': has shape (2,)",
    ),
    "lengths not integers": (
        {"X": X, "y": Y, "lengths": np.array([5, 2.5, 1])},
        "key 'lengths': has shape (3,) and dtype float64",
    ),
    "lengths past T": ({"X": X, "y": Y, "lengths": np.array([5, 6, 1])}, "row 1: 6"),
    "labels 2-d": ({"X": X, "y": np.zeros((3, 2))}, "with y of shape (3, 2)"),
    "X past float32": ({"X": np.full((3, 5, 2), 1e39), "y": Y}, "past float32's range"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_malformed_npz_is_one_line_naming_file_and_key(tmp_path, case):
    arrays, expected = NPZ_CASES[case]
    path = _npz(tmp_path / "bad.npz", **arrays)
    assert expected in _one_line(load_labelled_series, path)


def test_truncated_npz_names_the_file(tmp_path):
    path = _npz(tmp_path / "whole.npz", X=X, y=Y)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:200])
    assert "could not be read" in _one_line(load_labelled_series, cut)


def test_ts_with_a_bad_dimensions_line_or_a_latin1_byte(tmp_path):
    path = _write_ts(tmp_path / "toy.ts", *_toy_series(4, seed=0))
    text = path.read_text()
    (tmp_path / "dims.ts").write_text(text.replace("@dimensions 3", "@dimensions three"))
    assert "line 6: @dimensions 'three' is not a positive integer" in _one_line(
        load_labelled_series, tmp_path / "dims.ts"
    )
    raw = path.read_bytes().replace(b"@problemName toy", b"@problemName caf\xe9")
    (tmp_path / "latin1.ts").write_bytes(raw)
    message = _one_line(load_labelled_series, tmp_path / "latin1.ts")
    assert "line 2: byte b'\\xe9' is not UTF-8 text" in message and "iconv" in message


# ------------------------------------------------------------------ the ETT split


@pytest.mark.parametrize(
    ("name", "kind"),
    [("etth2.csv", "ett-hour"), ("ETTh1.csv", "ett-hour"), ("ettM1.csv", "ett-minute")],
)
def test_ett_split_is_chosen_whatever_the_case(tmp_path, name, kind):
    from aaren_rl.data.series_csv import ForecastData

    path = _write_csv(tmp_path / name, n=20 * 720 * (4 if kind == "ett-minute" else 1))
    data = ForecastData.from_csv(path, 96, 24)
    month = 720 * (4 if kind == "ett-minute" else 1)
    assert data.split_record() == {
        "kind": kind,
        "chosen": f"--split auto: the file name {name!r} starts with "
        f"{'ETTh' if kind == 'ett-hour' else 'ETTm'} (any case)",
        "borders": {
            "train": [0, 12 * month],
            "val": [12 * month - 96, 16 * month],
            "test": [16 * month - 96, 20 * month],
        },
    }


def test_results_json_records_the_split_and_how_it_was_chosen(tmp_path):
    from aaren_rl.cli import main

    csv = _write_csv(tmp_path / "series.csv", n=300)
    argv = ["fit", "forecast", "--data", str(csv), "--input-len", "24", "--horizon", "6"]
    argv += ["--patch-len", "4", "--d-model", "16", "--n-layers", "1", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    split = json.loads((tmp_path / "run" / "aaren" / "results.json").read_text())["split"]
    assert split == {
        "kind": "ratio",
        "chosen": "--split auto: the file name 'series.csv' is not an ETT one (ETTh*, ETTm*)",
        "borders": {"train": [0, 210], "val": [186, 240], "test": [216, 300]},
    }
