"""Learning, not just running: each `tiny` model's masked reconstruction loss on a fixed,
seeded evaluation batch falls by at least 30 % on the shipped real files, through the real
decode → augment → tokenize → mask path (the same functions the Ray Data stream runs)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from polymae.modalities.registry import make_plugin
from polymae.orchestration.checkpoint import build_model
from polymae.orchestration.evaluation import evaluate
from polymae.orchestration.train import learning_rate, make_optimizer
from polymae.pipelines.data import epoch_manifest, fixed_batch, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample, SampleFile, discover
from polymae.pipelines.scan import scan
from polymae.pipelines.spec import load_spec, parse_spec

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
    16 clips from one decode of each, 400 steps (eval ratio 0.67 at 350, 0.65 at 500); about two minutes."""
    config = {"img_size": 64, "decode_short_side": 73, "num_clips": 16}
    mask = {"strategy": "tube", "ratio": 0.9, "decoder_strategy": "running_cell"}
    spec = _spec("video", [ROOT / "examples/data/video"], config, mask, steps=400, lr=2e-3)
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


def test_tiny_satmae_beats_the_trivial_predictor_on_the_held_out_strip():
    """examples/multispectral_mae.yaml as it is (SatMAE's three Sentinel-2 band groups of the shipped
    10 m + 20 m scene as one sample, 96² chips, independent 75 % masks, `tiny`), 100 steps (under a
    minute on two idle cores; measured ratios 0.58 rgbn, 0.59 rededge, 0.62 swir): on the
    chips of the right-hand quarter that training never crops (split.region), each group's loss is
    ≤ 0.8 × the trivial predictor's (zero under norm-pix). The per-file scan (tiles and band sums
    of the training part) runs as the Ray Data scan would, without Ray; samples of 20 chips each."""
    from polymae.orchestration.evaluation import stream_scores
    from polymae.pipelines.scan import scan_batch, scan_region

    spec = load_spec(ROOT / "examples/multispectral_mae.yaml",
                     ["train.steps=100", "train.warmup_steps=10", "train.precision=fp32"])
    views = {}
    for source in spec.sources:
        region = scan_region(spec, make_plugin(source.modality, source.config))
        out = scan_batch({"path": np.array(source.paths, dtype=object)}, source.modality, source.config, region)
        views[source.name] = int(out["num_samples"][0])
        totals = {k.removeprefix("statistic_"): float(v[0]) for k, v in out.items() if k.startswith("statistic_")}
        source.config.update(make_plugin(source.modality, source.config).with_statistics(totals))
    assert views == {"rgbn": 20, "rededge": 20, "swir": 20}
    sample = Sample("sentinel2", {s.name: s.paths[0] for s in spec.sources}, views["rgbn"])
    torch.manual_seed(spec.seed)
    torch.set_num_threads(2)
    model = build_model(spec)
    optimizer = make_optimizer(model, spec.train)
    heldout = fixed_batch(spec, [sample], size=8)  # the 5 tiles of the held-out strip
    assert len(heldout["sample_id"]) == 5
    kwargs, size = stream_kwargs(spec), spec.train.batch_size
    for step in range(spec.train.steps):
        batch = tokenize_batch(manifest_batch(epoch_manifest([sample], spec.seed, step * size, size)), **kwargs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, spec.train)
        model.train()
        loss, _, _ = model({k: torch.as_tensor(v) for k, v in batch.items() if "." in k})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = stream_scores(model, heldout)
    ratios = {m: scores[m] / scores[f"{m}_trivial"] for m in views}
    print("held-out loss / trivial:", {m: round(r, 3) for m, r in ratios.items()})
    assert all(r <= 0.8 for r in ratios.values()), ratios
