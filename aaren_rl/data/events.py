"""Marked event sequences: EasyTPP-layout files, synthetic processes, batches.

Convention (EasyTPP's): a sequence is its events ``(t_1, k_1), ..., (t_n, k_n)`` with
``start <= t_1 <= ... <= t_n <= end``; the first event is given (the model reads it), and
events ``2..n`` plus the survival from ``t_n`` to ``end`` are scored. Marks are integers
``0 .. n_marks - 1``.

File layout (EasyTPP's, as on its Hugging Face datasets): a JSON file holding a list of
sequences (or JSON Lines, one sequence a line), each an object with the fields

- ``time_since_start``: event times, non-decreasing, first >= 0;
- ``time_since_last_event``: the gaps ``t_i - t_{i-1}`` (the first is ``t_1`` or 0), >= 0;
- ``type_event``: integer marks in ``0 .. dim_process - 1``;
- optional ``dim_process`` (the number of marks), ``seq_idx``, ``seq_len``, and our own
  optional ``end_time`` (the end of the observation window; default: the last event time).

EasyTPP's own pickles (``.pkl``: ``{"dim_process": K, "train": [[{event}, ...], ...]}``, each
event a dict of those three fields) are read too, with an unpickler that builds plain dicts,
lists, numbers and numpy values only (a pickle holding any other object is refused).

Each problem is a :class:`~aaren_rl.data.errors.DatasetError` naming the file, the sequence
(its index in the file and ``seq_idx``) and the fix.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.data.errors import DatasetError, reading
from aaren_rl.data.seeded_sampler import SeededSampler
from aaren_rl.files import write_text_atomic

FIELDS = ("time_since_start", "time_since_last_event", "type_event")


@dataclass
class EventSequences:
    """``times``/``marks``: N arrays ``[n_i]`` (float64 / int64); ``end [N]``; ``n_marks``."""

    times: list[np.ndarray]
    marks: list[np.ndarray]
    end: np.ndarray
    n_marks: int
    start: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.end = np.asarray(self.end, dtype=np.float64)
        if self.start is None:
            self.start = np.zeros(len(self.times))
        self.start = np.asarray(self.start, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.times], dtype=np.int64)

    @property
    def n_scored(self) -> int:
        """Events that are scored (all but each sequence's first)."""
        return int(np.sum(np.maximum(self.lengths - 1, 0)))

    def gaps(self) -> list[np.ndarray]:
        """Inter-event times ``[n_i]``, the first counted from the window start."""
        return [np.diff(t, prepend=s) for t, s in zip(self.times, self.start, strict=True)]

    def subset(self, rows: np.ndarray) -> EventSequences:
        return EventSequences(
            [self.times[i] for i in rows],
            [self.marks[i] for i in rows],
            self.end[rows],
            self.n_marks,
            self.start[rows],
        )

    def batch(self, rows: np.ndarray, dtype: Any = np.float32) -> dict[str, np.ndarray]:
        """Right-padded arrays for ``rows``: ``times, gaps [B, L]`` (``dtype``), ``marks [B,
        L]`` int64, ``mask [B, L]`` bool, ``lengths [B]`` int64, ``end, start [B]``."""
        rows = np.asarray(rows)
        lengths = self.lengths[rows]
        width = int(max(1, lengths.max()))
        times = np.zeros((len(rows), width), dtype=dtype)
        gaps = np.zeros_like(times)
        marks = np.zeros((len(rows), width), dtype=np.int64)
        for b, i in enumerate(rows):
            n = lengths[b]
            times[b, :n] = self.times[i]
            gaps[b, :n] = np.diff(self.times[i], prepend=self.start[i])
            marks[b, :n] = self.marks[i]
        return {
            "times": times,
            "gaps": gaps,
            "marks": marks,
            "mask": np.arange(width)[None] < lengths[:, None],
            "lengths": lengths.astype(np.int64),
            "end": self.end[rows].astype(dtype),
            "start": self.start[rows].astype(dtype),
        }


# ----------------------------------------------------------------------------- files


def _records(path: Path) -> list[Any]:
    if path.suffix.lower() in PICKLE_SUFFIXES or path.read_bytes()[:1] == b"\x80":
        return _pickle_records(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no} is not JSON ({exc.msg})",
                    "a JSON list of sequences or JSON Lines (one sequence object a line)",
                ) from None
        return data
    return _split_list(data, path)


def _split_list(data: Any, path: Path) -> list[Any]:
    """The list of sequences in a file's top level: the list itself, or the one list an
    object holds (``{"train": [...]}``; EasyTPP's pickles add ``dim_process``)."""
    if isinstance(data, dict):  # {"train": [...]} or a single split under one key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError.about(
                path,
                None,
                "a JSON object, not a list of sequences",
                "a list of sequence objects (or an object holding exactly one such list)",
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DatasetError.about(path, None, "not a list of sequences", "a JSON list")
    return data


