"""The multispectral plugin on the shipped real rasters (examples/data/multispectral, PROVENANCE.md)."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError
from rasterio.io import MemoryFile

from polymae.modalities import BadInputError, available_modalities, register_modality
from polymae.modalities.base import VIEWS_SKIPPED
from polymae.modalities.multispectral import MultispectralPlugin
from polymae.modalities.sensors import Band, Sensor, canonical_band, get_sensor, register_sensor
from polymae.ops import FrameView
from polymae.testing import check_plugin

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "multispectral"
S2_10M = DATA / "sentinel2_B2B3B4B8_10m_512.tif"
S2_20M = DATA / "sentinel2_B5B6B7B8AB11B12_20m_256.tif"
S2_60M = DATA / "sentinel2_13band_60m.tif"
L7 = DATA / "L7_ETMs.tif"
L7_BANDS = ["B1", "B2", "B3", "B4", "B5", "B7"]  # the file has no descriptions (PROVENANCE.md)
L7_CONFIG = {"sensor": "landsat7_etm", "bands": L7_BANDS, "resolution_m": 28.5, "reference_m": 28.5}
STACK_CONFIG = {"resolution_m": 60, "reference_m": 60, "group": list(get_sensor("sentinel2_l1c").band_names)}
register_modality(MultispectralPlugin)  # the installed checkout may predate the entry point


def _bytes(path: Path, cut: int | None = None) -> bytes:
    data = path.read_bytes()
    return data if cut is None else data[:cut]


def _tiff(bands: np.ndarray, descriptions=None, nodata=None, res: float = 10.0, driver: str = "GTiff") -> bytes:
    """(B, H, W) → GeoTIFF bytes in EPSG:32618 at ``res`` m."""
    count, height, width = bands.shape
    with MemoryFile() as mem:
        transform = rasterio.Affine(res, 0, 440000, 0, -res, 4170120)
        with mem.open(driver=driver, width=width, height=height, count=count, dtype=bands.dtype.name,
                      crs="EPSG:32618", transform=transform, nodata=nodata) as ds:
            ds.write(bands)
            for i, d in enumerate(descriptions or []):
                ds.set_band_description(i + 1, d)
        return mem.read()


def _ground(box: tuple[int, int, int, int], t: rasterio.Affine) -> tuple[float, float, float, float]:
    """A (top, left, h, w) pixel box → (west, south, east, north) in the raster's CRS (north-up)."""
    top, left, h, w = box
    return t.c + left * t.a, t.f + (top + h) * t.e, t.c + (left + w) * t.a, t.f + top * t.e


def _read(path: Path, indexes: list[int]) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as ds:
        return ds.read(indexes), ds.transform


# --- the kit, on every shipped raster ----------------------------------------------------------
@pytest.mark.parametrize("path, config", [
    (S2_10M, {}), (S2_20M, {"group": "rededge"}), (S2_20M, {"group": "swir"}),
    (S2_60M, STACK_CONFIG), (L7, L7_CONFIG),
])
def test_check_plugin_on_real_rasters(path, config):
    plugin = MultispectralPlugin(config)
    check_plugin(plugin, good=[_bytes(path)], bad=[b"", b"not a raster" * 50, _bytes(path, 4096)])


def test_entry_point_and_native_check():
    assert "multispectral" in available_modalities()
    assert MultispectralPlugin.check_native().startswith(f"rasterio {rasterio.__version__}, GDAL")


def test_defaults_are_satmae():
    plugin = MultispectralPlugin()
    lay = plugin.layout
    assert (lay.group, lay.chip_px, lay.patch_px, lay.reference_m) == (("B2", "B3", "B4", "B8"), 96, 8, 10.0)
    assert plugin.token_shape == (144, 8 * 8 * 4, 2)
    assert plugin.default_mask == {"strategy": "random", "ratio": 0.75}
    assert [(a.name, a.unit, a.size) for a in plugin.axes] == [("y", "m", 12), ("x", "m", 12)]
    twenty = MultispectralPlugin({"group": "rededge"})  # 20 m: a token is 4 px, the same 80 m of ground
    assert (twenty.layout.chip_px, twenty.layout.patch_px, twenty.token_shape) == (48, 4, (144, 4 * 4 * 4, 2))
    assert MultispectralPlugin({"group": "swir"}).token_shape == (144, 4 * 4 * 2, 2)


