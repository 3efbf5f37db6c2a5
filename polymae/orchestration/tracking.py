"""MLflow: the run, its metrics and artifacts, and the registered model.

The driver creates (or, for a known run name, reopens) the run; rank 0 of the Ray Train
workers logs step metrics into it with plain client calls (Ray Train V2 has no MLflow
callback). The model is logged as a pyfunc whose artifacts are a weights-only checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from polymae import __version__
from polymae.pipelines.spec import PipelineSpec, spec_to_yaml

log = logging.getLogger(__name__)
RUN_NAME_TAG = "polymae.run_name"


def resolve_tracking_uri(uri: str | None) -> str:
    """Default: a SQLite store in the working directory, as an absolute URI so Ray workers
    (whose working directory differs) write to the same place."""
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


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
    artifact_location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:  # local store: artifacts beside it
        artifact_location = Path("mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def start_run(spec: PipelineSpec, uri: str, run_name: str) -> tuple[str, bool]:
    """→ (run id, resumed). A run whose name was used before in the experiment is reopened."""
    client = MlflowClient(uri)
    exp = experiment_id(client, spec.tracking.experiment, uri)
    previous = client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                                  max_results=1)
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(exp, run_name=run_name, tags={RUN_NAME_TAG: run_name,
                                                         "polymae.version": __version__})
    params = _flatten(spec.model_dump(mode="json"))
    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])
    client.log_text(run.info.run_id, spec_to_yaml(spec), "spec.yaml")
    return run.info.run_id, False


class MetricLogger:
    """Step metrics from a training worker into an existing run. Failures are counted and
    reported, never raised: training must not stop because tracking hiccups."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.failures = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        except Exception as err:  # tracking server down: keep training
            self.failures += 1
            log.warning("MLflow logging failed at step %d (%d failures so far): %s", step, self.failures, err)


class PolyMAEPyfunc(mlflow.pyfunc.PythonModel):
    """Serving wrapper: token batch columns → encoder embeddings (B, width)."""

    def load_context(self, context: Any) -> None:
        from polymae.orchestration.checkpoint import load_model

        self.model, self.spec = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow reads the hints)
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
        return self.model.embed_batch(batch).numpy()


def log_model(uri: str, run_id: str, checkpoint_dir: str, registered_model: str) -> str:
    """Log the checkpoint as a pyfunc model of the run and register it; → the version."""
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PolyMAEPyfunc(),
            artifacts={"checkpoint": checkpoint_dir},
            pip_requirements=[f"polymae=={__version__}", f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=registered_model,
        )
    return str(info.registered_model_version)


def load_registered_model(model_uri: str, uri: str | None = None) -> tuple[torch.nn.Module, PipelineSpec]:
    """``models:/NAME/VERSION`` (or ``@alias``) → (PolyMAE in eval mode, its spec)."""
    from polymae.orchestration.checkpoint import load_model

    if uri:
        mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    for dirpath, _, names in os.walk(local):
        if "model.pt" in names and "spec.yaml" in names:
            return load_model(dirpath)
    raise FileNotFoundError(f"no PolyMAE checkpoint inside {model_uri}")
