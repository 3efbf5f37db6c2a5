"""Several chips per scene and band groups of one scene as the streams of a sample (issue #12's
pipeline side): tiling, skipped chips and their counts, one chip ground for every stream of a
frame, split.region, the example spec."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError
from rasterio.io import MemoryFile

from polymae.modalities import register_modality
from polymae.modalities.base import VIEWS_SKIPPED
from polymae.modalities.depth import DepthPlugin
from polymae.modalities.image import ImagePlugin
from polymae.modalities.multispectral import MultispectralPlugin
from polymae.pipelines.data import tokenize_sample
from polymae.pipelines.files import SampleFile, discover
from polymae.pipelines.pairing import file_key, view_followers
from polymae.pipelines.scan import ScanResult, scan_batch, scan_region
from polymae.pipelines.spec import load_spec
from polymae.tokenizer import MaskPolicy, MaskSpec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multispectral_mae.yaml"
DATA = ROOT / "examples" / "data" / "multispectral"
S2_10M = DATA / "sentinel2_B2B3B4B8_10m_512.tif"
S2_20M = DATA / "sentinel2_B5B6B7B8AB11B12_20m_256.tif"
TEN, TWENTY = ["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A", "B11", "B12"]
GROUPS = {"rgbn": ["B2", "B3", "B4", "B8"], "rededge": ["B5", "B6", "B7", "B8A"], "swir": ["B11", "B12"]}
register_modality(MultispectralPlugin)  # the installed checkout may predate the entry point


def _tiff(bands: np.ndarray, descriptions: list[str], res: float) -> bytes:
    """(B, H, W) uint16 → GeoTIFF bytes in EPSG:32618 at ``res`` m, top-left at the same ground."""
    count, height, width = bands.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype.name,
                      crs="EPSG:32618", transform=rasterio.Affine(res, 0, 440000, 0, -res, 4170120)) as ds:
            ds.write(bands)
            for i, d in enumerate(descriptions):
                ds.set_band_description(i + 1, d)
        return mem.read()


def _ground_pair(height20: int = 96, width20: int = 144) -> tuple[bytes, bytes]:
    """A 10 m and a 20 m raster of one ground whose DN is the index of the 20 m cell a pixel lies in
    (+1: 0 is the sensor's nodata), so a 10 m chip sampled every other pixel equals the 20 m chip of
    the same ground."""
    cell = np.arange(height20 * width20, dtype=np.uint16).reshape(height20, width20) + 1
    ten = np.repeat(np.repeat(cell, 2, axis=0), 2, axis=1)
    return _tiff(np.stack([ten] * 4), TEN, 10), _tiff(np.stack([cell] * 6), TWENTY, 20)


def _coverage(plugin: MultispectralPlugin, array: np.ndarray, views) -> np.ndarray:
    covered = np.zeros(array.shape[:2], np.int64)
    for view in views:
        top, left, h, w = view.box(*array.shape[:2])
        covered[top : top + h, left : left + w] += 1
    return covered


# --- tiling --------------------------------------------------------------------------------------
def test_tiling_with_stride_equal_to_size_covers_every_pixel_once():
    plugin = MultispectralPlugin()  # 96 px chips, stride = chip_size
    array = plugin.decode(_ground_pair(144, 96)[0], "ten.tif")  # 288 × 192 px: 3 × 2 chips exactly
    views = plugin.frame_views(array, None)
    assert len(views) == 6 and all(not v.hflip for v in views)
    assert (_coverage(plugin, array, views) == 1).all()
    assert [v.box(*array.shape[:2])[:2] for v in views] == [(0, 0), (0, 96), (96, 0), (96, 96), (192, 0), (192, 96)]
    # a scene that is not a whole number of chips: each pixel at most once, the remainder untiled
    real = plugin.decode(S2_10M.read_bytes(), "10m.tif")  # 512²: 5 × 5 tiles, 32 px left at two edges
    covered = _coverage(plugin, real, plugin.frame_views(real, None))
    assert covered.max() == 1 and (covered[:480, :480] == 1).all()
    assert covered[480:].sum() == covered[:, 480:].sum() == 0
    half = MultispectralPlugin({"chip_stride": 48})  # overlapping tiles: every 48 px
    assert len(half.frame_views(array, None)) == 5 * 3


def test_chip_stride_must_sit_on_the_token_grid():
    with pytest.raises(ValidationError, match="chip_stride 92 is not a multiple of patch_size 8"):
        MultispectralPlugin.Config(chip_stride=92)


def test_training_views_are_as_many_random_chips_on_the_token_grid():
    plugin = MultispectralPlugin()
    array = plugin.decode(S2_10M.read_bytes(), "10m.tif")
    tiles = plugin.frame_views(array, None)
    draws = [plugin.frame_views(array, np.random.default_rng(seed)) for seed in range(3)]
    assert all(len(d) == len(tiles) == 25 for d in draws)  # the count does not depend on the rng
    boxes = {v.box(512, 512) for d in draws for v in d}
    assert len(boxes) > 25  # positions are drawn, not the tiles
    assert all(top % 8 == left % 8 == 0 and h == w == 96 for top, left, h, w in boxes)
    flips = [v.hflip for d in draws for v in d]
    assert 0 < sum(flips) < len(flips)
    assert draws[0] == plugin.frame_views(array, np.random.default_rng(0))  # seeded
    fixed = MultispectralPlugin({"random_chip": False}).frame_views(array, np.random.default_rng(0))
    assert [(v.top, v.left) for v in fixed] == [(v.top, v.left) for v in tiles]


# --- chips over the nodata threshold -------------------------------------------------------------
def test_chips_over_the_nodata_threshold_are_skipped_and_the_counts_add_up():
    bands = np.full((4, 192, 288), 900, np.uint16)  # 2 × 3 tiles of 96 px
    bands[:, :96, :96] = 0  # tile 0: all nodata
    bands[:, :60, 96:192] = 0  # tile 1: 62.5 % nodata (over the 50 % threshold)
    bands[:, 96:130, 96:192] = 0  # tile 4: 35 % nodata: kept
    data = _tiff(bands, TEN, 10)
    plugin = MultispectralPlugin()
    array = plugin.decode(data, "holes.tif")
    views, skipped = plugin.tiles(array)
    assert len(views) == 4 and skipped == 2
    assert [v.box(192, 288)[:2] for v in views] == [(0, 192), (96, 0), (96, 96), (96, 192)]
    assert len(plugin.frame_views(array, np.random.default_rng(1))) == 4
    count, stats = plugin.scan_file(data, "holes.tif")
    assert (count, stats[VIEWS_SKIPPED]) == (4, 2)
    drawn = plugin.tokenize_file(data, "holes.tif", np.random.default_rng(0))
    assert len(plugin.tokenize_file(data, "holes.tif", None)) == len(drawn) == 4


def test_the_scan_keeps_views_skipped_per_file_and_the_run_counts_total_them(tmp_path):
    bands = np.full((4, 192, 288), 900, np.uint16)
    bands[:, :96, :96] = 0
    holes, full = tmp_path / "holes.tif", tmp_path / "full.tif"
    holes.write_bytes(_tiff(bands, TEN, 10))
    full.write_bytes(_tiff(np.full((4, 192, 288), 700, np.uint16), TEN, 10))
    out = scan_batch({"path": np.array([str(holes), str(full)], dtype=object)}, "multispectral", {})
    assert list(out["num_samples"]) == [5, 6] and list(out[VIEWS_SKIPPED]) == [1, 0]
    assert not any(out["reason"]) and f"statistic_{VIEWS_SKIPPED}" not in out  # a count, not a statistic
    good = [SampleFile(p.name, str(p), int(n), stream="rgbn", views_skipped=int(k))
            for p, n, k in zip((holes, full), out["num_samples"], out[VIEWS_SKIPPED], strict=True)]
    result = ScanResult(good, [])
    tiles = 2 * 6
    assert result.counts["samples"] + result.counts[VIEWS_SKIPPED] == tiles
    assert result.counts_by_stream["rgbn"] == result.counts  # one schema: data/<key>, data/<stream>/<key>
    assert set(ScanResult(good[1:], []).counts) == set(result.counts)  # the key is there with 0 skipped too


# --- one chip ground for every stream of a frame -------------------------------------------------
def _spy(plugin: MultispectralPlugin, seen: list) -> MultispectralPlugin:
    tokenize = plugin.tokenize

    def recording(array, rng, view=None):
        seen.append((array, view))
        return tokenize(array, rng, view)

    plugin.tokenize = recording  # type: ignore[method-assign]
    return plugin


@pytest.mark.parametrize("train, region", [(True, None), (False, None), (True, (0.0, 0.75)), (False, (0.75, 1.0))])
def test_every_stream_of_the_frame_gets_the_same_chip_ground_in_every_view(tmp_path, train, region):
    ten, twenty = _ground_pair()  # 192 × 288 px at 10 m
    (tmp_path / "ten.tif").write_bytes(ten)
    (tmp_path / "twenty.tif").write_bytes(twenty)
    paths = {"rgbn": str(tmp_path / "ten.tif"), "rededge": str(tmp_path / "twenty.tif"),
             "swir": str(tmp_path / "twenty.tif")}
    seen: dict[str, list] = {name: [] for name in GROUPS}
    plugins = {name: _spy(MultispectralPlugin({"group": bands, "chip_size": 48}), seen[name])
               for name, bands in GROUPS.items()}
    shares = {name: {"frame": "scene", "clock": None} for name in GROUPS}
    policy = MaskPolicy({name: MaskSpec(strategy="random", ratio=0.75) for name in GROUPS}, 0)
    samples = tokenize_sample(plugins, shares, policy, paths, "scene", 0, 0, 0, 100, train, region)
    expected = len(plugins["rgbn"].frame_views(seen["rgbn"][0][0], None))  # the tiles of the part read
    assert len(samples) == expected == (24 if region is None else 16 if train else 4)
    for k in range(len(samples)):
        (a10, view), (a20, view20), (_, view_swir) = seen["rgbn"][k], seen["rededge"][k], seen["swir"][k]
        assert view == view20 == view_swir
        chip10, chip20 = plugins["rgbn"].chip(a10, view), plugins["rededge"].chip(a20, view)
        assert chip10.shape[:2] == (48, 48) and chip20.shape[:2] == (24, 24)
        assert np.array_equal(chip10[::2, ::2, 0], chip20[..., 0])  # the same ground at 10 m and 20 m
    if region is not None:  # the strip was cut before the views were drawn: nothing outside it
        assert seen["rgbn"][0][0].shape[1] == round((region[1] - region[0]) * 288)
        assert seen["rededge"][0][0].shape[1] == round((region[1] - region[0]) * 144)


def test_the_scan_counts_the_training_part_of_each_frame_under_split_region():
    spec = load_spec(EXAMPLE)
    counts = {}
    for source in spec.sources:
        plugin = MultispectralPlugin(source.config)
        region = scan_region(spec, plugin)
        assert region == (0.0, 0.75)
        out = scan_batch({"path": np.array(source.paths, dtype=object)}, "multispectral", source.config, region)
        counts[source.name] = int(out["num_samples"][0])
        assert out[VIEWS_SKIPPED][0] == 0 and not out["reason"][0]
    assert counts == {"rgbn": 20, "rededge": 20, "swir": 20}  # 5 × 4 tiles of the left ¾, at 10 m and 20 m
    whole = MultispectralPlugin(spec.sources[0].config)
    assert whole.scan_file(S2_10M.read_bytes(), str(S2_10M))[0] == 25


# --- frame_views' default keeps every other plugin's single view --------------------------------
@pytest.mark.parametrize("plugin, array", [
    (ImagePlugin({"img_size": 64}), np.zeros((120, 160, 3), np.uint8)),
    (DepthPlugin({"img_size": 64}), np.ones((120, 160), np.float32)),
])
def test_frame_views_default_is_the_single_frame_view(plugin, array):
    for seed in (0, 1, 2):
        single = plugin.frame_view(array, np.random.default_rng(seed))
        assert plugin.frame_views(array, np.random.default_rng(seed)) == [single]
    assert plugin.frame_views(array, None) == [plugin.frame_view(array, None)]


# --- the example spec ------------------------------------------------------------------------------
def test_the_example_spec_validates_and_pairs_the_scene():
    spec = load_spec(EXAMPLE)
    assert [s.name for s in spec.sources] == ["rgbn", "rededge", "swir"]
    assert all(s.modality == "multispectral" and s.frame == "scene" for s in spec.sources)
    assert [tuple(s.config["group"]) for s in spec.sources] == [tuple(g) for g in GROUPS.values()]
    assert spec.split.region == 0.25 and spec.tokenizer.policy == "independent" and spec.model.preset == "tiny"
    assert {m: s.ratio for m, s in spec.mask_specs().items()} == dict.fromkeys(GROUPS, 0.75)
    assert view_followers(spec.sources) == ("rededge", "swir")  # rgbn draws the chips: its count is the sample's
    settings = spec.pairing.model_dump()
    keys = {file_key(f, settings, None) for s in spec.sources for f in discover(s, (".tif",), qualify=True)}
    assert keys == {("sentinel2", "")}  # both files, three streams, one scene
    aligned = load_spec(EXAMPLE, ["tokenizer.policy=aligned"])  # SatMAE's group_consistent
    assert aligned.tokenizer.policy == "aligned"
