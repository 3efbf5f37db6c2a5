"""LiDAR scans (Voxel-MAE / R-MAE): reading scans and voxelising them into pillars.

This module holds the LiDAR plugin's data half, built and tested first: ``read_scan`` (KITTI
``.bin``, PCD / PLY through open3d, LAS / LAZ through laspy with the lazrs backend) and
``voxelize`` (Voxel-MAE's 0.5 × 0.5 m pillars over ±50 m, a point cap per pillar and a pillar cap
per scan). The plugin class (tokens, the Chamfer + occupancy loss, the bird's-eye render) is
the next step of issue #4; the ``radial`` mask strategy it will use is in tokenizer/masking.py.

Coordinates stay metric and are taken relative to the sensor origin (``sensor_origin``), so
ranges and angles are true ones: the reference code counts them from the grid corner.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from pydantic import Field

from polymae.modalities.base import BadInputError, PluginConfig

KITTI_RECORD = 16  # bytes per point of a KITTI .bin: float32 x, y, z, intensity


class LidarConfig(PluginConfig):
    """Voxel-MAE's voxelisation settings."""

    voxel_size: float = Field(0.5, gt=0, description="pillar side, metres")
    range_xy: float = Field(50.0, gt=0, description="pillars cover x, y in [-range, range) around the sensor")
    z_range: tuple[float, float] = Field((-5.0, 5.0), description="points outside these heights are dropped")
    max_points_per_voxel: int = Field(32, gt=0, description="point cap per pillar")
    max_voxels: int = Field(4096, gt=0, description="pillar cap per scan")
    sensor_origin: tuple[float, float, float] | None = Field(
        (0.0, 0.0, 0.0), description="sensor position in the scan's frame; None (airborne LAS): the scan's centre")
    max_file_bytes: int = Field(512 * 2**20, gt=0)


def _read_kitti(data: bytes) -> np.ndarray:
    if len(data) % KITTI_RECORD:
        raise BadInputError(f"mis-shaped KITTI scan: {len(data)} bytes is not a multiple of {KITTI_RECORD} "
                            "(float32 x, y, z, intensity)")
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4).astype(np.float64)


def _read_las(data: bytes) -> np.ndarray:
    import laspy  # optional at import time: only LAS / LAZ scans need it

    try:
        las = laspy.read(io.BytesIO(data))
    except Exception as err:  # laspy raises its own LaspyException and plain errors for bad headers
        raise BadInputError(f"not a readable LAS/LAZ file: {str(err).splitlines()[0][:200]}") from err
    intensity = np.asarray(las.intensity, dtype=np.float64) / 65535.0
    return np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z), intensity], axis=1)


def _read_open3d(data: bytes, ext: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=ext) as tmp:
        tmp.write(data)
        tmp.flush()
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            cloud = o3d.io.read_point_cloud(tmp.name, format="auto")
    points = np.asarray(cloud.points)
    if len(points) == 0:
        raise BadInputError(f"no points could be read (empty or not a valid {ext} file)")
    return np.concatenate([points, np.zeros((len(points), 1))], axis=1)


def read_scan(data: bytes, path: str) -> np.ndarray:
    """Bytes of a scan → (P, 4) float64 x, y, z, intensity (0 where the format has none)."""
    if len(data) == 0:
        raise BadInputError("empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".bin":
        points = _read_kitti(data)
    elif ext in (".las", ".laz"):
        points = _read_las(data)
    elif ext in (".pcd", ".ply"):
        points = _read_open3d(data, ext)
    else:
        raise BadInputError(f"unsupported extension {ext!r} (expects .bin .pcd .ply .las .laz)")
    if len(points) == 0:
        raise BadInputError("empty scan: no points")
    if not np.isfinite(points[:, :3]).all():
        raise BadInputError("non-finite coordinates (NaN or inf)")
    return points


@dataclass
class Pillars:
    """A voxelised scan. V pillars, K = max_points_per_voxel.

    centres (V, 2) metric x, y of each pillar's centre, relative to the sensor
    points  (V, K, 4) the pillar's points (x, y, z, intensity), relative to the sensor, zero-padded
    counts  (V,)      points kept in each pillar (≤ K)
    index   (V, K)    row of each kept point in the scan, -1 for padding
    """

    centres: np.ndarray
    points: np.ndarray
    counts: np.ndarray
    index: np.ndarray


def voxelize(scan: np.ndarray, config: LidarConfig, rng: np.random.Generator | None = None) -> Pillars:
    """(P, 4) scan → pillars over the non-empty cells within range.

    Every in-range point lands in exactly one pillar; a pillar keeps its first K points in scan
    order (a random K with ``rng``); with more than ``max_voxels`` non-empty pillars, the nearest
    to the sensor are kept (a random subset with ``rng``). Raises BadInputError when no point is
    in range.
    """
    origin = np.asarray(config.sensor_origin if config.sensor_origin is not None
                        else (scan[:, :3].max(axis=0) + scan[:, :3].min(axis=0)) / 2)
    xyz = scan[:, :3] - origin
    r, vs = config.range_xy, config.voxel_size
    inside = ((np.abs(xyz[:, :2]) < r).all(axis=1) & (xyz[:, 2] >= config.z_range[0])
              & (xyz[:, 2] < config.z_range[1]))
    rows = np.flatnonzero(inside)
    if len(rows) == 0:
        raise BadInputError(f"no points within ±{r} m (x, y) and z in {config.z_range} of the sensor")
    if rng is not None:
        rows = rng.permutation(rows)
    side = int(np.ceil(2 * r / vs))
    cell_xy = np.clip(np.floor((xyz[rows, :2] + r) / vs).astype(np.int64), 0, side - 1)
    cell = cell_xy[:, 1] * side + cell_xy[:, 0]
    order = np.argsort(cell, kind="stable")  # keeps scan (or shuffled) order within a pillar
    rows, cell = rows[order], cell[order]
    cells, first, sizes = np.unique(cell, return_index=True, return_counts=True)
    centres = (np.stack([cells % side, cells // side], axis=1) + 0.5) * vs - r
    if len(cells) > config.max_voxels:
        pick = (rng.permutation(len(cells)) if rng is not None
                else np.argsort(np.hypot(centres[:, 0], centres[:, 1]), kind="stable"))[: config.max_voxels]
        pick = np.sort(pick)
        cells, first, sizes, centres = cells[pick], first[pick], sizes[pick], centres[pick]
    k = config.max_points_per_voxel
    counts = np.minimum(sizes, k)
    slot = np.arange(k)[None, :]
    index = np.where(slot < counts[:, None], rows[np.minimum(first[:, None] + slot, len(rows) - 1)], -1)
    points = np.where((index >= 0)[..., None], np.concatenate([xyz, scan[:, 3:4]], axis=1)[np.maximum(index, 0)], 0.0)
    return Pillars(centres, points.astype(np.float32), counts.astype(np.int64), index)
