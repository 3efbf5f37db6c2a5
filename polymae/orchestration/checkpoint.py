"""Checkpoints: plain tensors and JSON, loaded with ``weights_only=True`` (no pickled code).

A checkpoint folder holds ``model.pt`` (state dict), ``optimizer.pt``, ``spec.yaml`` and
``state.json`` (``{"step": n, "sizes": {file: bytes}}``: a partly copied folder is incomplete);
``spec.yaml`` is the resolved pipeline spec that built the model. What leaves the run (the
``checkpoint`` artifact, the registered model) is :func:`weights_only`: no optimizer state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from polymae.modalities.registry import make_plugin
from polymae.models.mae import PolyMAE
from polymae.pipelines.spec import PipelineSpec, spec_to_yaml


def build_model(spec: PipelineSpec) -> PolyMAE:
    """The model a spec describes, initialised from the run seed (same on every worker)."""
    torch.manual_seed(spec.seed)
    plugins = {s.name: make_plugin(s.modality, s.config) for s in spec.sources}  # keyed by stream name
    return PolyMAE(plugins, spec.resolved_model(), {s.name: s.loss_weight for s in spec.sources})


def save_checkpoint(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
    step: int, spec: PipelineSpec,
) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "spec.yaml").write_text(spec_to_yaml(spec))
    # the sizes of the other files: a copy cut short (a worker killed while Ray Train persists
    # the checkpoint) is recognisable as incomplete
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "state.json"}
    (folder / "state.json").write_text(json.dumps({"step": step, "sizes": sizes}))


def is_complete(folder: str | Path) -> bool:
    """Every file the checkpoint's state.json lists is there with its full size."""
    folder = Path(folder)
    try:
        sizes = json.loads((folder / "state.json").read_text()).get("sizes", {"model.pt": None})
        return all((folder / n).is_file() and (size is None or (folder / n).stat().st_size == size)
                   for n, size in sizes.items())
    except (OSError, ValueError):
        return False


WEIGHTS_FILES = ("model.pt", "spec.yaml")  # what a model needs to load (state.json: its step)


def weights_only(folder: str | Path, dest: str | Path) -> Path:
    """Copy the model's files of checkpoint ``folder`` to ``dest`` (no ``optimizer.pt``: training
    state stays with the run's storage), with a ``state.json`` that lists just them; → ``dest``."""
    folder, dest = Path(folder), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in WEIGHTS_FILES:
        shutil.copy2(folder / name, dest / name)
    sizes = {name: (dest / name).stat().st_size for name in WEIGHTS_FILES}
    (dest / "state.json").write_text(json.dumps({"step": checkpoint_step(folder), "sizes": sizes}))
    return dest


def checkpoint_step(folder: str | Path) -> int:
    return int(json.loads((Path(folder) / "state.json").read_text())["step"])


def load_weights(folder: str | Path, model: torch.nn.Module) -> int:
    """Load model state in place; returns the checkpoint's step."""
    folder = Path(folder)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return checkpoint_step(folder)


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor of a state dict holding a NaN or inf, described ("name:
    k of n values non-finite"); None when every one is finite (buffers count: BatchNorm's
    running statistics are weights the model uses too)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"{name}: {int((~torch.isfinite(tensor)).sum())} of {tensor.numel()} values non-finite"
    return None


def check_finite_weights(folder: str | Path) -> None:
    """Raise FloatingPointError naming the first non-finite parameter of a checkpoint's model."""
    bad = first_nonfinite(torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True))
    if bad is not None:
        raise FloatingPointError(f"non-finite weights in the checkpoint {folder} "
                                 f"(step {checkpoint_step(folder)}): {bad}; not registered")


def load_optimizer_state(folder: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Load optimizer state in place (after the model is on its device: the state follows the
    parameters' device when loaded)."""
    if (Path(folder) / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(Path(folder) / "optimizer.pt", map_location="cpu", weights_only=True))


def load_model(folder: str | Path) -> tuple[PolyMAE, PipelineSpec]:
    """A trained model and its spec from a checkpoint folder."""
    spec = PipelineSpec.model_validate(yaml.safe_load((Path(folder) / "spec.yaml").read_text()))
    model = build_model(spec)
    load_weights(folder, model)
    return model.eval(), spec


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step anywhere below ``root`` (Ray Train's storage)."""
    best: tuple[int, Path] | None = None
    for dirpath, _, names in os.walk(root):
        if "state.json" in names and is_complete(dirpath):
            step = checkpoint_step(dirpath)
            if best is None or step > best[0]:
                best = (step, Path(dirpath))
    return best[1] if best else None