# --- sensors -----------------------------------------------------------------------------------
def test_sensor_records():
    assert [canonical_band(n) for n in ("B02", " b8a ", "B08A", "B12", "nir")] == ["B2", "B8A", "B8A", "B12", "NIR"]
    s2 = get_sensor("sentinel2_l1c")
    assert s2.groups == {"rgbn": ("B2", "B3", "B4", "B8"), "rededge": ("B5", "B6", "B7", "B8A"), "swir": ("B11", "B12")}
    assert (s2.band("B02").resolution_m, s2.band("B8A").wavelength_nm, s2.scale, s2.nodata) == (10, 864.7, 1e-4, 0)
    assert "B10" in s2.band_names and "B10" not in get_sensor("sentinel2_l2a").band_names
    assert get_sensor("landsat_oli").band("B5").common_name == "nir08"
    assert get_sensor("landsat7_etm").find("B6") is None  # thermal: no reflectance
    with pytest.raises(KeyError, match="unknown sensor 'sentinel3'.*registered: aerial_rgbn"):
        get_sensor("sentinel3")
    with pytest.raises(ValidationError, match="group 'x' names B99"):
        Sensor(name="bad", bands=[Band(name="B1", wavelength_nm=500, resolution_m=10)], groups={"x": ("B99",)})
    with pytest.raises(ValueError, match="already registered"):
        register_sensor(s2.model_copy(update={"scale": 1.0}))


def test_user_sensor_record_from_the_config():
    """A sensor no code knows, given whole in the config (as a spec would): the shipped Landsat-7 DNs / 255."""
    record = {"name": "etm_dn", "nodata": None, "scale": 1 / 255,
              "bands": [{"name": b, "wavelength_nm": w, "resolution_m": 28.5, "common_name": c} for b, w, c in
                        zip(L7_BANDS, [485, 560, 660, 835, 1650, 2220],
                            ["blue", "green", "red", "nir08", "swir16", "swir22"], strict=True)],
              "groups": {"vnir": ["B1", "B2", "B3", "B4"]}}
    plugin = MultispectralPlugin({"sensor": record, "bands": L7_BANDS})
    array = plugin.decode(_bytes(L7), "L7_ETMs.tif")
    raw, _ = _read(L7, [1, 2, 3, 4])
    np.testing.assert_allclose(array, raw.transpose(1, 2, 0) / 255, rtol=1e-6)
    assert plugin.composites() == [(2, 1, 0), (3, 2, 1)]  # true colour, NIR false colour
    check_plugin(plugin, good=[_bytes(L7)], bad=[])


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="unknown sensor 'modis'"):
        MultispectralPlugin({"sensor": "modis"})
    with pytest.raises(ValidationError, match="'B13' is not a band of sensor sentinel2_l1c"):
        MultispectralPlugin({"group": ["B2", "B13"]})
    with pytest.raises(ValidationError, match="mixes native resolutions.*10 m, 20 m"):
        MultispectralPlugin({"group": ["B2", "B5"]})
    with pytest.raises(ValidationError, match="not whole pixels"):
        MultispectralPlugin({"resolution_m": 60})  # an 8 px patch at 10 m is 1.33 px at 60 m


# --- bands by name -----------------------------------------------------------------------------
def test_bands_selected_and_ordered_by_name():
    """The 13-band stack's B8A, B2, B12 (file bands 9, 2, 13) in the group's order, × 1e-4."""
    plugin = MultispectralPlugin({"group": ["B8A", "B02", "b12"], "resolution_m": 60, "reference_m": 60})
    array = plugin.decode(_bytes(S2_60M), "stack.tif")
    raw, _ = _read(S2_60M, [9, 2, 13])
    assert array.shape == (324, 322, 3) and array.dtype == np.float32
    np.testing.assert_allclose(array, (raw * 1e-4).transpose(1, 2, 0).astype(np.float32), rtol=1e-6)
    ten = MultispectralPlugin({"group": ["B8", "B4", "B3"]}).decode(_bytes(S2_10M), "10m.tif")
    np.testing.assert_allclose(ten, (_read(S2_10M, [4, 3, 2])[0] * 1e-4).transpose(1, 2, 0), rtol=1e-6)