PICKLE_SUFFIXES = (".pkl", ".pickle")
# what EasyTPP's pickles may hold besides plain dicts, lists and numbers: numpy scalars and
# arrays (their constructors build data and run nothing else)
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes (numpy's scalar payloads)
}


class _RefusedObject(pickle.UnpicklingError):
    """A pickle that holds a class or function outside :data:`_PICKLE_ALLOWED`."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function outside :data:`_PICKLE_ALLOWED` is
    refused (unpickling arbitrary objects runs their code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise _RefusedObject(
            f"it holds a {module}.{name} object; only plain dicts, lists and numbers are read"
        )


def _pickle_records(path: Path) -> list[Any]:
    """EasyTPP's pickle layout -> the JSON layout's sequence records.

    The file holds ``{"dim_process": K, "<split>": [sequence, ...]}`` where each sequence is a
    list of event dicts with ``time_since_start``, ``time_since_last_event`` and
    ``type_event`` (and ``idx_event``, ``time_since_last_same_event``, ignored). Pickles
    written by Python 2 (EasyTPP's Gatech files) are read with latin-1 strings."""
    with open(path, "rb") as handle:
        try:
            data = _PlainDataUnpickler(handle, encoding="latin1").load()
        except MemoryError:  # a corrupt length field: pickle allocates before it reads
            raise DatasetError.about(
                path,
                None,
                "could not be read: a length inside the pickle asks for more memory than "
                "there is (the file is corrupt)",
                "EasyTPP's pickle layout",
                "use an intact copy of the file",
            ) from None
        except _RefusedObject as exc:  # other errors: a truncated or corrupt file (reading())
            raise DatasetError.about(
                path,
                None,
                f"refused: {exc}",
                "EasyTPP's pickle layout {'dim_process': K, 'train': [[{event}, ...], ...]}",
                "convert it to plain dicts and lists, or to the JSON layout",
            ) from None
    if not isinstance(data, dict):
        raise DatasetError.about(
            path, None, f"a pickle of a {type(data).__name__}", "a dict (EasyTPP's layout)"
        )
    dim = data.get("dim_process")
    records = []
    for i, seq in enumerate(_split_list(data, path)):
        if isinstance(seq, dict):  # already one record per sequence
            records.append(seq)
            continue
        if not isinstance(seq, list) or not all(isinstance(e, dict) for e in seq):
            raise DatasetError.about(
                path,
                None,
                f"sequence {i} is a {type(seq).__name__}, not a list of event dicts",
                "each sequence a list of {'time_since_start', 'time_since_last_event', "
                "'type_event'} dicts",
            )
        record: dict[str, Any] = {name: [e.get(name) for e in seq] for name in FIELDS}
        missing = [name for name in FIELDS if any(e.get(name) is None for e in seq)]
        if missing:
            raise DatasetError.about(
                path, None, f"sequence {i}: an event lacks {missing[0]!r}", ", ".join(FIELDS)
            )
        if dim is not None:
            record["dim_process"] = dim
        records.append(record)
    return records


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _end_time(value: Any, bad: Any) -> float:
    """A sequence's ``end_time``: a finite number within float32's range, else ``bad(...)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise bad(f"end_time is {str(value)[:40]!r}, not a number", "a finite end_time")
    end = float(value)
    if not np.isfinite(end) or abs(end) > FLOAT32_MAX:
        raise bad(
            f"end_time is {end}, not a finite number within float32's range",
            "a finite end_time (the end of the observation window), or none (the last event)",
        )
    return end


def load_event_json(path: str | os.PathLike[str], n_marks: int | None = None) -> EventSequences:
    """Read an EasyTPP-layout event file (see the module docstring), checking every sequence.

    ``n_marks`` bounds the marks (default: ``dim_process`` if the file gives it, else the
    largest mark + 1).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError.about(path, None, "no such file", fix="pass an EasyTPP-layout .json")
    with reading(path, "EasyTPP's layout: a JSON list (or pickle) of event sequences"):
        return _load_records(path, _records(path), n_marks)


def _load_records(path: Path, records: list[Any], n_marks: int | None) -> EventSequences:
    """Check every record (see :func:`load_event_json`) and gather the sequences."""
    if not records:
        raise DatasetError.about(path, None, "holds no sequences", "at least one sequence")
    times, marks, ends = [], [], []
    dims = set()
    for i, rec in enumerate(records):
        where = f"sequence {i}" + (
            f" (seq_idx {rec['seq_idx']})" if isinstance(rec, dict) and "seq_idx" in rec else ""
        )

        def bad(problem: str, fix: str, where: str = where) -> DatasetError:
            return DatasetError(f"{path}: {where}: {problem}. Fix: {fix}", file=path, key=where)

        if not isinstance(rec, dict):
            raise bad("is not an object", f"an object with the fields {', '.join(FIELDS)}")
        for name in FIELDS:
            if name not in rec:
                raise bad(f"missing field {name!r}", f"give every sequence {', '.join(FIELDS)}")
        try:
            t = np.asarray(rec["time_since_start"], dtype=np.float64)
            gap = np.asarray(rec["time_since_last_event"], dtype=np.float64)
            k = np.asarray(rec["type_event"])
        except (TypeError, ValueError):
            raise bad("a field is not a list of numbers", "lists of numbers") from None
        if not (t.ndim == gap.ndim == k.ndim == 1) or not (len(t) == len(gap) == len(k)):
            raise bad(
                f"fields of different lengths ({len(t)}, {len(gap)}, {len(k)})",
                "one time, one gap and one mark per event",
            )
        if len(t) == 0:
            raise bad("has no events", "drop empty sequences")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(gap))):
            raise bad("non-finite time or gap", "finite numbers")
        if np.abs(t).max() > FLOAT32_MAX or np.abs(gap).max() > FLOAT32_MAX:
            raise bad("a time or gap overflows float32 (the type they are trained in)", "rescale")
        if t[0] < 0:
            raise bad(f"first time {t[0]} < 0", "times since the start are >= 0")
        steps = np.diff(t)
        if np.any(steps < 0):
            j = int(np.argmax(steps < 0)) + 1
            raise bad(
                f"times not increasing: time_since_start[{j}] = {t[j]} < [{j - 1}] = {t[j - 1]}",
                "sort the events by time",
            )
        if np.any(gap < 0):
            j = int(np.argmax(gap < 0))
            raise bad(f"negative gap: time_since_last_event[{j}] = {gap[j]}", "gaps are >= 0")
        tol = 1e-6 * max(1.0, float(np.abs(t).max()))
        mismatch = np.abs(gap[1:] - steps) > tol
        if np.any(mismatch):
            j = int(np.argmax(mismatch)) + 1
            raise bad(
                f"time_since_last_event[{j}] = {gap[j]} but the times differ by {steps[j - 1]}",
                "gaps must be the differences of time_since_start",
            )
        if not np.all(np.equal(np.mod(k.astype(np.float64), 1), 0)):
            raise bad("non-integer type_event", "marks are integers 0 .. n_marks - 1")
        k = k.astype(np.int64)
        dim = rec.get("dim_process")
        bound = n_marks if n_marks is not None else dim
        if np.any(k < 0) or (bound is not None and np.any(k >= bound)):
            j = int(np.argmax((k < 0) | (k >= (bound if bound is not None else np.inf))))
            raise bad(
                f"unknown mark type_event[{j}] = {k[j]}"
                + (f" (marks are 0 .. {bound - 1})" if bound is not None else ""),
                "marks are integers 0 .. n_marks - 1 (dim_process)",
            )
        end = _end_time(rec.get("end_time", t[-1]), bad)
        if end < t[-1]:
            raise bad(f"end_time {end} before the last event {t[-1]}", "end_time >= last time")
        if dim is not None:
            dims.add(int(dim))
        times.append(t)
        marks.append(k)
        ends.append(end)
    if n_marks is None:
        n_marks = max(dims) if dims else int(max(k.max() for k in marks)) + 1
    return EventSequences(times, marks, np.asarray(ends), int(n_marks))


