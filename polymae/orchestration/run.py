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

from polymae.orchestration.checkpoint import checkpoint_step
from polymae.orchestration.locations import resolve_locations, resolve_tracking_uri
from polymae.orchestration.runtime import init_ray
from polymae.orchestration.stages import STAGES, RunContext
from polymae.orchestration.tracking import find_stage_output, record_stage, start_run
from polymae.pipelines.dag import fingerprints, topological_order
from polymae.pipelines.spec import PipelineSpec, check_run_name, spec_to_yaml


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


def run_pipeline(spec: PipelineSpec, run_name: str | None = None, resume_run_id: str | None = None,
                 use_cache: bool = True) -> RunResult:
    """Run every stage of ``spec``; ``run_name`` (or ``resume_run_id``) of an earlier run
    continues that run: same MLflow run, training from its last checkpoint. Every location is
    resolved here, at the start; nothing later reads the working directory."""
    run_name = check_run_name(run_name or spec.tracking.run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    resolve_locations(spec)
    uri = spec.tracking.uri
    planned = plan(spec, use_cache)  # before the run exists: a run never reuses its own new output
    run_id, run_name, resumed = start_run(spec, uri, run_name, resume_run_id)
    out_dir = Path(spec.outputs.dir) / check_run_name(run_name, f"the name of run {run_id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    init_ray(spec)
    print(f"[polymae] run {run_name!r} ({'resumed' if resumed else 'new'}): MLflow {uri} run {run_id}")

    ctx = RunContext(spec, run_id, uri, out_dir, {p.name: p.fingerprint for p in planned})
    by_name = {s.name: s for s in spec.stages}
    done: dict[str, str] = {}
    for step in planned:
        stage, runner = by_name[step.name], STAGES[step.kind]
        if step.reuse and runner.restore(ctx, stage, step.reuse[1]):
            print(f"[polymae] stage {step.name} ({step.kind}): unchanged, reusing {step.reuse[1]} "
                  f"(run {step.reuse[0]})")
            record_stage(ctx.client, run_id, step.name, step.fingerprint, step.reuse[1], reused_from=step.reuse[0])
            done[step.name] = f"reused {step.reuse[0]}"
            continue
        print(f"[polymae] stage {step.name} ({step.kind}): running")
        output = runner.run(ctx, stage)
        record_stage(ctx.client, run_id, step.name, step.fingerprint, output)
        done[step.name] = "ran"

    ctx.client.set_terminated(run_id)
    checkpoint = next(iter(ctx.checkpoints.values()), None)
    final_step = checkpoint_step(checkpoint) if checkpoint else 0
    counts = ctx.final_data().counts if ctx.scans else {}
    model = spec.tracking.registered_model or spec.name
    results = [f"step {final_step}"] if checkpoint else []  # only what the DAG's stages made
    results += [f"eval loss {ctx.eval_loss}"] if ctx.eval_loss is not None else []
    results += [f"model {model} v{ctx.model_version}"] if ctx.model_version is not None else []
    print(f"[polymae] done: {', '.join(results) or 'finished'}; outputs in {out_dir}")
    return RunResult(run_id, run_name, uri, out_dir, counts, final_step, ctx.eval_loss, checkpoint,
                     ctx.model_version, resumed, done)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
