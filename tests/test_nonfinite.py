"""Non-finite runs: train.nonfinite (error | skip) in one step and across two DDP workers, the
skip budget, the fault the loop leaves for the driver, and the finite-weights check before a model
is registered. A small points model on the shipped kitten and bunny; NaN put into a batch."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from polymae.orchestration.checkpoint import build_model, check_finite_weights, first_nonfinite, save_checkpoint
from polymae.orchestration.step import DDP_KWARGS, NonFiniteLoss, SkippedSteps, make_optimizer, train_step
from polymae.orchestration.train import FAULT_FILE, _stop, raise_recorded_fault
from polymae.pipelines.spec import PipelineSpec, SpecError, parse_spec

POINTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "points"
FILES = ("kitten.xyz", "bunny_npm_lowres.obj")
CPU = torch.device("cpu")


def _spec(**train) -> PipelineSpec:
    return parse_spec({
        "name": "nonfinite", "seed": 3,
        "sources": [{"modality": "points", "paths": [str(POINTS)],
                     "config": {"num_points": 128, "num_group": 8, "group_size": 16, "embed": "linear"}}],
        "model": {"preset": "tiny"},
        "train": {"batch_size": 2, "precision": "fp32", "lr": 1e-3, **train},
    })


def _batch(spec: PipelineSpec, nan: bool = False) -> dict[str, torch.Tensor]:
    from polymae.pipelines.data import manifest_batch, stream_kwargs, tokenize_batch

    rows = [{"sample_id": name, "paths": json.dumps({"points": str(POINTS / name)}), "epoch": 0, "first": 0,
             "count": 1} for name in FILES]
    batch = {k: torch.as_tensor(v) for k, v in tokenize_batch(manifest_batch(rows), **stream_kwargs(spec)).items()
             if "." in k}
    if nan:
        batch["points.values"][1, 0, 0] = float("nan")  # the bunny's first group
    return batch


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_spec_names_the_field_and_the_allowed_values():
    with pytest.raises(SpecError) as info:
        _spec(nonfinite="ignore")
    assert "train.nonfinite" in str(info.value) and "'error'" in str(info.value) and "'skip'" in str(info.value)
    with pytest.raises(SpecError, match="train.max_skipped_fraction"):
        _spec(max_skipped_fraction=1.5)
    assert _spec().train.nonfinite == "error"


def test_error_stops_naming_step_and_samples_and_leaves_the_weights():
    spec = _spec()
    model = build_model(spec).train()
    optimizer = make_optimizer(model, spec.train)
    before = _state(model)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 7: loss nan .*samples: kitten.xyz, "
                                            r"bunny_npm_lowres.obj"):
        train_step(model, optimizer, _batch(spec, nan=True), CPU, None, 7, FILES)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_skip_leaves_weights_and_optimizer_state_then_trains_on():
    spec = _spec(nonfinite="skip")
    model = build_model(spec).train()
    optimizer = make_optimizer(model, spec.train)
    *_, skipped = train_step(model, optimizer, _batch(spec), CPU, None, 1, FILES)
    assert skipped is None
    before, moments = _state(model), {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    loss, _, skipped = train_step(model, optimizer, _batch(spec, nan=True), CPU, None, 2, FILES, "skip")
    assert not torch.isfinite(loss) and skipped.startswith("non-finite loss at step 2") and "bunny" in skipped
    # BatchNorm-free model ("linear" embed): nothing moves, no gradient is left, AdamW's state is as it was
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, optimizer.state_dict()["state"][0][k]) for k, v in moments.items())
    loss, _, skipped = train_step(model, optimizer, _batch(spec), CPU, None, 3, FILES)
    assert skipped is None and torch.isfinite(loss)
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_skip_budget_fails_past_the_fraction():
    budget = SkippedSteps(max_fraction=0.02, steps=100)
    assert budget.add("a") is None and budget.add("b") is None
    assert budget.add("c") == ("3 steps skipped for a non-finite loss, more than train.max_skipped_fraction 0.02 "
                               "of 100; last: c")
    assert SkippedSteps(0.0, 100).add("x") is not None  # 0: the first skip fails the run


def test_a_fault_the_loop_stops_on_is_raised_by_the_driver(tmp_path):
    raise_recorded_fault(tmp_path)  # none recorded: nothing raised
    _stop(str(tmp_path / "train"), "non-finite loss at step 5: samples: a.ply", rank=1, logger=None)
    raise_recorded_fault(tmp_path / "train")  # only rank 0 records
    _stop(str(tmp_path / "train"), "non-finite loss at step 5: samples: a.ply", rank=0, logger=None)
    assert (tmp_path / "train" / FAULT_FILE).is_file()
    with pytest.raises(FloatingPointError, match="step 5: samples: a.ply"):
        raise_recorded_fault(tmp_path / "train")


def test_non_finite_weights_are_named_and_never_registered(tmp_path):
    spec = _spec()
    model = build_model(spec)
    save_checkpoint(tmp_path / "good", model, None, 4, spec)
    check_finite_weights(tmp_path / "good")
    with torch.no_grad():
        model.decoder_norm.weight[3] = float("inf")
    state = model.state_dict()
    size = state["decoder_norm.weight"].numel()
    assert first_nonfinite(state) == f"decoder_norm.weight: 1 of {size} values non-finite"
    save_checkpoint(tmp_path / "bad", model, None, 4, spec)
    with pytest.raises(FloatingPointError, match=r"\(step 4\): decoder_norm.weight: 1 of"):
        check_finite_weights(tmp_path / "bad")
    from polymae.orchestration.tracking import log_model

    db = tmp_path / "mlflow.db"
    with pytest.raises(FloatingPointError, match="decoder_norm.weight"):
        log_model(f"sqlite:///{db}", "no-run", str(tmp_path / "bad"), "nonfinite")
    assert not db.exists()  # refused before MLflow was touched


WORLD, TIMEOUT_S = 2, 300


def _steps(spec: PipelineSpec, rank: int, batches: dict[bool, dict]) -> list:
    """Three steps, where only rank 1's second batch holds a NaN: each step's skip report (or what
    it raised, and then stop), and whether the ranks' weights are still identical after it."""
    model = DistributedDataParallel(build_model(spec), **DDP_KWARGS)
    optimizer = make_optimizer(model, spec.train)
    model.train()
    outcome = []
    for step, nan in enumerate([False, rank == 1, False], start=1):
        try:
            _, _, skipped = train_step(model, optimizer, dict(batches[nan]), CPU, None, step, (f"r{rank}",),
                                       spec.train.nonfinite)
            outcome.append(skipped)
        except NonFiniteLoss as err:
            outcome.append(f"raised: {err}")
            break
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        theirs = flat.clone()
        dist.broadcast(theirs, src=0)
        outcome.append(bool(torch.equal(flat, theirs)))
    return outcome


