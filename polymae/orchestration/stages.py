"""The stage kinds a pipeline DAG is made of, one class each, in one registry.

Every kind can ``run`` (do the work, log it into the run, return where its output is) and
``restore`` (take a recorded output of an earlier run with the same fingerprint instead of
running; False when that output is gone, and then it runs).

    scan      decode every file once → good files + quarantine table + statistics
    pair      join the streams' files into samples by a key → samples + skipped/unmatched files
    train     TorchTrainer workers → the final checkpoint
    evaluate  eval loss and reconstruction renders of the final model on a fixed batch
    register  the checkpoint as a pyfunc model version in the MLflow registry
    embed     encoder embeddings of a folder of files → Parquet (Ray Data)
    probe     kNN and linear probes of the encoder on a labelled set, beside a random-init one
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from polymae.orchestration.checkpoint import (
    build_model,
    checkpoint_step,
    latest_checkpoint,
    load_weights,
    resume_point,
    weights_only,
)
from polymae.orchestration.console import CONSOLE, Progress, say
from polymae.orchestration.evaluation import log_eval
from polymae.orchestration.runtime import cluster_has_gpus
from polymae.orchestration.tracking import log_model
from polymae.orchestration.train import FAULT_FILE, raise_recorded_fault, train_loop_per_worker
from polymae.orchestration.train_progress import TrainingProgress
from polymae.pipelines.dag import ancestors, scan_sources, upstream_of_kind
from polymae.pipelines.data import fixed_batch, token_dataset, write_token_shards
from polymae.pipelines.files import Sample, SampleFile
from polymae.pipelines.pairing import PairingSpec, pair, view_followers
from polymae.pipelines.scan import ScanResult, samples_per_epoch, scan, write_quarantine
from polymae.pipelines.spec import PipelineSpec, StageSpec, spec_to_yaml
from polymae.pipelines.split import split_samples


@dataclass
class RunContext:
    """What the stages of one run share: where to log, and the outputs of finished stages."""

    spec: PipelineSpec
    run_id: str
    tracking_uri: str
    out_dir: Path
    fingerprints: dict[str, str]
    scans: dict[str, ScanResult] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    eval_loss: float | None = None
    model_version: str | None = None

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def upstream(self, stage: StageSpec, kind: str) -> StageSpec:
        return upstream_of_kind(stage, kind, {s.name: s for s in self.spec.stages})

    def scan_of(self, stage: StageSpec) -> ScanResult:
        """The data upstream of ``stage``: the nearest pair stage's result, else every scan
        upstream together (one per stream, or one for all)."""
        by_name = {s.name: s for s in self.spec.stages}
        upstream = ancestors(stage, by_name)
        paired = [n for n in upstream if by_name[n].kind == "pair"]
        if paired:
            return self.scans[paired[0]]
        scans = [self.scans[n] for n in upstream if by_name[n].kind == "scan"]
        return scans[0] if len(scans) == 1 else ScanResult.merge(scans)

    def final_data(self) -> ScanResult:
        """The data of the whole run: the pair stages' results, else every scan's, together."""
        kinds = {s.name: s.kind for s in self.spec.stages}
        paired = [r for n, r in self.scans.items() if kinds[n] == "pair"]
        return ScanResult.merge(paired or list(self.scans.values()))

    def split_of(self, stage: StageSpec) -> tuple[list[Sample], list[Sample]]:
        """(training samples, held-out samples) of the data upstream of ``stage`` (spec.split)."""
        split = self.spec.split
        return split_samples(self.scan_of(stage).samples, split.holdout, split.files, self.spec.seed)

    def eval_files(self, stage: StageSpec) -> list[Sample]:
        """What evaluation scores: the held-out samples, or (no split) the training samples."""
        train, heldout = self.split_of(stage)
        return heldout or train

    def checkpoint_of(self, stage: StageSpec) -> Path:
        return self.checkpoints[self.upstream(stage, "train").name]


class Stage:
    kind: ClassVar[str]

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        raise NotImplementedError

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        raise NotImplementedError


STAGES: dict[str, Stage] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    STAGES[cls.kind] = cls()
    return cls


@register_stage
class ScanStage(Stage):
    """Output: a folder (shared by runs) with ``scan.json`` (good files, resolved source
    config) and ``quarantine.parquet``."""

    kind = "scan"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        sources = scan_sources(ctx.spec, stage)
        bar = Progress("scan: files", 0)
        # also resolves dataset statistics into each source.config
        scanned = scan(ctx.spec, sources, progress=lambda done, total: bar.update(done, total=total))
        bar.close()
        folder = Path(ctx.spec.outputs.dir) / "stages" / f"{stage.name}-{ctx.fingerprints[stage.name][:16]}"
        folder.mkdir(parents=True, exist_ok=True)
        write_quarantine(scanned.quarantine, str(folder / "quarantine.parquet"))
        record = {"good": [vars(f) for f in scanned.good], "quarantine": scanned.quarantine,
                  "configs": {s.name: s.config for s in sources}}
        (folder / "scan.json").write_text(json.dumps(record))
        self._finish(ctx, stage, scanned)
        return str(folder)

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        path = Path(output) / "scan.json"
        if not path.is_file():
            return False
        record = json.loads(path.read_text())
        if "configs" not in record:  # written before streams had names
            return False
        for name, config in record["configs"].items():
            ctx.spec.source(name).config.update(config)
        self._finish(ctx, stage, ScanResult([SampleFile(**f) for f in record["good"]], record["quarantine"]))
        return True

    def _finish(self, ctx: RunContext, stage: StageSpec, scanned: ScanResult) -> None:
        ctx.scans[stage.name] = scanned
        (ctx.out_dir / "spec.yaml").write_text(spec_to_yaml(ctx.spec))  # with the resolved statistics
        ctx.client.log_text(ctx.run_id, spec_to_yaml(ctx.spec), "spec.yaml")
        ctx.client.set_tag(ctx.run_id, "polymae.dataset_fingerprint", scanned.dataset_fingerprint)
        log_counts(ctx, scanned)


SHOWN_FILES = 10  # quarantined / skipped files named on the console


def log_counts(ctx: RunContext, data: ScanResult) -> None:
    """The run's counts (one schema, in total and per stream), quarantine and skip tables, into
    the run and the console. A later data stage (pair) logs them again: the last one holds."""
    client, out = ctx.client, ctx.out_dir
    counts = data.counts
    for name, rows in (("quarantine", data.quarantine), ("skipped", data.skipped)):
        write_quarantine(rows, str(out / f"{name}.parquet"))
        client.log_artifact(ctx.run_id, str(out / f"{name}.parquet"))
    for key, value in counts.items():
        client.log_metric(ctx.run_id, f"data/{key}", value)
    for name, per_stream in data.counts_by_stream.items():  # the same schema for one stream or many
        for key, value in per_stream.items():
            client.log_metric(ctx.run_id, f"data/{name}/{key}", value)
    say(f"files: {counts['total']} total = {counts['tokenized']} tokenized "
          f"+ {counts['quarantined']} quarantined ({out / 'quarantine.parquet'}) + {counts['skipped']} skipped; "
          f"{counts['unmatched']} unmatched; {counts['samples']} samples per epoch; "
          f"{counts['views_skipped']} views skipped")
    if len(data.streams) > 1:
        for name, c in data.counts_by_stream.items():
            say(f"  stream {name}: {c['total']} = {c['tokenized']} tokenized + {c['quarantined']} "
                  f"quarantined + {c['skipped']} skipped; {c['unmatched']} unmatched; {c['samples']} samples; "
                  f"{c['views_skipped']} views skipped")
    listed = [f"  quarantined {r['path']}: {r['stage']}: {r['reason']}" for r in data.quarantine]
    listed += [f"  skipped {r['path']}: {r['reason']}" for r in data.skipped]
    for i, line in enumerate(listed):  # the console names the first few; the log and the tables hold all
        if i < SHOWN_FILES:
            say(line)
        else:
            print(f"[polymae] {line}", flush=True)
    if len(listed) > SHOWN_FILES:
        say(f"  … and {len(listed) - SHOWN_FILES} more (all in quarantine.parquet, skipped.parquet and the log)")
    if not data.good:
        raise RuntimeError("no usable input files: see the quarantine table")
    last = data.paired is not None or "pair" not in {s.kind for s in ctx.spec.stages}  # the data stage before training
    if ctx.spec.outputs.token_shards and last:
        write_token_shards(ctx.spec, data.samples, str(out / "tokens"))


@register_stage
class PairStage(Stage):
    """Output: a folder with ``pairs/`` (the Ray Data join, Parquet) and ``pairing.json`` (the
    samples, skipped and unmatched files, the pairing's quarantine rows)."""

    kind = "pair"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        spec = ctx.spec
        folder = Path(spec.outputs.dir) / "stages" / f"{stage.name}-{ctx.fingerprints[stage.name][:16]}"
        folder.mkdir(parents=True, exist_ok=True)
        paired = pair(ctx.scan_of(stage), {s.name: s.modality for s in spec.sources},
                      spec.pairing or PairingSpec(), folder, view_followers(spec.sources))
        record = {"good": [vars(f) for f in paired.good], "quarantine": paired.quarantine, "skipped": paired.skipped,
                  "unmatched": paired.unmatched, "samples": [vars(s) for s in paired.samples]}
        (folder / "pairing.json").write_text(json.dumps(record))
        ctx.scans[stage.name] = paired
        log_counts(ctx, paired)
        return str(folder)

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        path = Path(output) / "pairing.json"
        if not path.is_file():
            return False
        r = json.loads(path.read_text())
        ctx.scans[stage.name] = ScanResult([SampleFile(**f) for f in r["good"]], r["quarantine"], r["skipped"],
                                           [tuple(u) for u in r["unmatched"]], [Sample(**s) for s in r["samples"]])
        log_counts(ctx, ctx.scans[stage.name])
        return True


@register_stage
class TrainStage(Stage):
    """Output: the final checkpoint folder. Where training starts is :func:`resume_point`'s
    choice (this run's newest checkpoint, else ``train.resume_from``, else fresh), here and in
    every worker; Ray Train restarts a failed worker group up to ``train.max_failures`` times."""

    kind = "train"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        spec, train = ctx.spec, ctx.spec.train
        files, heldout = ctx.split_of(stage)
        if heldout:
            say(f"split: {len(files)} files for training, {len(heldout)} held out for evaluation")
            for key, value in {"train_files": len(files), "heldout_files": len(heldout)}.items():
                ctx.client.log_metric(ctx.run_id, f"data/{key}", value)
        resume, why = resume_point(ctx.out_dir / "train", train.resume_from)
        say(f"stage {stage.name}: starts from {resume or 'scratch'} ({why})")
        ctx.client.set_tag(ctx.run_id, f"polymae.stage.{stage.name}.started_from", f"{resume or 'scratch'} ({why})")
        start_step = checkpoint_step(resume) if resume else 0
        eval_batch = fixed_batch(spec, heldout or files)
        np.savez(ctx.out_dir / "eval_batch.npz", **{k: v for k, v in eval_batch.items() if "." in k})
        ctx.client.log_artifact(ctx.run_id, str(ctx.out_dir / "eval_batch.npz"))
        model = build_model(spec)
        if resume:
            load_weights(resume, model)
        log_eval(ctx.client, ctx.run_id, model, eval_batch, start_step, ctx.out_dir)
        if start_step < train.steps:
            batch = train.batch_size
            stream = token_dataset(spec, files, start_step * batch,
                                   (train.steps - start_step) * batch + samples_per_epoch(files))
            use_gpu = train.use_gpu == "yes" or (train.use_gpu == "auto" and cluster_has_gpus())
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={
                    "spec": spec.model_dump(mode="json"), "run_id": ctx.run_id, "tracking_uri": ctx.tracking_uri,
                    "start_step": start_step,
                    "storage": str(ctx.out_dir / "train"),
                    "threads": max(1, (os.cpu_count() or 1) // train.workers),
                },
                scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=use_gpu,
                                             resources_per_worker={"CPU": train.cpus_per_worker},
                                             placement_strategy=train.placement_strategy),
                datasets={"train": stream},
                run_config=RunConfig(name="train", storage_path=str(ctx.out_dir),
                                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                                     failure_config=FailureConfig(max_failures=train.max_failures)),
            )
            (ctx.out_dir / "train" / FAULT_FILE).unlink(missing_ok=True)  # one of an earlier attempt
            with TrainingProgress(ctx.client, ctx.run_id, train.steps, start_step):
                trainer.fit()
            raise_recorded_fault(ctx.out_dir / "train")
        final = latest_checkpoint(ctx.out_dir / "train") or resume
        with tempfile.TemporaryDirectory(prefix="polymae-weights-") as tmp:  # the run keeps weights only
            ctx.client.log_artifacts(ctx.run_id, str(weights_only(final, tmp)), "checkpoint")
        ctx.checkpoints[stage.name] = Path(final)
        return str(final)

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        if not (Path(output) / "model.pt").is_file():
            return False
        ctx.checkpoints[stage.name] = Path(output)
        return True


