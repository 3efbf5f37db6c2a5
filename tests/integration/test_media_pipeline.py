"""`polymae run` on real video, audio, point-cloud and LiDAR files with bad ones mixed in, against a real
MLflow server, as one run of four unpaired streams (each file a sample of its own stream; one Ray
Train start instead of four): counts add up per stream, every bad file is quarantined with its
stream and reason, the renders (one PNG of every stream, a GIF for video) reach MLflow, audio's
dataset statistics are resolved into the saved spec, and every stream's loss is logged."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from mlflow.tracking import MlflowClient

from polymae.orchestration.run import run_pipeline
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def _video(folder: Path) -> dict:
    shutil.copytree(DATA / "video", folder)
    cup = (folder / "opencv_cup.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(cup[: len(cup) // 2])
    (folder / "notes.mp4").write_text("not a video\n" * 50)
    (folder / "empty.mkv").write_bytes(b"")
    return {"config": {"img_size": 32, "num_frames": 4, "stride": 4, "num_clips": 3, "decode_short_side": 64},
            "mask": {"strategy": "tube", "ratio": 0.75, "decoder_strategy": "running_cell"}}


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _audio(folder: Path) -> dict:
    shutil.copytree(DATA / "audio", folder)
    speech, rate = sf.read(DATA / "audio" / "sense_and_sensibility_01_austen_64kb-0870.wav")
    good = _wav(speech, rate)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "header.wav").write_bytes(b"JUNK" + good[4:])
    (folder / "cut.wav").write_bytes(good[: len(good) // 2])
    (folder / "silence.wav").write_bytes(_wav(np.zeros(rate * 2), rate))  # valid: must not break stats
    return {"config": {"target_length": 256}, "mask": {"ratio": 0.8}}


def _points(folder: Path) -> dict:
    shutil.copytree(DATA / "points", folder)
    (folder / "garbage.ply").write_text("ply\nformat nonsense\nend_header\n1 2 3\n")
    (folder / "nan.xyz").write_text("0 0 0\nnan 1 2\n" * 40)
    (folder / "empty.pcd").write_bytes(b"")
    return {"config": {}, "mask": {"strategy": "block", "ratio": 0.6}}


def _lidar(folder: Path) -> dict:
    folder.mkdir()
    sweep = (DATA / "lidar" / "mrpt_vlp16_scan_kitti_format.bin").read_bytes()
    (folder / "sweep.bin").write_bytes(sweep)
    (folder / "cut.bin").write_bytes(sweep[:-7])
    (folder / "far.bin").write_bytes((np.frombuffer(sweep, "<f4").reshape(-1, 4) + [900, 0, 0, 0]).astype("<f4"))
    (folder / "bad.las").write_bytes(b"XXXX" + (DATA / "lidar" / "simple.las").read_bytes()[4:])
    return {"config": {"max_voxels": 256, "num_empty": 64, "max_points_per_voxel": 8},
            "mask": {"strategy": "radial", "ratio": 0.8}}


MEDIA = {"video": _video, "audio": _audio, "points": _points, "lidar": _lidar}


def test_four_media_streams_quarantine_bad_files_and_log_renders(tmp_path, ray_local, mlflow_server):
    sources, masks = [], {}
    for modality, make in MEDIA.items():
        made = make(tmp_path / modality)
        sources.append({"modality": modality, "paths": [str(tmp_path / modality)], "config": made["config"]})
        masks[modality] = made["mask"]
    spec = parse_spec({
        "name": "media-itest", "seed": 2, "sources": sources, "tokenizer": {"mask": masks},
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": 4, "batch_size": 4, "workers": 1, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 4, "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": mlflow_server, "experiment": "media-itest"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })
    result = run_pipeline(spec, run_name="media-itest")
    assert result.final_step == 4 and result.model_version is not None and np.isfinite(result.eval_loss)

    # samples: 3 clips of each of the 2 good videos; 7 windows of 256 frames from the 5 good audio
    # files (7.1 s and 5.3 s give 2 each, a partial window under 256 frames is dropped); 2 clouds, 1 sweep
    assert result.counts == {"total": 22, "tokenized": 10, "quarantined": 12,
                             "skipped": 0, "unmatched": 0, "samples": 16, "views_skipped": 0}
    rows = pq.read_table(result.output_dir / "quarantine.parquet").to_pylist()
    reasons = {(r["stream"], Path(r["path"]).name): r["reason"] for r in rows}
    assert set(reasons) == {("video", "truncated.mp4"), ("video", "notes.mp4"), ("video", "empty.mkv"),
                            ("audio", "empty.wav"), ("audio", "header.wav"), ("audio", "cut.wav"),
                            ("points", "garbage.ply"), ("points", "nan.xyz"), ("points", "empty.pcd"),
                            ("lidar", "cut.bin"), ("lidar", "far.bin"), ("lidar", "bad.las")}
    assert "truncated MP4" in reasons["video", "truncated.mp4"] and "empty" in reasons["video", "empty.mkv"]
    assert "non-finite" in reasons["points", "nan.xyz"] and "empty" in reasons["points", "empty.pcd"]
    assert "multiple of 16" in reasons["lidar", "cut.bin"] and "no points within" in reasons["lidar", "far.bin"]
    assert "LAS" in reasons["lidar", "bad.las"]

    saved = yaml.safe_load((result.output_dir / "spec.yaml").read_text())
    resolved = next(s for s in saved["sources"] if s["modality"] == "audio")["config"]
    assert np.isfinite(resolved["mean"]) and resolved["std"] > 0  # from the Ray Data aggregation

    client = MlflowClient(mlflow_server)
    metrics = client.get_run(result.run_id).data.metrics
    for stream, tokenized in (("video", 2), ("audio", 5), ("points", 2), ("lidar", 1)):
        assert metrics[f"data/{stream}/tokenized"] == tokenized and metrics[f"data/{stream}/quarantined"] == 3
        history = client.get_metric_history(result.run_id, f"train/loss_{stream}")
        assert history and all(np.isfinite(m.value) for m in history), stream
    renders = {a.path for a in client.list_artifacts(result.run_id, "renders")}
    assert {"renders/step000000.png", "renders/step000000_video.gif", "renders/step000004.png",
            "renders/step000004_video.gif"} <= renders
