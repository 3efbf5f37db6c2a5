"""Learning, not just running: each `tiny` model's masked reconstruction loss on a fixed,
seeded evaluation batch falls by at least 30 % on the shipped real files, through the real
decode → augment → tokenize → mask path (the same functions the Ray Data stream runs)."""

from pathlib import Path

import pytest
import torch

from polymae.orchestration.checkpoint import build_model
from polymae.orchestration.evaluation import evaluate
from polymae.orchestration.train import learning_rate, make_optimizer
from polymae.pipelines.data import epoch_manifest, fixed_batch, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample, SampleFile, discover
from polymae.pipelines.scan import scan
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def train_and_evaluate(spec, files: list[SampleFile], eval_size: int = 8) -> tuple[float, float]:
    """→ (eval loss before, eval loss after ``spec.train.steps`` steps), each file a sample."""
    files = [Sample.of(f) for f in files]
    torch.set_num_threads(2)
    model = build_model(spec)
    optimizer = make_optimizer(model, spec.train)
    eval_batch = fixed_batch(spec, files, size=eval_size)
    before, _ = evaluate(model, eval_batch)
    kwargs, size = stream_kwargs(spec), spec.train.batch_size
    for step in range(spec.train.steps):
        batch = tokenize_batch(manifest_batch(epoch_manifest(files, spec.seed, step * size, size)), **kwargs)
        tensors = {k: torch.as_tensor(v) for k, v in batch.items() if "." in k}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, spec.train)
        model.train()
        loss, _, _ = model(tensors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, _ = evaluate(model, eval_batch)
    print(f"eval loss {before:.4f} -> {after:.4f} ({1 - after / before:.0%} lower)")
    return before, after


def _spec(modality: str, paths: list[Path], config: dict, mask: dict, steps: int, lr: float):
    return parse_spec({
        "name": "learn", "seed": 0,
        "sources": [{"modality": modality, "paths": [str(p) for p in paths], "config": config}],
        "tokenizer": {"mask": {modality: mask}},
        "model": {"preset": "tiny"},
        "train": {"steps": steps, "batch_size": 8, "lr": lr, "warmup_steps": 10, "precision": "fp32"},
    })


def test_tiny_image_mae_loss_falls_30_percent():
    spec = _spec("image", [ROOT / "examples/data/images"], {}, {"ratio": 0.75}, steps=150, lr=1e-3)
    files = discover(spec.sources[0], (".jpg",))
    assert len(files) == 11
    before, after = train_and_evaluate(spec, files)
    assert after <= 0.7 * before


def test_tiny_video_mae_loss_falls_30_percent():
    """VideoMAE V2 masks (tube 90 % + running cell 50 %) on the two shipped camera clips,
    16 clips from one decode of each; 64² crops keep it to about a minute on two cores."""
    config = {"img_size": 64, "decode_short_side": 73, "num_clips": 16}
    mask = {"strategy": "tube", "ratio": 0.9, "decoder_strategy": "running_cell"}
    spec = _spec("video", [ROOT / "examples/data/video"], config, mask, steps=500, lr=2e-3)
    files = [SampleFile(f.sample_id, f.path, 16, stream=f.stream) for f in discover(spec.sources[0], (".mp4",))]
    before, after = train_and_evaluate(spec, files)
    assert after <= 0.7 * before


def test_tiny_audio_mae_loss_falls_30_percent(ray_local):
    """AudioMAE settings (fbank 128×1024, random 80 %) on the shipped speech and the audio track
    of a real video; the spectrogram mean/std come from the scan's Ray Data aggregation."""
    paths = [ROOT / "examples/data/audio", ROOT / "examples/data/video/opencv_cup.mp4"]
    spec = _spec("audio", paths, {"from_video": True}, {"ratio": 0.8}, steps=100, lr=1e-3)
    files = scan(spec).good
    assert len(files) == 5 and spec.sources[0].config["std"] > 0
    before, after = train_and_evaluate(spec, files)
    assert after <= 0.7 * before


def test_tiny_point_mae_loss_falls_30_percent():
    """Point-MAE settings (1024 points, 64 groups of 32, random 60 %, Chamfer-L2) on the shipped
    bunny mesh and kitten scan."""
    spec = _spec("points", [ROOT / "examples/data/points"], {}, {"ratio": 0.6}, steps=50, lr=1e-3)
    files = discover(spec.sources[0], (".obj", ".xyz"))
    assert len(files) == 2
    before, after = train_and_evaluate(spec, files, eval_size=2)
    assert after <= 0.7 * before


def test_tiny_lidar_mae_loss_falls_30_percent():
    """Voxel-MAE settings (0.5 m pillars over ±50 m, random 70 %, Chamfer + count + occupancy BCE
    with empty-pillar queries) on the shipped Velodyne VLP-16 sweep; CPU-sized caps."""
    config = {"max_voxels": 1024, "num_empty": 256, "max_points_per_voxel": 16}
    spec = _spec("lidar", [ROOT / "examples/data/lidar/mrpt_vlp16_scan_kitti_format.bin"], config,
                 {"ratio": 0.7}, steps=40, lr=1e-3)
    files = discover(spec.sources[0], (".bin",))
    before, after = train_and_evaluate(spec, files, eval_size=1)
    assert after <= 0.7 * before
