"""Partial samples under DDP: two real torch.distributed processes (gloo, CPU) train one rgb +
depth model where the workers' batches hold different streams, through the trainer's own pieces
(build_model, DistributedDataParallel with the kwargs train.py gives prepare_model, and
orchestration/step.py's make_optimizer and train_step). No Ray: the batches are tokenized here,
as a Ray Data task would, and the workers import neither Ray nor MLflow."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from polymae.orchestration.checkpoint import build_model
from polymae.orchestration.step import DDP_KWARGS, make_optimizer, stream_loss_means, train_step
from polymae.pipelines.spec import PipelineSpec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
RGBD = ROOT / "examples" / "data" / "rgbd"
STEMS = ("kinect_0001", "motorcycle")
WORLD = 2
START_S = 300  # for both processes to import torch, Ray Train and MLflow on a busy machine
TIMEOUT_S = 60  # then for the steps: a DDP hang (gloo's own timeout is 60 s too); they take ~2 s

# (rank 0's streams, rank 1's streams) per step. Depth: absent from both, from one rank with
# rgb beside it on the other, alone on one rank, then absent from both again (after it has
# optimizer state: momentum must not move it either).
STEPS = [(("rgb",), ("rgb",)), (("rgb",), ("rgb", "depth")), (("rgb",), ("depth",)),
         (("rgb", "depth"), ("rgb",)), (("rgb",), ("rgb",))]


def _spec() -> PipelineSpec:
    return parse_spec({
        "name": "ddp-partial", "seed": 5,
        "sources": [{"name": "rgb", "modality": "image", "paths": [str(RGBD / "rgb")], "frame": "cam",
                     "config": {"img_size": 32}},
                    {"name": "depth", "modality": "depth", "paths": [str(RGBD / "depth")], "frame": "cam",
                     "config": {"img_size": 32}}],
        "pairing": {"key": "stem"},
        "model": {"preset": "tiny"},
        "train": {"batch_size": 2 * WORLD, "workers": WORLD, "precision": "fp32", "lr": 1e-3},
    })


def _batch(spec: PipelineSpec, streams: tuple[str, ...], epoch: int) -> dict[str, np.ndarray]:
    """One worker's batch: both scenes with only ``streams`` (the others absent, as a sample
    that lacks them)."""
    from polymae.pipelines.data import manifest_batch, stream_kwargs, tokenize_batch  # Ray: not in the workers

    files = {"rgb": RGBD / "rgb", "depth": RGBD / "depth"}
    rows = [{"sample_id": f"{'+'.join(streams)}:{stem}",
             "paths": json.dumps({s: str(files[s] / f"{stem}.png") for s in streams}, sort_keys=True),
             "epoch": epoch, "first": 0, "count": 1} for stem in STEMS]
    batch = tokenize_batch(manifest_batch(rows), **stream_kwargs(spec))
    assert len(batch["sample_id"]) == len(STEMS)
    for s in ("rgb", "depth"):  # every stream's columns, valid only where the sample has it
        assert batch[f"{s}.valid"].any(1).all() == (s in streams) and batch[f"{s}.valid"].any() == (s in streams)
    return {k: v for k, v in batch.items() if "." in k}


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _worker(rank: int, init: str, spec_data: dict, batches: list[list[dict]], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    Path(out, f"ready{rank}").touch()
    try:
        spec = PipelineSpec.model_validate(spec_data)
        module = build_model(spec)  # same seed on every rank, as in the trainer
        model = DistributedDataParallel(module, **DDP_KWARGS)  # what prepare_model does on a CPU
        optimizer = make_optimizer(model, spec.train)
        model.train()
        names = dict(module.named_parameters())
        own = {m: {id(p) for p in module.stream_parameters(m)} for m in module.modalities}
        log = []
        tic = time.perf_counter()
        for i, (streams, numpy_batch) in enumerate(zip(STEPS, batches[rank], strict=True)):
            mine = streams[rank]
            anywhere = set(streams[0]) | set(streams[1])
            batch = {k: torch.as_tensor(v) for k, v in numpy_batch.items()}
            # the gradient this rank contributes, from a plain copy of the model on its own batch
            ref = copy.deepcopy(module)
            ref_loss, ref_losses, _ = ref(batch)
            ref_loss.backward()
            local = {n: p.grad.clone() for n, p in ref.named_parameters()}  # every parameter takes part
            for m in module.modalities:
                if m not in mine:  # an absent stream contributes exactly nothing, and scores nothing
                    assert ref_losses[m].item() == 0.0, (rank, i, m)
                    zero = [n for n, p in names.items() if id(p) in own[m] and local[n].any()]
                    assert not zero, (rank, i, m, zero)
            expected = {n: g.clone() for n, g in local.items()}
            for g in expected.values():
                dist.all_reduce(g)
                g /= WORLD
            before = {n: p.detach().clone() for n, p in names.items()}

            loss, losses, skipped = train_step(model, optimizer, batch, torch.device("cpu"), None, i + 1)
            assert skipped is None
            means = stream_loss_means(model, losses, batch)  # what train.py logs as train/loss_<stream>
            assert torch.isfinite(loss) and all(torch.isfinite(v) for v in losses.values()), (rank, i, losses)
            assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)  # the same forward as the copy

            for n, p in names.items():
                stream = next((m for m in module.modalities if id(p) in own[m]), None)
                if stream is not None and stream not in anywhere:
                    # no rank had the stream: no gradient, and the optimizer leaves it as it was
                    assert p.grad is None, (rank, i, n)
                    assert torch.equal(p.detach(), before[n]), (rank, i, n)
                else:  # DDP's average of what each rank contributed (for a stream one rank had: its grad / 2)
                    assert p.grad is not None, (rank, i, n)
                    torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-8, msg=f"{rank} {i} {n}")
            # the ranks stay identical after every step
            flat = _flat(names.values())
            theirs = flat.clone()
            dist.broadcast(theirs, src=0)
            assert torch.equal(flat, theirs), (rank, i)
            moved = {m: any(not torch.equal(p.detach(), before[n]) for n, p in names.items() if id(p) in own[m])
                     for m in module.modalities}
            log.append({"streams": list(mine), "loss": loss.item(), "losses": {m: v.item() for m, v in losses.items()},
                        "moved": moved, "means": means})
        print(f"rank {rank}: {len(STEPS)} steps in {time.perf_counter() - tic:.1f} s", flush=True)
        Path(out, f"rank{rank}.json").write_text(json.dumps(log))
    finally:
        dist.destroy_process_group()
    # done: skip the interpreter's teardown of torch, Ray and MLflow (seconds, a minute on a busy machine)
    sys.stdout.flush()
    os._exit(0)


def test_partial_samples_train_on_two_ddp_workers(tmp_path):
    spec = _spec()
    batches = [[_batch(spec, streams[rank], epoch) for epoch, streams in enumerate(STEPS)] for rank in range(WORLD)]
    ctx = mp.spawn(_worker, args=(f"file://{tmp_path / 'pg'}", spec.model_dump(mode="json"), batches, str(tmp_path)),
                   nprocs=WORLD, join=False)
    # phases: import and join the process group, the steps (where a DDP hang would show), exit
    phases = [("ready", START_S, "the processes did not join a process group"),
              ("rank", TIMEOUT_S, f"DDP did not finish {len(STEPS)} steps (a hang)"),
              (None, START_S, "the processes did not exit")]
    deadline = time.monotonic() + phases[0][1]
    while not ctx.join(timeout=1):
        marker, _, what = phases[0]
        if marker and all(tmp_path.glob(f"{marker}{r}*") for r in range(WORLD)):
            phases.pop(0)
            deadline = time.monotonic() + phases[0][1]
        elif time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{what} in {phases[0][1]} s")
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for step, (streams, *per_rank) in enumerate(zip(STEPS, *logs, strict=True)):
        for rank, entry in enumerate(per_rank):
            assert np.isfinite(entry["loss"])
            for m, value in entry["losses"].items():
                assert (value > 0) == (m in streams[rank]), (step, rank, m, value)  # absent: scores 0
        # depth moves exactly on the steps some rank had it; rgb on every step (some rank always has it)
        anywhere = set(streams[0]) | set(streams[1])
        for rank, entry in enumerate(per_rank):  # logged per-stream loss: over the ranks that had it, else left out
            expected = {m: np.mean([e["losses"][m] for e, s in zip(per_rank, streams, strict=True) if m in s])
                        for m in anywhere}
            assert entry["means"].keys() == expected.keys(), (step, rank, entry["means"])
            for m, value in expected.items():
                assert entry["means"][m] == pytest.approx(value, rel=1e-5), (step, rank, m)
        assert per_rank[0]["moved"] == {m: m in anywhere for m in ("rgb", "depth")}, step
