"""EasyTPP-layout event files: a round trip through the writer, JSON Lines, padding in
batches, and every malformed file (times not increasing, negative gap, unknown mark, missing
field, ...) gives one clear error naming the file and the sequence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.events import EventData, EventSequences, load_event_json, write_event_json
from aaren_rl.heads.events_cli import synthetic_process


def _seq(times, marks, idx=0, dim=3):
    times = [float(t) for t in times]
    gaps = [times[0]] + [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    return {
        "seq_idx": idx,
        "seq_len": len(times),
        "dim_process": dim,
        "time_since_start": times,
        "time_since_last_event": gaps,
        "type_event": list(marks),
    }


def _write(tmp_path, rows, name="events.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def test_round_trip_through_writer(tmp_path):
    data = EventData.synthetic(synthetic_process("hawkes5"), 20, 15.0, seed=0)
    path = tmp_path / "train.json"
    write_event_json(path, data.splits["train"])
    back = load_event_json(path)
    assert back.n_marks == 5 and len(back) == len(data.splits["train"])
    for a, b in zip(back.times, data.splits["train"].times, strict=True):
        np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(back.end, 15.0)
    with pytest.raises(FileExistsError):
        write_event_json(path, data.splits["train"])  # never overwrites


def test_json_lines_and_defaults(tmp_path):
    rows = [_seq([0, 1.5, 2.0], [0, 2, 1]), _seq([0.5, 0.5, 3.0], [1, 1, 0], idx=1)]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seqs = load_event_json(path)
    assert seqs.n_marks == 3 and list(seqs.lengths) == [3, 3]
    np.testing.assert_allclose(seqs.end, [2.0, 3.0])  # the last event when no end_time


def test_batch_pads_on_the_right():
    seqs = EventSequences(
        [np.array([0.5, 1.0, 2.5]), np.array([1.0])],
        [np.array([0, 1, 0]), np.array([2])],
        np.array([3.0, 2.0]),
        3,
    )
    b = seqs.batch(np.array([0, 1]))
    np.testing.assert_allclose(b["gaps"][0], [0.5, 0.5, 1.5])
    assert b["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert b["lengths"].tolist() == [3, 1] and seqs.n_scored == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r: r.update(
                time_since_start=[0, 2.0, 1.0], time_since_last_event=[0, 2.0, -1.0]
            ),
            "times not increasing",
        ),
        (lambda r: r.update(time_since_last_event=[0, -0.5, 0.5]), "negative gap"),
        (lambda r: r.update(type_event=[0, 7, 1]), "unknown mark type_event[1] = 7"),
        (lambda r: r.update(type_event=[0, -1, 1]), "unknown mark"),
        (lambda r: r.pop("type_event"), "missing field 'type_event'"),
        (lambda r: r.pop("time_since_start"), "missing field 'time_since_start'"),
        (lambda r: r.update(time_since_last_event=[0, 1.0, 9.0]), "but the times differ"),
        (lambda r: r.update(type_event=[0, 1]), "fields of different lengths"),
        (lambda r: r.update(type_event=[0, 1.5, 1]), "non-integer type_event"),
    ],
)
def test_malformed_file_names_file_and_sequence(tmp_path, mutate, message):
    good = _seq([0, 1.0, 2.0], [0, 1, 2], idx=10)
    bad = _seq([0, 1.0, 2.0], [0, 1, 2], idx=11)
    mutate(bad)
    path = _write(tmp_path, [good, bad], "broken.json")
    with pytest.raises(DatasetError) as info:
        load_event_json(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text and "sequence 1 (seq_idx 11)" in text and "Fix:" in text
    assert "\n" not in text


def test_other_file_problems(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_event_json(tmp_path / "nope.json")
    path = tmp_path / "garbage.json"
    path.write_text("{not json\n")
    with pytest.raises(DatasetError, match="line 1 is not JSON"):
        load_event_json(path)
    with pytest.raises(DatasetError, match=r"unknown mark .* \(marks are 0 .. 1\)"):
        load_event_json(_write(tmp_path, [_seq([0, 1], [0, 2])]), n_marks=2)


def test_synthetic_oracle_matches_process_likelihood():
    process = synthetic_process("hawkes1")
    data = EventData.synthetic(process, 30, 20.0, seed=1)
    test = data.splits["test"]
    ll = sum(
        process.log_likelihood(t, k, 20.0, given_first=True)
        for t, k in zip(test.times, test.marks, strict=True)
    )
    assert data.oracle("test")["nll_per_event"] == pytest.approx(-ll / test.n_scored)
    assert data.oracle("test")["mark_accuracy"] == 1.0  # one mark
    assert data.poisson_baseline("test")["nll_per_event"] > data.oracle("test")["nll_per_event"]
