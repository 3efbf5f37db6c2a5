"""Operations on the embedded Ray and a real MLflow server: stage reuse by fingerprint, run
tags, registry aliases, embeddings to Parquet, a killed training worker, and MLflow logging
that catches up after the server comes back."""

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray._private import state as ray_state

from polymae.cli import main
from polymae.orchestration.checkpoint import checkpoint_step, latest_checkpoint
from polymae.orchestration.inference import evaluation_views, stream_plugin
from polymae.orchestration.run import run_pipeline
from polymae.orchestration.tracking import load_registered_model
from polymae.pipelines.spec import parse_spec
from polymae.tokenizer.stream import streams_to_columns

from .servers import start_mlflow_server

pytestmark = pytest.mark.integration


def _spec(folder, tmp_path, uri, **train):
    return parse_spec({
        "name": "ops",
        "seed": 2,
        "sources": [{"modality": "image", "paths": [str(folder)], "config": {"img_size": 64}}],
        "model": {"preset": "tiny", "overrides": {"depth": 2, "decoder_depth": 1}},
        "train": {"steps": 4, "batch_size": 4, "workers": 1, "lr": 1e-3, "warmup_steps": 1,
                  "checkpoint_every": 2, "log_every": 1, "precision": "fp32", **train},
        "tracking": {"uri": uri, "experiment": "ops", "registered_model": "ops-mae"},
        "outputs": {"dir": str(tmp_path / "runs")},
    })


@pytest.fixture
def photo_folder(tmp_path, photo_paths):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in photo_paths:
        shutil.copy(p, folder / p.name)
    return folder


def test_unchanged_stages_are_reused_and_models_get_aliases_and_embeddings(
        tmp_path, photo_folder, bad_image_files, ray_local, mlflow_server, capsys):
    spec = _spec(photo_folder, tmp_path, mlflow_server)
    first = run_pipeline(spec, run_name="ops-a")
    assert first.stages == dict.fromkeys(["scan", "train", "evaluate", "register"], "ran")
    client = MlflowClient(mlflow_server)
    tags = client.get_run(first.run_id).data.tags
    assert len(tags["polymae.spec_fingerprint"]) == 64 and len(tags["polymae.dataset_fingerprint"]) == 64
    assert len(tags["mlflow.source.git.commit"].removesuffix("-dirty")) == 40
    assert tags["polymae.stage.train.output"] == str(first.checkpoint)

    # the same spec under another run name: every stage is reused, nothing is retrained
    assert main(["plan", str(_write(spec, tmp_path))]) == 0
    planned = capsys.readouterr().out
    assert planned.count(f"(run {first.run_id})") == 4, planned
    second = run_pipeline(_spec(photo_folder, tmp_path, mlflow_server), run_name="ops-b")
    assert second.stages == dict.fromkeys(["scan", "train", "evaluate", "register"], f"reused {first.run_id}")
    assert second.model_version == first.model_version and second.checkpoint == first.checkpoint
    assert client.get_run(second.run_id).data.tags["polymae.stage.train.reused_from"] == first.run_id
    # (a changed training config retraining on the reused scan: test_pipeline_mlflow's fork)

    # registry alias, then embeddings of a folder (one bad file among them) with the alias
    assert main(["register", first.run_id, "--alias", "champion", "--tracking-uri", mlflow_server]) == 0
    assert client.get_model_version_by_alias("ops-mae", "champion").version == first.model_version
    (photo_folder / "corrupt.jpg").write_bytes(bad_image_files["corrupt.jpg"])
    out = tmp_path / "embeddings"
    assert main(["embed", str(photo_folder), "--model", "models:/ops-mae@champion", "--output", str(out),
                 "--tracking-uri", mlflow_server]) == 0
    table = pq.read_table(out / "embeddings")
    assert table.num_rows == 11 and table.column_names == ["sample_id", "path", "embedding"]
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.shape == (11, 192) and np.isfinite(vectors).all() and np.ptp(vectors, axis=0).max() > 0
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert [r["path"].rsplit("/", 1)[1] for r in quarantine] == ["corrupt.jpg"]
    # embedding again into the same folder replaces the rows (it does not add a second set)
    assert main(["embed", str(photo_folder), "--model", "models:/ops-mae@champion", "--output", str(out),
                 "--tracking-uri", mlflow_server]) == 0
    assert pq.read_table(out / "embeddings").num_rows == 11
    assert json.loads((out / "embed.done.json").read_text())["rows"] == 11
    # each row is the champion's embedding of its own file (every token visible, evaluation crop),
    # computed here without Ray: no row is another file's, and every row is this model's
    model, saved = load_registered_model("models:/ops-mae@champion", mlflow_server)
    plugin = stream_plugin(saved, "image")
    rows = {r["path"]: np.asarray(r["embedding"]) for r in table.to_pylist()}
    for path in sorted(rows)[:3]:
        views = evaluation_views(plugin, path, "x", "image", saved.seed)
        columns = streams_to_columns("image", [v["image"] for v in views])
        with torch.no_grad():
            expected = model.embed_batch({k: torch.as_tensor(v) for k, v in columns.items()}, "cls").numpy()
        assert np.allclose(rows[path], expected[0], atol=1e-5), path
    assert not np.allclose(*[rows[p] for p in sorted(rows)[:2]])  # files differ, so do their rows


