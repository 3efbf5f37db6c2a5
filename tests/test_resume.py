"""Which checkpoint a train stage starts from (resume_point's one order), what a reopened run's
spec may change, and the MLflow run's end status (a real SQLite store, no server)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from polymae.orchestration.checkpoint import resume_point
from polymae.orchestration.runs import FAILURE_TAG, GIVEN_SPEC, fork_name, run_status, start_run
from polymae.pipelines.spec import parse_spec
from polymae.pipelines.spec_diff import SpecChangedError, refused_changes, spec_changes

IMAGES = Path(__file__).resolve().parents[1] / "examples/data/images"


def _checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder as save_checkpoint lays it out (model.pt + state.json with sizes)."""
    folder.mkdir(parents=True)
    torch.save({"w": torch.zeros(4)}, folder / "model.pt")
    size = (folder / "model.pt").stat().st_size
    (folder / "state.json").write_text(json.dumps({"step": step, "sizes": {"model.pt": size + (0 if complete else 1)}}))
    return folder


def test_a_fresh_run_starts_from_scratch(tmp_path):
    assert resume_point(tmp_path / "train", None) == (None, "fresh: no checkpoint of this run and no "
                                                            "train.resume_from")


def test_resume_from_is_used_when_the_run_has_no_checkpoint_of_its_own(tmp_path):
    given = _checkpoint(tmp_path / "elsewhere", 7)
    _checkpoint(tmp_path / "train/ckpt_cut", 9, complete=False)  # a copy cut short does not count
    assert resume_point(tmp_path / "train", str(given)) == (given, "train.resume_from, step 7")


def test_the_runs_own_newest_checkpoint_beats_resume_from_and_says_so(tmp_path):
    given = _checkpoint(tmp_path / "elsewhere", 50)
    _checkpoint(tmp_path / "train/a", 3)
    newest = _checkpoint(tmp_path / "train/b", 5)
    point, why = resume_point(tmp_path / "train", str(given))
    assert point == newest
    assert why.startswith("this run's newest checkpoint, step 5") and "resume_from" in why and "ignored" in why


@pytest.mark.parametrize("restored_step, disk_step, winner", [(8, 6, "restored"), (6, 8, "disk")])
def test_ray_trains_restored_checkpoint_and_the_storage_folder_the_newer_wins(tmp_path, restored_step, disk_step,
                                                                               winner):
    restored = _checkpoint(tmp_path / "ray_copy", restored_step)
    on_disk = _checkpoint(tmp_path / "train/ckpt", disk_step)
    point, why = resume_point(tmp_path / "train", None, restored)
    assert point == (restored if winner == "restored" else on_disk)
    assert why.startswith("Ray Train's restored" if winner == "restored" else "this run's newest")


def test_a_resume_from_that_is_no_checkpoint_is_an_error_naming_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.resume_from = .*not a complete checkpoint"):
        resume_point(tmp_path / "train", str(tmp_path / "missing"))


def _spec(tmp_path, **train):
    return parse_spec({"name": "r", "sources": [{"modality": "image", "paths": [str(IMAGES)]}],
                       "train": {"steps": 6, "batch_size": 4, **train},
                       "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "resume"},
                       "outputs": {"dir": str(tmp_path / "runs")}})


def test_spec_changes_are_dotted_paths_with_both_values():
    old = {"train": {"lr": 0.0015, "steps": 6}, "sources": [{"paths": ["a"]}]}
    new = {"train": {"lr": 0.003, "steps": 6}, "sources": [{"paths": ["a", "b"]}]}
    assert spec_changes(old, new) == ["sources.0.paths.1: <absent> → b", "train.lr: 0.0015 → 0.003"]


