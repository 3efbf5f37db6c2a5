"""LiDAR scans: reading KITTI .bin / PCD / PLY / LAS, and voxelisation into pillars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch

from polymae.modalities.base import BadInputError
from polymae.modalities.lidar import BEV, LidarConfig, LidarPlugin, read_scan, voxelize
from polymae.pipelines.spec import SpecError, parse_spec
from polymae.testing import check_plugin
from polymae.tokenizer import MaskPolicy, MaskSpec
from polymae.tokenizer.masking import num_visible

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
    ("bad.ply", b"ply\nformat nonsense\nend_header\n", "corrupt PLY header: format 'nonsense'"),
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


def small_plugin(**config) -> LidarPlugin:
    return LidarPlugin({"max_voxels": 1024, "num_empty": 256, "max_points_per_voxel": 16, **config})


def test_lidar_plugin_conformance_and_tokens():
    plugin = small_plugin()
    data = KITTI.read_bytes()
    check_plugin(plugin, good=[data], bad=[b"", data[:-3], np.full((8, 4), np.nan, "<f4").tobytes()])
    stream = plugin.tokenize(plugin.decode(data, str(KITTI)), None)
    occupied = stream.values[:, -1] > 0.5
    assert occupied.sum() == 1024 and (stream.unit < 0).sum() == 256 and stream.valid.sum() == 1280
    assert np.array_equal(occupied, stream.unit >= 0)  # queries are the empty pillars


def test_query_pillars_are_hidden_and_decoded_and_masks_count_real_ones():
    plugin = small_plugin()
    stream = plugin.tokenize(plugin.decode(KITTI.read_bytes(), str(KITTI)), np.random.default_rng(0))
    policy = MaskPolicy({"lidar": MaskSpec(ratio=0.7, decoder_strategy="random", decoder_ratio=0.5)})
    policy.apply({"lidar": stream}, "scan", 0)
    queries = stream.unit < 0
    assert not stream.visible[queries].any() and stream.decoded[queries].all()
    assert stream.visible.sum() == num_visible(1024, 0.7)
    radial = MaskPolicy({"lidar": MaskSpec(strategy="radial", ratio=0.8)})({"lidar": stream}, np.random.default_rng(0))
    assert not radial["lidar"][queries].any()


def test_loss_counts_masked_pillars_and_queries_only():
    plugin = small_plugin()
    stream = plugin.tokenize(plugin.decode(KITTI.read_bytes(), str(KITTI)), None)
    values = torch.as_tensor(stream.values)[None]
    target = plugin.target(values)
    mask = torch.as_tensor(stream.valid & (np.arange(len(stream.valid)) % 2 == 0))[None]
    assert float(plugin.loss(target, values, mask)) < 1e-6
    wrong = target.clone()
    wrong[0, ~mask[0]] += 3.0  # unmasked tokens: not in the loss
    assert float(plugin.loss(wrong, values, mask)) < 1e-6
    wrong[0, mask[0] & torch.as_tensor(stream.unit < 0), -1] = 20.0  # masked queries called occupied: BCE
    assert float(plugin.loss(wrong, values, mask)) > 1.0


def test_radial_without_sensor_origin_is_a_spec_error():
    with pytest.raises(SpecError, match="radial masking needs the sensor position"):
        parse_spec({"name": "l", "sources": [{"modality": "lidar", "paths": [str(LAS)],
                                               "config": {"sensor_origin": None}}],
                    "tokenizer": {"mask": {"lidar": {"strategy": "radial", "ratio": 0.8}}}})


def test_bev_render():
    plugin = small_plugin()
    stream = plugin.tokenize(plugin.decode(KITTI.read_bytes(), str(KITTI)), None)
    MaskPolicy({"lidar": MaskSpec(ratio=0.7)}).apply({"lidar": stream}, "scan", 0)
    picture = plugin.render(stream, plugin.target(torch.as_tensor(stream.values)).numpy())
    assert picture.shape == (BEV, 3 * BEV + 8, 3)
    original, visible, recon = (picture[:, i * (BEV + 4) : i * (BEV + 4) + BEV] for i in range(3))
    assert (original != 255).any() and (visible != 255).sum() < (original != 255).sum()
    assert np.array_equal(recon != 255, original != 255)  # a perfect prediction redraws the scan


def test_reads_laz_through_the_lazrs_backend(tmp_path):
    import laspy

    las = laspy.read(str(LAS))
    path = tmp_path / "simple.laz"
    las.write(str(path))  # compressed: the suffix selects LAZ, lazrs encodes it
    assert path.stat().st_size < LAS.stat().st_size
    back = read_scan(path.read_bytes(), str(path))
    assert np.allclose(back, read_scan(LAS.read_bytes(), str(LAS)))
