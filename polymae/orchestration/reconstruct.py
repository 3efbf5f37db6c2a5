"""Cross-modal reconstruction with a trained model: encode some streams' files, predict others.

    files (one per stream) ──▶ evaluation views (first view of each) ──▶ PolyMAE.reconstruct
    (inputs: every valid token visible; every other stream hidden) ──▶ per target stream: the
    plugin's render (PNG: original | hidden | reconstruction | ...) or, when the plugin has no
    render, the predicted token values (.npy)

A target stream needs a file too: its tokens say where to predict (coordinates, valid tokens)
and the render shows it as the original; the encoder never sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polymae.orchestration.inference import check_streams, evaluation_views, stream_plugin
from polymae.pipelines.spec import PipelineSpec
from polymae.tokenizer.stream import streams_to_columns


def parse_files(items: list[str]) -> dict[str, str]:
    """``["image=a.png", "depth=b.png"]`` → {stream: path}; ValueError on a malformed item."""
    files = {}
    for item in items:
        stream, sep, path = item.partition("=")
        if not sep or not stream or not path:
            raise ValueError(f"--files {item!r}: expected STREAM=PATH")
        if stream in files:
            raise ValueError(f"--files: stream {stream!r} given twice")
        files[stream] = path
    return files


def check_request(spec: PipelineSpec, inputs: list[str], targets: list[str], files: dict[str, str]) -> None:
    """Every name a stream of the model; every input and target has a file. Raises ValueError."""
    check_streams(spec, inputs, "input stream")
    check_streams(spec, targets, "target stream")
    check_streams(spec, list(files), "--files stream")
    if not inputs or not targets:
        raise ValueError("reconstruct needs at least one input and one target stream")
    missing = [m for m in [*inputs, *targets] if m not in files]
    if missing:
        raise ValueError(f"no file for stream(s) {', '.join(missing)}: give --files STREAM=PATH for every input "
                         "and target (a target's file gives the positions to predict and the original to show)")


def reconstruct_files(model: torch.nn.Module, spec: PipelineSpec, inputs: list[str], targets: list[str],
                      files: dict[str, str], out: str | Path) -> dict[str, Path]:
    """Reconstruct ``targets`` from ``inputs`` with an already-loaded model and its spec; one
    file per stream in ``files`` (its first evaluation view). → target stream → file written."""
    check_request(spec, inputs, targets, files)
    batch = {}
    samples = {}
    for stream in dict.fromkeys([*inputs, *targets]):
        plugin = stream_plugin(spec, stream)
        samples[stream] = evaluation_views(plugin, str(files[stream]), Path(files[stream]).stem, stream,
                                           spec.seed)[0][stream]
        batch.update({k: torch.as_tensor(v) for k, v in streams_to_columns(stream, [samples[stream]]).items()})
    model.eval()
    preds = model.reconstruct(batch, inputs, targets)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for stream in targets:
        plugin, truth = model.plugins[stream], samples[stream]
        if stream not in inputs:
            truth.visible = np.zeros_like(truth.visible)  # the render greys out what the encoder did not see
        pred = preds[stream][0].float().numpy()
        try:
            picture = plugin.render(truth, pred)
        except NotImplementedError:
            written[stream] = out / f"{stream}.npy"
            np.save(written[stream], plugin.prediction_values(pred, truth.values))
            continue
        written[stream] = out / f"{stream}.png"
        Image.fromarray(picture).save(written[stream])
    return written