@register_stage
class EvaluateStage(Stage):
    """Output: ``evaluate.json`` (step, eval loss) in the run's folder; renders logged. A
    non-finite eval loss fails the stage."""

    kind = "evaluate"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        checkpoint = ctx.checkpoint_of(stage)
        model = build_model(ctx.spec)
        step = load_weights(checkpoint, model)
        ctx.eval_loss = log_eval(ctx.client, ctx.run_id, model, fixed_batch(ctx.spec, ctx.eval_files(stage)),
                                 step, ctx.out_dir)
        if not math.isfinite(ctx.eval_loss):
            raise FloatingPointError(f"non-finite eval loss {ctx.eval_loss} of the checkpoint at step {step} "
                                     f"({checkpoint})")
        path = ctx.out_dir / f"{stage.name}.json"
        path.write_text(json.dumps({"step": step, "eval_loss": ctx.eval_loss, "checkpoint": str(checkpoint)}))
        return str(path)

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        if not Path(output).is_file():
            return False
        ctx.eval_loss = json.loads(Path(output).read_text())["eval_loss"]
        return True


@register_stage
class RegisterStage(Stage):
    """Output: ``models:/NAME/VERSION`` of the new model version (never of a model with a
    non-finite weight: ``log_model`` refuses it)."""

    kind = "register"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        name = ctx.spec.tracking.registered_model or ctx.spec.name
        ctx.model_version = log_model(ctx.tracking_uri, ctx.run_id, str(ctx.checkpoint_of(stage)), name)
        return f"models:/{name}/{ctx.model_version}"

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        name, version = output.removeprefix("models:/").rsplit("/", 1)
        try:
            ctx.client.get_model_version(name, version)
        except Exception:  # deleted from the registry: register again
            return False
        ctx.model_version = version
        return True


