"""Real components: a local Ray with several CPUs and an MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import pytest
import ray

from .servers import start_mlflow_server


@pytest.fixture(scope="session")
def ray_local():
    # 4 logical CPUs on 2 cores: 2 for Ray Train workers, the rest for Ray Data.
    ray.init(address="local", num_cpus=4, object_store_memory=512 * 2**20, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real tracking server for the session; yields its http URI."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
