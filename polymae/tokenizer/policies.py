"""Cross-stream mask policies: how many tokens of each stream of a sample the encoder sees.

A strategy (``masking.py``) groups one stream's tokens and keeps a given number of groups; the
policy decides that number for every stream of the sample, side by side in one registry:

- ``independent`` (SatMAE, CAV-MAE): each stream keeps ⌊G·(1−ratio)⌋ of its G groups.
- ``budget`` (MultiMAE): one visible budget per sample (``visible`` groups; default the sum of
  what each present stream's ratio keeps) split across the streams by λ ~ Dirichlet(α), exact for every
  sample after rounding; a stream with fewer groups than its share is capped and the rest goes
  to the others. MultiMAE's own code rounds over the whole batch, so its counts are exact only
  at batch size 1.
- ``aligned``: streams that share axes (one spatial ``frame``: y, x; one ``clock``: t) hide the
  same spans — the same seconds of a clip's video and audio, the same ground of co-registered
  rasters. The shared axes are cut into cells at the coarsest stream's resolution, ⌊C·(1−ratio)⌋
  of the C cells stay visible (the group's first stream's ratio) and a token is visible where its
  cell is. Streams in no group are masked independently.

A stream with ratio 1.0 is fully hidden under every policy (predicted from the others).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from polymae.tokenizer.axes import Axis, cell_fraction
from polymae.tokenizer.masking import MaskSpec, get_strategy, num_visible, sample_rng, without_queries
from polymae.tokenizer.stream import TokenStream

Streams = dict[str, TokenStream]
PolicyFn = Callable[["MaskPolicy", Streams, np.random.Generator], dict[str, np.ndarray]]
_POLICIES: dict[str, PolicyFn] = {}
# the axes that streams sharing a frame or a clock line up on
SHARED_AXES = {"frame": ("y", "x"), "clock": ("t",)}


def register_policy(name: str) -> Callable[[PolicyFn], PolicyFn]:
    def add(fn: PolicyFn) -> PolicyFn:
        _POLICIES[name] = fn
        return fn

    return add


def available_policies() -> list[str]:
    return sorted(_POLICIES)


class MaskPolicy:
    """Marks ``visible`` (and ``decoded``) on every stream of a sample.

    ``specs``: stream → MaskSpec (strategy and ratio). ``policy``: a registered policy name.
    ``alpha``: the budget's Dirichlet concentration (one number, or per stream; default 1, MultiMAE's).
    ``visible``: the budget's visible groups per sample (None: Σ of each stream's ratio count).
    ``shared``: groups of streams that share axes, as (streams in spec order, axis names).
    """

    def __init__(self, specs: dict[str, MaskSpec], seed: int = 0, policy: str = "independent",
                 alpha: float | dict[str, float] = 1.0, visible: int | None = None,
                 shared: list[tuple[tuple[str, ...], tuple[str, ...]]] | None = None) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"unknown mask policy {policy!r}; allowed: {', '.join(available_policies())}")
        self.specs, self.seed, self.policy = specs, seed, policy
        self.alpha, self.visible, self.shared = alpha, visible, list(shared or [])

    def spec(self, stream: str) -> MaskSpec:
        return self.specs.get(stream, MaskSpec())

    def __call__(self, sample: Streams, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Visible flags per stream. Query tokens (``unit < 0``: positions a plugin asks the decoder
        about, such as LiDAR's empty pillars) are never visible and the counts leave them out."""
        streams = {name: without_queries(sample[name]) for name in sorted(sample)}  # sorted: fixed draw order
        return _POLICIES[self.policy](self, streams, rng)

    def decoder_masks(self, sample: Streams, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Decoded flags per stream: the decoder strategy's kept tokens, or every valid one."""
        out: dict[str, np.ndarray] = {}
        for name in sorted(sample):
            spec, stream = self.spec(name), sample[name]
            if spec.decoder_strategy is None:
                out[name] = stream.valid.copy()
            else:
                decoder_spec = MaskSpec(strategy=spec.decoder_strategy, ratio=spec.decoder_ratio)
                kept = get_strategy(spec.decoder_strategy)(without_queries(stream), decoder_spec, rng)
                out[name] = (kept | (stream.unit < 0)) & stream.valid  # queries are always decoded
        return out

    def apply(self, sample: Streams, sample_id: str, epoch: int) -> None:
        """Set ``visible`` and ``decoded`` in place with generators of (seed, sample id, epoch)."""
        rng = sample_rng(self.seed, sample_id, epoch, "mask")
        for name, visible in self(sample, rng).items():
            sample[name].visible = visible
        rng = sample_rng(self.seed, sample_id, epoch, "decoder-mask")  # own stream: never shifts the above
        for name, decoded in self.decoder_masks(sample, rng).items():
            sample[name].decoded = decoded

    def describe(self) -> dict[str, Any]:
        return {"policy": self.policy, "alpha": self.alpha, "visible": self.visible,
                "streams": {name: spec.model_dump() for name, spec in self.specs.items()}}


def _hidden(stream: TokenStream) -> np.ndarray:
    return np.zeros(stream.num_tokens, dtype=bool)


@register_policy("independent")
def independent(policy: MaskPolicy, streams: Streams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each stream by its own strategy and ratio."""
    return {name: get_strategy(policy.spec(name).strategy)(stream, policy.spec(name), rng)
            for name, stream in streams.items()}


def split_budget(budget: int, shares: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Integer counts summing to min(budget, Σcaps), proportional to ``shares``, none above its cap.

    Water-filling: a stream whose share exceeds its cap gets the cap and the rest is shared among
    the others in proportion; then floors, and the units left go to the largest remainders.
    """
    caps = np.asarray(caps, dtype=np.int64)
    budget = int(min(budget, caps.sum()))
    exact = np.zeros(len(caps))
    free = caps > 0
    while free.any():
        weights = np.where(free, shares, 0.0)
        rest = budget - caps[~free & (caps > 0)].sum()
        part = rest * weights / weights.sum() if weights.sum() > 0 else rest * free / free.sum()
        over = free & (part >= caps)
        if not over.any():
            exact[free] = part[free]
            break
        exact[over] = caps[over]
        free &= ~over
    counts = np.minimum(np.floor(exact + 1e-9).astype(np.int64), caps)
    for i in np.argsort(-(exact - counts), kind="stable"):
        if counts.sum() >= budget:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
    return counts


@register_policy("budget")
def budget(policy: MaskPolicy, streams: Streams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MultiMAE: λ ~ Dirichlet(α) over the streams that can be seen, one exact budget split by λ."""
    names = [n for n, s in streams.items() if policy.spec(n).ratio < 1.0 and s.valid.any()]
    strategies = {n: get_strategy(policy.spec(n).strategy) for n in streams}
    caps = np.array([strategies[n].num_groups(streams[n], policy.spec(n)) for n in names], dtype=np.int64)
    total = policy.visible
    if total is None:
        total = sum(num_visible(int(c), policy.spec(n).ratio) for n, c in zip(names, caps, strict=True))
    keep = dict.fromkeys(streams, 0)
    if names:
        alpha = policy.alpha
        concentration = [float(alpha.get(n, 1.0) if isinstance(alpha, dict) else alpha) for n in names]
        shares = rng.dirichlet(concentration)
        keep.update(zip(names, split_budget(int(total), shares, caps).tolist(), strict=True))
    return {n: strategies[n](s, policy.spec(n), rng, keep[n]) for n, s in streams.items()}


def shared_cells(streams: Streams, names: tuple[str, ...], axes: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int]:
    """Each stream's tokens → one cell index on the shared ``axes``, cut at the coarsest stream's
    resolution (cells are fractions of each axis: a clip's seconds, a crop's extent) → (cells, C)."""
    sizes = [min(streams[n].axis(a).size for n in names) for a in axes]
    out = {}
    for name in names:
        stream, index = streams[name], np.zeros(streams[name].num_tokens, dtype=np.int64)
        for a, size in zip(axes, sizes, strict=True):
            axis: Axis = stream.axis(a)
            index = index * size + np.minimum((cell_fraction(stream.coord(a), axis) * size).astype(np.int64), size - 1)
        out[name] = index
    return out, int(np.prod(sizes))


@register_policy("aligned")
def aligned(policy: MaskPolicy, streams: Streams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Streams of one frame or clock see the same cells of their shared axes; the rest independently."""
    out: dict[str, np.ndarray] = {}
    for names, axes in policy.shared:
        present = tuple(n for n in names if n in streams and streams[n].valid.any())
        if not present:
            continue
        cell, num_cells = shared_cells(streams, present, axes)
        lead = policy.spec(present[0])
        kept = np.argsort(rng.random(num_cells), kind="stable")[: num_visible(num_cells, lead.ratio)]
        for name in present:
            seen = policy.spec(name).ratio < 1.0
            out[name] = np.isin(cell[name], kept) & streams[name].valid & seen
    rest = {n: s for n, s in streams.items() if n not in out}
    for name, stream in rest.items():
        out[name] = _hidden(stream) if not stream.valid.any() else \
            get_strategy(policy.spec(name).strategy)(stream, policy.spec(name), rng)
    return {name: out[name] for name in streams}
