"""Airborne LiDAR (``scan_kind: airborne``): surveys cut into tiles of the pillar grid, heights
above a percentile ground (:mod:`polymae.modalities.lidar_tiles`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polymae.modalities.base import VIEWS_SKIPPED, BadInputError
from polymae.modalities.lidar import LidarConfig, LidarPlugin, read_scan
from polymae.modalities.lidar_tiles import cut_tiles, ground_heights
from polymae.pipelines.spec import SpecError, parse_spec

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "lidar"
KITTI, LAS = DATA / "mrpt_vlp16_scan_kitti_format.bin", DATA / "simple.las"
X0, Y0, WIDTH, DEPTH = 500_000.0, 4_000_000.0, 3000.0, 4000.0  # UTM-like corner, metres (tile-aligned)
SLOPE = (0.03, 0.02)  # terrain rises 90 m over x and 80 m over y


def survey(n: int = 600_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic 3 km × 4 km survey on sloping terrain → (P, 4) scan, (P,) true height above the
    terrain, (P,) bool: a ground return. 80 % ground returns (±5 cm noise), 20 % above ground
    (trees, roofs: 1–20 m)."""
    rng = np.random.default_rng(seed)
    x, y = X0 + rng.uniform(0, WIDTH, n), Y0 + rng.uniform(0, DEPTH, n)
    terrain = 200.0 + SLOPE[0] * (x - X0) + SLOPE[1] * (y - Y0)
    ground = rng.random(n) < 0.8
    height = np.where(ground, rng.normal(0.0, 0.05, n), rng.uniform(1.0, 20.0, n))
    return np.stack([x, y, terrain + height, rng.random(n)], axis=1), height, ground


def test_every_point_of_a_sloping_survey_lands_in_exactly_one_tile():
    scan, _, _ = survey()
    half = 50.0
    tiles = cut_tiles(scan, half, (-5.0, 30.0), 1, 10.0, 5.0)
    assert len(tiles.centres) == (WIDTH / 100) * (DEPTH / 100) == 1200 and tiles.skipped == 0
    assert (tiles.tile >= 0).all()  # no point in a skipped tile
    offset = scan[:, :2] - tiles.centres[tiles.tile]
    assert (offset >= -half).all() and (offset < half).all()  # each point inside its own tile's square
    keys = np.unique(np.round(tiles.centres / 100 - 0.5).astype(np.int64), axis=0)
    assert len(keys) == len(tiles.centres)  # no tile twice
    order = np.lexsort((tiles.centres[:, 0], tiles.centres[:, 1]))
    assert (order == np.arange(len(order))).all()  # row-major: increasing y, then x
    sizes = [len(tiles.points(scan, t)) for t in range(0, 1200, 97)]
    assert sum(sizes) == sum(int(((tiles.tile == t) & tiles.in_range).sum()) for t in range(0, 1200, 97))
    assert tiles.in_range.all()  # heights above ground of the whole survey within z_range


def test_heights_are_above_the_local_ground_despite_the_slope():
    scan, height, ground = survey()
    found = scan[:, 2] - ground_heights(scan[:, :3], 10.0, 5.0)
    # the 3 × 3 minimum sits below the ground by at most about two cells × the slope (the docstring)
    slack = 2 * 10.0 * sum(SLOPE) + 0.2
    assert np.abs(found[ground]).max() < slack  # 90 m of relief gone: the ground reads ~0
    assert (found - height > -0.2).all() and (found - height < slack).all()
    tiles = cut_tiles(scan, 50.0, (-5.0, 5.0), 1, 10.0, 5.0)  # the plugin's default z_range
    assert tiles.in_range[ground].all()  # every ground return kept
    assert not tiles.in_range[height > 5.0 + slack].any()
    t = int(np.argmax(np.bincount(tiles.tile)))
    points = tiles.points(scan, t)
    assert (np.abs(points[:, :2]) < 50.0).all()  # relative to the tile centre, strictly inside the grid
    assert points[:, 2].min() >= -5.0 and points[:, 2].max() < 5.0


def test_sparse_tiles_are_skipped_and_counted():
    scan, _, _ = survey(n=4000)  # ~3 points a tile
    tiles = cut_tiles(scan, 50.0, (-5.0, 30.0), 6, 10.0, 5.0)
    per_tile = np.bincount(np.floor((scan[:, 0] - X0) / 100).astype(int) * 40
                           + np.floor((scan[:, 1] - Y0) / 100).astype(int), minlength=1200)
    occupied = int((per_tile > 0).sum())
    assert len(tiles.centres) + tiles.skipped == occupied  # only tiles holding points exist
    assert (np.bincount(tiles.tile[tiles.tile >= 0]) >= 6).all()
    assert tiles.skipped > 0 and (per_tile[per_tile > 0] < 6).sum() == tiles.skipped


