"""Number formats of the report (the Jinja filters); None, the undefined value of a result, is a dash."""

from __future__ import annotations

import statistics
from collections.abc import Callable

DASH = "—"


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as percent: 0.9014 -> 90.14."""
    return DASH if x is None else f"{100 * x:.{digits}f}"


def pts(x: float | None) -> str:
    """A difference of fractions in percentage points, signed."""
    return DASH if x is None else f"{100 * x:+.2f}"


def sci(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:.{digits}e}"


def gen(x: float | None, digits: int = 4) -> str:
    return DASH if x is None else f"{x:.{digits}g}"


def fixed(x: float | None, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def integer(x: float | None) -> str:
    return DASH if x is None else f"{round(x):,}"


def big(x: float | None) -> str:
    """Energies and operation counts: thousands separators, 3 significant digits below 100."""
    if x is None:
        return DASH
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def times(x: float | None, digits: int = 3) -> str:
    """A factor: 54.7×."""
    return DASH if not x else f"{x:.{digits}g}×"


def code(text: object) -> str:
    return f"`{text}`"


def cell(text: object) -> str:
    """Free text in a Markdown table cell: a '|' would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def mean_std(values: list[float], fmt: Callable[[float], str]) -> str:
    """'m ± s (n = k)' over experiments (sample std), or the single value."""
    if not values:
        return "not run"
    if len(values) == 1:
        return fmt(values[0])
    spread = fmt(statistics.stdev(values)).lstrip("+")
    return f"{fmt(statistics.fmean(values))} ± {spread} (n = {len(values)})"


FILTERS = {f.__name__: f for f in (pct, pts, sci, gen, fixed, integer, big, times, code, cell)}
