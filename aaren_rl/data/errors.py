"""The one error type of the data layer.

Every problem with a user's dataset (a missing key, arrays of different lengths, NaN, a file
that is not HDF5, a task spec with a missing field) raises :class:`DatasetError`, whose message
names the file, the key, what was expected and how to fix it. It subclasses ``ValueError`` so
callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DatasetError(ValueError):
    """Bad or missing dataset input. The message names the file, the key, the expectation, the fix.

    Build one from parts with :meth:`about`, or pass a finished message.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.key = key
        self.fix = fix

    @classmethod
    def about(
        cls,
        file: str | Path,
        key: str | None,
        problem: str,
        expected: str | None = None,
        fix: str | None = None,
    ) -> DatasetError:
        """An error whose message reads ``FILE: key 'KEY': PROBLEM; expected EXPECTED. Fix: FIX``."""
        where = f"{file}: key {key!r}: " if key is not None else f"{file}: "
        message = where + problem
        if expected:
            message += f"; expected {expected}"
        if fix:
            message += f". Fix: {fix}"
        return cls(message, file=file, key=key, fix=fix)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] + ("..." if len(text) > 160 else "")


@contextmanager
def reading(file: str | Path, layout: str, fix: str | None = None) -> Iterator[None]:
    """Turn whatever a reader's library raises into one :class:`DatasetError` naming ``file``.

    Inside the block, the reader's own checks raise DatasetErrors with the line and key; this
    is the net under them for input they did not foresee (a truncated archive, a byte that is
    not UTF-8, an object where numbers belong), so any bytes give either a dataset or a
    DatasetError, never another exception. ``layout``: what the file should be (named in the
    message)."""
    try:
        yield
    except DatasetError:
        raise
    except UnicodeDecodeError as exc:
        line = ""
        try:
            newlines = Path(file).read_bytes()[: exc.start].count(b"\n")
            line = f"line {newlines + 1}: "
        except OSError:
            pass
        raise DatasetError.about(
            file,
            None,
            f"{line}byte {exc.object[exc.start : exc.start + 1]!r} is not UTF-8 text",
            f"UTF-8 text ({layout})",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None
    except (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        EOFError,
        OverflowError,
        AttributeError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as exc:
        raise DatasetError.about(
            file,
            None,
            f"could not be read ({type(exc).__name__}: {_short(exc)})",
            layout,
            fix or "check that the file is complete and in this layout",
        ) from None
