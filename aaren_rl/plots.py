"""Shared touches for every figure: plain-number ticks on log axes, one legend for twin axes.

matplotlib labels a log axis ``10^-2, 10^0, 10^2`` and leaves the ticks between decades bare, so
a reader cannot read 55 µs off it; :func:`readable_log_axes` labels ticks with plain numbers
(``0.05``, ``1``, ``2,000``). A line drawn on a ``twinx`` axis is missing from the legend of the
axis it shares; :func:`legend_with_twins` puts every line of both in one legend.
"""

from __future__ import annotations

import math
from typing import Any


def plain_number(value: float, _position: Any = None) -> str:
    """``0.05``, ``1``, ``2,000``: a tick label without powers of ten."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else ""
    if abs(value) >= 1:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}"
    digits = max(0, -math.floor(math.log10(abs(value)))) + 2
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def readable_log_axes(ax: Any) -> None:
    """Label the log-scaled axes of ``ax`` with plain numbers (call after plotting).

    Decades get labels; the 2x and 5x ticks between them are labelled too where the axis spans
    less than two decades, so a short axis still has numbers to read.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, lims in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        axis.set_major_formatter(FuncFormatter(plain_number))
        low, high = sorted(lims)
        span = math.log10(high / low) if low > 0 else math.inf
        if span < 2:
            axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            axis.set_minor_formatter(FuncFormatter(plain_number))
        else:
            axis.set_minor_formatter(NullFormatter())


def legend_with_twins(ax: Any, *twins: Any, **kwargs: Any) -> Any:
    """One legend on ``ax`` holding the labelled lines of ``ax`` and of its twin axes."""
    handles, labels = ax.get_legend_handles_labels()
    for twin in twins:
        h, labels_twin = twin.get_legend_handles_labels()
        handles += h
        labels += labels_twin
    return ax.legend(handles, labels, **kwargs)


def backbone_label(model: Any) -> str:
    """``"Aaren"`` or ``"Transformer"``: the backbone a head model runs on, for figure titles."""
    name = type(getattr(model, "backbone", model)).__name__
    return name.removesuffix("Backbone") or name
