"""``polymae export``: a trained model's encoder for fine-tuning elsewhere.

* ``timm`` (image streams): a timm ``VisionTransformer`` state dict. PolyMAE's linear patch
  embedding over (row, col, channel) patch values becomes timm's 16×16 convolution, the fixed
  sin-cos code of the image grid plus the stream embedding becomes timm's ``pos_embed`` (0 at the
  cls slot: PolyMAE's cls token has no position), blocks and norm keep their names. Load with
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=FILE, ...),
  **kwargs)``; the sidecar ``FILE.json`` holds name, kwargs and overlay (mean/std of the plugin).
* ``torch`` (any stream): :class:`polymae.models.encoder.StreamEncoder` weights
  (``encoder.pt``, plain tensors) + ``encoder.json`` (modality, plugin config, model config);
  :func:`load_stream_encoder` builds it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from polymae.modalities.registry import make_plugin
from polymae.models.encoder import StreamEncoder
from polymae.models.mae import PolyMAE
from polymae.models.presets import ModelConfig
from polymae.pipelines.spec import PipelineSpec

TIMM_NAMES = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large"}  # by width


def _stream(spec: PipelineSpec, stream: str | None) -> str:
    stream = stream or spec.sources[0].name
    if stream not in spec.streams:
        raise ValueError(f"stream {stream!r}: the model has streams {', '.join(spec.streams)}")
    return stream


def timm_checkpoint(model: PolyMAE, spec: PipelineSpec, stream: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(timm VisionTransformer state dict, {"model", "kwargs", "pretrained_cfg_overlay"}) of an
    image stream's encoder."""
    plugin = model.plugins[stream]
    if spec.source(stream).modality != "image":
        raise ValueError(f"--format timm exports image streams (a timm VisionTransformer); stream {stream!r} is "
                         f"{spec.source(stream).modality}: use --format torch")
    cfg, p, g = model.cfg, plugin.config.patch_size, plugin.grid
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")  # the image plugin's coords
    with torch.no_grad():
        grid = model.position[stream](torch.stack([rows.flatten(), cols.flatten()], dim=1)[None].float())
        pos = torch.cat([grid.new_zeros(1, 1, cfg.width), grid + model.modality_embed[stream]], dim=1)
    embed = model.embed[stream]
    state = {"cls_token": model.cls_token, "pos_embed": pos,
             "patch_embed.proj.weight": embed.weight.reshape(cfg.width, p, p, 3).permute(0, 3, 1, 2),
             "patch_embed.proj.bias": embed.bias}
    state.update({k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("blocks", "norm")})
    name = f"{TIMM_NAMES.get(cfg.width, 'vit_base')}_patch16_224"  # kwargs below set every size
    kwargs = {"img_size": plugin.config.img_size, "patch_size": p, "embed_dim": cfg.width, "depth": cfg.depth,
              "num_heads": cfg.heads, "mlp_ratio": cfg.mlp_ratio, "num_classes": 0}
    overlay = {"mean": list(plugin.config.mean), "std": list(plugin.config.std),
               "input_size": [3, plugin.config.img_size, plugin.config.img_size]}
    return ({k: v.detach().clone().contiguous() for k, v in state.items()},
            {"model": name, "kwargs": kwargs, "pretrained_cfg_overlay": overlay})


def export_timm(model: PolyMAE, spec: PipelineSpec, out: str | Path, stream: str | None = None) -> list[Path]:
    """Write ``out`` (the state dict) and ``out``.json (how to create the timm model)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state, how = timm_checkpoint(model, spec, _stream(spec, stream))
    torch.save(state, out)
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(how, indent=2))
    return [out, sidecar]


def export_torch(model: PolyMAE, spec: PipelineSpec, out: str | Path, stream: str | None = None) -> list[Path]:
    """Write the folder ``out``: encoder.pt (StreamEncoder state dict) and encoder.json."""
    stream = _stream(spec, stream)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = spec.source(stream)
    torch.save(StreamEncoder.weights_from(model.state_dict(), stream), out / "encoder.pt")
    config = {"stream": stream, "modality": source.modality, "plugin_config": source.config,
              "model": model.cfg.model_dump(mode="json")}
    (out / "encoder.json").write_text(json.dumps(config, indent=2))
    return [out / "encoder.pt", out / "encoder.json"]


def load_stream_encoder(folder: str | Path) -> tuple[StreamEncoder, dict[str, Any]]:
    """(StreamEncoder in eval mode, its config) from an ``export --format torch`` folder."""
    folder = Path(folder)
    config = json.loads((folder / "encoder.json").read_text())
    encoder = StreamEncoder(make_plugin(config["modality"], config["plugin_config"]), ModelConfig(**config["model"]))
    encoder.load_state_dict(torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True))
    return encoder.eval(), config


EXPORTERS = {"timm": export_timm, "torch": export_torch}


def export_model(model_uri: str, fmt: str, out: str | Path, stream: str | None = None,
                 tracking_uri: str | None = None) -> list[Path]:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a checkpoint folder → the files written."""
    from polymae.orchestration.checkpoint import load_model
    from polymae.orchestration.inference import resolve_checkpoint

    if fmt not in EXPORTERS:
        raise ValueError(f"--format {fmt!r}: allowed {', '.join(EXPORTERS)}")
    model, spec = load_model(resolve_checkpoint(model_uri, tracking_uri))
    return EXPORTERS[fmt](model, spec, out, stream)
