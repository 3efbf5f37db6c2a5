"""Point-cloud tokenisation throughput: groups/s of farthest-point sampling + kNN grouping as
the points plugin does it (open3d FPS, numpy kNN) vs a plain numpy FPS baseline (the
textbook O(P·G) loop, e.g. Point-MAE's CPU fallback) with the same kNN, on real scans.

    .venv/bin/python bench/points_tokenize.py [--repeats 20]

It also times LiDAR voxelisation (0.5 m pillars over ±50 m) of the shipped VLP-16 sweep: the
plugin's vectorised ``voxelize`` vs a per-point Python loop into a dict.

Clouds: the shipped kitten scan (5,210 points), the bunny mesh sampled to 8,192 points
(Point-MAE's ShapeNet size) and to 100,000 points (a dense scan); each tokenised to 64 groups
of 32 from all of its points (the evaluation path samples 1024 points by FPS first; here FPS runs
on the whole cloud to show how it scales).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from polymae.modalities.lidar import LidarConfig, read_scan, voxelize
from polymae.modalities.points import PointsPlugin, farthest_points, group

ROOT = Path(__file__).resolve().parents[1]


def numpy_fps(points: np.ndarray, count: int) -> np.ndarray:
    """The plain loop: start at point 0, repeatedly take the point farthest from those chosen."""
    chosen = np.zeros(count, dtype=np.int64)
    distance = np.full(len(points), np.inf)
    for i in range(1, count):
        distance = np.minimum(distance, ((points - points[chosen[i - 1]]) ** 2).sum(axis=1))
        chosen[i] = int(np.argmax(distance))
    return points[chosen]


def rate(fps, points: np.ndarray, groups: int, size: int, repeats: int) -> float:
    """Groups per second of ``fps`` then (size > 0) the kNN grouping."""
    tic = time.perf_counter()
    for _ in range(repeats):
        centres = fps(points, groups)
        if size:
            group(points, centres, size)
    return groups * repeats / (time.perf_counter() - tic)


def python_voxelize(scan: np.ndarray, cfg: LidarConfig) -> dict:
    """The plain baseline: a dict from pillar cell to its first K point rows, one point at a time."""
    pillars: dict[tuple[int, int], list[int]] = {}
    for i, (x, y, z) in enumerate(scan[:, :3]):
        if abs(x) < cfg.range_xy and abs(y) < cfg.range_xy and cfg.z_range[0] <= z < cfg.z_range[1]:
            rows = pillars.setdefault((int((x + cfg.range_xy) // cfg.voxel_size),
                                       int((y + cfg.range_xy) // cfg.voxel_size)), [])
            if len(rows) < cfg.max_points_per_voxel:
                rows.append(i)
    return pillars


def voxel_rates(scan: np.ndarray, repeats: int) -> tuple[float, float]:
    cfg = LidarConfig(max_voxels=100_000)
    rates = []
    for fn in (voxelize, python_voxelize):
        tic = time.perf_counter()
        for _ in range(repeats):
            fn(scan, cfg)
        rates.append(len(scan) * repeats / (time.perf_counter() - tic))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = ROOT / "examples/data/points"
    kitten = PointsPlugin().decode((data / "kitten.xyz").read_bytes(), "kitten.xyz")
    bunny_8k = PointsPlugin().decode((data / "bunny_npm_lowres.obj").read_bytes(), "bunny.obj")
    bunny_100k = PointsPlugin({"mesh_points": 100_000}).decode((data / "bunny_npm_lowres.obj").read_bytes(),
                                                               "bunny.obj")
    print("groups/s        points   FPS+kNN: ours   numpy   ratio   FPS only: open3d   numpy   ratio")
    for name, cloud in (("kitten", kitten), ("bunny 8k", bunny_8k), ("bunny 100k", bunny_100k)):
        cloud = cloud.astype(np.float64)
        repeats = max(2, args.repeats * 5000 // len(cloud))
        ours = rate(farthest_points, cloud, 64, 32, repeats)
        base = rate(numpy_fps, cloud, 64, 32, repeats)
        fps_ours = rate(farthest_points, cloud, 64, 0, repeats)
        fps_base = rate(numpy_fps, cloud, 64, 0, repeats)
        print(f"{name:12s} {len(cloud):8d}   {ours:13.0f} {base:7.0f} {ours / base:6.2f}x   "
              f"{fps_ours:16.0f} {fps_base:7.0f} {fps_ours / fps_base:6.2f}x")
    kitti = ROOT / "examples/data/lidar/mrpt_vlp16_scan_kitti_format.bin"
    ours, base = voxel_rates(read_scan(kitti.read_bytes(), str(kitti)), args.repeats)
    print(f"voxelisation, VLP-16 sweep (11,305 points): PolyMAE {ours:,.0f} points/s, "
          f"per-point Python loop {base:,.0f} points/s, ratio {ours / base:.1f}x")


if __name__ == "__main__":
    main()
