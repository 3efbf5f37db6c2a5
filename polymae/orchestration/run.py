"""``polymae run``: one pipeline spec end to end.

    scan (Ray Data) ──▶ quarantine table + counts ──▶ token stream (Ray Data, masks made here)
    ──▶ TorchTrainer workers ──▶ final checkpoint ──▶ MLflow: renders, eval loss, model version
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from polymae.orchestration.checkpoint import build_model, checkpoint_step, latest_checkpoint, load_weights
from polymae.orchestration.runtime import cluster_has_gpus, init_ray
from polymae.orchestration.tracking import log_model, resolve_tracking_uri, start_run
from polymae.orchestration.train import train_loop_per_worker
from polymae.pipelines.data import (
    fixed_batch,
    samples_per_epoch,
    scan,
    token_dataset,
    write_quarantine,
    write_token_shards,
)
from polymae.pipelines.spec import PipelineSpec, spec_to_yaml
from polymae.tokenizer.stream import columns_to_streams


@dataclass
class RunResult:
    run_id: str
    run_name: str
    tracking_uri: str
    output_dir: Path
    counts: dict[str, int]
    final_step: int
    eval_loss: float
    checkpoint: Path
    model_version: str | None
    resumed: bool = False


def evaluate(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Loss (fp32, eval mode) on a fixed batch and the per-modality predictions."""
    model.eval()
    tensors = {k: torch.as_tensor(v) for k, v in batch.items() if "." in k}
    with torch.no_grad():
        loss, _, preds = model(tensors)
    return float(loss), {m: p.numpy() for m, p in preds.items()}


def render(model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path) -> list[Path]:
    """One PNG: a row per sample of the fixed batch, per modality the plugin's render; and a GIF
    per modality whose plugin animates (its first sample). → the files written."""
    _, preds = evaluate(model, batch)
    rows, written = [], [path]
    path.parent.mkdir(parents=True, exist_ok=True)
    for m, plugin in model.plugins.items():
        streams = columns_to_streams(m, batch)
        for stream, pred in zip(streams, preds[m], strict=True):
            rows.append(plugin.render(stream, pred))
        frames = plugin.render_frames(streams[0], preds[m][0])
        if frames:
            gif = path.with_name(f"{path.stem}_{m}.gif")
            images = [Image.fromarray(f) for f in frames]
            images[0].save(gif, save_all=True, append_images=images[1:], duration=200, loop=0)
            written.append(gif)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return written


def log_eval(client: MlflowClient, run_id: str, model: torch.nn.Module, batch: dict[str, np.ndarray],
             step: int, out_dir: Path) -> float:
    """Eval loss on the fixed batch and its reconstruction PNG, logged at ``step``."""
    loss, _ = evaluate(model, batch)
    client.log_metric(run_id, "eval/loss", loss, step=step)
    for picture in render(model, batch, out_dir / "renders" / f"step{step:06d}.png"):
        client.log_artifact(run_id, str(picture), "renders")
    return loss


def run_pipeline(spec: PipelineSpec, run_name: str | None = None) -> RunResult:
    run_name = run_name or spec.tracking.run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = (Path(spec.outputs.dir) / run_name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    init_ray(spec)
    uri = resolve_tracking_uri(spec.tracking.uri)
    run_id, resumed = start_run(spec, uri, run_name)
    client = MlflowClient(uri)
    print(f"[polymae] run {run_name!r} ({'resumed' if resumed else 'new'}): MLflow {uri} run {run_id}")

    # 1. scan: every file ends as a good sample or a quarantine row
    scanned = scan(spec)  # also resolves dataset statistics into the source configs
    counts = scanned.counts
    (out_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    client.log_text(run_id, spec_to_yaml(spec), "spec.yaml")
    write_quarantine(scanned.quarantine, str(out_dir / "quarantine.parquet"))
    client.log_artifact(run_id, str(out_dir / "quarantine.parquet"))
    for key, value in counts.items():
        client.log_metric(run_id, f"data/{key}", value)
    print(f"[polymae] files: {counts['total']} total = {counts['tokenized']} tokenized "
          f"+ {counts['quarantined']} quarantined ({out_dir / 'quarantine.parquet'}); "
          f"{counts['samples']} samples per epoch")
    for row in scanned.quarantine:
        print(f"[polymae]   quarantined {row['path']}: {row['stage']}: {row['reason']}")
    if not scanned.good:
        raise RuntimeError("no usable input files: see the quarantine table")
    if spec.outputs.token_shards:
        write_token_shards(spec, scanned.good, str(out_dir / "tokens"))

    # 2. where training starts: Ray Train's own latest checkpoint of this run, or resume_from
    resume = latest_checkpoint(out_dir / "train") or spec.train.resume_from
    start_step = checkpoint_step(resume) if resume else 0
    eval_batch = fixed_batch(spec, scanned.good)
    np.savez(out_dir / "eval_batch.npz", **{k: v for k, v in eval_batch.items() if "." in k})
    client.log_artifact(run_id, str(out_dir / "eval_batch.npz"))
    model = build_model(spec)
    if resume:
        load_weights(resume, model)
    log_eval(client, run_id, model, eval_batch, start_step, out_dir)

    # 3. train
    train = spec.train
    if start_step < train.steps:
        batch = train.batch_size
        stream = token_dataset(spec, scanned.good, start_step * batch,
                               (train.steps - start_step) * batch + samples_per_epoch(scanned.good))
        stream = stream.drop_columns(["sample_id"])  # strings do not become tensors
        use_gpu = train.use_gpu == "yes" or (train.use_gpu == "auto" and cluster_has_gpus())
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "spec": spec.model_dump(mode="json"), "run_id": run_id, "tracking_uri": uri,
                "start_step": start_step, "resume_from": str(resume) if resume else None,
                "threads": max(1, (os.cpu_count() or 1) // train.workers),
            },
            scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": train.cpus_per_worker}),
            datasets={"train": stream},
            run_config=RunConfig(name="train", storage_path=str(out_dir),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        trainer.fit()
    final = latest_checkpoint(out_dir / "train") or resume
    final_step = checkpoint_step(final)

    # 4. the end: eval loss and render of the final model, the checkpoint, the model version
    load_weights(final, model)
    loss = log_eval(client, run_id, model, eval_batch, final_step, out_dir)
    client.log_artifacts(run_id, str(final), "checkpoint")
    version = log_model(uri, run_id, str(final), spec.tracking.registered_model or spec.name)
    client.set_terminated(run_id)
    print(f"[polymae] done: step {final_step}, eval loss {loss:.4f}, model "
          f"{spec.tracking.registered_model or spec.name} v{version}; outputs in {out_dir}")
    return RunResult(run_id, run_name, uri, out_dir, counts, final_step, loss, Path(final), version, resumed)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
