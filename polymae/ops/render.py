"""Picture helpers of the renders: the one colour map and white-gapped rows and columns of panels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIRIDIS_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
GAP = 4  # pixels of white between panels


def viridis(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape S; clipped) → (S, 3) uint8, a five-stop viridis ramp
    (spectrograms, point depth, LiDAR height)."""
    scaled = np.clip(x, 0.0, 1.0) * (len(VIRIDIS_STOPS) - 1)
    stops = np.arange(len(VIRIDIS_STOPS))
    rgb = [np.interp(scaled, stops, VIRIDIS_STOPS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def panel_row(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels (H, W_i, 3) uint8 → (H, ΣW_i + gap·(n−1), 3): side by side, white gaps between."""
    return _join(panels, gap, axis=1)


def panel_column(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels (H_i, W, 3) uint8 → (ΣH_i + gap·(n−1), W, 3): top to bottom, white gaps between."""
    return _join(panels, gap, axis=0)


def _join(panels: Sequence[np.ndarray], gap: int, axis: int) -> np.ndarray:
    shape = list(panels[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [spacer, panel]
    return np.concatenate(pieces, axis=axis)
