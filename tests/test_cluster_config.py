"""ray_cluster.yaml passes Ray's own cluster-launcher validation and keeps what docs/cluster.md promises.

No cluster is started and no cloud API is called: the config goes through the offline part of what
`ray up` does (ray.autoscaler._private.commands._bootstrap_config): `prepare_config` (merge with the
provider's defaults.yaml, merge setup commands, fill per-type min/max workers) and then
`validate_config` (ray/autoscaler/ray-schema.json plus the head-type and worker-count checks).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_cluster.yaml"


def _raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return _validated(_raw())


def _workers(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {name: t for name, t in config["available_node_types"].items() if name != head}


def test_head_has_no_gpu_and_runs_no_workers(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0


def test_gpu_training_and_cpu_prep_worker_types(config):
    workers = _workers(config)
    gpu = [n for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1]
    cpu_only = [n for n, t in workers.items() if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0]
    assert gpu, f"no worker type with GPUs in {sorted(workers)}"
    assert cpu_only, f"no CPU-only worker type in {sorted(workers)}"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert "InstanceType" in node_type["node_config"], name


def test_dashboard_bound_to_localhost(config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert re.search(r"ray start --head\b", head_start)
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start), head_start
    assert "0.0.0.0" not in head_start
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert re.search(r"ray start --address[= ]\$RAY_HEAD_IP:6379\b", worker_start), worker_start


def test_every_node_installs_polymae_from_the_synced_checkout(config):
    remote = next(r for r, local in config["file_mounts"].items() if (ROOT / local).resolve() == ROOT)
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both
        commands = config[key]
        installs = [c for c in commands if re.search(rf"pip install (-e )?{re.escape(remote)}\b", c)]
        assert installs, f"{key} do not install polymae from {remote}: {commands}"
        assert not any("://" in c or "git+" in c for c in installs), installs
        apt = " ".join(c for c in commands if "apt-get install" in c)
        assert "libusb-1.0-0" in apt and "ffmpeg" in apt, commands


def test_container_images_match_installed_ray(config):
    docker = config["docker"]
    images = [docker["image"], docker.get("head_image", docker["image"])]
    images += [t["docker"]["worker_image"] for t in _workers(config).values() if "worker_image" in t.get("docker", {})]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), (image, ray.__version__)


def _typo_key(c):
    c["max_worker"] = c.pop("max_workers")


def _string_gpu_count(c):
    c["available_node_types"]["gpu"]["resources"]["GPU"] = "1"


def _unknown_head_type(c):
    c["head_node_type"] = "haed"


def _min_over_global_max(c):
    c["max_workers"] = 1


@pytest.mark.parametrize(
    "break_it, error, message",
    [
        (_typo_key, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (_string_gpu_count, jsonschema.ValidationError, "'1' is not of type 'integer'"),
        (_unknown_head_type, ValueError, "`head_node_type` must be one of"),
        (_min_over_global_max, ValueError, "smaller than the sum of `min_workers`"),
    ],
    ids=["misspelled-top-level-key", "wrong-type", "unknown-head-type", "min-workers-over-max"],
)
def test_validator_rejects_broken_copies(break_it, error, message):
    broken = _raw()
    break_it(broken)
    with pytest.raises(error, match=re.escape(message)):
        _validated(broken)
