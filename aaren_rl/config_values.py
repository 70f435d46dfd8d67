"""Typed checks for settings read from YAML: agent presets, task specs and ``--set`` overrides.

YAML hands back whatever the text spells: ``1e-4`` without a dot is a *string* in YAML 1.1
(PyYAML), ``yes`` is True, ``.nan`` is a float NaN, ``[1, 2]`` a list. Each check here takes
one such value and returns it converted (``int``, ``float``, ...) or raises :class:`BadValue`
whose text says what was expected, so callers can write one line naming the file and the key:
``agent.yaml: invalid train config: lr='1e-4' (expected a number > 0; ...)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BadValue",
    "apply_checks",
    "choice",
    "integer",
    "number",
    "number_list",
    "show",
    "sorted_keys",
]


class BadValue(ValueError):
    """A setting's value does not fit; the text is what was expected (no file or key)."""


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sorted_keys(keys: Any) -> list[str]:
    """Mapping keys as sorted strings (YAML keys may be numbers, None or tuples)."""
    return sorted(str(k) for k in keys)


def _text_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f"; YAML read {value} as text: write numbers with a dot, e.g. 1.0e-4"
    return ""


def integer(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (an integral float such as ``1.0e5`` is taken as one); never a bool."""
    what = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    what += (" and" if minimum is not None else "") + (
        f" <= {maximum}" if maximum is not None else ""
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadValue(what + _text_hint(value))
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise BadValue(what)
    result = int(value)
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise BadValue(what)
    return result


def number(
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    allow_inf: bool = False,
) -> float:
    """A real number (not a bool), finite unless ``allow_inf``, within the given bounds."""
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    what = ("a number" if allow_inf else "a finite number") + (
        " " + " and ".join(parts) if parts else ""
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadValue(what + _text_hint(value))
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float's range
        raise BadValue(what) from None
    if math.isnan(result) or (math.isinf(result) and not allow_inf):
        raise BadValue(what)
    if (
        (minimum is not None and result < minimum)
        or (above is not None and not result > above)
        or (below is not None and not result < below)
        or (maximum is not None and result > maximum)
    ):
        raise BadValue(what)
    return result


def number_list(
    value: Any, *, length: int | None = None, allow_empty: bool = False, **bounds: Any
) -> list[float]:
    """A list of numbers (each checked by :func:`number` with ``bounds``)."""
    count = f"{length} " if length is not None else ""
    what = f"a list of {count}finite numbers"
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise BadValue(what)
    if (length is not None and len(value) != length) or (not value and not allow_empty):
        raise BadValue(what)
    try:
        return [number(v, **bounds) for v in value]
    except BadValue as exc:
        raise BadValue(f"{what}, each {exc}") from None


def choice(value: Any, options: Sequence[str]) -> str:
    """One of ``options`` (strings)."""
    if not isinstance(value, str) or value not in options:
        raise BadValue(f"one of {tuple(options)}")
    return value


def apply_checks(obj: Any, checks: dict[str, Callable[[Any], Any]]) -> list[str]:
    """Run ``checks[name](obj.name)`` for every name, store the converted value on ``obj`` and
    return the problems as ``name=VALUE (expected ...)`` strings (empty: all fine)."""
    problems = []
    for name, check in checks.items():
        value = getattr(obj, name)
        try:
            setattr(obj, name, check(value))
        except BadValue as exc:
            problems.append(f"{name}={show(value)} (expected {exc})")
    return problems
