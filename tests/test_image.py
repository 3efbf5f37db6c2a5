import io

import numpy as np
import pytest
import torch
from PIL import Image

from polymae.modalities import BadInputError, make_plugin
from polymae.ops import patchify, unpatchify
from polymae.testing import check_plugin


def test_patchify_round_trip_and_mae_order():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(224, 224, 3)).astype(np.float32)
    tokens = patchify(image, 16)
    assert tokens.shape == (196, 768)
    assert np.array_equal(unpatchify(tokens, 16, 14, 14), image)
    # MAE's patchify: imgs (N, 3, H, W) → einsum('nchpwq->nhwpqc') → (N, L, p*p*3)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].reshape(1, 3, 14, 16, 14, 16)
    mae = torch.einsum("nchpwq->nhwpqc", x).reshape(1, 196, 768)
    assert np.array_equal(mae[0].numpy(), tokens)


def test_decode_any_mode_to_rgb_and_exif(tmp_path):
    plugin = make_plugin("image")
    for mode in ["L", "RGBA", "P", "CMYK", "I;16"]:
        buf = io.BytesIO()
        Image.new(mode, (40, 30)).save(buf, format="TIFF")
        arr = plugin.decode(buf.getvalue(), "x.tif")
        assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8
    # EXIF orientation 6 (rotate 90° CW to display): 40×30 stored → 30×40 shown
    img = Image.new("RGB", (40, 30))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert plugin.decode(buf.getvalue(), "x.jpg").shape == (40, 30, 3)


def test_bad_images_raise_typed_error_with_reason(bad_image_files):
    plugin = make_plugin("image", {"max_pixels": 1_000_000})
    reasons = {}
    for name, data in bad_image_files.items():
        with pytest.raises(BadInputError) as info:
            plugin.decode(data, name)
        reasons[name] = info.value.reason
    assert "empty" in reasons["empty.jpg"]
    assert "oversized" in reasons["huge.png"]
    assert "not a recognised image" in reasons["not_an_image.jpg"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]


def test_tokenize_training_view_is_seeded(photo_paths):
    plugin = make_plugin("image")
    arr = plugin.decode(photo_paths[0].read_bytes(), str(photo_paths[0]))
    a = plugin.tokenize(arr, np.random.default_rng(1)).values
    b = plugin.tokenize(arr, np.random.default_rng(1)).values
    c = plugin.tokenize(arr, np.random.default_rng(2)).values
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # eval view: centre crop, no randomness
    assert np.array_equal(plugin.tokenize(arr, None).values, plugin.tokenize(arr, None).values)


def test_image_plugin_passes_conformance_kit(photo_paths, bad_image_files):
    plugin = make_plugin("image", {"max_pixels": 1_000_000})
    check_plugin(plugin, good=[p.read_bytes() for p in photo_paths[:3]], bad=list(bad_image_files.values()))
