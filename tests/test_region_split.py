"""Held-out regions (``split.region``): training never crops a frame's held-out strip, evaluation
scores only it, co-registered streams cut the same strip; per-stream scores against the trivial
predictor and cross-modal prediction (a stream from the others alone) with their renders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymae.orchestration.checkpoint import build_model
from polymae.orchestration.evaluation import render_cross, stream_scores
from polymae.pipelines.data import epoch_manifest, fixed_batch, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample
from polymae.pipelines.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def halves(tmp_path) -> list[Sample]:
    """Two real-encoded PNG pairs (RGB + 16-bit depth) whose right quarter differs from the rest:
    black RGB and 1 m depth on the left 3/4, white RGB and 3 m depth on the right 1/4."""
    samples = []
    for i in range(2):
        rgb, depth = np.zeros((96, 160, 3), np.uint8), np.full((96, 160), 1000, np.uint16)
        rgb[:, 120:], depth[:, 120:] = 255, 3000
        for folder, array in (("rgb", rgb), ("depth", depth)):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / folder / f"s{i}.png")
        samples.append(Sample(f"s{i}", {"rgb": str(tmp_path / "rgb" / f"s{i}.png"),
                                        "depth": str(tmp_path / "depth" / f"s{i}.png")}))
    return samples


def _spec(tmp_path: Path, **over) -> object:
    data = {"name": "region", "seed": 3, "pairing": {"key": "stem"}, "split": {"region": 0.25},
            "model": {"preset": "tiny"}, "train": {"batch_size": 4},
            "sources": [{"name": "rgb", "modality": "image", "paths": [str(tmp_path / "rgb")], "frame": "cam",
                         "config": {"img_size": 32}},
                        {"name": "depth", "modality": "depth", "paths": [str(tmp_path / "depth")], "frame": "cam",
                         "config": {"img_size": 32, "standardize": False}}]}
    data.update(over)
    return parse_spec(data)


def _rgb_pixels(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Norm-free pixel values 0 … 1 of the rgb tokens (undo ImageNet normalisation)."""
    values = batch["rgb.values"].reshape(*batch["rgb.values"].shape[:2], -1, 3)
    return values * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])


def test_training_never_crops_the_held_out_strip_and_evaluation_scores_only_it(tmp_path, halves):
    spec = _spec(tmp_path)
    kwargs = stream_kwargs(spec)
    assert kwargs["region"] == (0.0, 0.75) and stream_kwargs(spec, train=False)["region"] == (0.75, 1.0)
    for start in range(0, 40, 4):  # 40 augmented views: random crops, flips
        batch = tokenize_batch(manifest_batch(epoch_manifest(halves, spec.seed, start, 4)), **kwargs)
        assert _rgb_pixels(batch).max() < 0.05  # never a white pixel of the held-out strip
        depth = batch["depth.values"][..., :256][batch["depth.values"][..., 256:] > 0]  # 16² depths, 16² flags
        assert np.allclose(depth, 1.0)  # 1 m readings only (no 3 m)
    held = fixed_batch(spec, halves)
    assert _rgb_pixels(held).min() > 0.95
    assert np.allclose(held["depth.values"][..., :256], 3.0)


def test_a_region_split_needs_streams_with_a_frame(tmp_path):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "split": {"region": 0.2},
                    "sources": [{"modality": "audio", "paths": [str(ROOT / "examples/data/audio")]}]})
    assert any(p.startswith("split.region = 0.2: streams audio (audio) have no spatial frame") and
               "allowed with: depth, image" in p for p in info.value.problems), info.value.problems


def test_stream_scores_and_cross_modal_renders(tmp_path, halves):
    spec = _spec(tmp_path, split={})
    model = build_model(spec)
    batch = fixed_batch(spec, halves)
    batch["depth.valid"][1] = False  # sample 1 lacks depth: scored on rgb only, never cross-predicted
    scores = stream_scores(model, batch)
    assert set(scores) == {"rgb", "rgb_trivial", "depth", "depth_trivial", "cross/rgb", "cross/rgb_trivial",
                           "cross/depth", "cross/depth_trivial"}
    assert all(np.isfinite(v) and v >= 0 for v in scores.values())
    assert scores["depth_trivial"] > 0.5  # zero predicted for 1 m readings (unstandardised): |1 − 0|
    written = render_cross(model, batch, tmp_path / "renders" / "cross.png")
    assert sorted(p.name for p in written) == ["cross_depth.png", "cross_rgb.png"]
    for path in written:
        picture = np.asarray(Image.open(path))
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= 3 * 32