def test_bands_from_the_config_list_when_the_file_has_none():
    plugin = MultispectralPlugin(L7_CONFIG | {"group": ["B4", "B3", "B2"]})
    raw, _ = _read(L7, [4, 3, 2])
    np.testing.assert_allclose(plugin.decode(_bytes(L7), "l7.tif"), (raw * 2.75e-5 - 0.2).transpose(1, 2, 0),
                               rtol=1e-5)


# --- the same ground at two resolutions ----------------------------------------------------------
def test_10m_and_20m_chips_of_one_view_cover_the_same_ground():
    ten, twenty = MultispectralPlugin(), MultispectralPlugin({"group": "rededge"})
    a10, a20 = ten.decode(_bytes(S2_10M), "10m"), twenty.decode(_bytes(S2_20M), "20m")
    _, t10 = _read(S2_10M, [1])
    _, t20 = _read(S2_20M, [1])
    views = [ten.frame_view(a10, None)] + [ten.frame_view(a10, np.random.default_rng(i)) for i in range(20)]
    assert len({(v.top, v.left) for v in views}) > 10
    for view in views:
        boxes = [view.box(*a.shape[:2]) for a in (a10, a20)]
        assert boxes[0][2:] == (96, 96) and boxes[1][2:] == (48, 48)
        ground = [_ground(box, t) for box, t in zip(boxes, (t10, t20), strict=True)]
        assert ground[0] == ground[1]  # the same 960 m square in EPSG:32618 coordinates
        s10, s20 = ten.tokenize(a10, None, view), twenty.tokenize(a20, None, view)
        assert s10.axes == s20.axes and np.array_equal(s10.coords, s20.coords)
    # the held-out strip: both files lose the same ground, and a view of it still lines up
    strips = ten.region(a10, 0.75, 1.0), twenty.region(a20, 0.75, 1.0)
    view = ten.frame_view(strips[0], np.random.default_rng(3))
    (top, left, h, w), (top2, left2, h2, w2) = (view.box(*s.shape[:2]) for s in strips)
    assert (top, left, h, w) == (2 * top2, 2 * left2, 2 * h2, 2 * w2)


def test_eval_view_is_central_and_training_views_avoid_nodata():
    bands = np.full((4, 256, 256), 1000, np.uint16)
    bands[:, :, :160] = 0  # nodata on the left 160 columns
    plugin = MultispectralPlugin()
    array = plugin.decode(_tiff(bands, ["B2", "B3", "B4", "B8"]), "half.tif")
    for seed in range(30):
        chip = plugin.chip(array, plugin.frame_view(array, np.random.default_rng(seed)))
        assert np.isfinite(chip).all(axis=2).mean() >= 0.5
    full = plugin.decode(_bytes(S2_10M), "10m")
    assert plugin.frame_view(full, None) == FrameView(208 / 512, 208 / 512, 96 / 512, 96 / 512, False)


