"""Two named streams of one plugin (two cameras) through `polymae run` end to end: the scan
counts each stream, unpaired files train as partial samples on 2 DDP workers (a worker's batch
may lack a stream entirely), a quarter of each stream's files is held out for evaluation, every
stream's loss is logged, and the model registers."""

import shutil

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from polymae.orchestration.run import run_pipeline
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration


def test_two_streams_train_on_two_workers(tmp_path, photo_paths, bad_image_files, ray_local, mlflow_server):
    wide, narrow = tmp_path / "wide", tmp_path / "narrow"
    for folder, photos in ((wide, photo_paths[:6]), (narrow, photo_paths[6:])):
        folder.mkdir()
        for p in photos:
            shutil.copy(p, folder / p.name)
    (narrow / "corrupt.jpg").write_bytes(bad_image_files["corrupt.jpg"])
    spec = parse_spec({
        "name": "cams", "seed": 2,
        "sources": [
            {"name": "wide", "modality": "image", "paths": [str(wide)], "config": {"img_size": 64}},
            {"name": "narrow", "modality": "image", "paths": [str(narrow)], "config": {"img_size": 48}},
        ],
        "tokenizer": {"mask": {"narrow": {"ratio": 0.5}}},
        "split": {"holdout": 0.25},
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": 6, "batch_size": 4, "workers": 2, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 3, "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": mlflow_server, "experiment": "streams", "registered_model": "cams-mae"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })
    result = run_pipeline(spec, run_name="cams")
    assert result.final_step == 6 and result.model_version is not None
    n_narrow = len(photo_paths) - 6
    assert result.counts == {"total": len(photo_paths) + 1, "tokenized": len(photo_paths), "quarantined": 1,
                             "samples": len(photo_paths)}

    client = MlflowClient(mlflow_server)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["data/wide/tokenized"] == 6 and metrics["data/wide/quarantined"] == 0
    assert metrics["data/narrow/tokenized"] == n_narrow and metrics["data/narrow/quarantined"] == 1
    assert metrics["data/heldout_files"] == 2 + 1 and metrics["data/train_files"] == len(photo_paths) - 3
    for stream in ("wide", "narrow"):
        history = client.get_metric_history(result.run_id, f"train/loss_{stream}")
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
        assert all(m.value == m.value and m.value >= 0 for m in history)  # finite, never NaN
    table = pq.read_table(result.output_dir / "quarantine.parquet").to_pylist()
    assert [(r["stream"], r["modality"], r["path"].rsplit("/", 1)[1]) for r in table] == [
        ("narrow", "image", "corrupt.jpg")]
    renders = {a.path for a in client.list_artifacts(result.run_id, "renders")}
    assert "renders/step000006.png" in renders
