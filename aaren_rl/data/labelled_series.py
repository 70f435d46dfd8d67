"""Labelled multivariate series of varying length, for classification.

Three layouts, each checked line by line (a problem names the file and the line):

- UEA/sktime ``.ts`` files, loaded through aeon (the ``timeseries`` extra) after a check of
  every data line: channel count, numbers, missing values, ragged channels, known labels.
  :func:`shipped_uea_file` finds the copies aeon ships (JapaneseVowels, BasicMotions, ...),
  so nothing downloads.
- NumPy ``.npz``: ``X [N, T, C]`` float, ``y [N]`` labels, optional ``lengths [N]`` (the real
  steps of each series; the rest of its row is padding).
- CSV, long format: a header ``series,label,channel1,...``, then one row per time step; the
  rows of one series are consecutive.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.data.errors import DatasetError, reading
from aaren_rl.data.seeded_sampler import SeededSampler


@dataclass
class LabelledSeries:
    """``series``: N arrays ``[T_i, C]`` float32; ``labels``: ``[N]`` strings; ``path``."""

    path: Path
    series: list[np.ndarray]
    labels: np.ndarray

    @property
    def n_channels(self) -> int:
        return int(self.series[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.series], dtype=np.int64)


def load_labelled_series(path: str | os.PathLike[str]) -> LabelledSeries:
    """Read ``.ts``, ``.npz`` or ``.csv`` by extension (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError.about(path, None, "no such file", fix="pass a .ts, .npz or .csv file")
    suffix = path.suffix.lower()
    readers = {".ts": load_ts, ".npz": load_npz, ".csv": load_long_csv}
    if suffix not in readers:
        raise DatasetError.about(path, None, f"unknown extension {suffix!r}", ".ts, .npz or .csv")
    with reading(path, LAYOUTS[suffix]):
        return readers[suffix](path)


LAYOUTS = {
    ".ts": "a UEA/sktime .ts file (header lines, @data, then one case a line)",
    ".npz": "a NumPy .npz holding X [N, T, C] numbers, y [N] labels, optional lengths [N]",
    ".csv": "a long CSV: series,label,channel1,... then one row per time step",
}


# ----------------------------------------------------------------------------- .ts


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parse_number(path: Path, line_no: int, channel: int, text: str) -> float:
    text = text.strip()
    if text in ("?", "") or text.lower() == "nan":
        raise DatasetError.about(
            path,
            None,
            f"line {line_no}: channel {channel} has a missing value ({text or 'empty'!r})",
            "numbers only",
            "fill or interpolate the missing values",
        )
    try:
        value = float(text)
    except ValueError:
        raise DatasetError.about(
            path,
            None,
            f"line {line_no}: channel {channel}: {text[:40]!r} is not a number",
            "comma-separated numbers",
        ) from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise DatasetError.about(
            path,
            None,
            f"line {line_no}: channel {channel}: {text[:40]!r}",
            "finite numbers within float32's range",
        )
    return value


def check_ts_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a ``.ts`` file line by line; returns its header (dimensions, classes, cases).

    Raises :class:`DatasetError` naming the file and line for: no ``@data`` line, a case with
    the wrong number of channels, a channel that is not numbers, a missing value, channels of
    one case with different lengths, a label outside ``@classLabel``.
    """
    path = Path(path)
    header: dict[str, Any] = {"dimensions": None, "classes": None, "equal_length": None}
    data_started = False
    cases = 0
    with open(path, encoding="utf-8") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not data_started:
                if not line.startswith("@"):
                    raise DatasetError.about(
                        path,
                        None,
                        f"line {line_no}: data before the @data line",
                        "header lines starting with @, then @data",
                    )
                words = line.split()
                tag = words[0].lower()
                if tag == "@data":
                    data_started = True
                elif tag == "@dimensions" and len(words) > 1:
                    if not words[1].isdigit() or int(words[1]) < 1:
                        raise DatasetError.about(
                            path,
                            None,
                            f"line {line_no}: @dimensions {words[1][:20]!r} is not a positive "
                            "integer",
                            "@dimensions N (the number of channels)",
                        )
                    header["dimensions"] = int(words[1])
                elif tag == "@classlabel" and len(words) > 1 and words[1].lower() == "true":
                    header["classes"] = words[2:]
                elif tag == "@equallength" and len(words) > 1:
                    header["equal_length"] = words[1].lower() == "true"
                elif tag == "@timestamps" and len(words) > 1 and words[1].lower() == "true":
                    raise DatasetError.about(
                        path, None, f"line {line_no}: time-stamped .ts files are not supported"
                    )
                continue
            fields = line.split(":")
            if header["classes"] is None:
                raise DatasetError.about(
                    path, None, "no '@classLabel true ...' line before @data", "class labels"
                )
            label = fields[-1].strip()
            channels = fields[:-1]
            expected = header["dimensions"] or len(channels)
            if header["dimensions"] is None:
                header["dimensions"] = expected
            if len(channels) != expected:
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no}: {len(channels)} channel(s), expected {expected}",
                    f"{expected} ':'-separated channels and a label",
                )
            lengths = set()
            for j, channel in enumerate(channels):
                values = channel.split(",")
                for text in values:
                    _parse_number(path, line_no, j, text)
                lengths.add(len(values))
            if len(lengths) > 1:
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no}: ragged row: its channels have lengths {sorted(lengths)}",
                    "the same length in every channel of a case",
                )
            if label not in header["classes"]:
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no}: label {label!r} is not in @classLabel {header['classes']}",
                )
            cases += 1
    if not data_started:
        raise DatasetError.about(path, None, "no @data line", "a .ts header ending in @data")
    if cases == 0:
        raise DatasetError.about(path, None, "no cases after @data")
    header["cases"] = cases
    return header


def load_ts(path: str | os.PathLike[str]) -> LabelledSeries:
    """A checked ``.ts`` file (:func:`check_ts_file`), loaded with aeon's ``.ts`` reader."""
    path = Path(path)
    check_ts_file(path)
    try:
        from aeon.datasets import load_from_ts_file
    except ImportError as exc:
        raise DatasetError.about(
            path, None, "reading .ts files needs aeon", fix="pip install 'aaren-rl[timeseries]'"
        ) from exc
    try:
        data, labels = load_from_ts_file(str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError.about(path, None, f"aeon could not read it: {exc}") from exc
    series = [np.asarray(case, dtype=np.float32).T.copy() for case in data]  # [T, C]
    return LabelledSeries(path, series, np.asarray(labels).astype(str))


def shipped_uea_file(name: str, split: str) -> Path:
    """The copy of a UEA dataset that aeon ships (``split``: ``"train"`` or ``"test"``)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"{name}: the shipped UEA copies come with aeon; pip install 'aaren-rl[timeseries]'"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    path = root / f"{name}_{split.upper()}.ts"
    if not path.is_file():
        shipped = sorted(p.name for p in root.parent.iterdir() if p.is_dir())
        raise DatasetError.about(path, None, f"aeon ships no {name} {split} file", str(shipped))
    return path


# ----------------------------------------------------------------------------- npz / csv


def load_npz(path: str | os.PathLike[str]) -> LabelledSeries:
    """``X [N, T, C]``, ``y [N]``, optional ``lengths [N]`` from a ``.npz`` file.

    Raises :class:`DatasetError` naming the file and the key for: a truncated or corrupt
    archive, a missing key, Python objects (never unpickled), text where numbers belong, wrong
    shapes, lengths that are not integers in ``1..T``, NaN or inf in a series."""
    path = Path(path)
    with reading(path, LAYOUTS[".npz"]), np.load(path, allow_pickle=False) as data:
        arrays = {}
        for key in ("X", "y", "lengths"):
            if key not in data:
                if key == "lengths":
                    continue
                raise DatasetError.about(path, key, "missing", "arrays X [N,T,C] and y [N]")
            try:
                arrays[key] = np.asarray(data[key])
            except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise DatasetError.about(
                    path,
                    key,
                    f"holds Python objects ({exc}); they are never unpickled",
                    "numeric arrays (and y as numbers or fixed-width strings)",
                    "save plain arrays: np.savez(path, X=np.asarray(X, float), y=np.asarray(y))",
                ) from None
    x, y, lengths = arrays["X"], arrays["y"], arrays.get("lengths")
    if x.dtype.kind not in "biuf":
        raise DatasetError.about(path, "X", f"has dtype {x.dtype}", "numbers [N, T, C]")
    if x.ndim != 3 or y.ndim != 1 or len(y) != len(x) or 0 in x.shape:
        raise DatasetError.about(
            path, "X", f"shape {x.shape} with y of shape {y.shape}", "X [N, T, C] and y [N]"
        )
    if y.dtype.kind not in "biuUS":
        raise DatasetError.about(path, "y", f"has dtype {y.dtype}", "integer or string labels")
    y = y.astype(str)
    x = x.astype(np.float64)
    if np.abs(x[np.isfinite(x)]).max(initial=0.0) > np.finfo(np.float32).max:
        raise DatasetError.about(path, "X", "holds values past float32's range", "float32")
    x = x.astype(np.float32)
    if lengths is None:
        lengths = np.full(len(x), x.shape[1])
    if (
        lengths.ndim != 1
        or len(lengths) != len(x)
        or lengths.dtype.kind not in "biuf"
        or not np.all(np.isfinite(lengths))
        or not np.all(np.mod(lengths, 1) == 0)
    ):
        raise DatasetError.about(
            path,
            "lengths",
            f"has shape {lengths.shape} and dtype {lengths.dtype}",
            f"[{len(x)}] integers (the real steps of each series)",
        )
    series = []
    for i, n in enumerate(lengths.astype(np.int64)):
        if not 1 <= int(n) <= x.shape[1]:
            raise DatasetError.about(path, "lengths", f"row {i}: {n}", f"1..{x.shape[1]}")
        s = x[i, : int(n)]
        if not np.isfinite(s).all():
            raise DatasetError.about(path, "X", f"row {i} has NaN or inf", "finite numbers")
        series.append(s.copy())
    return LabelledSeries(path, series, y)


def load_long_csv(path: str | os.PathLike[str]) -> LabelledSeries:
    """Long-format CSV: ``series,label,channel1,...``, one row per step (see the module doc)."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if len(header) < 3 or header[:2] != ["series", "label"]:
            raise DatasetError.about(
                path, None, f"line 1: header {header[:4]}", "series,label,channel1,..."
            )
        order: list[str] = []
        rows: dict[str, list[list[float]]] = {}
        labels: dict[str, str] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no}: {len(row)} fields, but the header has {len(header)}",
                    "one field per header column",
                )
            sid, label = row[0].strip(), row[1].strip()
            if sid in rows and order[-1] != sid:
                raise DatasetError.about(
                    path, None, f"line {line_no}: series {sid!r} resumes after another series"
                )
            if sid in labels and labels[sid] != label:
                raise DatasetError.about(
                    path, None, f"line {line_no}: series {sid!r} changes label to {label!r}"
                )
            if sid not in rows:
                order.append(sid)
                rows[sid] = []
                labels[sid] = label
            rows[sid].append([_parse_number(path, line_no, j, t) for j, t in enumerate(row[2:])])
    if not order:
        raise DatasetError.about(path, None, "no data rows")
    series = [np.asarray(rows[s], dtype=np.float32) for s in order]
    return LabelledSeries(path, series, np.asarray([labels[s] for s in order]))


