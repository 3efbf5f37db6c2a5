import io
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymae.modalities import BadInputError, make_plugin, register_modality
from polymae.modalities.depth import DepthPlugin
from polymae.models.losses import masked_l1
from polymae.ops import FrameView
from polymae.testing import check_plugin
from polymae.tokenizer import MaskPolicy, MaskSpec, streams_to_columns

ROOT = Path(__file__).resolve().parents[1]
RGBD = ROOT / "examples" / "data" / "rgbd"
DEPTHS = sorted((RGBD / "depth").glob("*.png"))
register_modality(DepthPlugin)  # the installed checkout may predate the entry point


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _pfm(array: np.ndarray, channels: int = 1) -> bytes:
    head = b"Pf\n" if channels == 1 else b"PF\n"
    h, w = array.shape[:2]
    return head + f"{w} {h}\n-1.0\n".encode() + np.ascontiguousarray(array[::-1], "<f4").tobytes()


@pytest.fixture(scope="module")
def kinect() -> np.ndarray:
    return DepthPlugin().decode((RGBD / "depth" / "kinect_0001.png").read_bytes(), "kinect_0001.png")


def _bad_files() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, the words the reason must hold)."""
    good = (RGBD / "depth" / "kinect_0001.png").read_bytes()
    return {
        "empty.png": (b"", "empty"),
        "text.png": (b"this is a text file, not a depth map\n" * 20, "not a recognised"),
        "rgb_as_depth.png": ((RGBD / "rgb" / "kinect_0001.png").read_bytes(), "wrong channels"),
        "8bit.png": (_png(np.full((40, 50), 7, np.uint8)), "wrong bit depth"),
        "1bit.png": (_png(np.ones((40, 50), bool)), "wrong bit depth"),
        "all_missing.png": (_png(np.zeros((40, 50), np.uint16)), "all-missing"),
        "huge.png": (_png(np.ones((1100, 1000), np.uint16)), "oversized"),
        "truncated.png": (good[: len(good) // 3], "truncated"),
        "object.npy": (_npy(np.array([{"a": 1}], dtype=object)), "object arrays"),
        "rgb.npy": (_npy(np.ones((4, 5, 3), np.float32)), "wrong channels"),
        "nan.npy": (_npy(np.full((4, 5), np.nan, np.float32)), "all-missing"),
        "rgb.pfm": (_pfm(np.ones((4, 5, 3), np.float32), channels=3), "wrong channels"),
    }


def test_depth_plugin_passes_conformance_kit_on_real_files():
    assert len(DEPTHS) == 2
    plugin = make_plugin("depth", {"max_pixels": 1_000_000})
    check_plugin(plugin, good=[p.read_bytes() for p in DEPTHS], bad=[b for b, _ in _bad_files().values()])


def test_real_files_decode_to_metres_with_holes(kinect):
    assert kinect.shape == (480, 640) and kinect.dtype == np.float32
    valid = np.isfinite(kinect)
    assert abs(valid.mean() - 0.8894) < 1e-3  # 0 = no reading in the Kinect PNG
    assert 1.5 < np.nanmin(kinect) and np.nanmax(kinect) < 2.6  # a bookshelf at 1.6–2.6 m
    moto = make_plugin("depth").decode((RGBD / "depth" / "motorcycle.png").read_bytes(), "motorcycle.png")
    assert moto.shape == (500, 741)
    assert 2.0 < np.nanmin(moto) and np.nanmax(moto) < 5.1  # f·B/(d + doffs) over the GT disparities
    assert abs(np.isfinite(moto).mean() - 0.9265) < 1e-3  # Middlebury's pixels without ground truth


def test_bad_inputs_raise_each_reason():
    plugin = make_plugin("depth", {"max_pixels": 1_000_000})
    for name, (data, words) in _bad_files().items():
        with pytest.raises(BadInputError) as info:
            plugin.decode(data, name)
        assert words in info.value.reason, (name, info.value.reason)
    # an 8-bit map is fine as disparity; a file over max_file_bytes is refused before it is read
    disparity = make_plugin("depth", {"kind": "disparity", "scale": 1.0})
    assert np.allclose(disparity.decode(_bad_files()["8bit.png"][0], "d.png"), 7.0)
    with pytest.raises(BadInputError, match="oversized file"):
        make_plugin("depth", {"max_file_bytes": 10}).decode(_bad_files()["8bit.png"][0], "d.png")


def test_float_maps_and_missing_readings():
    plugin = make_plugin("depth")
    metres = np.linspace(0.5, 4.0, 20, dtype=np.float32).reshape(4, 5)
    holes = metres.copy()
    holes[0, 0], holes[1, 1], holes[2, 2], holes[3, 3] = 0.0, np.nan, np.inf, -1.0
    for data in (_npy(holes), _pfm(holes)):
        got = plugin.decode(data, "x")
        assert np.array_equal(np.isnan(got), ~(np.isfinite(holes) & (holes > 0)))
        assert np.allclose(got[np.isfinite(got)], metres[np.isfinite(got)])  # floats: no ×0.001
    mm = plugin.decode(_npy((metres * 1000).astype(np.uint16)), "x.npy")  # integers: × scale
    assert np.allclose(mm, metres, atol=1e-3)
    tiff = io.BytesIO()
    Image.fromarray(metres, mode="F").save(tiff, format="TIFF")
    assert np.allclose(plugin.decode(tiff.getvalue(), "x.tif"), metres)


def test_frame_view_draws_as_the_image_plugin():
    image, depth = make_plugin("image"), make_plugin("depth")
    frame = np.zeros((480, 640), np.float32)
    flips = set()
    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        drawn = depth.frame_view(frame, a)
        assert drawn == image.frame_view(np.zeros((480, 640, 3), np.uint8), b)
        assert a.random() == b.random()  # the same number of draws
        flips.add(drawn.hflip)
    assert flips == {True, False}
    assert depth.frame_view(frame, None) == image.frame_view(np.zeros((480, 640, 3), np.uint8), None)


def _scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene at two resolutions: RGB at height × width with R = x and G = y (fractions of the
    frame × 255), depth at half that whose value encodes its pixel's (y, x) fraction exactly."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs + 0.5) / width, (ys + 0.5) / height, np.zeros_like(xs, float)], -1)
    dh, dw = height // 2, width // 2
    dy, dx = np.mgrid[0:dh, 0:dw]
    depth = (1 + dy * dw + dx).astype(np.float32)  # pixel id + 1 (> 0: a reading)
    return (rgb * 255).round().astype(np.uint8), depth


def _depth_fractions(crop: np.ndarray, dh: int, dw: int) -> tuple[np.ndarray, np.ndarray]:
    ids = crop.astype(np.int64) - 1
    return (ids // dw + 0.5) / dh, (ids % dw + 0.5) / dw


def test_shared_frame_view_crops_the_same_scene_region():
    """A view drawn by the image plugin, handed to the depth plugin, covers the same part of the
    scene at another resolution, flip included: per output pixel, the depth pixel's frame position
    matches the RGB pixel's to within a pixel or two; a different view does not."""
    image, depth = make_plugin("image"), make_plugin("depth")
    rgb, ids = _scene(480, 640)
    inner = (slice(3, -3), slice(3, -3))  # bicubic clamps at the crop border
    for seed in range(6):
        view = image.frame_view(rgb, np.random.default_rng(seed))
        img = image.view(rgb, None, view).astype(np.float64) / 255
        fy, fx = _depth_fractions(depth.view(ids, None, view), 240, 320)
        assert np.abs(img[..., 0] - fx)[inner].max() < 0.012, seed
        assert np.abs(img[..., 1] - fy)[inner].max() < 0.012, seed
    other = FrameView(view.top, view.left, view.height, view.width, not view.hflip)
    fy, fx = _depth_fractions(depth.view(ids, None, other), 240, 320)
    assert np.abs(img[..., 0] - fx)[inner].max() > 0.05  # the check can fail


