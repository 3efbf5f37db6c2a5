"""`polymae run` end to end against a real MLflow server, with 2 Ray Train workers (gloo),
checkpoints, the registered model loaded back, and a resumed run that continues its steps."""

import shutil

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from polymae.orchestration.evaluation import evaluate
from polymae.orchestration.run import run_pipeline
from polymae.orchestration.tracking import load_registered_model
from polymae.pipelines.spec import parse_spec

pytestmark = pytest.mark.integration


def _spec(folder, tmp_path, uri, steps):
    return parse_spec({
        "name": "itest",
        "seed": 1,
        "sources": [{"modality": "image", "paths": [str(folder)],
                     "config": {"img_size": 64, "max_pixels": 1_000_000}}],
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": steps, "batch_size": 4, "workers": 2, "lr": 1e-3, "warmup_steps": 2,
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
    assert list((first.output_dir / "tokens").glob("*.parquet")), "token shards not written"

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

    # the same run name again, with more steps: continues from step 6 in the same MLflow run
    second = run_pipeline(_spec(folder, tmp_path, mlflow_server, steps=9), run_name="itest-run")
    assert second.resumed and second.run_id == first.run_id and second.final_step == 9
    steps = [m.step for m in client.get_metric_history(first.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert int(second.model_version) == int(first.model_version) + 1
