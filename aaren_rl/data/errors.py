"""The one error type of the data layer.

Every problem with a user's dataset (a missing key, arrays of different lengths, NaN, a file
that is not HDF5, a task spec with a missing field) raises :class:`DatasetError`, whose message
names the file, the key, what was expected and how to fix it. It subclasses ``ValueError`` so
callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

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
