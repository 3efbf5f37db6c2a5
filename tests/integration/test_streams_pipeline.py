"""Two named streams of one plugin (two cameras) through `polymae run` end to end: the scan
counts each stream, the pair stage joins files by stem in Ray Data, unmatched files train as
partial samples on 2 DDP workers (a worker's batch may lack a stream entirely), a quarter of each
set of streams is held out for evaluation, every stream's loss is logged, and the model
registers. The join's other ``unmatched`` options are checked on the same real files."""

import shutil

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from polymae.orchestration.run import run_pipeline
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration


def test_two_streams_train_on_two_workers(tmp_path, photo_paths, bad_image_files, ray_local, mlflow_server):
    wide, narrow = tmp_path / "wide", tmp_path / "narrow"
    for folder, photos in ((wide, photo_paths[:8]), (narrow, photo_paths[3:])):  # 5 pairs, 3 + 3 alone
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
        "pairing": {"key": "stem", "unmatched": "single"},
        "split": {"holdout": 0.25},
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": 6, "batch_size": 4, "workers": 2, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 3, "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": mlflow_server, "experiment": "streams", "registered_model": "cams-mae"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })
    result = run_pipeline(spec, run_name="cams")
    assert result.final_step == 6 and result.model_version is not None
    assert result.counts == {"total": 17, "tokenized": 16, "quarantined": 1, "skipped": 0, "unmatched": 6,
                             "samples": 11, "views_skipped": 0}  # 5 paired + 6 alone

    client = MlflowClient(mlflow_server)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["data/wide/tokenized"] == 8 and metrics["data/wide/quarantined"] == 0
    assert metrics["data/narrow/tokenized"] == 8 and metrics["data/narrow/quarantined"] == 1
    assert metrics["data/wide/unmatched"] == 3 and metrics["data/narrow/unmatched"] == 3
    assert metrics["data/wide/samples"] == 8 and metrics["data/samples"] == 11
    assert metrics["data/heldout_files"] == 3 and metrics["data/train_files"] == 8  # one of each set held out
    for stream in ("wide", "narrow"):
        history = client.get_metric_history(result.run_id, f"train/loss_{stream}")
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
        assert all(m.value == m.value and m.value >= 0 for m in history)  # finite, never NaN
    table = pq.read_table(result.output_dir / "quarantine.parquet").to_pylist()
    assert [(r["stream"], r["modality"], r["path"].rsplit("/", 1)[1]) for r in table] == [
        ("narrow", "image", "corrupt.jpg")]
    renders = {a.path for a in client.list_artifacts(result.run_id, "renders")}
    assert "renders/step000006.png" in renders


def test_unmatched_files_are_skipped_or_quarantined_and_counts_add_up(tmp_path, photo_paths, ray_local):
    from polymae.pipelines.pairing import pair
    from polymae.pipelines.scan import scan

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, photos in ((a, photo_paths[:4]), (b, photo_paths[2:6])):
        folder.mkdir()
        for p in photos:
            shutil.copy(p, folder / p.name)
    spec = parse_spec({"name": "j", "pairing": {}, "sources": [
        {"name": "a", "modality": "image", "paths": [str(a)]}, {"name": "b", "modality": "image", "paths": [str(b)]}]})
    scanned = scan(spec)
    for unmatched in ("drop", "quarantine"):
        joined = pair(scanned, {"a": "image", "b": "image"}, spec.pairing.model_copy(update={"unmatched": unmatched}),
                      tmp_path / unmatched)
        assert [s.sample_id for s in joined.samples] == sorted(p.stem for p in photo_paths[2:4])
        assert all(s.streams == ("a", "b") for s in joined.samples)
        gone = joined.skipped if unmatched == "drop" else joined.quarantine
        assert sorted(r["path"].rsplit("/", 1)[1] for r in gone) == sorted(
            p.name for p in photo_paths[:2] + photo_paths[4:6])
        assert {r["reason"] for r in gone} == {"no partner in a", "no partner in b"}
        assert {r["stage"] for r in gone} == {"pair"}
        for stream in ("a", "b"):
            c = joined.counts_by_stream[stream]
            assert c["total"] == 4 == c["tokenized"] + c["quarantined"] + c["skipped"] and c["unmatched"] == 2
            assert c["tokenized"] == 2 and c["samples"] == 2
