"""The MLflow run of a pipeline: made, reopened (same spec only) or forked, and ended with
its status.

    polymae run --run-name N      N new: a new run; N used: reopened, if the spec computes the same
    polymae run --resume ID       reopened by id, under the same rule
    polymae run ... --fork [NEW]  a new run (NEW or <N>-fork-K) whose training starts from N's
                                  newest checkpoint (its train.resume_from)

A run ends FINISHED, FAILED (an exception; the reason in the ``polymae.failure`` tag) or
KILLED (KeyboardInterrupt, SIGTERM: ``polymae stop`` of a job).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from polymae import __version__
from polymae.orchestration.console import say
from polymae.orchestration.locations import local_store_folder
from polymae.orchestration.tracking import filter_value
from polymae.pipelines.dag import spec_fingerprint
from polymae.pipelines.spec import PipelineSpec, spec_to_yaml
from polymae.pipelines.spec_diff import ForkError, SpecChangedError, refused_changes

log = logging.getLogger(__name__)
RUN_NAME_TAG = "polymae.run_name"
OUTPUT_DIR_TAG = "polymae.output_dir"
GIVEN_SPEC = "spec.given.yaml"  # the spec as the run was started, kept to diff a reopened run's against
FAILURE_TAG = "polymae.failure"
FAILURE_CHARS = 500


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


def find_run(client: MlflowClient, experiment: str, run_name: str, run_id: str | None = None) -> Run | None:
    """The run ``run_id`` (raises for an unknown id), else the newest run named ``run_name`` in
    the experiment, else None."""
    if run_id is not None:
        return client.get_run(run_id)
    previous = client.search_runs([experiment], filter_string=f"tags.`{RUN_NAME_TAG}` = {filter_value(run_name)}",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    return previous[0] if previous else None


def given_spec(client: MlflowClient, run: Run) -> dict[str, Any] | None:
    """The spec a run was started with (``spec.given.yaml``, before any stage resolved
    statistics into it), or None for a run logged before it was saved."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, GIVEN_SPEC, tmp)
        except Exception:  # no such artifact: a run made by an older polymae
            return None
        return yaml.safe_load(Path(path).read_text())


def check_same_spec(client: MlflowClient, run: Run, spec: PipelineSpec) -> None:
    """Raise SpecChangedError naming each field (``train.lr: 0.0015 → 0.003``) when ``spec``
    changes what ``run`` computes (:mod:`polymae.pipelines.spec_diff` lists what may change).
    A ``spec`` without ``train.resume_from`` takes the run's own (set in place)."""
    name = run.data.tags.get(RUN_NAME_TAG, run.info.run_name)
    old = given_spec(client, run)
    if old is None:  # only the fingerprint to go by
        before = run.data.tags.get("polymae.spec_fingerprint")
        if before is not None and before != spec_fingerprint(spec):
            raise SpecChangedError(name, [f"spec fingerprint: {before[:12]} → {spec_fingerprint(spec)[:12]} "
                                          f"(the run predates {GIVEN_SPEC}: fields unknown)"])
        return
    given_from = (old.get("train") or {}).get("resume_from")
    if given_from and not spec.train.resume_from:
        # a fork (or a run started from a checkpoint) is continued with the spec as written,
        # without the resume_from its start added: it keeps the weights it started from
        say(f"run {name!r}: train.resume_from {given_from} kept from the run's start")
        spec.train.resume_from = given_from
    refused = refused_changes(old, spec.model_dump(mode="json"))
    if refused:
        raise SpecChangedError(name, refused)


def fork_name(client: MlflowClient, experiment: str, source: str, wanted: str | None) -> str:
    """``wanted``, or the first ``<source>-fork-N`` no run has; a name in use is refused."""
    if wanted:
        if find_run(client, experiment, wanted) is not None:
            raise ForkError(f"--fork {wanted!r}: a run of that name exists; a fork needs a new name")
        return wanted
    n = 1
    while find_run(client, experiment, f"{source}-fork-{n}") is not None:
        n += 1
    return f"{source}-fork-{n}"


def start_run(spec: PipelineSpec, uri: str, run_name: str, run_id: str | None = None,
              forked_from: str | None = None) -> tuple[str, str, bool]:
    """→ (run id, run name, resumed). ``run_id`` reopens that run; otherwise a run whose name
    was used before in the experiment is reopened, or a new one is made. A reopened run whose
    spec changed what it computes is refused (SpecChangedError) before anything is written."""
    client = MlflowClient(uri)
    exp = experiment_id(client, spec.tracking.experiment, uri)
    run = find_run(client, exp, run_name, run_id)
    if run is not None:
        check_same_spec(client, run, spec)
    tags = {"polymae.spec_fingerprint": spec_fingerprint(spec), "polymae.version": __version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if run is not None:
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        return run_id, run.data.tags.get(RUN_NAME_TAG, run.info.run_name), True
    tags[OUTPUT_DIR_TAG] = str((Path(spec.outputs.dir) / run_name).resolve())
    if forked_from:
        tags["polymae.forked_from"] = forked_from
    run = client.create_run(exp, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    params = _flatten(spec.model_dump(mode="json"))
    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])
    client.log_text(run.info.run_id, spec_to_yaml(spec), GIVEN_SPEC)
    client.log_text(run.info.run_id, spec_to_yaml(spec), "spec.yaml")
    return run.info.run_id, run_name, False


def run_folder(run: Run, spec: PipelineSpec) -> Path:
    """Where a run's outputs are (its ``polymae.output_dir`` tag; older runs: by name)."""
    name = run.data.tags.get(RUN_NAME_TAG, run.info.run_name)
    return Path(run.data.tags.get(OUTPUT_DIR_TAG) or Path(spec.outputs.dir).resolve() / name)


class RunStopped(BaseException):  # noqa: N818 (not an error: a stop request)
    """SIGTERM reached the driver (``polymae stop`` of a job, a scheduler's stop)."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise RunStopped(f"stopped by signal {signal.Signals(signum).name}")


def _ending(err: BaseException) -> tuple[str, str]:
    """(status, reason) of a run that ``err`` ends. ``ray.init`` replaces a driver's SIGTERM
    handler with one that calls ``sys.exit(15)``, so once Ray is up a stop arrives as a
    SystemExit: any SystemExit mid-run is a request to stop, not a failure."""
    if isinstance(err, SystemExit):
        why = "stopped by signal SIGTERM" if err.code == signal.SIGTERM else "stopped"
        return "KILLED", f"SystemExit: {why} (exit code {err.code})"
    status = "KILLED" if isinstance(err, (KeyboardInterrupt, RunStopped)) else "FAILED"
    reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"  # a StageFailed's cause
    return status, reason[:FAILURE_CHARS]


@contextlib.contextmanager
def run_status(uri: str, run_id: str) -> Iterator[None]:
    """End the run FINISHED when the block finishes, KILLED on KeyboardInterrupt, SIGTERM or
    SystemExit, FAILED on any other exception, with ``polymae.failure`` = the reason (type: message,
    truncated). SIGTERM is turned into :class:`RunStopped` while the block runs (main thread)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main else None
    client = MlflowClient(uri)
    try:
        yield
    except BaseException as err:
        status, reason = _ending(err)
        try:
            client.set_tag(run_id, FAILURE_TAG, reason)
            client.set_terminated(run_id, status=status)
        except Exception as tracking_err:  # MLflow down: the run's own error matters more
            log.error("could not mark MLflow run %s %s (%s)", run_id, status, tracking_err)
        raise
    else:
        client.set_terminated(run_id)
    finally:
        if main and previous is not None:  # None: a handler not set from Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)