def test_nearest_resize_neither_blends_readings_nor_fills_holes(kinect):
    plugin = make_plugin("depth")
    readings = set(np.unique(kinect[np.isfinite(kinect)]).tolist())
    for seed in range(3):
        crop = plugin.view(kinect, np.random.default_rng(seed))
        assert crop.shape == (224, 224)
        assert set(np.unique(crop[np.isfinite(crop)]).tolist()) <= readings
        assert np.isnan(crop).any()  # the Kinect holes survive the resize


def test_tokens_truncated_standardisation_and_validity(kinect):
    plugin = make_plugin("depth")
    stream = plugin.tokenize(kinect, None)
    q = 256
    assert stream.values.shape == (196, 2 * q) and stream.coords.shape == (196, 2)
    assert np.array_equal(stream.coords[15], [1, 1])  # (row, col) grid as the image plugin
    crop = plugin.view(kinect, None)
    flags = stream.values[:, q:]
    assert np.array_equal(flags.reshape(14, 14, 16, 16).transpose(0, 2, 1, 3).reshape(224, 224),
                          np.isfinite(crop).astype(np.float32))
    # MultiMAE's standardisation, by hand: middle 80 % of the sorted valid depths, unbiased var
    v = np.sort(crop[np.isfinite(crop)].astype(np.float64))
    kept = v[int(0.1 * len(v)) : int(0.9 * len(v))]
    expect = (crop - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-6)
    depth = stream.values[:, :q].reshape(14, 14, 16, 16).transpose(0, 2, 1, 3).reshape(224, 224)
    assert np.allclose(depth[np.isfinite(crop)], expect[np.isfinite(crop)], atol=1e-5)
    assert (depth[~np.isfinite(crop)] == 0).all()


