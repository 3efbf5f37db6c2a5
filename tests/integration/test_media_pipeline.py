"""`polymae run` on real video, audio, point-cloud and LiDAR files with bad ones mixed in, against a real
MLflow server: counts add up, every bad file is quarantined with its reason, the renders (PNG strip,
GIF for video) reach MLflow, audio's dataset statistics are resolved into the saved spec."""

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


def _spec(modality: str, folder: Path, tmp_path: Path, uri: str, config: dict, mask: dict) -> object:
    return parse_spec({
        "name": f"{modality}-itest", "seed": 2,
        "sources": [{"modality": modality, "paths": [str(folder)], "config": config}],
        "tokenizer": {"mask": {modality: mask}},
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": 4, "batch_size": 4, "workers": 1, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 4, "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": uri, "experiment": "media-itest"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })


def _quarantined(result) -> dict[str, str]:
    rows = pq.read_table(result.output_dir / "quarantine.parquet").to_pylist()
    return {Path(r["path"]).name: r["reason"] for r in rows}


def test_video_run_quarantines_bad_files_and_logs_renders(tmp_path, ray_local, mlflow_server):
    folder = tmp_path / "video"
    shutil.copytree(DATA / "video", folder)
    cup = (folder / "opencv_cup.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(cup[: len(cup) // 2])
    (folder / "notes.mp4").write_text("not a video\n" * 50)
    (folder / "empty.mkv").write_bytes(b"")
    config = {"img_size": 32, "num_frames": 4, "stride": 4, "num_clips": 3, "decode_short_side": 64}
    mask = {"strategy": "tube", "ratio": 0.75, "decoder_strategy": "running_cell"}
    result = run_pipeline(_spec("video", folder, tmp_path, mlflow_server, config, mask), run_name="video-itest")

    assert result.counts == {"total": 5, "tokenized": 2, "quarantined": 3,
                             "skipped": 0, "unmatched": 0, "samples": 6, "views_skipped": 0}
    reasons = _quarantined(result)
    assert set(reasons) == {"truncated.mp4", "notes.mp4", "empty.mkv"}
    assert "truncated MP4" in reasons["truncated.mp4"] and "empty" in reasons["empty.mkv"]
    client = MlflowClient(mlflow_server)
    renders = {a.path for a in client.list_artifacts(result.run_id, "renders")}
    assert {"renders/step000000.png", "renders/step000000_video.gif", "renders/step000004.png",
            "renders/step000004_video.gif"} <= renders
    assert result.final_step == 4 and result.model_version is not None


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_audio_run_resolves_statistics_and_quarantines(tmp_path, ray_local, mlflow_server):
    folder = tmp_path / "audio"
    shutil.copytree(DATA / "audio", folder)
    speech, rate = sf.read(DATA / "audio" / "sense_and_sensibility_01_austen_64kb-0870.wav")
    good = _wav(speech, rate)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "header.wav").write_bytes(b"JUNK" + good[4:])
    (folder / "cut.wav").write_bytes(good[: len(good) // 2])
    (folder / "silence.wav").write_bytes(_wav(np.zeros(rate * 2), rate))  # valid: must not break stats
    config = {"target_length": 256}
    result = run_pipeline(_spec("audio", folder, tmp_path, mlflow_server, config, {"ratio": 0.8}),
                          run_name="audio-itest")

    assert result.counts["total"] == 8 and result.counts["quarantined"] == 3
    assert set(_quarantined(result)) == {"empty.wav", "header.wav", "cut.wav"}
    saved = yaml.safe_load((result.output_dir / "spec.yaml").read_text())
    resolved = saved["sources"][0]["config"]
    assert np.isfinite(resolved["mean"]) and resolved["std"] > 0  # from the Ray Data aggregation
    client = MlflowClient(mlflow_server)
    assert "renders/step000004.png" in {a.path for a in client.list_artifacts(result.run_id, "renders")}
    assert np.isfinite(result.eval_loss)


def test_points_run_quarantines_bad_scans(tmp_path, ray_local, mlflow_server):
    folder = tmp_path / "points"
    shutil.copytree(DATA / "points", folder)
    (folder / "garbage.ply").write_text("ply\nformat nonsense\nend_header\n1 2 3\n")
    (folder / "nan.xyz").write_text("0 0 0\nnan 1 2\n" * 40)
    (folder / "empty.pcd").write_bytes(b"")
    result = run_pipeline(_spec("points", folder, tmp_path, mlflow_server, {}, {"strategy": "block", "ratio": 0.6}),
                          run_name="points-itest")
    assert result.counts == {"total": 5, "tokenized": 2, "quarantined": 3,
                             "skipped": 0, "unmatched": 0, "samples": 2, "views_skipped": 0}
    reasons = _quarantined(result)
    assert "non-finite" in reasons["nan.xyz"] and "empty" in reasons["empty.pcd"]
    assert "renders/step000004.png" in {a.path for a in MlflowClient(mlflow_server).list_artifacts(result.run_id,
                                                                                                    "renders")}


def test_lidar_run_quarantines_bad_scans(tmp_path, ray_local, mlflow_server):
    folder = tmp_path / "lidar"
    folder.mkdir()
    sweep = (DATA / "lidar" / "mrpt_vlp16_scan_kitti_format.bin").read_bytes()
    (folder / "sweep.bin").write_bytes(sweep)
    (folder / "cut.bin").write_bytes(sweep[:-7])
    (folder / "far.bin").write_bytes((np.frombuffer(sweep, "<f4").reshape(-1, 4) + [900, 0, 0, 0]).astype("<f4"))
    (folder / "bad.las").write_bytes(b"XXXX" + (DATA / "lidar" / "simple.las").read_bytes()[4:])
    config = {"max_voxels": 256, "num_empty": 64, "max_points_per_voxel": 8}
    result = run_pipeline(_spec("lidar", folder, tmp_path, mlflow_server, config,
                                {"strategy": "radial", "ratio": 0.8}), run_name="lidar-itest")
    assert result.counts == {"total": 4, "tokenized": 1, "quarantined": 3,
                             "skipped": 0, "unmatched": 0, "samples": 1, "views_skipped": 0}
    reasons = _quarantined(result)
    assert "multiple of 16" in reasons["cut.bin"] and "no points within" in reasons["far.bin"]
    assert "LAS" in reasons["bad.las"]
    assert np.isfinite(result.eval_loss)
