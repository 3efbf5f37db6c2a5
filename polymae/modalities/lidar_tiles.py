"""Airborne LiDAR surveys cut into tiles of the pillar grid, with heights above the local ground.

A sensor-centred scan (a spinning LiDAR on a car) is one sample around its sensor. An airborne
survey has no sensor position and spans kilometres, so the LiDAR plugin (``scan_kind: airborne``)
cuts it into tiles of the pillar grid's extent and makes each tile a sample:

- **Tiles**: squares of side 2 · ``range_xy`` on a grid aligned to the coordinate origin (tile
  (i, j) covers x in [i·s, (i+1)·s), y in [j·s, (j+1)·s)), so adjacent files of one survey cut the
  same tiles. Every point is in exactly one tile. Tiles are ordered row-major (increasing y, then
  x); only tiles holding points exist. A tile with fewer than ``min_tile_points`` points whose
  heights lie in ``z_range`` is skipped and counted (the scan's ``views_skipped``).
- **Ground**: the height of a point is its z minus the ground under it. The ground of a coarse
  cell (``ground_cell`` metres, on the same origin-aligned grid) is the ``ground_percentile``-th
  percentile of the z of its points (a low percentile, so a few low noise returns do not set it),
  then the lowest of that over the cell and its 8 neighbours (a grey-scale erosion: a cell wholly
  on a roof or canopy takes the ground of a neighbouring cell). ``z_range`` then applies to heights
  above this ground. Why not the LAS ground class: many surveys are unclassified, and a percentile
  surface needs no interpolation. Its limits: on steep slopes the 3 × 3 minimum sits below the
  ground (by up to about two cells × the slope), and structures wider than two cells read as ground.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def _cell_keys(ij: np.ndarray) -> np.ndarray:
    """(P, 2) int64 cell indices → (P,) one sortable int64 key each (row-major: y, then x)."""
    return (ij[:, 1] << 32) + ij[:, 0]


def ground_heights(xyz: np.ndarray, cell: float, percentile: float) -> np.ndarray:
    """(P, 3) metric points → (P,) ground z under each point (see the module docstring).

    Works on the occupied cells only (sorted keys, no dense raster), so a survey of any extent costs
    O(P log P)."""
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    keys = _cell_keys(ij)
    order = np.lexsort((xyz[:, 2], keys))  # by cell, then z within the cell
    cells, first, counts = np.unique(keys[order], return_index=True, return_counts=True)
    low = xyz[order, 2][first + np.floor(percentile / 100 * (counts - 1)).astype(np.int64)]
    cell_ij = ij[order][first]
    eroded = low.copy()
    for di, dj in NEIGHBOURS:
        near = _cell_keys(cell_ij + [di, dj])
        at = np.clip(np.searchsorted(cells, near), 0, len(cells) - 1)
        found = cells[at] == near
        eroded[found] = np.minimum(eroded[found], low[at[found]])
    return eroded[np.searchsorted(cells, keys)]


@dataclass
class Tiles:
    """A survey cut into tiles. P points, T kept tiles.

    centres   (T, 2) metric x, y of each kept tile's centre, in the survey's frame
    tile      (P,)   the kept tile each point lies in, -1 when its tile was skipped
    height    (P,)   z above the local ground
    in_range  (P,)   the height lies in ``z_range`` (the points a tile's pillars can hold)
    skipped   number of tiles skipped for holding fewer than ``min_tile_points`` in-range points
    half      half a tile's side (the pillar grid's ``range_xy``)
    """

    centres: np.ndarray
    tile: np.ndarray
    height: np.ndarray
    in_range: np.ndarray
    skipped: int
    half: float

    def points(self, scan: np.ndarray, t: int) -> np.ndarray:
        """Tile t's in-range points of the (P, 4) scan → (n, 4): x, y relative to the tile centre
        (strictly inside ±half, the open extent of the pillar grid), height above ground, intensity."""
        rows = np.flatnonzero((self.tile == t) & self.in_range)
        out = scan[rows].copy()
        inner = np.nextafter(self.half, 0.0)  # a point on a tile's lower edge stays in its first pillar
        out[:, :2] = np.clip(out[:, :2] - self.centres[t], -inner, inner)
        out[:, 2] = self.height[rows]
        return out


def cut_tiles(scan: np.ndarray, half: float, z_range: tuple[float, float], min_points: int,
              ground_cell: float, ground_percentile: float) -> Tiles:
    """(P, 4) survey (x, y, z, intensity) → its tiles of side 2 · ``half`` (module docstring)."""
    side = 2 * half
    height = scan[:, 2] - ground_heights(scan[:, :3], ground_cell, ground_percentile)
    in_range = (height >= z_range[0]) & (height < z_range[1])
    ij = np.floor(scan[:, :2] / side).astype(np.int64)
    keys, which = np.unique(_cell_keys(ij), return_inverse=True)
    filled = np.bincount(which, weights=in_range, minlength=len(keys))
    kept = filled >= max(min_points, 1)
    number = np.full(len(keys), -1, np.int64)
    number[kept] = np.arange(int(kept.sum()))
    tile_ij = np.zeros((len(keys), 2), np.int64)
    tile_ij[which] = ij
    centres = (tile_ij[kept] + 0.5) * side
    return Tiles(centres, number[which], height, in_range, int((~kept).sum()), half)
