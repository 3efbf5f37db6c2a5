"""Named coordinate axes: what each column of a token stream's ``coords`` measures.

A plugin declares its axes in the order of its ``coords`` columns, each with a name (``t``,
``y``, ``x``, ``f``, ``z``, ``group``), the unit of what it measures, and whether the coordinate
is a grid cell index (``size`` cells along the axis) or a metric value. Mask strategies read
coordinates by axis name and say which axes they need, so a strategy that does not fit a stream
is refused when the spec is validated; cross-stream policies line streams up on the axes they
share (a grid cell's centre as a fraction of the axis: 0 … 1 of a clip's seconds or a crop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """One coordinate axis. ``size``: cells along a grid axis; None: a metric axis."""

    name: str
    unit: str  # what a step (grid) or a value (metric) measures: "s", "px", "mel", "m", "band"
    size: int | None = None

    @property
    def grid(self) -> bool:
        return self.size is not None

    def __str__(self) -> str:
        return f"{self.name} ({self.unit}, {'grid of ' + str(self.size) if self.grid else 'metric'})"


def grid_axis(name: str, unit: str, size: int) -> Axis:
    return Axis(name, unit, int(size))


def metric_axis(name: str, unit: str = "m") -> Axis:
    return Axis(name, unit, None)


def axis_index(axes: tuple[Axis, ...], name: str) -> int:
    """The ``coords`` column of axis ``name``. Raises KeyError naming the axes there are."""
    for i, axis in enumerate(axes):
        if axis.name == name:
            return i
    raise KeyError(f"no axis {name!r}; the stream has {', '.join(a.name for a in axes) or 'no declared axes'}")


def axis_of(axes: tuple[Axis, ...], name: str) -> Axis:
    return axes[axis_index(axes, name)]


def describe_axes(axes: tuple[Axis, ...]) -> str:
    return ", ".join(map(str, axes)) or "no axes"


# --- what a strategy needs: a function of the axes → None (fits) or what is missing ---------
Needs = Callable[[tuple[Axis, ...]], "str | None"]


def needs_nothing(axes: tuple[Axis, ...]) -> str | None:
    return None


def needs_grid(*names: str) -> Needs:
    """Grid axes with these names."""

    def check(axes: tuple[Axis, ...]) -> str | None:
        have = {a.name for a in axes if a.grid}
        missing = [n for n in names if n not in have]
        return f"grid axes {', '.join(names)}" if missing else None

    return check


def needs_metric(*names: str) -> Needs:
    """Metric axes with these names."""

    def check(axes: tuple[Axis, ...]) -> str | None:
        have = {a.name for a in axes if not a.grid}
        missing = [n for n in names if n not in have]
        return f"metric axes {', '.join(names)}" if missing else None

    return check


def needs_any(*options: Needs) -> Needs:
    """Fits if any option fits."""

    def check(axes: tuple[Axis, ...]) -> str | None:
        reasons = [option(axes) for option in options]
        return None if None in reasons else " or ".join(r for r in reasons if r)

    return check


def cell_fraction(coords: np.ndarray, axis: Axis) -> np.ndarray:
    """Grid coordinates → the cell centres as fractions 0 … 1 of the axis (cell i of n: (i+½)/n)."""
    if not axis.grid:
        raise ValueError(f"axis {axis} is not a grid")
    return (np.rint(coords) + 0.5) / axis.size