def test_patch_without_any_reading_is_padding(kinect):
    holed = kinect.copy()
    holed[:240, :320] = np.nan  # top-left quarter of the frame: no reading
    plugin = make_plugin("depth", {"crop_scale": (1.0, 1.0), "crop_ratio": (4 / 3, 4 / 3)})
    stream = plugin.tokenize(holed, None)  # centre square 480²: the hole covers its top-left
    grid = stream.valid.reshape(14, 14)
    assert not grid[:6, :4].any() and grid[7:, :].any() and stream.valid.sum() < 196
    policy = MaskPolicy({"depth": MaskSpec(ratio=0.75)})
    visible = policy({"depth": stream}, np.random.default_rng(0))["depth"]
    assert not (visible & ~stream.valid).any()


def test_masked_l1_reduction_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[5.0, 5.0], [1.0, 1.0]]])
    target = torch.zeros(2, 2, 2)
    mask = torch.tensor([[True, False], [True, True]])
    valid = torch.tensor([[[True, False], [True, True]], [[True, True], [False, False]]])
    # sample 0: |1| over one valid pixel → 1; sample 1: (5 + 5) / 2 = 5 → mean 3
    assert float(masked_l1(pred, target, mask, valid)) == pytest.approx(3.0)
    # without pixel validity: MultiMAE's MaskedL1Loss — sample 0: 1.5, sample 1: (5+5+1+1)/4 = 3
    assert float(masked_l1(pred, target, mask)) == pytest.approx(2.25)
    # a sample with nothing to score does not count; nothing at all → 0, through pred
    assert float(masked_l1(pred, target, torch.tensor([[False, False], [True, False]]), valid)) == 5.0
    p = pred.clone().requires_grad_()
    zero = masked_l1(p, target, torch.zeros(2, 2, dtype=torch.bool), valid)
    zero.backward()
    assert float(zero.detach()) == 0.0 and p.grad is not None


