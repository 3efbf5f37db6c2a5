"""`polymae reconstruct` on a registered model through the real CLI: a tiny rgb + depth model
trained on the shipped RGB-D pairs (scan → pair → train → evaluate → register, real Ray, real
MLflow server), then depth predicted from rgb by a `python -m polymae.cli` subprocess that
downloads the model from the registry."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymae.ops.render import GAP
from polymae.orchestration.run import run_pipeline
from polymae.orchestration.tracking import set_alias
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RGBD = ROOT / "examples" / "data" / "rgbd"
SIZE = 64


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polymae.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_reconstruct_depth_from_rgb_with_a_registered_model(tmp_path, ray_local, mlflow_server):
    tic = time.perf_counter()
    spec = parse_spec({
        "name": "rgbd-recon", "seed": 0,
        "sources": [{"name": "rgb", "modality": "image", "paths": [str(RGBD / "rgb")], "frame": "cam",
                     "config": {"img_size": SIZE}},
                    {"name": "depth", "modality": "depth", "paths": [str(RGBD / "depth")], "frame": "cam",
                     "config": {"img_size": SIZE}}],
        "pairing": {"key": "stem"},
        # no evaluate stage: reconstruct needs a registered model, not its scores (saves a minute)
        "stages": [{"name": "scan", "kind": "scan"}, {"name": "pair", "kind": "pair", "needs": ["scan"]},
                   {"name": "train", "kind": "train", "needs": ["pair"]},
                   {"name": "register", "kind": "register", "needs": ["train"]}],
        "model": {"preset": "tiny"},
        "train": {"steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 4,
                  "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": mlflow_server, "experiment": "reconstruct", "registered_model": "rgbd-recon"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })
    result = run_pipeline(spec, run_name="rgbd-recon")
    assert result.final_step == 4 and result.model_version is not None
    assert result.counts["tokenized"] == 4 and result.counts["samples"] == 2  # two scenes, paired by stem
    trained = time.perf_counter()

    files = ["--files", f"rgb={RGBD / 'rgb' / 'motorcycle.png'}", f"depth={RGBD / 'depth' / 'motorcycle.png'}"]
    out = tmp_path / "out"
    proc = _cli("reconstruct", "--model", f"models:/rgbd-recon/{result.model_version}", "--inputs", "rgb",
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
    set_alias(mlflow_server, "rgbd-recon", result.model_version, "champion")
    bad = _cli("reconstruct", "--model", "models:/rgbd-recon@champion", "--inputs", "lidar", "--targets", "depth",
               *files, "--out", str(tmp_path / "bad"), "--tracking-uri", mlflow_server)
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-3000:])
    assert "input stream 'lidar': the model has streams rgb, depth" in bad.stderr
    assert not (tmp_path / "bad").exists()
    print(f"train + register {trained - tic:.1f} s, two CLI calls {time.perf_counter() - trained:.1f} s")
