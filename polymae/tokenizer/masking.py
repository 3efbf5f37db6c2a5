"""Mask strategies: how one stream's tokens group into masking units and which stay visible.

Strategies sit side by side in one registry. Each reads coordinates by axis name (declaring the
axes it needs, so a spec that asks for one on a stream without them is refused before anything
runs), groups the tokens (a patch, a tube, a time step, a sector) and keeps a given number of
groups visible. How many each stream keeps is the policy's decision (``policies.py``: each
stream its own ratio, one budget split across streams, or the same spans on shared axes).

Masks are made in the data pipeline and seeded by (run seed, sample id, epoch), so a mask
is the same whichever Ray worker makes it and a run is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polymae.tokenizer.axes import Axis, Needs, describe_axes, needs_any, needs_grid, needs_metric, needs_nothing
from polymae.tokenizer.stream import TokenStream

GroupFn = Callable[[TokenStream, "MaskSpec"], np.ndarray]
ChooseFn = Callable[[TokenStream, "MaskSpec", np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """A mask strategy: how a stream's tokens group into masking units, and which ``keep`` of
    them stay visible. The policy decides ``keep`` (today's single-stream runs: from the ratio).

    ``groups(stream, spec)`` → (N,) int64 group of each token (−1: never visible); ``choose(stream,
    spec, rng, keep)`` → (N,) visible flags with exactly ``keep`` whole groups visible. ``needs``
    says which axes the strategy reads (None: it fits). ``counted`` False: the strategy fixes its
    own count from the ratio (a running cell), so only the ``independent`` policy can use it.
    """

    name: str
    choose: ChooseFn
    groups: GroupFn
    needs: Needs = needs_nothing
    counted: bool = True
    default_keep: Callable[[TokenStream, MaskSpec], int] | None = None  # None: ⌊G·(1−ratio)⌋

    def num_groups(self, stream: TokenStream, spec: MaskSpec) -> int:
        group = self.groups(stream, spec)
        return len(np.unique(group[group >= 0]))

    def __call__(self, stream: TokenStream, spec: MaskSpec, rng: np.random.Generator,
                 keep: int | None = None) -> np.ndarray:
        """Visible flags; ``keep`` None: ⌊G·(1−ratio)⌋ of the G groups, as MAE."""
        missing = self.needs(stream.axes)
        if missing is not None:  # validation refuses such specs; this guards direct callers
            raise ValueError(strategy_problem(self.name, stream.axes))
        if keep is None and self.default_keep is not None:
            keep = self.default_keep(stream, spec)
        elif keep is None:
            keep = num_visible(self.num_groups(stream, spec), spec.ratio)
        return self.choose(stream, spec, rng, int(keep)) & stream.valid


_STRATEGIES: dict[str, Strategy] = {}


def by_unit(stream: TokenStream, spec: MaskSpec) -> np.ndarray:
    """The plugin's own masking units (a tubelet, a point group, a band group's patch)."""
    return np.where(stream.valid, stream.unit, -1).astype(np.int64)


def register_strategy(name: str, needs: Needs = needs_nothing, groups: GroupFn = by_unit,
                      counted: bool = True, default_keep: Callable[[TokenStream, MaskSpec], int] | None = None,
                      ) -> Callable[[ChooseFn], ChooseFn]:
    """Decorator: make a mask strategy available to pipeline specs under ``name``."""

    def add(fn: ChooseFn) -> ChooseFn:
        _STRATEGIES[name] = Strategy(name, fn, groups, needs, counted, default_keep)
        return fn

    return add


def get_strategy(name: str) -> Strategy:
    return _STRATEGIES[name]


def available_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def strategy_problem(name: str, axes: tuple[Axis, ...]) -> str | None:
    """Why strategy ``name`` cannot mask a stream with these axes, or None."""
    missing = _STRATEGIES[name].needs(axes)
    if missing is None:
        return None
    fits = [n for n, s in sorted(_STRATEGIES.items()) if s.needs(axes) is None]
    return (f"mask strategy {name!r} needs {missing}; the stream has {describe_axes(axes)}; "
            f"allowed for it: {', '.join(fits)}")


class MaskSpec(BaseModel):
    """How one stream is masked. ``ratio`` is the fraction of units hidden from the encoder
    (1.0: the stream is fully hidden, e.g. predicted from the other streams alone)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = "random"
    ratio: float = Field(0.75, ge=0.0, le=1.0)
    # block (BEiT): smallest block in units, aspect-ratio range of each block
    min_block: int = Field(4, ge=1)
    max_aspect: float = Field(3.0, ge=1.0)
    # radial (R-MAE): width of the angular sectors around the sensor
    sector_degrees: float = Field(1.0, gt=0.0, le=360.0)
    # VideoMAE V2 dual masking: which of the hidden tokens the decoder sees and reconstructs
    decoder_strategy: str | None = Field(None, description="e.g. running_cell; None: the decoder sees all")
    decoder_ratio: float = Field(0.5, ge=0.0, lt=1.0, description="fraction the decoder drops")

    @field_validator("strategy", "decoder_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        if value is not None and value not in _STRATEGIES:
            raise ValueError(
                f"unknown mask strategy {value!r}; allowed: {', '.join(available_strategies())}"
            )
        return value


    @model_validator(mode="after")
    def _running_cell_ratio(self) -> MaskSpec:
        for name, strategy, ratio in (("ratio", self.strategy, self.ratio),
                                      ("decoder_ratio", self.decoder_strategy, self.decoder_ratio)):
            if strategy == "running_cell" and not 0 < int(4 * ratio) < 4:
                raise ValueError(f"{name} {ratio}: running_cell drops ⌊4·ratio⌋ of each 2×2 cell, "
                                 f"so it needs 0.25 ≤ ratio < 1")
        return self


def num_visible(num_units: int, ratio: float) -> int:
    """⌊N·(1−ratio)⌋ as MAE's ``int(L * (1 - mask_ratio))``; the epsilon absorbs float error."""
    return int(np.floor(num_units * (1.0 - ratio) + 1e-9))


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sample_rng(seed: int, sample_id: str, epoch: int, purpose: str) -> np.random.Generator:
    """A generator fixed by (run seed, sample id, epoch, purpose), independent of the worker.

    ``purpose`` separates streams (``"mask"``, ``"augment"``) so that changing one never shifts
    the other.
    """
    key = [int(seed), _stable_int(sample_id), int(epoch), _stable_int(purpose)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _keep_groups(group: np.ndarray, rng: np.random.Generator, keep: int) -> np.ndarray:
    """Keep ``keep`` of the groups present (chosen by argsort of uniform noise, as MAE)."""
    groups = np.unique(group[group >= 0])
    kept = groups[np.argsort(rng.random(len(groups)), kind="stable")[:keep]]
    return np.isin(group, kept) & (group >= 0)


@register_strategy("random")
def random_units(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """MAE: keep ``keep`` (⌊U·(1−ratio)⌋) of the U valid units, chosen by argsort of uniform noise.

    Tokens that share a unit (a tube, a band group) are kept or hidden together.
    """
    return _keep_groups(by_unit(stream, spec), rng, keep)


def _plane(stream: TokenStream) -> tuple[str, str]:
    """The 2D grid a block or tube lies on: (y, x) where the stream has them, else its two grid
    axes (a spectrogram's t, f)."""
    names = [a.name for a in stream.axes if a.grid]
    return ("y", "x") if {"y", "x"} <= set(names) else (names[0], names[1])


def _two_grid_axes(axes: tuple[Axis, ...]) -> str | None:
    return None if sum(a.grid for a in axes) >= 2 else "two grid axes"


def _cell(stream: TokenStream) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The 2D grid cell (row, col) of every token on :func:`_plane`, and the grid's size."""
    a, b = _plane(stream)
    rows, cols = (np.rint(stream.coord(n)).astype(np.int64) for n in (a, b))
    return rows, cols, stream.axis(a).size, stream.axis(b).size


def cells(stream: TokenStream, spec: MaskSpec) -> np.ndarray:
    """Group = 2D grid cell: tokens stacked on one cell (a video's time slices) share its fate."""
    rows, cols, _, width = _cell(stream)
    return np.where(stream.valid, rows * width + cols, -1)


def _block_groups(stream: TokenStream, spec: MaskSpec) -> np.ndarray:
    return cells(stream, spec) if _two_grid_axes(stream.axes) is None else by_unit(stream, spec)


_BLOCK_NEEDS = needs_any(needs_grid("y", "x"), _two_grid_axes, needs_metric("x", "y"))


@register_strategy("block", needs=_BLOCK_NEEDS, groups=_block_groups)
def blockwise(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """Contiguous blocks: BEiT rectangles on a grid; on metric axes (point clouds) Point-MAE's
    nearest-centre neighbourhood instead (:func:`nearest_block`). Both keep exactly ``keep`` groups.

    On a grid: BEiT blockwise masking on the 2D cells (:func:`_plane`), then topped up to the
    exact count. Rectangles of random area (≥ ``min_block`` cells) and aspect ratio in
    [1/max_aspect, max_aspect] are hidden until ``cells − keep`` cells are masked. BEiT stops
    early when no rectangle fits; we top up with random cells instead, so every sample keeps
    exactly ``keep`` visible cells, as ``random`` does (the encoder then needs no padding).
    Tokens stacked on one cell (video time slices) share its fate.
    """
    if _two_grid_axes(stream.axes) is not None:
        return nearest_block(stream, spec, rng, keep)
    ys, xs, height, width = _cell(stream)
    num_cells = height * width
    target = num_cells - keep
    masked = np.zeros((height, width), dtype=bool)
    log_aspect = np.log(spec.max_aspect)
    while masked.sum() < target:
        budget = target - int(masked.sum())
        placed = False
        for _ in range(10):
            area = rng.uniform(min(spec.min_block, budget), budget)
            aspect = np.exp(rng.uniform(-log_aspect, log_aspect))
            h = int(round(np.sqrt(area * aspect)))
            w = int(round(np.sqrt(area / aspect)))
            if not (0 < h < height and 0 < w < width):
                continue
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            new = int((~masked[top : top + h, left : left + w]).sum())
            if 0 < new <= budget:
                masked[top : top + h, left : left + w] = True
                placed = True
                break
        if not placed:
            break
    shortfall = target - int(masked.sum())
    if shortfall > 0:
        free = np.flatnonzero(~masked.ravel())
        masked.ravel()[rng.choice(free, size=shortfall, replace=False)] = True
    return ~masked[ys, xs]


def _tube_keep(stream: TokenStream, spec: MaskSpec) -> int:
    """VideoMAE hides ⌊ratio·HW⌋ cells (keeps 20 of 196 at 90 %, where MAE's floor keeps 19)."""
    n = len(np.unique(cells(stream, spec)[stream.valid]))
    return n - int(np.floor(spec.ratio * n + 1e-9))


@register_strategy("tube", needs=needs_any(needs_grid("y", "x"), _two_grid_axes), groups=cells,
                   default_keep=_tube_keep)
def tube(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """VideoMAE: one random 2D mask over the (y, x) cells, repeated over every time slice.

    As VideoMAE's ``TubeMaskingGenerator``, ⌊ratio·HW⌋ cells are hidden, so HW − ⌊ratio·HW⌋
    stay visible in each slice (20 of 196 at 90 %): ``keep`` defaults to that count here.
    """
    return _keep_groups(cells(stream, spec), rng, keep)


@register_strategy("running_cell", needs=needs_grid("t", "y", "x"), groups=cells, counted=False)
def running_cell(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """VideoMAE V2's running cell, usually the decoder mask: returns the tokens it keeps.

    A 2×2 cell holds ⌊4·ratio⌋ dropped and the rest kept positions in a fixed queue order
    (dropped first); the cell is tiled over the (y, x) grid and its queue rotates by one step
    per time slice, from a random start. Its count is fixed by the ratio (``keep`` is unused).
    """
    dropped = int(4 * spec.ratio)
    if not 0 < dropped < 4:
        raise ValueError(f"running_cell needs 0 < ⌊4·ratio⌋ < 4, got ratio {spec.ratio}")
    queue = np.r_[np.ones(dropped, bool), np.zeros(4 - dropped, bool)]
    ys, xs = (np.rint(stream.coord(n)).astype(np.int64) for n in ("y", "x"))
    t = np.rint(stream.coord("t")).astype(np.int64)
    start = int(rng.integers(4))
    pointer = start + t + 1  # V2 advances the cell once before its first slice
    position = (ys % 2) * 2 + xs % 2  # where a token sits in its 2×2 cell
    return ~queue[(position + pointer) % 4]


def lines_of(axis: str) -> GroupFn:
    """Group = one line of grid axis ``axis`` (a time step, a frequency band)."""

    def groups(stream: TokenStream, spec: MaskSpec) -> np.ndarray:
        return np.where(stream.valid, np.rint(stream.coord(axis)).astype(np.int64), -1)

    return groups


@register_strategy("time", needs=needs_grid("t"), groups=lines_of("t"))
def time_strips(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """AudioMAE time masking: hide whole time steps (audio and video ``t``)."""
    return _keep_groups(lines_of("t")(stream, spec), rng, keep)


@register_strategy("frequency", needs=needs_grid("f"), groups=lines_of("f"))
def frequency_strips(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """AudioMAE frequency masking: hide whole frequency bands (audio ``f``)."""
    return _keep_groups(lines_of("f")(stream, spec), rng, keep)


def nearest_block(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """Point-MAE block masking: hide one contiguous region of a point cloud.

    A random valid token's centre seeds the region; the valid tokens nearest to it (Euclidean
    distance over the metric axes, the seed itself first, ties by token order) are hidden until
    exactly ``keep`` (⌊G·(1−ratio)⌋) of the G valid tokens stay visible. Point-MAE hides
    ``int(ratio·G)`` instead (26 of 64 visible at 60 %, here 25). Works per token (Point-MAE's
    groups are one token each).
    """
    valid = np.flatnonzero(stream.valid)
    kept = np.zeros(stream.num_tokens, dtype=bool)
    if len(valid) == 0:
        return kept
    metric = [i for i, a in enumerate(stream.axes) if not a.grid]
    centres = stream.coords[valid][:, metric].astype(np.float64)
    seed = centres[int(rng.integers(len(valid)))]
    order = np.argsort(np.linalg.norm(centres - seed, axis=1), kind="stable")
    kept[valid[order[len(valid) - keep:]]] = True
    return kept


def sectors(stream: TokenStream, spec: MaskSpec) -> np.ndarray:
    """Group = angular sector of ``sector_degrees`` around the sensor (from metric x, y)."""
    angle = np.degrees(np.arctan2(stream.coord("y"), stream.coord("x"))) % 360.0
    return np.where(stream.valid, np.floor(angle / spec.sector_degrees).astype(np.int64), -1)


@register_strategy("radial", needs=needs_metric("x", "y"), groups=sectors)
def radial_sectors(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, keep: int) -> np.ndarray:
    """R-MAE radial masking: split the full circle around the sensor into sectors of
    ``sector_degrees`` and keep ``keep`` (⌊S·(1−ratio)⌋) of the S sectors that hold a valid token
    (R-MAE: 1° sectors, 80 % hidden). Angles come from the metric x, y axes, which the plugin
    gives relative to the sensor origin — not from grid indices counted from a corner (the
    reference code's bug that confines its sectors to 0–90°).
    """
    return _keep_groups(sectors(stream, spec), rng, keep)


def without_queries(stream: TokenStream) -> TokenStream:
    """The stream as the strategies see it: query tokens (unit < 0) count as padding."""
    if not (stream.unit < 0).any():
        return stream
    return TokenStream(stream.values, stream.coords, stream.unit, stream.valid & (stream.unit >= 0),
                       axes=stream.axes)
