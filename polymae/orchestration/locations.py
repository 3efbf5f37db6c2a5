"""Where a run writes: ``outputs.dir`` and the MLflow store, as absolute paths fixed at start.

A driver's working directory is not a safe place to resolve against later: a Ray Job's is a
temporary copy of its ``working_dir`` that Ray may clean while the job still runs, and it is
removed when the job ends. So every relative location is resolved once, when the run starts
(``polymae run``) or on the submitting machine (``polymae submit``), and the driver then works in
the run's outputs folder (:func:`enter_outputs_dir`), never in the directory it was started in.
"""

from __future__ import annotations

import os
from pathlib import Path

from polymae.pipelines.spec import PipelineSpec

SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI with a local store made absolute. Default (no ``uri``, no
    ``MLFLOW_TRACKING_URI``): ``sqlite:///<cwd>/mlflow.db``. ``sqlite:///rel.db`` (SQLAlchemy's
    relative form; ``sqlite:////abs.db`` is absolute) and a plain folder path are resolved
    against the working directory; server URIs are returned as they are."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"
    if uri.startswith(SQLITE):
        path = uri[len(SQLITE):]
        return uri if path.startswith("/") or path in ("", ":memory:") else f"{SQLITE}{Path(path).resolve()}"
    if "://" not in uri and not uri.startswith("file:"):  # a folder of a file store
        return str(Path(uri).resolve())
    return uri


def local_store_folder(uri: str) -> Path | None:
    """The folder holding a local store (SQLite file or file-store folder), else None."""
    if uri.startswith(SQLITE):
        return Path(uri[len(SQLITE):]).parent
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).parent
    return None


def resolve_locations(spec: PipelineSpec) -> list[str]:
    """Make ``outputs.dir`` and ``tracking.uri`` absolute in place (relative ones against the
    working directory); → one line per field that changed (idempotent: a second call → [])."""
    changed = []
    outputs = str(Path(spec.outputs.dir).resolve())
    if outputs != spec.outputs.dir:
        changed.append(f"outputs.dir {spec.outputs.dir!r} → {outputs!r}")
        spec.outputs.dir = outputs
    uri = resolve_tracking_uri(spec.tracking.uri)
    if uri != spec.tracking.uri:
        changed.append(f"tracking.uri {spec.tracking.uri!r} → {uri!r}")
        spec.tracking.uri = uri
    return changed


def enter_outputs_dir(spec: PipelineSpec) -> Path:
    """Resolve the locations, create ``outputs.dir`` and make it the working directory (the
    CLI driver's stable folder: libraries that read ``Path.cwd()`` late, such as MLflow's
    model logging, keep working when the folder the driver started in is gone)."""
    resolve_locations(spec)
    folder = Path(spec.outputs.dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    return folder
