"""Learning, not just running: the tiny model's masked reconstruction loss falls on the
shipped real photos, through the real decode → augment → tokenize → mask path."""

from pathlib import Path

import pytest
import torch

from polymae.orchestration.checkpoint import build_model
from polymae.orchestration.run import evaluate
from polymae.orchestration.train import learning_rate, make_optimizer
from polymae.pipelines.data import discover, epoch_manifest, fixed_batch, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_tiny_image_mae_loss_falls_30_percent():
    torch.set_num_threads(2)
    spec = parse_spec({
        "name": "learn", "seed": 0,
        "sources": [{"modality": "image", "paths": [str(ROOT / "examples/data/images")]}],
        "model": {"preset": "tiny"},
        "train": {"steps": 150, "batch_size": 8, "lr": 1e-3, "warmup_steps": 10, "precision": "fp32"},
    })
    files = discover(spec.sources[0], (".jpg",))
    assert len(files) == 11
    model = build_model(spec)
    optimizer = make_optimizer(model, spec.train)
    eval_batch = fixed_batch(spec, files, size=8)
    before, _ = evaluate(model, eval_batch)
    kwargs = stream_kwargs(spec)
    for step in range(spec.train.steps):
        rows = epoch_manifest(files, spec.seed, step * 8, 8)
        batch = tokenize_batch(manifest_batch(rows), **kwargs)
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
    assert after <= 0.7 * before
