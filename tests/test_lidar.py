"""LiDAR scans: reading KITTI .bin / PCD / PLY / LAS, and voxelisation into pillars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from polymae.modalities.base import BadInputError
from polymae.modalities.lidar import LidarConfig, read_scan, voxelize

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "lidar"
KITTI, LAS = DATA / "mrpt_vlp16_scan_kitti_format.bin", DATA / "simple.las"


def test_reads_real_kitti_and_las_scans():
    scan = read_scan(KITTI.read_bytes(), str(KITTI))
    assert scan.shape == (11305, 4) and np.isfinite(scan).all()
    assert np.hypot(scan[:, 0], scan[:, 1]).max() > 100  # a real sweep: ranges past 100 m
    las = read_scan(LAS.read_bytes(), str(LAS))
    assert las.shape == (1065, 4) and las[:, 0].min() > 600_000  # airborne, projected coordinates


@pytest.mark.parametrize("ext", [".pcd", ".ply"])
def test_reads_open3d_formats(tmp_path, ext):
    scan = read_scan(KITTI.read_bytes(), str(KITTI))
    path = tmp_path / f"scan{ext}"
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scan[:, :3])))
    back = read_scan(path.read_bytes(), str(path))
    assert np.allclose(back[:, :3], scan[:, :3], atol=1e-4)


@pytest.mark.parametrize("name, data, reason", [
    ("cut.bin", KITTI.read_bytes()[:-5], "mis-shaped KITTI scan: 180875 bytes is not a multiple of 16"),
    ("empty.bin", b"", "empty file"),
    ("nan.bin", np.array([[0, 0, 0, 0], [np.nan, 1, 2, 0]] * 10, "<f4").tobytes(), "non-finite coordinates"),
    ("bad.las", b"XXXX" + LAS.read_bytes()[4:], "not a readable LAS/LAZ file"),
    ("bad.ply", b"ply\nformat nonsense\nend_header\n", "no points could be read"),
    ("scan.xyzrgb", b"1 2 3\n", "unsupported extension"),
])
def test_bad_scans_raise_with_reason(name, data, reason):
    with pytest.raises(BadInputError, match=reason):
        read_scan(data, name)


def test_every_in_range_point_lands_in_exactly_one_pillar():
    scan = read_scan(KITTI.read_bytes(), str(KITTI))
    cfg = LidarConfig(max_points_per_voxel=10_000, max_voxels=100_000)
    pillars = voxelize(scan, cfg)
    inside = (np.abs(scan[:, :2]) < 50).all(axis=1) & (scan[:, 2] >= -5) & (scan[:, 2] < 5)
    kept = pillars.index[pillars.index >= 0]
    assert len(kept) == len(set(kept.tolist())) == inside.sum()  # each once, none lost
    assert set(kept.tolist()) == set(np.flatnonzero(inside).tolist())
    for v in range(0, len(pillars.centres), 97):  # points lie inside their pillar
        pts = pillars.points[v, : pillars.counts[v], :2]
        assert (np.abs(pts - pillars.centres[v]) <= cfg.voxel_size / 2 + 1e-4).all()
    assert np.allclose(pillars.points[pillars.index >= 0][:, :3], scan[kept, :3], atol=1e-4)


def test_caps_and_deterministic_choice():
    scan = read_scan(KITTI.read_bytes(), str(KITTI))
    full = voxelize(scan, LidarConfig(max_points_per_voxel=10_000, max_voxels=100_000))
    capped = voxelize(scan, LidarConfig(max_points_per_voxel=4, max_voxels=300))
    assert capped.counts.max() <= 4 and len(capped.centres) == 300 and capped.points.shape == (300, 4, 4)
    dist = np.hypot(*capped.centres.T)
    dropped = np.array([c for c in map(tuple, full.centres) if c not in set(map(tuple, capped.centres))])
    assert dist.max() <= np.hypot(*dropped.T).min() + 1e-6  # evaluation keeps the nearest pillars
    a = voxelize(scan, LidarConfig(max_voxels=300), np.random.default_rng(0))
    b = voxelize(scan, LidarConfig(max_voxels=300), np.random.default_rng(0))
    c = voxelize(scan, LidarConfig(max_voxels=300), np.random.default_rng(1))
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.index, c.index)


def test_out_of_range_scan_and_airborne_origin():
    scan = read_scan(KITTI.read_bytes(), str(KITTI)) + [500.0, 0, 0, 0]
    with pytest.raises(BadInputError, match="no points within ±50.0 m"):
        voxelize(scan, LidarConfig())
    las = read_scan(LAS.read_bytes(), str(LAS))
    cfg = LidarConfig(sensor_origin=None, range_xy=3000, voxel_size=50, z_range=(-200, 200),
                      max_points_per_voxel=1000)  # a 3 × 5 km airborne tile
    pillars = voxelize(las, cfg)  # no sensor: centred on the scan's bounding box
    assert pillars.counts.sum() == len(las) and np.abs(pillars.centres).max() < 3000
