"""Ray Jobs: submit a pipeline spec to a cluster and follow it (``polymae submit|status|logs|stop``).

The job runs ``python -m polymae.cli run spec.yaml`` on the cluster. Its runtime_env carries
the resolved spec (``working_dir``) and this checkout's ``polymae`` package (``py_modules``),
so the cluster runs the same code; the git commit travels as ``POLYMAE_GIT_COMMIT``. Data
paths in the spec must be readable on the cluster's nodes (shared storage), as for any Ray job.
A relative ``outputs.dir`` or SQLite store would land in the job's temporary working directory,
so they are resolved to absolute paths here, on the submitting machine.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

import polymae
from polymae.orchestration.locations import resolve_locations
from polymae.orchestration.tracking import git_commit
from polymae.pipelines.spec import PipelineSpec, check_run_name, spec_to_yaml

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def client(address: str | None = None) -> JobSubmissionClient:
    """A Jobs API client; ``address`` defaults to ``RAY_ADDRESS`` (then Ray's own default).
    A cluster with token authentication takes the token from ``RAY_AUTH_TOKEN`` as a bearer
    header."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address or os.environ.get("RAY_ADDRESS"), headers=headers)


def submit(spec: PipelineSpec, address: str | None, run_name: str | None = None,
           resume_run_id: str | None = None) -> str:
    """Submit ``spec`` (already validated) as a Ray Job; → the submission id. Its locations are
    made absolute first (:func:`resolve_locations`)."""
    submission_id = f"polymae-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_name = check_run_name(run_name or spec.tracking.run_name or submission_id)
    resolve_locations(spec)
    entrypoint = shlex.join(["python", "-m", "polymae.cli", "run", "spec.yaml", "--run-name", run_name,
                             *(["--resume", resume_run_id] if resume_run_id else [])])
    env_vars = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    commit = git_commit()
    if commit:
        env_vars["POLYMAE_GIT_COMMIT"] = commit
    jobs = client(address)
    # submit_job uploads working_dir and py_modules to the cluster before it returns, so the
    # staging folder is not needed once it has
    with tempfile.TemporaryDirectory(prefix="polymae-submit-") as staging:
        (Path(staging) / "spec.yaml").write_text(spec_to_yaml(spec))
        runtime_env = {"working_dir": staging, "py_modules": [str(Path(polymae.__file__).parent)],
                       "env_vars": env_vars}
        deadline = time.monotonic() + 60
        while True:
            try:
                return jobs.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                    metadata={"polymae.spec": spec.name, "polymae.run_name": run_name},
                    entrypoint_num_cpus=0,  # the driver only coordinates; its CPUs stay with Ray Data and Train
                )
            except RuntimeError as err:  # a cluster that just started has no job agent for a few seconds
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)


def wait(job_id: str, address: str | None, timeout_s: float = 3600, poll_s: float = 2.0) -> JobStatus:
    """Poll until the job ends (or ``timeout_s``); → its last status."""
    jobs = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = jobs.get_job_status(job_id)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)