# ----------------------------------------------------------------------------- batches


def pad_series(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``[T_i, C]`` arrays: ``x [N, T_max, C]`` (zeros after the end), ``mask
    [N, T_max]`` bool (True at real steps)."""
    t_max = max(len(s) for s in series)
    c = series[0].shape[1]
    x = np.zeros((len(series), t_max, c), dtype=np.float32)
    mask = np.zeros((len(series), t_max), dtype=bool)
    for i, s in enumerate(series):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return x, mask


@dataclass
class ClassifyData:
    """Train and test sets with one class list (``classes``; ``y`` are indices into it)."""

    train: LabelledSeries
    test: LabelledSeries
    classes: list[str]

    @classmethod
    def from_files(
        cls, train: str | os.PathLike[str], test: str | os.PathLike[str]
    ) -> ClassifyData:
        tr, te = load_labelled_series(train), load_labelled_series(test)
        if tr.n_channels != te.n_channels:
            raise DatasetError.about(
                te.path, None, f"{te.n_channels} channels, the train file has {tr.n_channels}"
            )
        classes = sorted(set(tr.labels), key=_label_key)
        unknown = sorted(set(te.labels) - set(classes))
        if unknown:
            raise DatasetError.about(te.path, None, f"labels {unknown} never seen in training")
        return cls(tr, te, classes)

    @classmethod
    def shipped(cls, name: str) -> ClassifyData:
        """A UEA dataset from aeon's shipped copies (offline)."""
        return cls.from_files(shipped_uea_file(name, "train"), shipped_uea_file(name, "test"))

    def targets(self, which: str) -> np.ndarray:
        labels = getattr(self, which).labels
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in labels], dtype=np.int64)

    def batch(self, which: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``{"x": [n, T, C], "mask": [n, T], "y": [n]}`` for the rows of train or test."""
        part = getattr(self, which)
        x, mask = pad_series([part.series[i] for i in rows])
        return {"x": x, "mask": mask, "y": self.targets(which)[rows]}


def _label_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


class ClassifySampler(SeededSampler):
    """Random training batches (without replacement inside a batch), saveable generator."""

    def __init__(self, data: ClassifyData, seed: int) -> None:
        super().__init__(seed)
        self.data = data

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.data.batch(
            "train", self._distinct_rows(len(self.data.train.series), batch_size)
        )
