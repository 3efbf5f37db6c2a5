"""`polymae run` end to end against a real MLflow server, with 2 Ray Train workers (gloo),
checkpoints, the registered model loaded back, a changed spec under the same name refused and
forked from the run's checkpoint, the fork's name again resuming with nothing to redo, and a
failing run marked FAILED."""

import shutil

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from polymae.orchestration.evaluation import evaluate
from polymae.orchestration.run import run_pipeline
from polymae.orchestration.runs import FAILURE_TAG
from polymae.orchestration.tracking import load_registered_model
from polymae.pipelines.spec import parse_spec
from polymae.pipelines.spec_diff import SpecChangedError

pytestmark = pytest.mark.integration


def _spec(folder, tmp_path, uri, steps, lr=1e-3):
    return parse_spec({
        "name": "itest",
        "seed": 1,
        "sources": [{"modality": "image", "paths": [str(folder)],
                     "config": {"img_size": 64, "max_pixels": 1_000_000}}],
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": steps, "batch_size": 4, "workers": 2, "lr": lr, "warmup_steps": 2,
                  "checkpoint_every": 3, "log_every": 1, "precision": "fp32"},
        "tracking": {"uri": uri, "experiment": "itest", "registered_model": "itest-mae"},
        "outputs": {"dir": str(tmp_path / "runs"), "token_shards": True},
    })


def test_run_logs_registers_and_resumes(tmp_path, photo_paths, bad_image_files, ray_local, mlflow_server):
    folder = tmp_path / "images"  # the shipped photos plus five bad files: the run goes on
    folder.mkdir()
    for p in photo_paths:
        shutil.copy(p, folder / p.name)
    for name, data in bad_image_files.items():
        (folder / name).write_bytes(data)
    first = run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=6), run_name="itest-run")
    assert first.final_step == 6 and not first.resumed
    assert first.counts == {"total": 16, "tokenized": 11, "quarantined": 5,
                            "skipped": 0, "unmatched": 0, "samples": 11, "views_skipped": 0}
    assert sorted(p.name for p in (first.output_dir / "train").glob("checkpoint_*")), "no checkpoints"

    client = MlflowClient(mlflow_server)  # everything below goes over HTTP
    run = client.get_run(first.run_id)
    assert run.data.params["train.workers"] == "2" and run.data.params["model.preset"] == "tiny"
    assert run.data.metrics["data/tokenized"] == 11 and run.data.metrics["data/quarantined"] == 5
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"spec.yaml", "quarantine.parquet", "eval_batch.npz", "renders", "checkpoint"} <= artifacts
    renders = {a.path for a in client.list_artifacts(first.run_id, "renders")}
    assert renders == {"renders/step000000.png", "renders/step000006.png"}
    losses = client.get_metric_history(first.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3, 4, 5, 6]
    assert pq.read_table(first.output_dir / "tokens").num_rows == 11, "token shards not written"

    # the registered model loads back and reproduces the logged loss on the fixed batch
    version = client.get_model_version("itest-mae", first.model_version)
    assert version.run_id == first.run_id
    model, _ = load_registered_model(f"models:/itest-mae/{first.model_version}", mlflow_server)
    batch_file = mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="eval_batch.npz",
                                                     tracking_uri=mlflow_server)
    batch = dict(np.load(batch_file))
    logged = [m for m in client.get_metric_history(first.run_id, "eval/loss") if m.step == 6][0].value
    loss, _ = evaluate(model, batch)
    assert loss == pytest.approx(logged, rel=1e-5)

    # a changed learning rate under the same name: refused, naming the field, before anything runs
    with pytest.raises(SpecChangedError, match=r"train.lr: 0.001 → 0.002"):
        run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=11, lr=2e-3), run_name="itest-run")
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")][-1] == 6
    # --fork: a new run under the new spec, training from the old run's step-6 checkpoint
    # (the same run continued with --resume: test_cluster_jobs, through `polymae submit`)
    fork = run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=11, lr=2e-3), run_name="itest-run", fork="")
    assert fork.run_name == "itest-run-fork-1" and fork.run_id != first.run_id and not fork.resumed
    assert fork.final_step == 11 and fork.stages["scan"] == f"reused {first.run_id}" and fork.stages["train"] == "ran"
    assert [m.step for m in client.get_metric_history(fork.run_id, "train/loss")] == [7, 8, 9, 10, 11]
    assert int(fork.model_version) == int(first.model_version) + 1
    tags = client.get_run(fork.run_id).data.tags
    assert tags["polymae.forked_from"] == first.run_id and "train.resume_from, step 6" in tags[
        "polymae.stage.train.started_from"]
    # the fork's name again with the spec as written (no resume_from): the same run, nothing to redo
    again = run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=11, lr=2e-3), run_name=fork.run_name)
    assert again.resumed and again.run_id == fork.run_id and again.final_step == 11
    assert again.stages["train"] == f"reused {fork.run_id}", again.stages


def test_a_run_that_fails_ends_failed_with_the_reason(tmp_path, bad_image_files, ray_local, mlflow_server):
    folder = tmp_path / "bad"  # only bad files: the scan quarantines all, and the run stops there
    folder.mkdir()
    for name, data in bad_image_files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(RuntimeError, match="no usable input files"):
        run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=2), run_name="itest-fails")
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("itest").experiment_id
    run = client.search_runs([exp], filter_string="tags.`polymae.run_name` = 'itest-fails'")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == "RuntimeError: no usable input files: see the quarantine table"
