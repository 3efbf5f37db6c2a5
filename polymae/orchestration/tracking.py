"""MLflow: the run, its metrics and artifacts, and the registered model.

The driver creates (or, for a known run name, reopens) the run; rank 0 of the Ray Train
workers logs step metrics into it with plain client calls (Ray Train V2 has no MLflow
callback). The model is logged as a pyfunc whose artifacts are a weights-only checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import polymae
from polymae import __version__
from polymae.orchestration.locations import local_store_folder
from polymae.pipelines.dag import spec_fingerprint
from polymae.pipelines.spec import PipelineSpec, spec_to_yaml

log = logging.getLogger(__name__)
RUN_NAME_TAG = "polymae.run_name"


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string. MLflow's filter grammar has no escapes, so a
    value holding both quote characters cannot be searched for: that is an error, never a filter
    that means something else."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters: it cannot be put in an MLflow filter")


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: str(data)[:6000]}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    store = local_store_folder(uri)  # a local store keeps its artifacts beside it
    artifact_location = (store / "mlartifacts").as_uri() if store is not None else None
    return client.create_experiment(name, artifact_location=artifact_location)


def git_commit() -> str | None:
    """The commit of the PolyMAE checkout that runs (``POLYMAE_GIT_COMMIT`` when set, as a
    submitted job sets it: the cluster copy has no .git), with ``-dirty`` for local changes."""
    if os.environ.get("POLYMAE_GIT_COMMIT"):
        return os.environ["POLYMAE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def start_run(spec: PipelineSpec, uri: str, run_name: str, run_id: str | None = None) -> tuple[str, str, bool]:
    """→ (run id, run name, resumed). ``run_id`` reopens that run; otherwise a run whose name
    was used before in the experiment is reopened, or a new one is made."""
    client = MlflowClient(uri)
    exp = experiment_id(client, spec.tracking.experiment, uri)
    if run_id is None:
        previous = client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = {filter_value(run_name)}",
                                      max_results=1)
        run_id = previous[0].info.run_id if previous else None
    tags = {"polymae.spec_fingerprint": spec_fingerprint(spec), "polymae.version": __version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if run_id is not None:
        run = client.get_run(run_id)  # raises for an unknown id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        return run_id, run.data.tags.get(RUN_NAME_TAG, run.info.run_name), True
    run = client.create_run(exp, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    params = _flatten(spec.model_dump(mode="json"))
    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])
    client.log_text(run.info.run_id, spec_to_yaml(spec), "spec.yaml")
    return run.info.run_id, run_name, False


def stage_tag(name: str) -> str:
    return f"polymae.stage.{name}.fingerprint"


def find_stage_output(uri: str, experiment: str, name: str, fingerprint: str) -> tuple[str, str] | None:
    """(run id, output) of the newest run that recorded stage ``name`` with this fingerprint."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    where = f"tags.`{stage_tag(name)}` = {filter_value(fingerprint)}"
    runs = client.search_runs([found.experiment_id], filter_string=where,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    return runs[0].info.run_id, runs[0].data.tags[f"polymae.stage.{name}.output"]


def record_stage(client: MlflowClient, run_id: str, name: str, fingerprint: str, output: str,
                 reused_from: str | None = None) -> None:
    """The stage's fingerprint and output location, as tags of the run (the cache's index)."""
    client.set_tag(run_id, stage_tag(name), fingerprint)
    client.set_tag(run_id, f"polymae.stage.{name}.output", output)
    if reused_from:
        client.set_tag(run_id, f"polymae.stage.{name}.reused_from", reused_from)


def set_alias(uri: str, name: str, version: str, alias: str) -> None:
    """Point registry alias ``alias`` of model ``name`` at ``version``."""
    MlflowClient(uri).set_registered_model_alias(name, alias, version)


class MetricLogger:
    """Step metrics from a training worker into an existing run, sent by a background thread
    so that training never waits on the tracking server. While the server is unreachable the
    metrics wait (the newest ``max_pending``) and the history catches up once it is back;
    :meth:`flush` waits a bounded time and reports clearly what was never logged."""

    def __init__(self, uri: str, run_id: str, max_pending: int = 100_000, retry_s: float = 5.0) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.pending: list[Metric] = []
        self.max_pending, self.retry_s = max_pending, retry_s
        self.failures = 0  # failed sends
        self.dropped = 0  # values given up on while the server was down for long
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._behind = False  # a send failed and the values have not all gone out since
        threading.Thread(target=self._loop, name="polymae-mlflow", daemon=True).start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
            if len(self.pending) > self.max_pending:
                self.dropped += len(self.pending) - self.max_pending
                del self.pending[: len(self.pending) - self.max_pending]
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=self.retry_s)
            self._wake.clear()
            self._send()

    def _send(self) -> None:
        while True:
            with self._lock:
                batch = self.pending[:1000]  # MLflow takes at most 1000 metrics a batch
            if not batch:
                break
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as err:  # tracking server down: keep the metrics, try again later
                self.failures += 1
                if not self._behind:  # once per outage
                    log.warning("MLflow unreachable: metrics wait and are sent once it answers (%s)", err)
                self._behind = True
                return
            with self._lock:
                del self.pending[: len(batch)]
        if self._behind:
            self._behind = False
            log.warning("MLflow answers again: logging caught up")

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait (at most ``timeout_s``) until everything is logged; → whether it was. What was
        not is reported as an error with its steps."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.2)
        with self._lock:
            left = list(self.pending)
        if left:
            steps = sorted({m.step for m in left})
            log.error("MLflow: %d metric values of steps %d…%d were NOT logged (server unreachable)",
                      len(left), steps[0], steps[-1])
        if self.dropped:
            log.error("MLflow: %d older metric values were dropped while the server was unreachable", self.dropped)
        return not left and not self.dropped

    def close(self, timeout_s: float = 60.0) -> bool:
        """:meth:`flush`, then stop the sending thread; → whether everything was logged."""
        logged = self.flush(timeout_s)
        self._closed = True
        self._wake.set()
        return logged


