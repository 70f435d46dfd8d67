"""Time series in the standard CSV layout (a date column, then channels) and their windows.

The layout of ETDataset, Time-Series-Library and most forecasting benchmarks: a header row,
then one row per time step, the first column a timestamp and every other column a number.

- :func:`load_series_csv` reads and checks such a file: every problem (a ragged row, text in
  a number column, a missing value, NaN) names the file, the line and the column.
- :func:`split_borders` gives the standard train/val/test rows: ETT's 12/4/4 months for
  ``ETTh*``/``ETTm*`` files, 70/10/20 for any other, each later split starting ``input_len``
  rows early so its first window has a full input (Time-Series-Library's borders).
- :class:`ForecastData` holds the splits standardised by the train split's mean and std;
  :class:`ForecastWindows` enumerates every window of a split (none dropped) and
  :class:`ForecastSampler` draws random training windows with a saveable generator.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.data.errors import DatasetError, reading
from aaren_rl.data.seeded_sampler import SeededSampler

SPLITS = ("auto", "ett-hour", "ett-minute", "ratio")
ETT_MONTH_HOURS = 30 * 24


@dataclass
class SeriesTable:
    """A CSV series: ``dates`` (the first column's text, ``[T]``), ``values [T, C]`` float32
    and the channel ``columns`` (``C`` names), read from ``path``."""

    path: Path
    dates: list[str]
    values: np.ndarray
    columns: list[str]


FLOAT32_MAX = float(np.finfo(np.float32).max)
TIME_COLUMN_WORDS = ("date", "time", "stamp", "ds", "index", "step")


def _time_column_name(name: str) -> bool:
    """A header that names a time axis (``date``, ``timestamp``, ``ds``, ``time_idx``...)."""
    lowered = name.lower()
    return lowered in ("t", "ds") or any(w in lowered for w in TIME_COLUMN_WORDS if len(w) > 2)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_series_csv(path: str | os.PathLike[str], columns: list[str] | None = None) -> SeriesTable:
    """Read a ``date, channel1, channel2, ...`` CSV file (``columns``: keep only these channels).

    Raises :class:`DatasetError` naming the file and line for: no such file, a header without
    a date column and at least one channel, a requested column that is not there, a row with
    more or fewer fields than the header, a field that is not a number, an empty field, NaN or
    infinity, fewer than two data rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError.about(path, None, "no such file", fix="pass the path of a CSV file")
    with reading(path, "a CSV: a header date,channel1,..., then one row per time step"):
        return _read_series_csv(path, columns)


def _read_series_csv(path: Path, columns: list[str] | None) -> SeriesTable:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError.about(
                path, None, "line 1: the file is empty", "a header row: date,channel1,..."
            ) from None
        header = [h.strip() for h in header]
        if len(header) < 2 or _looks_numeric(header[0]):
            raise DatasetError.about(
                path,
                None,
                f"line 1: header {header[:4]} is not 'date, channel1, ...'",
                "a header row whose first column is the timestamp and the rest channel names",
                "add a header row such as date,HUFL,OT",
            )
        channel_names = header[1:]
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            where = [i + 1 for i, c in enumerate(header) if c == repeated[0]]
            raise DatasetError.about(
                path,
                repeated[0],
                f"line 1: the header names column {repeated[0]!r} {len(where)} times (columns "
                f"{where})",
                "one column per name",
                "rename or remove the repeated column",
            )
        if columns is not None:
            missing = [c for c in columns if c not in channel_names]
            if missing:
                raise DatasetError.about(
                    path,
                    None,
                    f"line 1: column(s) {missing} not in the header",
                    f"one of {channel_names}",
                    "check --columns against the header",
                )
            keep = [channel_names.index(c) for c in columns]
        else:
            keep = list(range(len(channel_names)))
        dates: list[str] = []
        rows: list[list[float]] = []
        width = len(header)
        time_named = _time_column_name(header[0])
        for line_no, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != width:
                raise DatasetError.about(
                    path,
                    None,
                    f"line {line_no}: {len(row)} fields, but the header has {width}",
                    f"{width} comma-separated fields per row",
                    "fix the ragged row (a missing or extra comma)",
                )
            numbers = []
            for j in keep:
                text = row[j + 1].strip()
                name = channel_names[j]
                if not text:
                    raise DatasetError.about(
                        path,
                        name,
                        f"line {line_no}: empty field",
                        "a number",
                        "fill or interpolate the missing value",
                    )
                try:
                    value = float(text)
                except ValueError:
                    raise DatasetError.about(
                        path,
                        name,
                        f"line {line_no}: {text[:40]!r} is not a number",
                        "a number",
                        "remove the text or the column",
                    ) from None
                if not math.isfinite(value):
                    raise DatasetError.about(
                        path,
                        name,
                        f"line {line_no}: {text!r} (NaN or infinity)",
                        "a finite number",
                        "fill or interpolate the missing value",
                    )
                if abs(value) > FLOAT32_MAX:
                    raise DatasetError.about(
                        path,
                        name,
                        f"line {line_no}: {text[:40]!r} overflows float32 (largest "
                        f"{FLOAT32_MAX:.4g}), the type series are trained in",
                        "values within float32's range",
                        "rescale the column (or fix the value)",
                    )
                numbers.append(value)
            if not dates and not time_named and _looks_numeric(row[0].strip()):
                raise DatasetError.about(
                    path,
                    header[0],
                    f"line {line_no}: the first column {header[0]!r} holds a number "
                    f"({row[0].strip()[:20]!r}), not a timestamp: the file seems to have no "
                    "date column, and its first channel would be read as the time",
                    "a first column of timestamps (e.g. 2016-07-01 00:00:00), then the channels",
                    "add a date column first; a numeric time column must be named date, time, "
                    "timestamp, step or index",
                )
            dates.append(row[0].strip())
            rows.append(numbers)
    if len(rows) < 2:
        raise DatasetError.about(
            path, None, f"line {len(rows) + 1}: only {len(rows)} data row(s)", "a longer series"
        )
    values = np.asarray(rows, dtype=np.float32)
    return SeriesTable(path, dates, values, [channel_names[j] for j in keep])


def split_kind(path: str | os.PathLike[str], split: str = "auto") -> str:
    """``auto`` -> ``ett-hour`` for ETTh* files, ``ett-minute`` for ETTm*, else ``ratio``
    (the file name's case is ignored: ``etth2.csv`` is an ETT hourly file)."""
    return split_choice(path, split)[0]


def split_choice(path: str | os.PathLike[str], split: str = "auto") -> tuple[str, str]:
    """The split kind and how it was chosen (a sentence for ``results.json``)."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: expected one of {SPLITS}")
    if split != "auto":
        return split, f"--split {split}"
    name = Path(path).name
    lowered = name.lower()
    if lowered.startswith("etth"):
        return "ett-hour", f"--split auto: the file name {name!r} starts with ETTh (any case)"
    if lowered.startswith("ettm"):
        return "ett-minute", f"--split auto: the file name {name!r} starts with ETTm (any case)"
    return "ratio", f"--split auto: the file name {name!r} is not an ETT one (ETTh*, ETTm*)"


def split_borders(n_rows: int, input_len: int, kind: str) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of train, val and test (val and test start ``input_len``
    rows before their first target, as in Time-Series-Library).

    ``ett-hour``: 12/4/4 months of 30 days (8640/2880/2880 rows); ``ett-minute``: the same at
    4 rows an hour; ``ratio``: 70% / the rest / 20%.
    """
    if kind in ("ett-hour", "ett-minute"):
        month = ETT_MONTH_HOURS * (4 if kind == "ett-minute" else 1)
        train_end, val_end, test_end = 12 * month, 16 * month, 20 * month
        test_end = min(test_end, n_rows)
    elif kind == "ratio":
        train_end = int(n_rows * 0.7)
        n_test = int(n_rows * 0.2)
        val_end = n_rows - n_test
        test_end = n_rows
    else:
        raise ValueError(f"split kind {kind!r}: expected one of {SPLITS[1:]}")
    return {
        "train": (0, train_end),
        "val": (max(0, train_end - input_len), val_end),
        "test": (max(0, val_end - input_len), test_end),
    }


class ForecastWindows:
    """Every window of a split: input ``x [input_len, C]`` and target ``y [horizon, C]``.

    Window ``i`` reads rows ``i .. i+input_len-1`` and predicts rows ``i+input_len ..
    i+input_len+horizon-1``; there are ``T - input_len - horizon + 1`` of them, all scored.
    """

    def __init__(self, values: np.ndarray, input_len: int, horizon: int) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.input_len = int(input_len)
        self.horizon = int(horizon)
        self.count = len(self.values) - self.input_len - self.horizon + 1

    def __len__(self) -> int:
        return max(0, self.count)

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """``{"x": [n, input_len, C], "y": [n, horizon, C]}`` for the windows ``index``."""
        index = np.asarray(index, dtype=np.int64)
        span = self.input_len + self.horizon
        rows = index[:, None] + np.arange(span)[None, :]
        block = self.values[rows]
        return {"x": block[:, : self.input_len], "y": block[:, self.input_len :]}


class ForecastSampler(SeededSampler):
    """Random training windows (uniform over every window), from a saveable generator."""

    def __init__(self, windows: ForecastWindows, seed: int) -> None:
        if len(windows) < 1:
            raise ValueError("the training split holds no full window")
        super().__init__(seed)
        self.windows = windows

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.windows.batch(self.rng.integers(0, len(self.windows), size=batch_size))


@dataclass
class ForecastData:
    """A CSV series split and standardised by its train split.

    ``splits``: name -> ``[T_split, C]`` standardised values; ``borders``: name -> row range
    (data rows, 0-based); ``mean``/``std``: ``[C]`` of the train split (``std`` ddof=0).
    """

    table: SeriesTable
    kind: str
    borders: dict[str, tuple[int, int]]
    splits: dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    input_len: int
    horizon: int
    split_how: str = ""

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        input_len: int,
        horizon: int,
        split: str = "auto",
        columns: list[str] | None = None,
    ) -> ForecastData:
        """Load, split and standardise; a split too short for one window is an error naming
        the file and the line where that split ends."""
        table = load_series_csv(path, columns)
        kind, how = split_choice(path, split)
        borders = split_borders(len(table.values), input_len, kind)
        need = input_len + horizon
        for name, (start, end) in borders.items():
            if end - start < need:
                raise DatasetError.about(
                    table.path,
                    None,
                    f"line {end + 1}: the {name} split (data lines {start + 2}..{end + 1}) holds "
                    f"{max(0, end - start)} rows, too short for input_len + horizon = {need}",
                    f"at least {need} rows in every split ({kind} split)",
                    "use a longer file, or a smaller --input-len/--horizon",
                )
        train = table.values[borders["train"][0] : borders["train"][1]].astype(np.float64)
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        splits = {
            name: ((table.values[s:e] - mean) / std).astype(np.float32)
            for name, (s, e) in borders.items()
        }
        return cls(
            table,
            kind,
            borders,
            splits,
            mean.astype(np.float32),
            std.astype(np.float32),
            int(input_len),
            int(horizon),
            how,
        )

    def split_record(self) -> dict[str, Any]:
        """The split for ``results.json``: kind, how it was chosen, each split's data rows
        (0-based ``[start, end)``, val and test starting ``input_len`` early)."""
        return {
            "kind": self.kind,
            "chosen": self.split_how,
            "borders": {name: list(b) for name, b in self.borders.items()},
        }

    def windows(self, name: str) -> ForecastWindows:
        return ForecastWindows(self.splits[name], self.input_len, self.horizon)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def unstandardise(self, values: np.ndarray) -> np.ndarray:
        return (values * self.std + self.mean).astype(np.float32)