# --- statistics ----------------------------------------------------------------------------------
def test_scan_statistics_equal_numpys_over_the_valid_pixels():
    raw, _ = _read(S2_20M, [1, 2, 3, 4, 5, 6])
    raw[:, 10:60, 20:90] = 0  # the sensor's nodata value
    raw[1, 100:110, :] = 7  # the file's declared nodata value, in one band only
    data = _tiff(raw, ["B05", "B06", "B07", "B8A", "B11", "B12"], nodata=7, res=20)
    plugin = MultispectralPlugin({"group": ["B5", "B6", "B7", "B8A"]})
    samples, totals = plugin.scan_file(data, "20m.tif")
    # 5 × 5 tiles of 48 px; the one at row 0, column 1 is 69 % nodata: skipped, and counted
    assert samples == 24 and totals.pop(VIEWS_SKIPPED) == 1 and set(totals) == set(plugin.statistics)
    for i, band in enumerate(["B5", "B6", "B7", "B8A"]):
        valid = (raw[i] != 0) & (raw[i] != 7)
        v = (raw[i][valid] * 1e-4).astype(np.float32).astype(np.float64)  # the canonical float32 reflectance
        assert totals[f"{band}_count"] == valid.sum() < raw[i].size
        assert totals[f"{band}_sum"] == pytest.approx(v.sum(), rel=1e-12)
        assert totals[f"{band}_sumsq"] == pytest.approx((v**2).sum(), rel=1e-12)
    fields = plugin.with_statistics(totals)
    v = (raw[1][(raw[1] != 0) & (raw[1] != 7)] * 1e-4).astype(np.float32).astype(np.float64)
    assert fields["mean"]["B6"] == pytest.approx(v.mean(), rel=1e-9)
    assert fields["std"]["B6"] == pytest.approx(v.std(), rel=1e-6)
    tuned = MultispectralPlugin(plugin.config.model_dump() | fields)  # saved with the run, read back
    stream = tuned.tokenize(tuned.decode(data, "20m.tif"), None)
    assert abs(float(stream.values[stream.valid].mean())) < 1.0


# --- bad input: each a test ----------------------------------------------------------------------
def test_a_band_the_sensor_lacks():
    with pytest.raises(BadInputError, match=r"band 'B06' \(band 2 of the file\) is not a band of sensor landsat7_etm "
                                            r"\(B1, B2, B3, B4, B5, B7, B8\)"):
        MultispectralPlugin({"sensor": "landsat7_etm", "group": "swir"}).decode(_bytes(S2_20M), "20m.tif")
    odd = _tiff(np.ones((2, 96, 96), np.uint16), ["B02", "B13"])
    with pytest.raises(BadInputError, match="'B13'.*not a band of sensor sentinel2_l1c"):
        MultispectralPlugin({"group": ["B2"]}).decode(odd, "odd.tif")
    with pytest.raises(BadInputError, match="lacks band.*B5, B6, B7, B8A of the group.*it has B2, B3, B4, B8"):
        MultispectralPlugin({"group": "rededge"}).decode(_bytes(S2_10M), "10m.tif")


def test_a_band_count_that_does_not_match_the_declared_list():
    with pytest.raises(BadInputError, match=r"the file has 6 bands \(\?, \?, \?, \?, \?, \?\), the config's bands "
                                            r"list 5 \(B1, B2, B3, B4, B5\)"):
        MultispectralPlugin(L7_CONFIG | {"bands": L7_BANDS[:5]}).decode(_bytes(L7), "l7.tif")
    with pytest.raises(BadInputError, match="no .*description.*bands list of 6 names of sensor landsat7_etm"):
        MultispectralPlugin(L7_CONFIG | {"bands": None}).decode(_bytes(L7), "l7.tif")
    with pytest.raises(BadInputError, match="band 1 of the file is described 'B02', the config's bands list says 'B3'"):
        MultispectralPlugin({"bands": ["B3", "B2", "B4", "B8"]}).decode(_bytes(S2_10M), "10m.tif")


def test_an_all_nodata_chip_and_scene():
    bands = np.full((4, 192, 192), 900, np.uint16)
    bands[:, :, :96] = 0
    plugin = MultispectralPlugin()
    array = plugin.decode(_tiff(bands, ["B2", "B3", "B4", "B8"]), "half.tif")
    left = FrameView(0.0, 0.0, 0.5, 0.5)
    with pytest.raises(BadInputError, match="all-nodata chip") as err:
        plugin.tokenize(array, None, left)
    assert err.value.stage == "tokenize"
    straddle = plugin.tokenize(array, None, FrameView(0.0, 0.25, 0.5, 0.5))  # half nodata: those tokens invalid
    assert straddle.valid.sum() == 72 and np.isfinite(straddle.values).all()
    with pytest.raises(BadInputError, match="all nodata: no pixel of bands B2, B3, B4, B8"):
        plugin.decode(_tiff(np.zeros((4, 96, 96), np.uint16), ["B2", "B3", "B4", "B8"]), "empty.tif")
    sparse = np.zeros((4, 192, 192), np.uint16)
    sparse[:, :40, :40] = 500  # 1600 valid pixels: no 96² chip is half valid
    with pytest.raises(BadInputError, match="no chip of 96 px has ≥ 50% valid pixels"):
        plugin.frame_view(plugin.decode(_tiff(sparse, ["B2", "B3", "B4", "B8"]), "s.tif"), None)


