"""Mask policies: which tokens of a (multi-modality) sample the encoder sees.

Strategies sit side by side in one registry; each takes one modality's token stream and
returns its ``visible`` flags. :class:`MaskPolicy` applies a strategy per modality to a
whole sample (a dict of modalities), so a cross-modal budget can later split one visible
budget across modalities without changing any caller.

Masks are made in the data pipeline and seeded by (run seed, sample id, epoch), so a mask
is the same whichever Ray worker makes it and a run is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polymae.tokenizer.stream import TokenStream

Strategy = Callable[[TokenStream, "MaskSpec", np.random.Generator], np.ndarray]
_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator: make a mask strategy available to pipeline specs under ``name``."""

    def add(fn: Strategy) -> Strategy:
        _STRATEGIES[name] = fn
        return fn

    return add


def available_strategies() -> list[str]:
    return sorted(_STRATEGIES)


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


@register_strategy("random")
def random_units(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """MAE: keep exactly ⌊U·(1−ratio)⌋ of the U valid units, chosen by argsort of uniform noise.

    Tokens that share a unit (a tube, a band group) are kept or hidden together.
    """
    units = np.unique(stream.unit[stream.valid])
    keep = units[np.argsort(rng.random(len(units)), kind="stable")[: num_visible(len(units), spec.ratio)]]
    return np.isin(stream.unit, keep) & stream.valid


def _grid_yx(stream: TokenStream) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The (y, x) grid cell of every token, from the last two coordinate columns."""
    yx = np.rint(stream.coords[:, -2:]).astype(np.int64)
    return yx[:, 0], yx[:, 1], int(yx[:, 0].max()) + 1, int(yx[:, 1].max()) + 1


@register_strategy("block")
def blockwise(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """Contiguous blocks: BEiT rectangles on a grid; on metric coordinates (point clouds: the
    coordinates are not all whole numbers) Point-MAE's nearest-centre neighbourhood instead
    (:func:`nearest_block`). Both keep the same exact visible count as ``random``.

    On a grid: BEiT blockwise masking on the (y, x) cells, then topped up to the exact count.

    Rectangles of random area (≥ ``min_block`` cells) and aspect ratio in
    [1/max_aspect, max_aspect] are hidden until ⌊HW·ratio⌋-ish cells are masked. BEiT stops
    early when no rectangle fits; we top up with random cells instead, so every sample keeps
    exactly ⌊HW·(1−ratio)⌋ visible cells, as ``random`` does (the encoder then needs no padding).
    Tokens stacked on one cell (video time slices) share its fate.
    """
    if not np.array_equal(stream.coords, np.rint(stream.coords)):
        return nearest_block(stream, spec, rng)
    ys, xs, height, width = _grid_yx(stream)
    cells = height * width
    target = cells - num_visible(cells, spec.ratio)
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
    return ~masked[ys, xs] & stream.valid


@register_strategy("tube")
def tube(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE: one random 2D mask over the (y, x) cells, repeated over every time slice.

    As VideoMAE's ``TubeMaskingGenerator``, ⌊ratio·HW⌋ cells are hidden, so HW − ⌊ratio·HW⌋
    stay visible in each slice (20 of 196 at 90 %).
    """
    ys, xs, _, width = _grid_yx(stream)
    cell = ys * width + xs
    cells = np.unique(cell[stream.valid])
    hidden = int(np.floor(spec.ratio * len(cells) + 1e-9))
    keep = cells[np.argsort(rng.random(len(cells)), kind="stable")[: len(cells) - hidden]]
    return np.isin(cell, keep) & stream.valid


@register_strategy("running_cell")
def running_cell(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE V2's running cell, usually the decoder mask: returns the tokens it keeps.

    A 2×2 cell holds ⌊4·ratio⌋ dropped and the rest kept positions in a fixed queue order
    (dropped first); the cell is tiled over the (y, x) grid and its queue rotates by one step
    per time slice, from a random start. Time slices are coordinate column 0.
    """
    dropped = int(4 * spec.ratio)
    if not 0 < dropped < 4:
        raise ValueError(f"running_cell needs 0 < ⌊4·ratio⌋ < 4, got ratio {spec.ratio}")
    queue = np.r_[np.ones(dropped, bool), np.zeros(4 - dropped, bool)]
    ys, xs, _, _ = _grid_yx(stream)
    t = np.rint(stream.coords[:, 0]).astype(np.int64)
    start = int(rng.integers(4))
    pointer = start + t + 1  # V2 advances the cell once before its first slice
    position = (ys % 2) * 2 + xs % 2  # where a token sits in its 2×2 cell
    return ~queue[(position + pointer) % 4] & stream.valid


def _strips(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator, axis: int) -> np.ndarray:
    """Hide whole lines of one coordinate axis; keep ⌊L·(1−ratio)⌋ of its L values."""
    line = np.rint(stream.coords[:, axis]).astype(np.int64)
    lines = np.unique(line[stream.valid])
    keep = lines[np.argsort(rng.random(len(lines)), kind="stable")[: num_visible(len(lines), spec.ratio)]]
    return np.isin(line, keep) & stream.valid


@register_strategy("time")
def time_strips(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """AudioMAE time masking: hide whole time steps (coordinate column 0: audio and video t)."""
    return _strips(stream, spec, rng, axis=0)


@register_strategy("frequency")
def frequency_strips(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """AudioMAE frequency masking: hide whole frequency bands (the last coordinate column)."""
    return _strips(stream, spec, rng, axis=-1)


def nearest_block(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """Point-MAE block masking: hide one contiguous region of a point cloud.

    A random valid token's centre seeds the region; the valid tokens nearest to it (Euclidean
    distance of the metric ``coords``, the seed itself first, ties by token order) are hidden until
    exactly ⌊G·(1−ratio)⌋ of the G valid tokens stay visible, as ``random``. Point-MAE hides
    ``int(ratio·G)`` instead (26 of 64 visible at 60 %, here 25). Works per token (Point-MAE's
    groups are one token each).
    """
    valid = np.flatnonzero(stream.valid)
    kept = np.zeros(stream.num_tokens, dtype=bool)
    if len(valid) == 0:
        return kept
    centres = stream.coords[valid].astype(np.float64)
    seed = centres[int(rng.integers(len(valid)))]
    order = np.argsort(np.linalg.norm(centres - seed, axis=1), kind="stable")
    hidden = len(valid) - num_visible(len(valid), spec.ratio)
    kept[valid[order[hidden:]]] = True
    return kept & stream.valid


@register_strategy("radial")
def radial_sectors(stream: TokenStream, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """R-MAE radial masking: split the full circle around the sensor into sectors of
    ``sector_degrees`` and keep ⌊S·(1−ratio)⌋ of the S sectors that hold a valid token (R-MAE:
    1° sectors, 80 % hidden). Angles come from the metric x, y of the first two coordinate
    columns, which the plugin gives relative to the sensor origin — not from grid indices
    counted from a corner (the reference code's bug that confines its sectors to 0–90°).
    """
    angle = np.degrees(np.arctan2(stream.coords[:, 1], stream.coords[:, 0])) % 360.0
    sector = np.floor(angle / spec.sector_degrees).astype(np.int64)
    sectors = np.unique(sector[stream.valid])
    keep = sectors[np.argsort(rng.random(len(sectors)), kind="stable")[: num_visible(len(sectors), spec.ratio)]]
    return np.isin(sector, keep) & stream.valid


def _without_queries(stream: TokenStream) -> TokenStream:
    """The stream as the strategies see it: query tokens (unit < 0) count as padding."""
    if not (stream.unit < 0).any():
        return stream
    return TokenStream(stream.values, stream.coords, stream.unit, stream.valid & (stream.unit >= 0))


class MaskPolicy:
    """Marks ``visible`` (and ``decoded``) on every modality of a sample, one spec per modality."""

    def __init__(self, specs: dict[str, MaskSpec], seed: int = 0) -> None:
        self.specs = specs
        self.seed = seed

    def __call__(
        self, sample: dict[str, TokenStream], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Visible flags per modality. Modalities are masked independently (SatMAE, CAV-MAE).

        Query tokens (``unit < 0``: positions a plugin asks the decoder about, such as LiDAR's
        empty pillars) are never visible and the ratio counts the other tokens only."""
        out: dict[str, np.ndarray] = {}
        for name in sorted(sample):  # sorted: the draw order is fixed, so masks are reproducible
            spec, stream = self.specs.get(name, MaskSpec()), _without_queries(sample[name])
            out[name] = _STRATEGIES[spec.strategy](stream, spec, rng) & stream.valid
        return out

    def decoder_masks(
        self, sample: dict[str, TokenStream], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Decoded flags per modality: the decoder strategy's kept tokens, or every valid one."""
        out: dict[str, np.ndarray] = {}
        for name in sorted(sample):
            spec, stream = self.specs.get(name, MaskSpec()), sample[name]
            if spec.decoder_strategy is None:
                out[name] = stream.valid.copy()
            else:
                decoder_spec = MaskSpec(strategy=spec.decoder_strategy, ratio=spec.decoder_ratio)
                kept = _STRATEGIES[spec.decoder_strategy](_without_queries(stream), decoder_spec, rng)
                out[name] = (kept | (stream.unit < 0)) & stream.valid  # queries are always decoded
        return out

    def apply(self, sample: dict[str, TokenStream], sample_id: str, epoch: int) -> None:
        """Set ``visible`` and ``decoded`` in place with generators of (seed, sample id, epoch)."""
        rng = sample_rng(self.seed, sample_id, epoch, "mask")
        for name, visible in self(sample, rng).items():
            sample[name].visible = visible
        rng = sample_rng(self.seed, sample_id, epoch, "decoder-mask")  # own stream: never shifts the above
        for name, decoded in self.decoder_masks(sample, rng).items():
            sample[name].decoded = decoded

    def describe(self) -> dict[str, Any]:
        return {name: spec.model_dump() for name, spec in self.specs.items()}
