"""Any bytes given to the time-series and event readers give either a valid dataset or the
project's one error type (a one-line DatasetError naming the file), never another exception.

Each reader gets random bytes and, more usefully, mutations of a valid file (truncation, bytes
flipped, tokens such as ``nan``, ``1e39``, ``,`` or ``@dimensions x`` inserted, lines dropped or
repeated), so the checks behind the first line are reached too. A file that loads is checked
for what the reader promises (finite float32 values, consistent shapes, sorted event times)."""

from __future__ import annotations

import io
import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_formats_reliability import _gatech_pickle, _sequences
from test_heads_classify import _toy_series, _write_ts
from test_heads_forecast import _write_csv

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.events import load_event_json, write_event_json
from aaren_rl.data.labelled_series import load_labelled_series
from aaren_rl.data.series_csv import load_series_csv

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TOKENS = [
    b"nan", b"inf", b"-inf", b"1e39", b"-1e400", b"", b",", b",,", b":", b"?", b"\n", b"\r\n",
    b"\x00", b"\xe9", b'"', b"date", b"@data", b"@dimensions x", b"@dimensions 0",
    b"@classLabel true", b"[", b"]", b"{", b"}", b"null", b'"end_time": 1e999', b"-1", b"0",
    b"1.5", b"999999999999999999999", b"\x80\x02", b"PK\x03\x04",
]  # fmt: skip
edits = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "insert", "drop_line", "repeat_line"]),
        st.integers(0, 10**6),
        st.sampled_from(TOKENS),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    for op, at, token in ops:
        i = at % (len(data) + 1)
        if op == "truncate":
            data = data[:i]
        elif op == "flip" and data:
            i %= len(data)
            data = data[:i] + bytes([data[i] ^ (1 + at % 255)]) + data[i + 1 :]
        elif op == "insert":
            data = data[:i] + token + data[i:]
        else:
            lines = data.split(b"\n")
            j = at % len(lines)
            lines[j : j + 1] = [] if op == "drop_line" else [lines[j], lines[j]]
            data = b"\n".join(lines)
    return data


def _valid_or_dataset_error(load, path):
    try:
        return load(path)
    except DatasetError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert message.startswith(str(path)), message
        return None


def _seed_files(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("seeds")
    series, labels = _toy_series(4, seed=0)
    seqs = _sequences()
    write_event_json(root / "e.json", seqs)
    npz = io.BytesIO()
    np.savez(npz, X=np.stack([s[:5] for s in series]), y=np.array(labels), lengths=[5, 4, 3, 5])
    long_csv = "series,label,a,b,c\n" + "".join(
        f"s{i},{label},{row[0]:.3f},{row[1]:.3f},{row[2]:.3f}\n"
        for i, (s, label) in enumerate(zip(series, labels, strict=True))
        for row in s[:4]
    )
    return {
        "series.csv": _write_csv(root / "s.csv", n=12).read_bytes(),
        "toy.ts": _write_ts(root / "t.ts", series, labels).read_bytes(),
        "toy.npz": npz.getvalue(),
        "long.csv": long_csv.encode(),
        "events.json": (root / "e.json").read_bytes(),
        "events.pkl": _gatech_pickle(root / "e.pkl", seqs, "train", True).read_bytes(),
    }


def _check_table(table) -> None:
    assert table.values.dtype == np.float32 and np.isfinite(table.values).all()
    assert table.values.shape == (len(table.dates), len(table.columns)) and len(table.dates) >= 2
    assert len(set(table.columns)) == len(table.columns)


def _check_labelled(data) -> None:
    assert len(data.series) == len(data.labels) >= 1
    channels = {s.shape[1] for s in data.series}
    assert len(channels) == 1
    for s in data.series:
        assert s.dtype == np.float32 and s.ndim == 2 and len(s) >= 1 and np.isfinite(s).all()


def _check_events(seqs) -> None:
    assert len(seqs.times) == len(seqs.marks) == len(seqs.end) >= 1
    for t, k, end in zip(seqs.times, seqs.marks, seqs.end, strict=True):
        assert len(t) == len(k) >= 1 and np.isfinite(t).all() and np.all(np.diff(t) >= 0)
        assert np.all((k >= 0) & (k < seqs.n_marks)) and np.isfinite(end) and end >= t[-1]
        assert np.abs(t).max() <= np.finfo(np.float32).max


READERS = {
    "series.csv": (load_series_csv, _check_table),
    "toy.ts": (load_labelled_series, _check_labelled),
    "toy.npz": (load_labelled_series, _check_labelled),
    "long.csv": (load_labelled_series, _check_labelled),
    "events.json": (load_event_json, _check_events),
    "events.pkl": (load_event_json, _check_events),
}


def _run(tmp_path_factory, name: str, data: bytes) -> None:
    load, check = READERS[name]
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    result = _valid_or_dataset_error(load, path)
    if result is not None:
        check(result)


@FUZZ
@given(name=st.sampled_from(sorted(READERS)), ops=edits)
def test_mutated_files_load_or_give_one_dataset_error(tmp_path_factory, name, ops):
    seeds = _seed_files(tmp_path_factory)
    _run(tmp_path_factory, name, mutate(seeds[name], ops))


@FUZZ
@given(name=st.sampled_from(sorted(READERS)), data=st.binary(max_size=200))
def test_any_bytes_load_or_give_one_dataset_error(tmp_path_factory, name, data):
    _run(tmp_path_factory, name, data)


@FUZZ
@given(
    value=st.one_of(
        st.none(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
        st.lists(st.floats(allow_nan=True), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    where=st.sampled_from(["dim_process", "split", "event", "field"]),
)
def test_pickles_of_plain_values_anywhere(tmp_path_factory, value, where):
    """EasyTPP-like pickles with any plain value in the dim, the split, an event or a field."""
    data = pickle.loads(_seed_files(tmp_path_factory)["events.pkl"])
    if where == "dim_process":
        data["dim_process"] = value
    elif where == "split":
        data["train"] = value
    elif where == "event":
        data["train"][0][0] = value
    else:
        data["train"][1][0]["time_since_start"] = value
    _run(tmp_path_factory, "events.pkl", pickle.dumps(data))