def test_missing_pixels_never_change_the_loss(kinect):
    plugin = make_plugin("depth")
    stream = plugin.tokenize(kinect, np.random.default_rng(3))
    stream.visible = MaskPolicy({})({"depth": stream}, np.random.default_rng(0))["depth"]
    values = torch.as_tensor(stream.values)[None]
    mask = torch.as_tensor(stream.valid & ~stream.visible)[None]
    hole = values[..., 256:] < 0.5
    hidden_holes = hole & mask[..., None]
    assert bool(hidden_holes.any())
    pred = plugin.target(values) + 0.3 * torch.randn(1, 196, 256, generator=torch.Generator().manual_seed(0))
    base = float(plugin.loss(pred, values, mask))
    assert float(plugin.loss(pred + 1e3 * hole, values, mask)) == base  # anything predicted in a hole
    moved = values.clone()
    moved[..., :256] += 7.0 * hole
    assert float(plugin.loss(pred, moved, mask)) == base  # anything stored in a hole
    reading = (~hole & mask[..., None]).float()
    assert float(plugin.loss(pred + reading, values, mask)) > base  # a reading does count


def test_render_panels(kinect):
    plugin = make_plugin("depth")
    stream = plugin.tokenize(kinect, None)
    stream.visible = MaskPolicy({})({"depth": stream}, np.random.default_rng(0))["depth"]
    picture = plugin.render(stream, plugin.target(torch.as_tensor(stream.values)).numpy())
    assert picture.shape == (224, 4 * 224 + 3 * 4, 3) and picture.dtype == np.uint8
    original, masked = picture[:, :224], picture[:, 228:452]
    crop = plugin.view(kinect, None)
    assert (original[np.isnan(crop)] == 0).all()  # holes black
    hidden = np.repeat(np.repeat((~stream.visible).reshape(14, 14), 16, 0), 16, 1)
    assert (masked[hidden] == 128).all() and not (masked[~hidden] == 128).all()
    # a perfect reconstruction shows the original wherever there is a reading
    recon = picture[:, 456:680]
    assert np.array_equal(recon[~np.isnan(crop)], original[~np.isnan(crop)])


def test_registry_entry_point_and_model_head():
    assert isinstance(make_plugin("depth"), DepthPlugin)
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["polymae.modalities"]
    assert eps["depth"] == "polymae.modalities.depth:DepthPlugin"
    plugin = make_plugin("depth")
    assert plugin.build_embed(32).in_features == 512  # depths + validity flags
    assert plugin.build_head(32).out_features == 256  # depths only


def test_depth_with_image_in_one_model(kinect):
    """An RGB stream and a depth stream of one frame, one shared view, through the model."""
    from polymae.models import PolyMAE, resolve_model_config

    image, depth = make_plugin("image", {"img_size": 64}), make_plugin("depth", {"img_size": 64})
    rgb = np.asarray(Image.open(RGBD / "rgb" / "kinect_0001.png").convert("RGB"))
    view = image.frame_view(rgb, np.random.default_rng(0))
    streams = {"image": image.tokenize(rgb, None, view), "depth": depth.tokenize(kinect, None, view)}
    assert np.array_equal(streams["image"].coords, streams["depth"].coords)
    MaskPolicy({"image": MaskSpec(ratio=0.75), "depth": MaskSpec(ratio=0.75)}).apply(streams, "0", 0)
    batch = {}
    for m, s in streams.items():
        batch.update({k: torch.as_tensor(v) for k, v in streams_to_columns(m, [s]).items()})
    torch.manual_seed(0)
    model = PolyMAE({"image": image, "depth": depth}, resolve_model_config("tiny", {"depth": 1}))
    loss, losses, preds = model(batch)
    assert preds["depth"].shape == (1, 16, 256) and torch.isfinite(loss)
    loss.backward()
    assert model.heads["depth"].weight.grad.abs().sum() > 0
