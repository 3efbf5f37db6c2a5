"""Where the chips of a scene sit, for the multispectral plugin: on the scene's token grid.

A scene of H × W pixels with patches of p pixels has a grid of ⌊H/p⌋ × ⌊W/p⌋ token cells; a chip
is k × k cells (k = chip px / p) placed at a cell. Positions are cells, and views are fractions of
the scene (:class:`~polymae.ops.crops.FrameView`), so the rasters of one scene at 10 m and 20 m
(the same grid of cells, p = 8 and 4 px) cut exactly the same ground.

- :func:`chip_grid`: the valid-pixel fraction of the chip at every position (summed-area table).
- :func:`tile_positions`: the tiling, row-major from the top-left cell every ``step`` cells; with
  step = k every pixel of the tiled part is in exactly one tile. A remainder narrower than a chip
  at the bottom and right edges is not tiled (random training positions reach it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polymae.ops.crops import FrameView


@dataclass(frozen=True)
class ChipGrid:
    """The chip positions of one scene: ``fraction[r, c]`` is the valid-pixel fraction of the chip
    whose top-left token cell is (r, c)."""

    height: int  # scene pixels
    width: int
    patch: int  # pixels per token cell side
    k: int  # cells per chip side
    fraction: np.ndarray  # (rows − k + 1, cols − k + 1)

    def view(self, row: int, col: int, hflip: bool = False) -> FrameView:
        """The chip at cell (row, col) as fractions of the scene."""
        p, c = self.patch, self.k * self.patch
        return FrameView(row * p / self.height, col * p / self.width, c / self.height, c / self.width, hflip)

    def ok(self, threshold: float) -> np.ndarray:
        """(n, 2) positions whose chip has at least ``threshold`` valid pixels (at least one pixel)."""
        return np.argwhere(self.fraction >= max(threshold, 1e-12))


def chip_grid(array: np.ndarray, patch: int, k: int) -> ChipGrid:
    """The chip positions of an (H, W, bands) scene, NaN without data (a pixel counts when every band
    has data). The scene must hold at least one chip (k · patch pixels a side)."""
    height, width = array.shape[:2]
    rows, cols = height // patch, width // patch
    cells = np.isfinite(array[: rows * patch, : cols * patch]).all(axis=2)
    cells = cells.reshape(rows, patch, cols, patch).sum(axis=(1, 3))  # valid pixels per token cell
    total = np.pad(cells.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    chips = total[k:, k:] - total[:-k, k:] - total[k:, :-k] + total[:-k, :-k]
    return ChipGrid(height, width, patch, k, chips / float((k * patch) ** 2))


def tile_positions(grid: ChipGrid, step: int) -> np.ndarray:
    """(n, 2) top-left cells of the tiling, row-major, every ``step`` cells from (0, 0)."""
    rows, cols = grid.fraction.shape
    r, c = np.meshgrid(np.arange(0, rows, step), np.arange(0, cols, step), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1)
