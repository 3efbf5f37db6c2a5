"""`polymae plan` and `polymae validate` only read: no tracking store is created, no warnings,
and validate shows the plugin settings each stream runs with."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "polymae.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_plan_reads_only(tmp_path):
    db = tmp_path / "mlflow.db"
    proc = _cli("plan", str(ROOT / "examples/image_mae.yaml"), "--set", f"tracking.uri=sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not db.exists() and list(tmp_path.iterdir()) == []  # nothing created
    assert proc.stderr == ""  # no MLflow warnings, no "Creating initial MLflow database tables"
    rows = proc.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["scan", "train", "evaluate", "register"]
    assert all(r.endswith(" run") for r in rows), proc.stdout


def test_validate_shows_the_plugin_defaults_that_apply(tmp_path):
    proc = _cli("validate", str(ROOT / "examples/lidar_mae.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#     z_range: [-5.0, 5.0]   (default)" in proc.stdout, proc.stdout
    given = yaml.safe_load((ROOT / "examples/lidar_mae.yaml").read_text())["sources"][0]["config"]
    for key, value in given.items():  # what the spec sets is shown without "(default)"
        assert f"#     {key}: {value}\n" in proc.stdout
    assert yaml.safe_load(proc.stdout)["name"] == "lidar-mae"  # still a loadable spec
