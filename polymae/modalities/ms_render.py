"""Renders of multispectral chips: true- and false-colour composites by STAC common name, each row
original | visible | reconstruction, each band stretched over the original's 2nd–98th percentile of
valid tokens; hidden tokens grey, invalid tokens black."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polymae.modalities.sensors import Sensor
from polymae.ops import panel_column, panel_row, unpatchify
from polymae.tokenizer.stream import TokenStream

RENDER_SIDE = 192  # px a render panel is scaled up to (at least), so 10 m and 20 m panels match
HIDDEN_GREY, NO_DATA = 128, 0
# Composites by STAC common name; the first band name present of each tuple is used.
COMPOSITES = (
    (("red",), ("green",), ("blue",)),  # true colour
    (("nir", "nir08"), ("red",), ("green",)),  # false colour, NIR
    (("swir22",), ("swir16",), ("nir08", "nir")),  # false colour, SWIR
)


def composites(sensor: Sensor, group: Sequence[str]) -> list[tuple[int, int, int]]:
    """Band indexes (into ``group``) of the composites the group can show, by the sensor's common
    names; else its first three bands (repeated if fewer)."""
    common = [sensor.band(b).common_name for b in group]
    found = []
    for composite in COMPOSITES:
        picks = [next((common.index(n) for n in names if n in common), None) for names in composite]
        if None not in picks:
            found.append(tuple(picks))
    return found or [tuple(i % len(group) for i in range(3))]  # type: ignore[list-item]


def render_chip(stream: TokenStream, values: np.ndarray, pred: np.ndarray, p: int, g: int, nb: int,
                rgb_bands: list[tuple[int, int, int]]) -> np.ndarray:
    """original | visible | reconstruction of one chip of g × g tokens of p² · nb values (``pred``
    in value space: hidden tokens predicted, visible ones pasted), one row per composite."""
    vis = stream.visible[:, None]

    def image(v: np.ndarray) -> np.ndarray:
        return unpatchify(v, p, g, g, channels=nb)

    def per_pixel(flags: np.ndarray) -> np.ndarray:
        return image(np.repeat(flags[:, None], p * p * nb, axis=1).astype(np.float32))[..., 0] > 0.5

    original, recon = image(values), image(np.where(vis, values, pred))
    ok, shown = per_pixel(stream.valid), per_pixel(stream.visible & stream.valid)
    up = max(1, RENDER_SIDE // (p * g))
    rows = []
    for bands in rgb_bands:
        idx = list(bands)
        sample = original[ok][:, idx] if ok.any() else original.reshape(-1, nb)[:, idx]
        lo, hi = np.percentile(sample, 2, axis=0), np.percentile(sample, 98, axis=0)

        def rgb(img: np.ndarray, keep: np.ndarray, grey: np.ndarray | None = None,
                idx: list[int] = idx, lo: np.ndarray = lo, hi: np.ndarray = hi) -> np.ndarray:
            out = (np.clip((img[..., idx] - lo) / np.maximum(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)
            out[~keep] = NO_DATA
            if grey is not None:
                out[grey] = HIDDEN_GREY
            return out.repeat(up, axis=0).repeat(up, axis=1)

        rows.append(panel_row([rgb(original, ok), rgb(original, ok, ok & ~shown), rgb(recon, ok)]))
    return panel_column(rows)