def _worker(rank: int, init: str, specs: dict[str, dict], batches: dict[bool, dict], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        outcome = {mode: _steps(PipelineSpec.model_validate(spec), rank, batches) for mode, spec in specs.items()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip torch's interpreter teardown (seconds)


def test_ddp_workers_agree_on_a_non_finite_step(tmp_path):
    specs = {mode: _spec(nonfinite=mode, batch_size=2 * WORLD, workers=WORLD).model_dump(mode="json")
             for mode in ("skip", "error")}
    spec = PipelineSpec.model_validate(specs["skip"])
    batches = {nan: _batch(spec, nan) for nan in (False, True)}  # here: the workers import no Ray (seconds)
    ctx = mp.spawn(_worker, args=(f"file://{tmp_path / 'pg'}", specs, batches, str(tmp_path)), nprocs=WORLD,
                   join=False)
    deadline = time.monotonic() + TIMEOUT_S  # a hang (one rank waiting in a collective) ends here
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the workers did not finish in {TIMEOUT_S} s (a rank left behind in a collective?)")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    for outcome in (rank0["skip"], rank1["skip"]):  # both skip step 2 (rank 0's own loss was finite)
        assert outcome[0] is None and outcome[2].startswith("non-finite loss at step 2: worker 1: loss nan")
        assert "samples: r1" in outcome[2] and "r0" not in outcome[2]
        assert outcome[4] is None and outcome[1] is outcome[3] is outcome[5] is True  # identical throughout
    # both stop at step 2, with the same report
    assert rank0["error"][2] == rank1["error"][2] and rank0["error"][2].startswith("raised: non-finite loss at step 2")
    assert len(rank0["error"]) == len(rank1["error"]) == 3