class PolyMAEPyfunc(mlflow.pyfunc.PythonModel):
    """Serving wrapper: token batch columns → encoder embeddings (B, width)."""

    def load_context(self, context: Any) -> None:
        from polymae.orchestration.checkpoint import load_model

        self.model, self.spec = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow reads the hints)
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
        return self.model.embed_batch(batch).numpy()


def model_requirements() -> list[str]:
    """The pip requirements of the logged model: PolyMAE's own dependencies (its installed
    metadata), pinned to the versions installed here. Not PolyMAE itself: the model carries
    its code (``code_paths``), and a ``polymae`` name on a public index may be anyone's."""
    from packaging.requirements import Requirement

    try:
        declared = importlib.metadata.requires("polymae") or []
    except importlib.metadata.PackageNotFoundError:  # a copy on the path (a Ray Job's py_modules)
        declared = ["torch", "timm", "numpy", "pydantic", "pyyaml", "pillow"]
    out = []
    for line in declared:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's (dev) requirement
        try:
            version = importlib.metadata.version(req.name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            out.append(str(req))
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}=={version}")
    return out


def log_model(uri: str, run_id: str, checkpoint_dir: str, registered_model: str) -> str:
    """Log the checkpoint's weights (:func:`weights_only`) as a pyfunc model of the run that
    carries the ``polymae`` package (``code_paths``), and register it; → the version. A model
    with a non-finite weight is refused (FloatingPointError naming it) before anything is logged."""
    from polymae.orchestration.checkpoint import check_finite_weights, weights_only

    check_finite_weights(checkpoint_dir)
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="polymae-model-") as tmp, mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PolyMAEPyfunc(),
            artifacts={"checkpoint": str(weights_only(checkpoint_dir, Path(tmp) / "checkpoint"))},
            code_paths=[str(Path(polymae.__file__).parent)],
            pip_requirements=model_requirements(),
            registered_model_name=registered_model,
        )
    return str(info.registered_model_version)


def download_checkpoint(model_uri: str, uri: str | None = None) -> str:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (or a checkpoint folder, as is) →
    a local checkpoint folder."""
    if os.path.isdir(model_uri):
        return model_uri
    if uri:
        mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    for dirpath, _, names in os.walk(local):
        if "model.pt" in names and "spec.yaml" in names:
            return dirpath
    raise FileNotFoundError(f"no PolyMAE checkpoint inside {model_uri}")


def load_registered_model(model_uri: str, uri: str | None = None) -> tuple[torch.nn.Module, PipelineSpec]:
    """``models:/NAME/VERSION`` (or ``@alias``) → (PolyMAE in eval mode, its spec)."""
    from polymae.orchestration.checkpoint import load_model

    return load_model(download_checkpoint(model_uri, uri))
