"""A real two-node Ray cluster on one machine (`ray start --head` + `ray start --address`, token
authentication on): `polymae submit` runs a pipeline as a Ray Job whose training workers land
on both nodes and whose run is in the MLflow server; a job stopped mid-training and submitted
again with `--resume RUN_ID` continues the same MLflow run from its checkpoint; the worker node
killed during the scan loses no file and counts none twice."""

import contextlib
import os
import secrets
import time

import pytest
from mlflow.tracking import MlflowClient

from polymae.cli import main
from polymae.orchestration import jobs
from polymae.orchestration.runs import RUN_NAME_TAG

from .servers import LocalRayCluster

pytestmark = pytest.mark.integration
SPEC = "examples/image_mae.yaml"


@contextlib.contextmanager
def _cluster(root):
    mp = pytest.MonkeyPatch()
    started, token = None, secrets.token_hex(16)
    mp.setenv("RAY_AUTH_TOKEN", token)  # `polymae submit|status|logs|stop` send it as a bearer header
    try:
        started = LocalRayCluster(root, token)
        yield started
    finally:
        mp.undo()
        if started is not None:
            started.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with _cluster(tmp_path_factory.mktemp("ray-cluster")) as started:
        yield started


def _overrides(tmp_path, mlflow_server, steps):
    return ["--set", f"train.steps={steps}", "--set", "train.batch_size=4", "--set", "train.workers=2",
            "--set", "train.placement_strategy=SPREAD", "--set", "train.checkpoint_every=5",
            "--set", "train.log_every=1", "--set", "train.precision=fp32", "--set", "train.warmup_steps=2",
            "--set", "sources.0.config.img_size=64", "--set", "model.overrides={depth: 2, decoder_depth: 1}",
            "--set", f"tracking.uri={mlflow_server}", "--set", "tracking.experiment=cluster",
            "--set", f"outputs.dir={tmp_path / 'runs'}"]


def _run_id(client, name):
    exp = client.get_experiment_by_name("cluster").experiment_id
    return client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")[0].info.run_id


def test_submitted_pipeline_trains_on_both_nodes_and_resumes_after_stop(tmp_path, cluster, mlflow_server, capsys):
    client = MlflowClient(mlflow_server)
    args = _overrides(tmp_path, mlflow_server, steps=20)
    assert main(["submit", SPEC, "--address", cluster.address, "--run-name", "c1", *args]) == 0
    job = capsys.readouterr().out.split("submitted job ", 1)[1].split(";")[0]

    # stop the job once training is past its first checkpoint
    deadline = time.time() + 400
    while time.time() < deadline:
        status = jobs.client(cluster.address).get_job_status(job)
        assert status not in jobs.TERMINAL, jobs.client(cluster.address).get_job_logs(job)[-3000:]
        try:
            steps = [m.step for m in client.get_metric_history(_run_id(client, "c1"), "train/loss")]
        except (IndexError, AttributeError):
            steps = []
        if steps and max(steps) >= 8:
            break
        time.sleep(1)
    assert main(["stop", job, "--address", cluster.address]) == 0
    assert jobs.wait(job, cluster.address, timeout_s=120) == "STOPPED"
    assert main(["status", job, "--address", cluster.address]) == 0
    assert "STOPPED" in capsys.readouterr().out

    # training workers ran on both nodes (SPREAD placement)
    workers = cluster.list_state("actors", [("class_name", "=", "RayTrainWorker")])
    assert len({a.node_id for a in workers}) == 2, workers

    # the same run continues from its checkpoint: one MLflow run, every step logged, finished
    run_id = _run_id(client, "c1")
    assert main(["submit", SPEC, "--address", cluster.address, "--resume", run_id, "--wait", *args]) == 0
    second = capsys.readouterr().out.split("submitted job ", 1)[1].split(";")[0]
    assert main(["logs", second, "--address", cluster.address]) == 0
    logs = capsys.readouterr().out
    assert "resumed" in logs and "[polymae] done: step 20" in logs, logs[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "train/loss")} == set(range(1, 21))
    exp = client.get_experiment_by_name("cluster").experiment_id
    assert len(client.search_runs([exp])) == 1
    assert run.data.tags["mlflow.source.git.commit"]


def test_worker_node_killed_during_the_scan_loses_no_file(tmp_path, cluster, mlflow_server, photo_paths, capsys):
    """The kill is timed by Ray's State API: it lands once a scan task is running on the worker node.
    The job is the scan stage alone (training restarts are test_operations'). It kills the module's
    worker node, so it stays the module's last test (one cluster start, not two)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(100):  # 1100 real photos (hard links)
        for p in photo_paths:
            os.link(p, folder / f"{copy:03d}_{p.name}")
    args = _overrides(tmp_path, mlflow_server, steps=2) + ["--set", f"sources.0.paths=[{folder}]",
                                                           "--set", "stages=[{name: scan, kind: scan}]"]
    assert main(["submit", SPEC, "--address", cluster.address, "--run-name", "node-kill", *args]) == 0
    job = capsys.readouterr().out.split("submitted job ", 1)[1].split(";")[0]
    jobs_api = jobs.client(cluster.address)
    (worker,) = [n.node_id for n in cluster.list_state("nodes") if not n.is_head_node and n.state == "ALIVE"]
    running_here = [("node_id", "=", worker), ("state", "=", "RUNNING")]
    deadline = time.time() + 300
    while not any("scan_batch" in t.name for t in cluster.list_state("tasks", running_here)):
        assert time.time() < deadline and jobs_api.get_job_status(job) not in jobs.TERMINAL, \
            jobs_api.get_job_logs(job)[-3000:]
        time.sleep(0.2)
    cluster.kill_worker_node()
    assert jobs.wait(job, cluster.address, timeout_s=600) == "SUCCEEDED", jobs_api.get_job_logs(job)[-3000:]
    logs = jobs_api.get_job_logs(job)
    assert "rescanning one file per process" in logs, "the node died after the scan: nothing was tested"
    metrics = MlflowClient(mlflow_server).get_run(_run_id(MlflowClient(mlflow_server), "node-kill")).data.metrics
    assert metrics["data/total"] == metrics["data/tokenized"] == 1100 and metrics["data/quarantined"] == 0
