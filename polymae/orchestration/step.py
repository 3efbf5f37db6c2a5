"""One training step, as every Ray Train worker runs it (no Ray here: tests drive it with plain
torch.distributed): the DDP settings, the optimizer, and forward → backward → AdamW step on the
worker's batch; a non-finite loss on any worker stops the run or skips the step on every worker
(``train.nonfinite``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import param_groups_weight_decay

from polymae.orchestration.precision import autocast
from polymae.pipelines.spec import TrainSpec
from polymae.tokenizer.stream import column

# What prepare_model passes to DistributedDataParallel (it adds device_ids on a GPU). No
# find_unused_parameters: every parameter takes part in every step, because a stream a worker's
# batch lacks is still in it as an absent stream (data.absent_stream: no valid token) and runs
# through its embedding and head with zero weight (PolyMAE.forward_loss), so each rank's reducer
# hears from every parameter and no all-reduce waits on a rank that skipped one.
DDP_KWARGS: dict[str, Any] = {}


def make_optimizer(model: torch.nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    """AdamW, no weight decay on biases and norms (timm's grouping, as MAE). The fused
    kernel (CPU and CUDA) is ~5× faster than the per-tensor loop on a ViT-B's 111 M parameters."""
    groups = param_groups_weight_decay(model, train.weight_decay)
    return torch.optim.AdamW(groups, lr=train.learning_rate, betas=train.betas, fused=True)


def _presence(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(S,) int: for each of the model's streams, how many workers' batches have a valid token of
    it (this worker's 0/1 alone outside DDP; one small all-reduce when there are several)."""
    module = getattr(model, "module", model)
    device = next(module.parameters()).device
    present = torch.stack([batch[column(m, "valid")].any() if column(m, "valid") in batch
                           else torch.tensor(False, device=device) for m in module.modalities]).to(device, torch.int32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(present)
    return present


def absent_streams(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
    """The model's streams with no valid token in this step's batch on any worker."""
    names = getattr(model, "module", model).modalities
    return [m for m, n in zip(names, _presence(model, batch).tolist(), strict=True) if not n]


def stream_loss_means(model: torch.nn.Module, losses: dict[str, torch.Tensor],
                      batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each stream's loss averaged over the workers whose batch has it, for logging. A stream no
    worker's batch has is left out: its loss is 0 by construction, which would read as a perfect
    score. Every worker must call it (all-reduces under DDP)."""
    names = getattr(model, "module", model).modalities
    present = _presence(model, batch)
    total = torch.stack([losses[m].detach().float() for m in names]).to(present.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return {m: (t / n).item() for m, t, n in zip(names, total, present.tolist(), strict=True) if n}


class NonFiniteLoss(FloatingPointError):
    """A step's loss is non-finite on some worker; the message names the step, the streams' losses
    and the samples of every worker's batch where it was."""


def nonfinite_anywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is non-finite on this worker or any other (one small all-reduce when
    there are several): every rank takes the same branch, so DDP's collectives stay in step."""
    bad = (~torch.isfinite(loss.detach())).to(torch.int32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bool(bad.item())


def nonfinite_report(step: int, loss: torch.Tensor, losses: dict[str, torch.Tensor], sample_ids: Any) -> str:
    """What every worker's batch gave at a step whose loss was non-finite somewhere: the workers
    whose own loss was, with their streams' losses and samples."""
    mine = "" if torch.isfinite(loss.detach()) else (
        f"loss {loss.item()} ({', '.join(f'{m} {v.item():.4g}' for m, v in losses.items())}); "
        f"samples: {', '.join(map(str, sample_ids))}")
    notes = [mine]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        notes = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(notes, mine)
    return f"non-finite loss at step {step}: " + "; ".join(
        (f"worker {rank}: {note}" if len(notes) > 1 else note) for rank, note in enumerate(notes) if note)


@dataclass
class SkippedSteps:
    """``train.nonfinite: skip``'s count of skipped steps, and its bound."""

    max_fraction: float
    steps: int
    count: int = 0

    def add(self, report: str) -> str | None:
        """Count one skipped step (``report``: what nonfinite_report said); → why the run must
        stop, once more than ``max_fraction`` of ``steps`` were skipped, else None."""
        self.count += 1
        if self.count > self.max_fraction * self.steps:
            return (f"{self.count} steps skipped for a non-finite loss, more than train.max_skipped_fraction "
                    f"{self.max_fraction} of {self.steps}; last: {report}")
        return None


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               device: torch.device, dtype: torch.dtype | None, step: int = 0, sample_ids: Any = (),
               nonfinite: str = "error") -> tuple[torch.Tensor, dict[str, torch.Tensor], str | None]:
    """Optimizer step ``step`` (from 1) on this worker's batch (under DDP: gradients averaged over
    workers). → (loss, per-stream losses, None), or, for a step whose loss is non-finite on any
    worker: ``nonfinite="error"`` raises NonFiniteLoss (on every rank), ``"skip"`` leaves the
    weights and optimizer state as they were and returns the report as the third item."""
    with autocast(device, dtype):
        loss, losses, _ = model(batch)
    if nonfinite_anywhere(loss):
        report = nonfinite_report(step, loss, losses, sample_ids)
        if nonfinite == "error":
            raise NonFiniteLoss(report)
        loss.backward()  # on every rank: DDP's reducer expects this step's gradients
        optimizer.zero_grad(set_to_none=True)
        return loss, losses, report
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # A stream no worker's batch has got exactly zero gradients (it took part with zero weight,
    # for DDP's sake); AdamW would still decay its weights and move them on old momentum. Without
    # a gradient the optimizer leaves its parameters alone, as if the stream had not been there.
    module = getattr(model, "module", model)
    for stream in absent_streams(model, batch):
        for p in module.stream_parameters(stream):
            p.grad = None
    optimizer.step()
    return loss, losses, None