@register_stage
class EmbedStage(Stage):
    """Output: a Parquet folder of encoder embeddings (``options.paths``: the files to embed,
    ``options.output``: where; default ``<run>/embeddings``)."""

    kind = "embed"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        from polymae.orchestration.embed import embed_files

        out = stage.options.get("output") or str(ctx.out_dir / f"{stage.name}")
        counts = embed_files(ctx.checkpoint_of(stage), list(stage.options["paths"]), out,
                             stream=stage.options.get("stream"))
        for key, value in counts.items():
            ctx.client.log_metric(ctx.run_id, f"{stage.name}/{key}", value)
        return out

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        from polymae.orchestration.embed import complete_embeddings

        return complete_embeddings(output, ctx.checkpoint_of(stage))  # else (cut short, overwritten) it runs



@register_stage
class ProbeStage(Stage):
    """Output: a folder with ``probe.json`` (top-1s, sizes, fingerprint), ``split.csv`` and
    ``quarantine.parquet`` (``options``: :class:`polymae.probe.options.ProbeOptions`). The
    random-init baseline is cached under ``outputs.dir/stages`` for every later probe of the
    same architecture, seed and data."""

    kind = "probe"

    def run(self, ctx: RunContext, stage: StageSpec) -> str:
        from polymae.probe.options import ProbeOptions
        from polymae.probe.report import log_probe, summary
        from polymae.probe.run import run_probe

        options = ProbeOptions.model_validate(stage.options)
        out = Path(options.output or ctx.out_dir / stage.name)
        checkpoint = ctx.checkpoint_of(stage)
        result = run_probe(checkpoint, options, out, Path(ctx.spec.outputs.dir).resolve() / "stages")
        log_probe(ctx.client, ctx.run_id, result, options, out, step=checkpoint_step(checkpoint))
        CONSOLE.say(summary(result))
        return str(out)

    def restore(self, ctx: RunContext, stage: StageSpec, output: str) -> bool:
        record = Path(output) / "probe.json"
        if not record.is_file():
            return False
        for key, value in json.loads(record.read_text())["metrics"].items():
            ctx.client.log_metric(ctx.run_id, key, value)
        return True
