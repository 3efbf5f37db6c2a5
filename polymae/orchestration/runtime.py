"""Ray: an embedded local Ray with bounded resources, or a connection to a cluster."""

from __future__ import annotations

import logging
import math
import os

import ray

from polymae.pipelines.spec import PipelineSpec


def init_ray(spec: PipelineSpec) -> None:
    """Start (or join) Ray for a spec. Locally, declare the trainer workers' CPUs on top of
    the machine's: Ray Train reserves its workers' CPUs away from Ray Data, and on a small
    machine the data pipeline would otherwise stall."""
    if ray.is_initialized():
        return
    address = spec.runtime.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    train = spec.train
    num_cpus = spec.runtime.num_cpus or (os.cpu_count() or 1) + math.ceil(train.workers * train.cpus_per_worker)
    ray.init(
        address="local",  # always a new embedded Ray, never a leftover `ray start` cluster on this machine
        num_cpus=num_cpus,
        object_store_memory=spec.runtime.object_store_memory,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


def quiet_ray() -> None:
    """No Ray Data progress bars (their escape codes would fill the log); the console shows
    PolyMAE's own progress lines. The setting travels with the datasets made after it."""
    ray.data.DataContext.get_current().enable_progress_bars = False


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
