"""`polymae submit` without a cluster: what the Jobs API is handed (a recording client stands in
for it), run names that could escape their folder or the shell, and locations made absolute on
the submitting machine."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml

from polymae.cli import main
from polymae.orchestration import jobs
from polymae.orchestration.locations import resolve_locations, resolve_tracking_uri
from polymae.pipelines.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "image_mae.yaml"
INJECTIONS = ["../x", "a;rm -rf ~", "a'b", 'a"b', "a b", "$(touch pwned)", "-x", "a/b", "a\n"]


class RecordingJobs:
    """Records submit_job's arguments and what the staging folder holds at that moment."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def submit_job(self, **kwargs) -> str:
        staging = Path(kwargs["runtime_env"]["working_dir"])
        self.calls.append({**kwargs, "staged": sorted(p.name for p in staging.iterdir()),
                           "spec": yaml.safe_load((staging / "spec.yaml").read_text())})
        return kwargs["submission_id"]


@pytest.fixture
def recorded(monkeypatch) -> RecordingJobs:
    fake = RecordingJobs()
    monkeypatch.setattr(jobs, "client", lambda address=None: fake)
    return fake


@pytest.mark.parametrize("name", INJECTIONS)
def test_a_run_name_that_could_escape_is_refused_before_anything_is_sent(name, recorded, capsys, tmp_path):
    assert main(["submit", str(SPEC), f"--run-name={name}"]) == 2
    assert "--run-name" in capsys.readouterr().err
    with pytest.raises(SpecError, match="--run-name"):
        jobs.submit(load_spec(SPEC), None, run_name=name)
    data = yaml.safe_load(SPEC.read_text())
    data["tracking"]["run_name"] = name
    data["sources"][0]["paths"] = [str(SPEC.parent / "data" / "images")]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="tracking.run_name"):
        load_spec(tmp_path / "spec.yaml")
    assert recorded.calls == []


def test_the_entrypoint_quotes_its_words_and_the_staging_folder_is_removed(recorded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(SPEC)
    job = jobs.submit(spec, None, run_name="night.run-1", resume_run_id="abc 123; touch x")
    (call,) = recorded.calls
    assert call["submission_id"] == job
    assert shlex.split(call["entrypoint"]) == ["python", "-m", "polymae.cli", "run", "spec.yaml",
                                               "--run-name", "night.run-1", "--resume", "abc 123; touch x"]
    assert call["staged"] == ["spec.yaml"]
    assert not Path(call["runtime_env"]["working_dir"]).exists()  # uploaded by submit_job, then removed


def test_submit_pins_relative_outputs_and_the_sqlite_store_on_this_machine(recorded, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["submit", str(SPEC), "--set", "tracking.uri=sqlite:///store/m.db"]) == 0
    out = capsys.readouterr().out
    assert "shared storage" in out and "MLflow server" in out
    staged = recorded.calls[0]["spec"]  # the spec the job runs
    assert staged["outputs"]["dir"] == str(tmp_path / "runs")
    assert staged["tracking"]["uri"] == f"sqlite:///{tmp_path}/store/m.db"
    spec = load_spec(SPEC)
    assert resolve_locations(spec) and resolve_locations(spec) == []  # once is enough


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:///m.db", "sqlite:///{cwd}/m.db"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("mlruns", "{cwd}/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    (None, "sqlite:///{cwd}/mlflow.db"),
])
def test_local_tracking_stores_become_absolute(uri, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(uri) == expected.format(cwd=os.getcwd())
