"""``polymae run``: one pipeline spec end to end, stage by stage through its DAG.

    scan (Ray Data) ──▶ quarantine table + counts ──▶ train (token stream with masks made in
    Ray Data ──▶ TorchTrainer workers) ──▶ evaluate (renders, eval loss) ──▶ register (MLflow)

A stage whose fingerprint a finished run already recorded takes that run's output instead of
running again (``polymae plan`` shows which will).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from polymae.orchestration.checkpoint import checkpoint_step, resume_point
from polymae.orchestration.console import CONSOLE, LOG_NAME, failure_reason, say
from polymae.orchestration.locations import resolve_locations, resolve_tracking_uri
from polymae.orchestration.runs import (
    RUN_NAME_TAG,
    experiment_id,
    find_run,
    fork_name,
    given_spec,
    run_folder,
    run_status,
    start_run,
)
from polymae.orchestration.runtime import init_ray
from polymae.orchestration.stages import STAGES, RunContext
from polymae.orchestration.tracking import find_stage_output, record_stage
from polymae.pipelines.dag import fingerprints, topological_order
from polymae.pipelines.spec import PipelineSpec, check_run_name, spec_to_yaml
from polymae.pipelines.spec_diff import ForkError


class StageFailed(RuntimeError):
    """A stage raised; the cause is chained (``__cause__``) and its one-line reason is in the message,
    so a caller of ``run_pipeline`` sees why as well as where."""

    def __init__(self, stage: str, kind: str, cause: BaseException) -> None:
        self.where = f"stage {stage} ({kind}) failed"
        self.reason = failure_reason(cause)
        super().__init__(f"{self.where}: {self.reason}")
        self.stage, self.kind = stage, kind


@dataclass
class RunResult:
    run_id: str
    run_name: str
    tracking_uri: str
    output_dir: Path
    counts: dict[str, int]
    final_step: int
    eval_loss: float | None
    checkpoint: Path | None
    model_version: str | None
    resumed: bool = False
    stages: dict[str, str] | None = None  # stage name → "ran" or "reused <run id>"


@dataclass
class PlannedStage:
    name: str
    kind: str
    needs: list[str]
    fingerprint: str
    reuse: tuple[str, str] | None  # (run id, output) of a recorded output with this fingerprint


def plan(spec: PipelineSpec, use_cache: bool = True) -> list[PlannedStage]:
    """The stages in the order they run, each with its fingerprint and what it would reuse."""
    prints = fingerprints(spec)
    uri = resolve_tracking_uri(spec.tracking.uri)
    out = []
    for stage in topological_order(spec.stages):
        found = find_stage_output(uri, spec.tracking.experiment, stage.name, prints[stage.name]) if use_cache else None
        out.append(PlannedStage(stage.name, stage.kind, stage.needs, prints[stage.name], found))
    return out


def fork_source(spec: PipelineSpec, uri: str, run_name: str | None, run_id: str | None,
                new_name: str | None) -> tuple[str, str]:
    """For ``--fork``: point ``spec.train.resume_from`` at the newest checkpoint of the run named
    ``run_name`` (or ``run_id``); → (the forked run's id, the new run's name)."""
    client = MlflowClient(uri)
    exp = experiment_id(client, spec.tracking.experiment, uri)
    source = find_run(client, exp, run_name or "", run_id)
    if source is None:
        raise ForkError(f"--fork: no run named {run_name!r} in experiment {spec.tracking.experiment!r} to fork")
    name = source.data.tags.get(RUN_NAME_TAG, source.info.run_name)
    old = given_spec(client, source) or {}
    checkpoint, _ = resume_point(run_folder(source, spec) / "train", old.get("train", {}).get("resume_from"))
    if checkpoint is None:
        raise ForkError(f"--fork: run {name!r} has no checkpoint to start from")
    if spec.train.resume_from:
        say(f"--fork: train.resume_from {spec.train.resume_from} replaced by run {name!r}'s checkpoint")
    spec.train.resume_from = str(checkpoint)  # part of the fork's spec and its train fingerprint
    if new_name:
        check_run_name(new_name, "--fork")
    return source.info.run_id, fork_name(client, exp, name, new_name)


def run_pipeline(spec: PipelineSpec, run_name: str | None = None, resume_run_id: str | None = None,
                 use_cache: bool = True, fork: str | None = None) -> RunResult:
    """Run every stage of ``spec``. ``run_name`` (or ``resume_run_id``) of an earlier run
    continues that run (same MLflow run, training from its newest checkpoint) if the spec
    computes the same (:mod:`polymae.pipelines.spec_diff`); ``fork`` (a new name, or "" for
    ``<name>-fork-N``) instead starts a new run whose training starts from that run's newest
    checkpoint. Every location is resolved here, at the start; nothing later reads the working
    directory."""
    run_name = check_run_name(run_name or spec.tracking.run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    resolve_locations(spec)
    uri = spec.tracking.uri
    forked_from = None
    if fork is not None:
        forked_from, run_name = fork_source(spec, uri, run_name, resume_run_id, fork or None)
        resume_run_id = None
    # start_run refuses a changed spec before anything is written, and may complete the spec
    # (a reopened run's train.resume_from), so the fingerprints are computed after it
    run_id, run_name, resumed = start_run(spec, uri, run_name, resume_run_id, forked_from)
    with run_status(uri, run_id):
        return _run_stages(spec, plan(spec, use_cache), uri, run_id, run_name, resumed, forked_from)


def _run_stages(spec: PipelineSpec, planned: list[PlannedStage], uri: str, run_id: str, run_name: str,
                resumed: bool, forked_from: str | None) -> RunResult:
    out_dir = Path(spec.outputs.dir) / check_run_name(run_name, f"the name of run {run_id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    CONSOLE.move_log(out_dir / LOG_NAME)  # while the console is captured: the log joins the run folder
    (out_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    init_ray(spec)
    how = "resumed" if resumed else f"forked from run {forked_from}" if forked_from else "new"
    say(f"run {run_name!r} ({how}): MLflow {uri} run {run_id}")

    ctx = RunContext(spec, run_id, uri, out_dir, {p.name: p.fingerprint for p in planned})
    by_name = {s.name: s for s in spec.stages}
    done: dict[str, str] = {}
    for step in planned:
        stage, runner = by_name[step.name], STAGES[step.kind]
        if step.reuse and runner.restore(ctx, stage, step.reuse[1]):
            say(f"stage {step.name} ({step.kind}): unchanged, reusing {step.reuse[1]} "
                  f"(run {step.reuse[0]})")
            record_stage(ctx.client, run_id, step.name, step.fingerprint, step.reuse[1], reused_from=step.reuse[0])
            done[step.name] = f"reused {step.reuse[0]}"
            continue
        say(f"stage {step.name} ({step.kind}): running")
        try:
            output = runner.run(ctx, stage)
        except Exception as err:
            raise StageFailed(step.name, step.kind, err) from err
        record_stage(ctx.client, run_id, step.name, step.fingerprint, output)
        done[step.name] = "ran"

    checkpoint = next(iter(ctx.checkpoints.values()), None)
    final_step = checkpoint_step(checkpoint) if checkpoint else 0
    counts = ctx.final_data().counts if ctx.scans else {}
    model = spec.tracking.registered_model or spec.name
    results = [f"step {final_step}"] if checkpoint else []  # only what the DAG's stages made
    results += [f"eval loss {ctx.eval_loss}"] if ctx.eval_loss is not None else []
    results += [f"model {model} v{ctx.model_version}"] if ctx.model_version is not None else []
    say(f"done: {', '.join(results) or 'finished'}; outputs in {out_dir}")
    return RunResult(run_id, run_name, uri, out_dir, counts, final_step, ctx.eval_loss, checkpoint,
                     ctx.model_version, resumed, done)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