def test_nan_pixels_never_reach_the_values():
    refl = np.full((4, 96, 96), 0.2, np.float32)
    refl[:, :8, :] = np.nan  # the first token row
    refl[2, 8:12, :] = np.nan  # half of the second row, in one band
    refl[:, 40, 40] = np.inf
    plugin = MultispectralPlugin({"scale": 1.0})  # a float reflectance file
    array = plugin.decode(_tiff(refl, ["B2", "B3", "B4", "B8"]), "float.tif")
    assert np.isnan(array[:8]).all() and np.isnan(array[40, 40]).all()
    stream = plugin.tokenize(array, None)
    assert np.isfinite(stream.values).all()
    assert not stream.valid[:12].any() and stream.valid[12:].all()  # row 2 is half valid: kept


def test_a_truncated_tiff():
    with pytest.raises(BadInputError, match="corrupt or truncated raster: TIFFReadDirectory"):
        MultispectralPlugin().decode(_bytes(S2_10M, 600_000), "cut.tif")
    with rasterio.open(S2_10M) as ds:
        cog = _tiff(ds.read(), list(ds.descriptions), driver="COG")  # header first: the cut loses tiles
    with pytest.raises(BadInputError, match="corrupt or truncated raster:.*(TIFFReadEncodedTile|IReadBlock)") as err:
        MultispectralPlugin().decode(cog[: len(cog) // 2], "cut_cog.tif")
    assert "vsimem" not in err.value.reason
    with pytest.raises(BadInputError, match="not a raster format GDAL reads"):
        MultispectralPlugin().decode(b"II*\x00" + b"\x00" * 64, "junk.tif")


def test_an_unexpected_dtype():
    data = _tiff(np.ones((4, 96, 96), np.complex64), ["B2", "B3", "B4", "B8"])
    with pytest.raises(BadInputError, match="unexpected dtype complex64"):
        MultispectralPlugin().decode(data, "complex.tif")


def test_a_pixel_size_the_group_does_not_have():
    with pytest.raises(BadInputError, match="pixel size 60×60 m, but group B2, B3, B4, B8 is read at 10 m"):
        MultispectralPlugin().decode(_bytes(S2_60M), "stack.tif")
    with pytest.raises(BadInputError, match="smaller than a chip"):
        MultispectralPlugin().decode(_tiff(np.ones((4, 64, 64), np.uint16), ["B2", "B3", "B4", "B8"]), "s.tif")


# --- render --------------------------------------------------------------------------------------
def test_render_composites():
    plugin = MultispectralPlugin()
    assert plugin.composites() == [(2, 1, 0), (3, 2, 1)]  # B4 B3 B2 true colour; B8 B4 B3 false colour
    assert MultispectralPlugin({"group": "rededge"}).composites() == [(0, 1, 2)]
    assert MultispectralPlugin(STACK_CONFIG).composites() == [(3, 2, 1), (7, 3, 2), (12, 11, 8)]  # + SWIR
    stream = plugin.tokenize(plugin.decode(_bytes(S2_10M), "10m"), None)
    stream.visible = np.arange(144) % 4 == 0
    picture = plugin.render(stream, np.zeros_like(stream.values))
    assert picture.dtype == np.uint8 and picture.shape == (2 * 192 + 4, 3 * 192 + 8, 3)
    hidden = picture[:8, 192 + 4 + 16 : 192 + 4 + 24]  # token (0, 1) of the visible panel is hidden: grey
    assert (hidden == 128).all()
