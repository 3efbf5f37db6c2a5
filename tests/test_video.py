"""Video plugin (VideoMAE / V2) on real footage decoded by decord, and its masks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from polymae.modalities.base import BadInputError
from polymae.modalities.video import VideoPlugin
from polymae.models.mae import PolyMAE, loss_mask
from polymae.models.presets import resolve_model_config
from polymae.ops import tubeletify, untubeletify
from polymae.testing import check_plugin
from polymae.tokenizer import MaskPolicy, MaskSpec, get_strategy, sample_rng
from polymae.tokenizer.stream import streams_to_columns

VIDEOS = Path(__file__).resolve().parents[1] / "examples" / "data" / "video"
CUP, CARPHONE = VIDEOS / "opencv_cup.mp4", VIDEOS / "carphone_pristine.mp4"
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg makes the test videos")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Awkward and bad videos made with ffmpeg from the real footage."""
    d = tmp_path_factory.mktemp("videos")
    out = {name: d / name for name in ("short.mp4", "odd.mp4", "zero.mp4", "av1.mkv", "truncated.mp4",
                                       "text.mp4", "empty.mp4")}
    _ffmpeg("-i", str(CARPHONE), "-frames:v", "20", "-an", str(out["short.mp4"]))
    _ffmpeg("-i", str(CARPHONE), "-frames:v", "40", "-vf", "scale=175:143", "-c:v", "libx264",
            "-pix_fmt", "yuv444p", str(out["odd.mp4"]))
    _ffmpeg("-i", str(CARPHONE), "-frames:v", "0", str(out["zero.mp4"]))
    for encoder in (["libaom-av1", "-cpu-used", "8"], ["libsvtav1"], ["librav1e"]):  # whichever this ffmpeg has
        try:
            _ffmpeg("-i", str(CARPHONE), "-frames:v", "10", "-c:v", *encoder, str(out["av1.mkv"]))
            break
        except subprocess.CalledProcessError:
            continue
    out["truncated.mp4"].write_bytes(CUP.read_bytes()[: CUP.stat().st_size // 3])
    out["text.mp4"].write_text("this is a text file, not a video\n" * 20)
    out["empty.mp4"].write_bytes(b"")
    return out


def small(**config) -> VideoPlugin:
    return VideoPlugin({"img_size": 64, "num_frames": 8, "stride": 2, **config})


def test_tubelets_round_trip_and_order():
    clip = np.random.default_rng(0).random((4, 32, 48, 3)).astype(np.float32)
    tokens = tubeletify(clip, 2, 16)
    assert tokens.shape == (2 * 2 * 3, 2 * 16 * 16 * 3)
    assert np.array_equal(untubeletify(tokens, 2, 16, 2, 2, 3), clip)
    # token 1 is (t=0, y=0, x=1); its first values are frame 0, row 0, columns 16.. of the clip
    assert np.array_equal(tokens[1][:3], clip[0, 0, 16])


def test_default_is_videomae_and_tube_mask_repeats_over_time():
    plugin = VideoPlugin()
    assert plugin.token_shape == (1568, 1536, 3)
    stream = plugin.tokenize_file(CUP.read_bytes(), str(CUP), None)[0]
    spec = MaskSpec(**plugin.default_mask)
    assert (spec.strategy, spec.ratio) == ("tube", 0.9)
    for seed in range(3):
        visible = MaskPolicy({"video": spec})({"video": stream}, np.random.default_rng(seed))["video"]
        per_slice = visible.reshape(8, 196)
        assert (per_slice == per_slice[0]).all()  # one 2D mask for all 8 time slices
        assert per_slice[0].sum() == 196 - int(0.9 * 196) == 20  # VideoMAE's count


def _v2_running_cell(frames: int, height: int, width: int, start: int, ratio: float = 0.5) -> np.ndarray:
    """VideoMAE V2's RunningCellMaskingGenerator written out: True = dropped for the decoder."""
    dropped = int(4 * ratio)
    queue = np.hstack([np.ones(dropped), np.zeros(4 - dropped)])
    pointer, maps = start, []
    for _ in range(frames):
        pointer += 1  # run_cell, then get_cell
        cell = queue[(np.arange(4) + pointer) % 4].reshape(2, 2)
        maps.append(np.tile(cell, (height // 2, width // 2)).ravel())
    return np.stack(maps).astype(bool)


def test_running_cell_matches_videomae_v2():
    stream = VideoPlugin().tokenize(np.zeros((16, 224, 224, 3), np.uint8), None)
    spec = MaskSpec(strategy="running_cell", ratio=0.5)
    for seed in range(8):
        start = int(np.random.default_rng(seed).integers(4))
        kept = get_strategy("running_cell")(stream, spec, np.random.default_rng(seed)).reshape(8, 196)
        assert np.array_equal(~kept, _v2_running_cell(8, 14, 14, start))
        assert (kept.sum(axis=1) == 98).all()  # half of every slice
        assert not np.array_equal(kept[0], kept[1])  # the cell runs one step per slice


def test_dual_mask_loss_counts_hidden_and_decoded_tokens_only():
    plugin = small()
    stream = plugin.tokenize_file(CARPHONE.read_bytes(), str(CARPHONE), None)[0]
    policy = MaskPolicy({"video": MaskSpec(strategy="tube", ratio=0.75, decoder_strategy="running_cell")})
    policy.apply({"video": stream}, "clip", 0)
    assert (stream.visible & ~stream.decoded).any() and (~stream.visible & ~stream.decoded).any()
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns("video", [stream]).items()}
    torch.manual_seed(0)
    model = PolyMAE({"video": plugin}, resolve_model_config("tiny"))
    latent, ids_restore, keep = model.forward_encoder(batch)
    pred = model.forward_decoder(latent, ids_restore, keep, batch)["video"]
    mask = loss_mask(batch, "video")[0]
    assert torch.equal(mask, torch.as_tensor(~stream.visible & stream.decoded))
    per_token = ((pred[0] - plugin.target(batch["video.values"])[0]) ** 2).mean(-1)
    expected = per_token[mask].mean()
    assert torch.allclose(model.forward_loss(batch, {"video": pred})["video"], expected)
    # tokens the decoder dropped are not in its input. What the decoder would see of one is its
    # position (a hidden token's values reach neither encoder nor decoder), so moving the dropped
    # tokens changes no other prediction; moving decoder-kept hidden tokens does (the check bites)
    def moved(which: np.ndarray) -> torch.Tensor:
        changed = {**batch, "video.coords": batch["video.coords"].clone()}
        changed["video.coords"][0, torch.as_tensor(which)] += 3
        return model.forward_decoder(*model.forward_encoder(changed), changed)["video"][0]

    dropped = ~stream.decoded & ~stream.visible
    assert torch.allclose(moved(dropped)[mask], pred[0, mask], atol=1e-5)
    one_kept = np.zeros_like(mask.numpy())
    one_kept[np.flatnonzero(~stream.visible & stream.decoded)[0]] = True
    others = mask & ~torch.as_tensor(one_kept)
    assert not torch.allclose(moved(one_kept)[others], pred[0, others], atol=1e-5)


def test_clip_sampling_is_reproducible_and_clips_differ(monkeypatch):
    plugin = small(num_clips=3)
    data = CUP.read_bytes()
    opened = []
    original = VideoPlugin._open
    monkeypatch.setattr(VideoPlugin, "_open", lambda self, d, p: opened.append(p) or original(self, d, p))
    a = plugin.tokenize_file(data, str(CUP), sample_rng(0, "cup", 0, "augment"))
    b = plugin.tokenize_file(data, str(CUP), sample_rng(0, "cup", 0, "augment"))
    c = plugin.tokenize_file(data, str(CUP), sample_rng(1, "cup", 0, "augment"))
    assert len(opened) == 3  # one decode per call, however many clips
    assert len(a) == 3 and all(np.array_equal(x.values, y.values) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].values, c[0].values)
    assert not np.array_equal(a[0].values, a[1].values) and not np.array_equal(a[1].values, a[2].values)
    starts = [idx[0] for idx in plugin.clip_indices(217, sample_rng(0, "cup", 0, "augment"))]
    assert len(set(starts)) == 3
    evaluation = plugin.clip_indices(217, None)  # evenly spaced, first at 0, last at the end
    assert evaluation[0][0] == 0 and evaluation[-1][-1] == 216


def test_short_videos_follow_the_documented_rule(made):
    data, path = made["short.mp4"].read_bytes(), str(made["short.mp4"])  # 20 frames < span 61
    assert small(stride=4, short_video="repeat_last").clip_indices(20, None)[0][-1] == 19
    assert list(small(stride=4, short_video="loop").clip_indices(20, None)[0][:7]) == [0, 4, 8, 12, 16, 0, 4]
    assert len(small(stride=4).tokenize_file(data, path, None)) == 2
    with pytest.raises(BadInputError, match="too short: 20 frames < clip span 29"):
        small(stride=4, short_video="quarantine").tokenize_file(data, path, None)


def test_awkward_sizes_work(made):
    for path in (made["odd.mp4"], CARPHONE):  # 175×143 (odd), 176×144 (smaller than 224)
        streams = VideoPlugin().tokenize_file(path.read_bytes(), str(path), np.random.default_rng(0))
        assert streams[0].values.shape == (1568, 1536) and np.isfinite(streams[0].values).all()


@pytest.mark.parametrize("name, reason", [
    ("truncated.mp4", "truncated MP4: box 'mdat'"),
    ("text.mp4", "not a decodable video"),
    ("zero.mp4", "zero-frame video"),
    ("av1.mkv", "unsupported codec 'av1'"),
    ("empty.mp4", "empty file"),
])
def test_bad_videos_raise_with_reason(made, name, reason):
    if not made[name].exists():
        pytest.skip(f"this ffmpeg cannot make {name}")
    with pytest.raises(BadInputError, match=reason):
        small().tokenize_file(made[name].read_bytes(), str(made[name]), None)


def test_conformance_and_renders(made):
    plugin = small()
    check_plugin(plugin, good=[CARPHONE.read_bytes()], bad=[made["text.mp4"].read_bytes(), b""])
    stream = plugin.tokenize_file(CUP.read_bytes(), str(CUP), None)[0]
    MaskPolicy({"video": MaskSpec(strategy="tube", ratio=0.9, decoder_strategy="running_cell")}).apply(
        {"video": stream}, "cup", 0)
    pred = plugin.target(torch.as_tensor(stream.values)).numpy()
    strip = plugin.render(stream, pred)
    assert strip.shape == (3 * (64 + 4), 4 * (64 + 4), 3)
    frames = plugin.render_frames(stream, pred)
    assert len(frames) == 8 and frames[0].shape == (64, 3 * 64 + 8, 3)
    # a perfect prediction of a decoded token reproduces the original pixels in the reconstruction
    original, _, reconstruction = plugin._panels(stream, pred)
    shown = np.repeat((stream.decoded | stream.visible).reshape(4, 4, 4), 2, axis=0)
    shown = shown.repeat(16, axis=1).repeat(16, axis=2)
    assert np.abs(original[shown].astype(int) - reconstruction[shown]).max() <= 1


def test_bad_video_settings_fail_before_anything_runs():
    from polymae.pipelines.spec import SpecError, parse_spec

    def problems(config: dict, mask: dict) -> str:
        with pytest.raises(SpecError) as info:
            parse_spec({"name": "v", "sources": [{"modality": "video", "paths": [str(VIDEOS)], "config": config}],
                        "tokenizer": {"mask": {"video": mask}}})
        return str(info.value)

    assert "sources.0.config.short_video = 'pad'" in problems({"short_video": "pad"}, {})
    assert "'repeat_last', 'loop' or 'quarantine'" in problems({"short_video": "pad"}, {})
    assert "decoder_ratio 0.1: running_cell" in problems({}, {"decoder_strategy": "running_cell",
                                                              "decoder_ratio": 0.1})
