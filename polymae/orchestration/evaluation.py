"""Evaluation of a model on a fixed batch: loss, reconstruction renders, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from polymae.tokenizer.stream import columns_to_streams


def evaluate(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Loss (fp32, eval mode) on a fixed batch and the per-stream predictions."""
    model.eval()
    tensors = {k: torch.as_tensor(v) for k, v in batch.items() if "." in k}
    with torch.no_grad():
        loss, _, preds = model(tensors)
    return float(loss), {m: p.numpy() for m, p in preds.items()}


def render(model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path) -> list[Path]:
    """One PNG: per stream, a row per sample of the fixed batch that has the stream (the plugin's
    render); and a GIF per stream whose plugin animates (its first sample). → the files written."""
    _, preds = evaluate(model, batch)
    rows, written = [], [path]
    path.parent.mkdir(parents=True, exist_ok=True)
    for m, plugin in model.plugins.items():
        present = [(s, p) for s, p in zip(columns_to_streams(m, batch), preds[m], strict=True) if s.valid.any()]
        rows += [plugin.render(stream, pred) for stream, pred in present]
        frames = plugin.render_frames(*present[0]) if present else None
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