@pytest.mark.parametrize("change, refused", [
    ({"steps": 9}, []), ({"workers": 2}, []), ({"log_every": 1}, []),
    ({"steps": 3}, ["train.steps: 6 → 3"]), ({"lr": 0.003}, ["train.lr: None → 0.003"]),
    ({"resume_from": "/x"}, ["train.resume_from: None → /x"]),
])
def test_a_reopened_run_may_take_a_longer_schedule_and_logistics_only(tmp_path, change, refused):
    old = _spec(tmp_path, workers=2 if "workers" not in change else 1).model_dump(mode="json")
    old["train"]["workers"] = 1
    new = _spec(tmp_path, **{"workers": 1, **change}).model_dump(mode="json")
    assert refused_changes(old, new) == refused


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (each test its own run names): making one takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_a_reused_run_name_with_a_changed_spec_is_refused_before_anything_is_written(tmp_path, store):
    first = _spec(tmp_path, lr=0.0015)
    run_id, _, resumed = start_run(first, store, "same")
    assert not resumed
    again, _, resumed = start_run(_spec(tmp_path, lr=0.0015, steps=9), store, "same")  # longer: continues
    assert resumed and again == run_id
    client = MlflowClient(store)
    before = client.get_run(run_id).data.tags
    with pytest.raises(SpecChangedError) as info:
        start_run(_spec(tmp_path, lr=0.003, warmup_steps=2), store, "same")
    assert info.value.changes == ["train.lr: 0.0015 → 0.003", "train.warmup_steps: 20 → 2"]
    assert "--fork" in str(info.value)
    with pytest.raises(SpecChangedError):
        start_run(_spec(tmp_path, lr=0.003), store, "ignored", run_id=run_id)  # --resume RUN_ID: the same rule
    assert client.get_run(run_id).data.tags == before  # the refused attempt changed nothing
    assert "lr: 0.0015" in Path(client.download_artifacts(run_id, GIVEN_SPEC, str(tmp_path))).read_text()


def test_a_reopened_run_keeps_the_resume_from_it_started_with(tmp_path, store):
    start_run(_spec(tmp_path, resume_from="/ckpt/of/the/forked/run"), store, "started-from")  # as --fork starts one
    spec = _spec(tmp_path)  # the spec as written: no resume_from
    _, _, resumed = start_run(spec, store, "started-from")
    assert resumed and spec.train.resume_from == "/ckpt/of/the/forked/run"


def test_fork_names_count_up_and_a_used_name_is_refused(tmp_path, store):
    spec = _spec(tmp_path)
    start_run(spec, store, "base")
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("resume").experiment_id
    assert fork_name(client, exp, "base", None) == "base-fork-1"
    start_run(spec, store, "base-fork-1")
    assert fork_name(client, exp, "base", None) == "base-fork-2"
    with pytest.raises(ValueError, match="a run of that name exists"):
        fork_name(client, exp, "base", "base")


def _ended(store, spec, tmp_path, error):
    run_id, _, _ = start_run(spec, store, f"status-{type(error).__name__}")
    with pytest.raises(type(error)), run_status(store, run_id):
        raise error
    return MlflowClient(store).get_run(run_id)


def test_a_failing_run_ends_failed_with_the_reason(tmp_path, store):
    run = _ended(store, _spec(tmp_path), tmp_path, RuntimeError("no usable input files"))
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == "RuntimeError: no usable input files"


def test_an_interrupted_run_ends_killed(tmp_path, store):
    run = _ended(store, _spec(tmp_path), tmp_path, KeyboardInterrupt())
    assert run.info.status == "KILLED" and run.data.tags[FAILURE_TAG].startswith("KeyboardInterrupt")


def test_sigterm_ends_the_run_killed_and_the_old_handler_comes_back(tmp_path, store):
    run_id, _, _ = start_run(_spec(tmp_path), store, "sigterm")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(BaseException, match="SIGTERM"), run_status(store, run_id):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # the handler raises here (never reached otherwise)
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags[FAILURE_TAG]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_sigterm_that_rays_handler_turns_into_sys_exit_ends_the_run_killed(tmp_path, store):
    run_id, _, _ = start_run(_spec(tmp_path), store, "ray-sigterm")
    with pytest.raises(SystemExit), run_status(store, run_id):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init sets on a driver
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags[FAILURE_TAG]


def test_a_finished_block_ends_finished(tmp_path, store):
    run_id, _, _ = start_run(_spec(tmp_path), store, "ok")
    with run_status(store, run_id):
        pass
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and FAILURE_TAG not in run.data.tags
