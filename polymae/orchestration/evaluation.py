"""Evaluation of a model on a fixed batch: loss, each stream's loss against the trivial predictor,
cross-modal prediction (a stream from the others alone), reconstruction renders, logged to MLflow.

The trivial predictor predicts zero in the target space: for norm-pix targets the patch's own
mean, for depth the crop's robust mean depth, for point groups every point at its centre. A model
that learned scores well below it ("falls" means held-out loss ≤ 0.8 × the trivial one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from polymae.models.mae import loss_mask
from polymae.ops import captioned
from polymae.tokenizer.stream import TokenStream, column, columns_to_streams


def evaluate(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Loss (fp32, eval mode) on a fixed batch and the per-stream predictions."""
    model.eval()
    with torch.no_grad():
        loss, _, preds = model(_tensors(batch))
    return float(loss), {m: p.numpy() for m, p in preds.items()}


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items() if "." in k}


def _with_input(tensors: dict[str, torch.Tensor], inputs: list[str]) -> torch.Tensor:
    """(B,) which samples have any valid token of the ``inputs`` streams."""
    return torch.stack([tensors[column(m, "valid")].any(1) for m in inputs]).any(0)


def stream_scores(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Per stream ``m``: ``m`` its masked loss, ``m_trivial`` the trivial predictor's on the same
    tokens; with several streams also ``cross/m`` — every valid token of ``m`` predicted from the
    other streams alone (each fully visible, ``m`` fully hidden), over the samples that have both
    — and ``cross/m_trivial``. Streams without scored tokens in the batch are left out."""
    model.eval()
    tensors, out = _tensors(batch), {}
    with torch.no_grad():
        _, losses, preds = model(tensors)
        for m, plugin in model.plugins.items():
            mask, values = loss_mask(tensors, m), tensors[column(m, "values")]
            if m in preds and bool(mask.any()):
                out[m] = float(losses[m])
                out[f"{m}_trivial"] = float(plugin.loss(torch.zeros_like(preds[m]), values, mask))
        for m, plugin in model.plugins.items():
            others = [o for o in model.plugins if o != m]
            if not others or column(m, "values") not in tensors:
                continue
            values = tensors[column(m, "values")]
            mask = tensors[column(m, "valid")] & _with_input(tensors, others)[:, None]
            if not bool(mask.any()):
                continue
            pred = model.reconstruct(tensors, others, [m])[m]
            out[f"cross/{m}"] = float(plugin.loss(pred, values, mask))
            out[f"cross/{m}_trivial"] = float(plugin.loss(torch.zeros_like(pred), values, mask))
    return out


def render_cross(model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path) -> list[Path]:
    """Per stream with a render: its first sample that also has another stream, reconstructed from
    the other streams alone (the plugin's render: original | all hidden | prediction), one PNG
    ``<path>_<m>.png`` each. → the files written."""
    tensors, written = _tensors(batch), []
    for m, plugin in model.plugins.items():
        others = [o for o in model.plugins if o != m]
        if not others:
            continue
        rows = torch.nonzero(tensors[column(m, "valid")].any(1) & _with_input(tensors, others)).flatten()
        if len(rows) == 0:
            continue
        i = int(rows[0])
        pred = model.reconstruct(tensors, others, [m])[m][i].float().numpy()
        stream = columns_to_streams(m, {k: v[i : i + 1] for k, v in batch.items() if k.startswith(f"{m}.")})[0]
        stream = TokenStream(stream.values, stream.coords, stream.unit, stream.valid)  # nothing visible
        try:
            picture = captioned(plugin.render(stream, pred), plugin.render_columns, plugin.render_rows,
                                title=f"{m} from {', '.join(others)} alone")
        except NotImplementedError:
            continue
        target = path.with_name(f"{path.stem}_{m}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(target)
        written.append(target)
    return written


def render(model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path) -> list[Path]:
    """One PNG: per stream, a row per sample of the fixed batch that has the stream (the plugin's
    render, its columns captioned on the stream's first row; the stream's name above it when there
    are several); and a GIF per stream whose plugin animates (its first sample). → the files written."""
    _, preds = evaluate(model, batch)
    rows, written = [], [path]
    path.parent.mkdir(parents=True, exist_ok=True)
    for m, plugin in model.plugins.items():
        present = [(s, p) for s, p in zip(columns_to_streams(m, batch), preds[m], strict=True) if s.valid.any()]
        for i, (stream, pred) in enumerate(present):  # the stream's first row carries its captions
            picture = plugin.render(stream, pred)
            rows.append(captioned(picture, plugin.render_columns if i == 0 else (), plugin.render_rows,
                                  title=m if i == 0 and len(model.plugins) > 1 else ""))
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
    """Eval loss on the fixed batch, each stream's score and the trivial one's (:func:`stream_scores`)
    and the reconstruction PNGs — with several streams also each stream predicted from the others
    alone (``renders/cross/``) — logged at ``step``."""
    loss, _ = evaluate(model, batch)
    client.log_metric(run_id, "eval/loss", loss, step=step)
    for key, value in stream_scores(model, batch).items():
        client.log_metric(run_id, f"eval/{key}", value, step=step)
    for picture in render(model, batch, out_dir / "renders" / f"step{step:06d}.png"):
        client.log_artifact(run_id, str(picture), "renders")
    if len(model.plugins) > 1:
        for picture in render_cross(model, batch, out_dir / "renders" / "cross" / f"step{step:06d}.png"):
            client.log_artifact(run_id, str(picture), "renders/cross")
    return loss
