"""The one colour map of the renders (spectrograms, point depth, LiDAR height)."""

from __future__ import annotations

import numpy as np

VIRIDIS_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def viridis(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape S; clipped) → (S, 3) uint8, a five-stop viridis ramp."""
    scaled = np.clip(x, 0.0, 1.0) * (len(VIRIDIS_STOPS) - 1)
    stops = np.arange(len(VIRIDIS_STOPS))
    rgb = [np.interp(scaled, stops, VIRIDIS_STOPS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)