def test_negative_coordinates_keep_tiles_apart():
    scan, _, _ = survey(n=20_000)
    scan[:, :2] -= (X0 + WIDTH / 2, Y0 + DEPTH / 2)  # a survey in a local frame around 0
    tiles = cut_tiles(scan, 50.0, (-5.0, 30.0), 1, 10.0, 5.0)
    assert len(tiles.centres) == 1200 and (tiles.tile >= 0).all()
    offset = scan[:, :2] - tiles.centres[tiles.tile]
    assert (offset >= -50.0).all() and (offset < 50.0).all()


def airborne(**over) -> LidarPlugin:
    cfg = {"scan_kind": "airborne", "max_voxels": 256, "num_empty": 32, "max_points_per_voxel": 8, **over}
    return LidarPlugin(LidarConfig(**cfg))


def test_the_plugin_makes_a_sample_of_each_kept_tile():
    scan, _, _ = survey(n=30_000)
    scan = scan[(scan[:, 0] < X0 + 300) & (scan[:, 1] < Y0 + 200)]  # 3 × 2 tiles of the survey
    plugin = airborne()
    tiles = plugin.tiles(scan)
    assert len(tiles.centres) == 6
    streams = plugin._tile_streams(scan, None)[0]
    assert len(streams) == 6 and all(s.valid.any() for s in streams)
    turned = plugin._tile_streams(scan, np.random.default_rng(0))[0]  # training: a quarter turn each
    assert len(turned) == 6


def test_a_real_airborne_las_survey_gives_tiles_with_most_points_kept():
    """laspy's simple.las (examples/data/lidar/PROVENANCE.md): 1,065 airborne points over 3.4 ×
    4.6 km, ground 406–586 m. Tiles of ±250 m, ground cells of 50 m (the file is sparse)."""
    data = LAS.read_bytes()
    scan = read_scan(data, str(LAS))
    plugin = airborne(range_xy=250.0, voxel_size=5.0, ground_cell=50.0, z_range=(-2.0, 40.0))
    tiles = plugin.tiles(scan)
    assert len(tiles.centres) > 50 and tiles.in_range.mean() > 0.9  # most points kept
    assert (tiles.tile >= 0).all()  # every point in a kept tile
    count, found = plugin.scan_file(data, str(LAS))
    assert count == len(tiles.centres) and found == {VIEWS_SKIPPED: 0.0}
    assert len(plugin.tokenize_file(data, str(LAS), None)) == count
    # the same file as a sensor scan stays one sample (centred on the bounding box, sensor_origin None)
    assert LidarPlugin(LidarConfig(sensor_origin=None, range_xy=3000.0)).scan_file(data, str(LAS))[0] == 1


def test_sensor_scans_stay_one_sample():
    data = KITTI.read_bytes()
    plugin = LidarPlugin(LidarConfig(max_voxels=256, num_empty=32, max_points_per_voxel=8))
    assert plugin.config.scan_kind == "sensor"
    assert plugin.scan_file(data, str(KITTI)) == (1, {})
    assert len(plugin.tokenize_file(data, str(KITTI), None)) == 1


def test_a_survey_with_no_tile_kept_is_refused():
    scan, _, _ = survey(n=2000)
    with pytest.raises(BadInputError, match="no tile of the survey holds min_tile_points=50"):
        airborne(min_tile_points=50).tiles(scan)


def test_validation_refuses_an_unknown_scan_kind_naming_the_allowed_ones():
    with pytest.raises(SpecError, match=r"(?s)scan_kind.*'sensor' or 'airborne'"):
        parse_spec({"name": "l", "sources": [{"modality": "lidar", "paths": [str(LAS)],
                                               "config": {"scan_kind": "aerial"}}]})


def test_radial_masking_is_refused_for_airborne_tiles():
    with pytest.raises(SpecError, match="airborne tiles have none"):
        parse_spec({"name": "l", "sources": [{"modality": "lidar", "paths": [str(LAS)],
                                               "config": {"scan_kind": "airborne"}}],
                    "tokenizer": {"mask": {"lidar": {"strategy": "radial", "ratio": 0.8}}}})
