"""Recipes follow their references: a one-stream model gets its plugin's reference decoder per
preset (VideoMAE, Point-MAE); several streams under a joint decoder keep the preset's."""

from pathlib import Path

import pytest

from polymae.models.presets import PRESETS
from polymae.pipelines.spec import parse_spec

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
PATHS = {"image": "images", "video": "video", "points": "points", "audio": "audio"}


def _decoder(preset: str, *modalities: str, **overrides) -> tuple[int, int, int]:
    sources = [{"name": f"s{i}", "modality": m, "paths": [str(DATA / PATHS[m])]} for i, m in enumerate(modalities)]
    spec = parse_spec({"name": "t", "sources": sources, "model": {"preset": preset, "overrides": overrides}})
    cfg = spec.resolved_model()
    return cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads


@pytest.mark.parametrize(("modality", "preset", "expected"), [
    ("image", "base", (8, 512, 16)),   # MAE: dec512d8b
    ("image", "large", (8, 512, 16)),
    ("video", "base", (4, 384, 6)),    # VideoMAE ViT-B: 4 blocks, 384 wide
    ("video", "small", (4, 192, 3)),
    ("video", "large", (4, 512, 8)),
    ("points", "small", (4, 384, 6)),  # Point-MAE: 4 blocks at 384
    ("points", "base", (4, 384, 6)),
    ("audio", "base", (8, 512, 16)),   # AudioMAE's global decoder (its Swin local decoder is not built)
])
def test_one_stream_takes_its_reference_decoder(modality, preset, expected):
    assert _decoder(preset, modality) == expected


@pytest.mark.parametrize("modality", ["image", "video", "points", "audio"])
def test_tiny_stays_tiny(modality):
    tiny = PRESETS["tiny"]
    assert _decoder("tiny", modality) == (tiny.decoder_depth, tiny.decoder_width, tiny.decoder_heads)


def test_joint_decoder_over_several_streams_keeps_the_preset():
    base = PRESETS["base"]
    assert _decoder("base", "video", "audio") == (base.decoder_depth, base.decoder_width, base.decoder_heads)
    assert _decoder("base", "video", "video") == (8, 512, 16)  # two cameras: no single reference


def test_overrides_win_over_the_reference():
    assert _decoder("base", "video", decoder_depth=2) == (2, 384, 6)
    assert _decoder("base", "points", decoder_width=192, decoder_heads=3) == (4, 192, 3)
