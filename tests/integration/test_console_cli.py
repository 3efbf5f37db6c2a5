"""`polymae run` as a user sees it with stdout piped (not a terminal): a short console, Ray's
and MLflow's output in the run folder's log, and a failed run ending in one clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "image_mae.yaml"
SHORT = ["train.steps=4", "train.warmup_steps=1", "train.log_every=2", "train.checkpoint_every=4",
         "sources.0.config.img_size=64", "train.batch_size=4", "model.overrides={depth: 2, decoder_depth: 1}",
         "stages=[{name: scan, kind: scan}, {name: train, kind: train, needs: [scan]}]"]  # under a minute


def _run(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [f"outputs.dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *SHORT, *sets]
    cmd = [sys.executable, "-m", "polymae.cli", "run", str(DEMO), *(a for s in args for a in ("--set", s))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)


def test_piped_console_is_short_and_ray_goes_to_the_log(tmp_path):
    out = _run(tmp_path)
    assert out.returncode == 0, out.stdout
    lines = out.stdout.splitlines()
    assert len(lines) <= 40, out.stdout
    assert "Failed to query" not in out.stdout and "\x1b[" not in out.stdout and "\r" not in out.stdout
    assert any("scan: files 11/11 (100%)" in line for line in lines), out.stdout
    assert any(line.startswith("[polymae] train: step 4/4 (100%)  loss ") for line in lines), out.stdout
    logs = list((tmp_path / "runs").glob("*/logs/run.log"))
    assert len(logs) == 1 and f"output: {logs[0]}" in out.stdout
    log = logs[0].read_text()
    assert "RayTrainWorker" in log or "TrainController" in log, log[-2000:]  # Ray's own lines
    assert not list((tmp_path / "runs").glob(".polymae-*.log"))  # the early log moved into the run folder


def test_failed_run_ends_in_one_clear_line_with_the_log(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("this is a text file, not a JPEG\n" * 20)
    out = _run(tmp_path, f"sources.0.paths=[{bad}]")
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stdout, out.stdout  # the traceback is in the log only
    errors = [line for line in out.stdout.splitlines() if line.startswith("polymae: ")]
    assert errors == ["polymae: stage scan (scan) failed: RuntimeError: no usable input files: "
                      "see the quarantine table"], out.stdout
    log = next((tmp_path / "runs").glob("*/logs/run.log"))
    assert f"full log: {log}" in out.stdout
    assert f"quarantined {bad / 'notes.jpg'}: decode: not a recognised image format" in out.stdout
    assert "Traceback" in log.read_text()