def write_event_json(path: str | os.PathLike[str], seqs: EventSequences) -> None:
    """Write ``seqs`` in the EasyTPP layout (plus ``end_time``), atomically; never overwrites."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: choose another name or delete it first")
    rows = []
    for i, (t, k) in enumerate(zip(seqs.times, seqs.marks, strict=True)):
        rows.append(
            {
                "seq_idx": i,
                "seq_len": len(t),
                "dim_process": seqs.n_marks,
                "time_since_start": [float(x) for x in t - seqs.start[i]],
                "time_since_last_event": [float(x) for x in np.diff(t, prepend=seqs.start[i])],
                "type_event": [int(x) for x in k],
                "end_time": float(seqs.end[i] - seqs.start[i]),
            }
        )
    write_text_atomic(path, json.dumps(rows))


# ----------------------------------------------------------------------------- data sets


@dataclass
class EventData:
    """Train / val / test event sequences with one mark set; ``process`` (optional) is the
    true process of synthetic data, whose exact likelihood is the oracle."""

    splits: dict[str, EventSequences]
    name: str
    process: Any = None

    @property
    def n_marks(self) -> int:
        return self.splits["train"].n_marks

    def batch(self, which: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        return self.splits[which].batch(rows)

    @classmethod
    def from_files(cls, train: str, val: str, test: str, n_marks: int | None = None) -> EventData:
        loaded = {
            k: load_event_json(p, n_marks)
            for k, p in (("train", train), ("val", val), ("test", test))
        }
        n = n_marks or max(s.n_marks for s in loaded.values())
        for s in loaded.values():
            s.n_marks = n
        return cls(loaded, f"{Path(train).name} / {Path(val).name} / {Path(test).name}")

    @classmethod
    def synthetic(
        cls,
        process: Any,
        n_sequences: int,
        end: float,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        name: str = "synthetic",
        min_events: int = 2,
    ) -> EventData:
        """``n_sequences`` simulated on ``[0, end]`` (those with < ``min_events`` are redrawn),
        split by ``fractions``."""
        rng = np.random.default_rng(seed)
        times, marks = [], []
        while len(times) < n_sequences:
            t, k = process.simulate(end, rng)
            if len(t) >= min_events:
                times.append(t)
                marks.append(k)
        seqs = EventSequences(times, marks, np.full(n_sequences, float(end)), process.n_marks)
        cut = np.cumsum(np.round(np.asarray(fractions) * n_sequences).astype(int))
        idx = np.arange(n_sequences)
        parts = np.split(idx, cut[:2])
        splits = {k: seqs.subset(p) for k, p in zip(("train", "val", "test"), parts, strict=True)}
        return cls(splits, name, process)

    # ------------------------------------------------------------------ references

    def oracle(self, which: str) -> dict[str, float]:
        """The true process's scores on ``which``: NLL per scored event (first event given,
        survival to the window end included) and the Bayes mark accuracy (argmax of the true
        intensities just before each scored event)."""
        if self.process is None:
            return {}
        seqs = self.splits[which]
        ll, mark_ll, hits, se = 0.0, 0.0, 0, 0.0
        means = hasattr(self.process, "next_gap_means")
        for t, k, s, e in zip(seqs.times, seqs.marks, seqs.start, seqs.end, strict=True):
            ll += self.process.log_likelihood(t, k, e, s, given_first=True)
            lam = self.process.intensities_before(t, k)[1:]
            hits += int(np.sum(lam.argmax(axis=1) == k[1:]))
            mark_ll += float(np.sum(np.log(lam[np.arange(len(lam)), k[1:]] / lam.sum(axis=1))))
            if means:
                se += float(np.sum((self.process.next_gap_means(t, k)[:-1] - np.diff(t)) ** 2))
        n = seqs.n_scored
        out = {
            "nll_per_event": -ll / n,
            "time_nll": -(ll - mark_ll) / n,
            "mark_nll": -mark_ll / n,
            "mark_accuracy": hits / n,
        }
        if means:
            out["rmse"] = float(np.sqrt(se / n))
        return out

    def poisson_baseline(self, which: str) -> dict[str, float]:
        """Homogeneous Poisson per mark, rates fitted on train (events / observed time after
        each first event): NLL per scored event on ``which``, and the RMSE of predicting the
        train mean gap."""
        train = self.splits["train"]
        counts = np.zeros(self.n_marks)
        span = 0.0
        for t, k, e in zip(train.times, train.marks, train.end, strict=True):
            np.add.at(counts, k[1:], 1)
            span += e - t[0]
        rates = np.maximum(counts, 0.5) / span
        seqs = self.splits[which]
        ll = 0.0
        for t, k, e in zip(seqs.times, seqs.marks, seqs.end, strict=True):
            ll += float(np.sum(np.log(rates[k[1:]]))) - rates.sum() * (e - t[0])
        mean_gap = float(np.mean(np.concatenate([np.diff(t) for t in train.times])))
        gaps = np.concatenate([np.diff(t) for t in seqs.times])
        return {
            "nll_per_event": -ll / seqs.n_scored,
            "rmse_mean_gap": float(np.sqrt(np.mean((gaps - mean_gap) ** 2))),
            "mark_accuracy_majority": float(
                np.mean(np.concatenate([k[1:] for k in seqs.marks]) == counts.argmax())
            ),
        }


class EventSampler(SeededSampler):
    """Random training batches of whole sequences; saveable generator."""

    def __init__(self, data: EventData, seed: int) -> None:
        super().__init__(seed)
        self.data = data

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.data.batch(
            "train", self._distinct_rows(len(self.data.splits["train"]), batch_size)
        )
