"""`polymae reconstruct` on a registered model through the real CLI: a tiny rgb + depth model
trained for a few steps in-process on the shipped RGB-D pairs (the training stream's own
tokenize path; the Ray run of scan → pair → train is covered by the pipeline tests) and
registered in a real MLflow server, then depth predicted from rgb by a `python -m polymae.cli`
subprocess that downloads the model from the registry."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from polymae.ops.render import GAP
from polymae.orchestration.checkpoint import build_model, save_checkpoint
from polymae.orchestration.step import make_optimizer
from polymae.orchestration.tracking import log_model, set_alias
from polymae.pipelines.data import epoch_manifest, manifest_batch, stream_kwargs, tokenize_batch
from polymae.pipelines.files import Sample
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RGBD = ROOT / "examples" / "data" / "rgbd"
SIZE = 64


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polymae.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _train_and_register(spec, uri: str, folder: Path) -> str:
    """``spec.train.steps`` AdamW steps on both scenes (batches of the training stream), the
    checkpoint registered as a new version of ``spec.tracking.registered_model``; → the version."""
    samples = [Sample(stem, {"rgb": str(RGBD / "rgb" / f"{stem}.png"), "depth": str(RGBD / "depth" / f"{stem}.png")})
               for stem in ("kinect_0001", "motorcycle")]
    model, kwargs, size = build_model(spec), stream_kwargs(spec), spec.train.batch_size
    optimizer = make_optimizer(model, spec.train)
    for step in range(spec.train.steps):
        batch = tokenize_batch(manifest_batch(epoch_manifest(samples, spec.seed, step * size, size)), **kwargs)
        loss, _, _ = model({k: torch.as_tensor(v) for k, v in batch.items() if "." in k})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(folder, model, None, spec.train.steps, spec)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(spec.tracking.experiment))
    version = log_model(uri, run.info.run_id, str(folder), spec.tracking.registered_model)
    client.set_terminated(run.info.run_id)
    return version


def test_reconstruct_depth_from_rgb_with_a_registered_model(tmp_path, mlflow_server):
    spec = parse_spec({
        "name": "rgbd-recon", "seed": 0,
        "sources": [{"name": "rgb", "modality": "image", "paths": [str(RGBD / "rgb")], "frame": "cam",
                     "config": {"img_size": SIZE}},
                    {"name": "depth", "modality": "depth", "paths": [str(RGBD / "depth")], "frame": "cam",
                     "config": {"img_size": SIZE}}],
        "pairing": {"key": "stem"},
        "model": {"preset": "tiny"},
        "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "precision": "fp32"},
        "tracking": {"uri": mlflow_server, "experiment": "reconstruct", "registered_model": "rgbd-recon"},
    })
    version = _train_and_register(spec, mlflow_server, tmp_path / "checkpoint")

    files = ["--files", f"rgb={RGBD / 'rgb' / 'motorcycle.png'}", f"depth={RGBD / 'depth' / 'motorcycle.png'}"]
    out = tmp_path / "out"
    proc = _cli("reconstruct", "--model", f"models:/rgbd-recon/{version}", "--inputs", "rgb",
                "--targets", "depth", *files, "--out", str(out), "--tracking-uri", mlflow_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"depth from rgb → {out / 'depth.png'}" in proc.stdout
    with Image.open(out / "depth.png") as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        # the depth plugin's four panels (original | what the encoder saw | prediction | pasted), white gaps
        assert picture.size == (4 * SIZE + 3 * GAP, SIZE)
        pixels = np.asarray(picture)
    panels = [pixels[:, i * (SIZE + GAP): i * (SIZE + GAP) + SIZE] for i in range(4)]
    assert (pixels[:, SIZE: SIZE + GAP] == 255).all()  # a gap
    assert (panels[1] == 128).all(axis=-1).mean() > 0.9  # the encoder saw no depth: grey where it had readings
    prediction = panels[2].reshape(-1, 3)
    assert len(np.unique(prediction, axis=0)) > 50  # a predicted depth map in viridis, not a blank panel
    assert not np.array_equal(panels[2], panels[0])

    # a stream the model lacks: exit 2, naming the model's streams (over an alias this time)
    set_alias(mlflow_server, "rgbd-recon", version, "champion")
    bad = _cli("reconstruct", "--model", "models:/rgbd-recon@champion", "--inputs", "lidar", "--targets", "depth",
               *files, "--out", str(tmp_path / "bad"), "--tracking-uri", mlflow_server)
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-3000:])
    assert "input stream 'lidar': the model has streams rgb, depth" in bad.stderr
    assert not (tmp_path / "bad").exists()