def _write(spec, tmp_path):
    from polymae.pipelines.spec import spec_to_yaml

    path = tmp_path / "spec.yaml"
    path.write_text(spec_to_yaml(spec))
    return path


def test_killed_training_worker_restarts_from_its_checkpoint(tmp_path, photo_folder, ray_local, mlflow_server):
    spec = _spec(photo_folder, tmp_path, mlflow_server, steps=15, workers=1, checkpoint_every=3, max_failures=2)
    spec.tracking.experiment = "ops-kill"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            found = latest_checkpoint(tmp_path / "runs" / "ops-kill" / "train")
            # the second checkpoint on disk: by then Ray Train has registered the first one
            if found is not None and 6 <= checkpoint_step(found) < 15:
                # this job's own training workers, from Ray's actor table (GCS; the test Ray has no
                # dashboard for ray.util.state), not any process on the machine named so
                alive = ray_state.actors(job_id=ray.get_runtime_context().job_id, actor_state_name="ALIVE")
                pids = [a["Pid"] for a in alive.values() if a["ActorClassName"] == "RayTrainWorker"]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    result = run_pipeline(spec, run_name="ops-kill")
    killer.join(timeout=5)
    assert killed, "no training worker was killed (training finished before the first checkpoint?)"
    assert result.final_step == 15
    client = MlflowClient(mlflow_server)
    restarts = client.get_metric_history(result.run_id, "train/restarted_at_step")
    assert restarts and all(m.value % 3 == 0 and 3 <= m.value < 15 for m in restarts)
    steps = {m.step for m in client.get_metric_history(result.run_id, "train/loss")}
    assert steps == set(range(1, 16))


def test_training_goes_on_while_mlflow_is_down_and_the_history_catches_up(tmp_path, photo_folder, ray_local):
    """The tracking server is stopped after step 2 is logged and started again (same store, same
    port) only once training has checkpointed 8 more steps without it."""
    server, uri = start_mlflow_server(tmp_path)
    spec = _spec(photo_folder, tmp_path, uri, steps=20, checkpoint_every=4)
    spec.tracking.experiment = "ops-outage"
    spec.stages = spec.stages[:2]  # scan → train: what comes after training does not bear on this
    client, outage = MlflowClient(uri), {}

    def stop_then_restart_the_server() -> None:
        nonlocal server
        deadline = time.time() + 300
        while time.time() < deadline and "stopped_at" not in outage:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 2:
                server.terminate()
                server.wait(timeout=30)
                outage["stopped_at"] = _checkpointed(tmp_path)
            time.sleep(0.2)
        while time.time() < deadline and _checkpointed(tmp_path) < outage.get("stopped_at", 0) + 8:
            time.sleep(0.2)
        outage["restarted_at"] = _checkpointed(tmp_path)
        server, _ = start_mlflow_server(tmp_path, port=int(uri.rsplit(":", 1)[1]))

    chaos = threading.Thread(target=stop_then_restart_the_server, daemon=True)
    chaos.start()
    try:
        result = run_pipeline(spec, run_name="ops-outage")
        chaos.join(timeout=60)
        assert "stopped_at" in outage, "training ended before step 2 reached MLflow: nothing was tested"
        assert outage["restarted_at"] >= outage["stopped_at"] + 8, outage  # training went on without MLflow
        assert result.final_step == 20
        assert client.get_run(result.run_id).info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(result.run_id, "train/loss")}
        assert steps == set(range(1, 21))  # the steps trained while it was down were logged once it was back
    finally:
        server.terminate()
        server.wait(timeout=30)


def _checkpointed(tmp_path) -> int:
    found = latest_checkpoint(tmp_path / "runs" / "ops-outage" / "train")
    return 0 if found is None else checkpoint_step(found)
