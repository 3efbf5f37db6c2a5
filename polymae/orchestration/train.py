"""The Ray Train loop: one function every TorchTrainer worker runs.

Each worker builds the same model from the spec (same seed), wraps it for DDP, reads its
shard of the token stream (masks already made by the data pipeline: the step only gathers),
and steps AdamW with MAE's warmup + half-cycle cosine schedule. Rank 0 logs to MLflow and
prints a progress line; every ``checkpoint_every`` steps all ranks report and rank 0 saves. A
non-finite loss (``train.nonfinite``) stops every rank cleanly (the driver raises it) or skips
the step, counted in ``train/skipped_nonfinite``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from polymae.orchestration.checkpoint import (
    build_model,
    checkpoint_step,
    latest_checkpoint,
    load_optimizer_state,
    load_weights,
    save_checkpoint,
)
from polymae.orchestration.precision import autocast_dtype
from polymae.orchestration.step import (
    DDP_KWARGS,
    NonFiniteLoss,
    SkippedSteps,
    make_optimizer,
    stream_loss_means,
    train_step,
)
from polymae.orchestration.tracking import MetricLogger
from polymae.pipelines.spec import PipelineSpec, TrainSpec

# Ray Train routes worker logging to the driver's console once; a plain print would be teed
# there twice (its print patch also writes to the wrapped stdout).
log = logging.getLogger(__name__)


def learning_rate(step: int, train: TrainSpec) -> float:
    """MAE's schedule per step: linear warmup, then half-cycle cosine down to 0."""
    base = train.learning_rate
    if step < train.warmup_steps:
        return base * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _report(step: int, metrics: dict[str, float], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, spec: PipelineSpec, rank: int) -> None:
    """All ranks call report (it is a barrier); rank 0 attaches the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(tmp, getattr(model, "module", model), optimizer, step, spec)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**metrics, "step": step}, checkpoint=checkpoint)


# Where the loop leaves a deterministic fault (a non-finite loss) for the driver, in the run's
# train storage. Raising it in the loop would make Ray Train restart the worker group from its
# last checkpoint (FailureConfig.max_failures; V2 has no non-retryable worker error), only to
# meet the same batch again: every rank returns instead, and the driver raises it.
FAULT_FILE = "fault.txt"


def _stop(storage: str, message: str, rank: int, logger: MetricLogger | None) -> None:
    """End this worker's loop on a fault every rank met at the same step: rank 0 records it."""
    log.error(f"[polymae] {message}")
    if rank == 0:
        Path(storage).mkdir(parents=True, exist_ok=True)
        (Path(storage) / FAULT_FILE).write_text(message)
    if logger is not None:
        logger.close()


def raise_recorded_fault(storage: str | Path) -> None:
    """On the driver after ``fit``: the fault a training loop stopped on, raised (FloatingPointError)."""
    fault = Path(storage) / FAULT_FILE
    if fault.is_file():
        raise FloatingPointError(fault.read_text())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = PipelineSpec.model_validate(config["spec"])
    train = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))

    model = build_model(spec)
    step = 0
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restores this run
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(checkpoint.as_directory()) if checkpoint else config.get("resume_from")
        # Ray Train registers a checkpoint when its controller next polls the workers; one that
        # was persisted just before a failure may not be registered yet. The run's storage
        # folder holds every persisted one: restart from the newest.
        on_disk = latest_checkpoint(config["storage"])
        if on_disk is not None and (not folder or checkpoint_step(on_disk) > checkpoint_step(folder)):
            folder = on_disk
        if folder:
            step = load_weights(folder, model)
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=DDP_KWARGS)  # device, DDP
        optimizer = make_optimizer(model, train)  # after the move: its state follows the parameters
        if folder:
            load_optimizer_state(folder, optimizer)
    # After a failure Ray Train restarts the worker group from its last reported checkpoint,
    # but the dataset is read again from its start (the driver's start_step): skip what that
    # checkpoint already trained on, so every step sees the same samples as an unbroken run.
    skip = step - config["start_step"]
    if skip < 0:
        raise RuntimeError(f"checkpoint is at step {step} but the data stream starts at "
                           f"step {config['start_step']}")
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(train.precision, device)
    logger = None
    if rank == 0:
        # This worker process talks to MLflow only through the logger, which retries every few
        # seconds on its own; MLflow's backoff (minutes) would hold it long after the server is back.
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="30")
        logger = MetricLogger(config["tracking_uri"], config["run_id"])
    if skip and logger is not None:
        log.warning(f"[polymae] worker group restarted: continuing from the checkpoint at step {step}")
        logger.log({"train/restarted_at_step": step}, step)

    per_worker = train.batch_size // world
    shard = ray.train.get_dataset_shard("train")
    # numpy batches: the sample ids (strings) travel with the token columns, so errors can name samples
    batches = shard.iter_batches(batch_size=per_worker, drop_last=True, batch_format="numpy")
    tic, seen = time.perf_counter(), 0
    skipped = SkippedSteps(train.max_skipped_fraction, train.steps)  # from this attempt's start
    model.train()
    for numpy_batch in batches:
        if skip:
            skip -= 1
            continue
        if step >= train.steps:
            break
        lr = learning_rate(step, train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: torch.as_tensor(v).to(device) for k, v in numpy_batch.items() if "." in k}  # token columns
        try:
            loss, losses, skip_report = train_step(model, optimizer, batch, device, dtype, step + 1,
                                                   numpy_batch["sample_id"], train.nonfinite)
        except NonFiniteLoss as err:  # every rank raised it at this step
            return _stop(config["storage"], f"{err} (train.nonfinite: error)", rank, logger)
        step += 1
        seen += per_worker * world
        if skip_report is not None:
            log.warning(f"[polymae] skipped: {skip_report}")
            too_many = skipped.add(skip_report)
            if logger is not None:
                logger.log({"train/skipped_nonfinite": skipped.count}, step)
            if too_many:
                return _stop(config["storage"], too_many, rank, logger)
        elif step % train.log_every == 0 or step == train.steps:
            mean_loss = loss.detach().float()
            if world > 1:
                torch.distributed.all_reduce(mean_loss)
                mean_loss /= world
            per_stream = stream_loss_means(model, losses, batch)  # every rank: it all-reduces
            rate = seen / (time.perf_counter() - tic)
            if logger is not None:
                metrics = {"train/loss": mean_loss.item(), "train/lr": lr, "train/samples_per_s": rate}
                metrics.update({f"train/loss_{m}": v for m, v in per_stream.items()})
                logger.log(metrics, step)
                log.info(f"[polymae] step {step}/{train.steps}  loss {mean_loss.item():.4f}  "
                         f"lr {lr:.2e}  {rate:.1f} samples/s")
            tic, seen = time.perf_counter(), 0
        if step % train.checkpoint_every == 0 or step == train.steps:
            _report(step, {"loss": loss.item()}, model, optimizer, spec, rank)
    if step < train.steps:
        raise RuntimeError(f"the data stream ran out at step {step} of {train.steps}")
    if logger is not None:
        logger.close()
