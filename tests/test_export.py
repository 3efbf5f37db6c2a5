"""``polymae export``: the image encoder as a timm VisionTransformer that timm loads and that gives
PolyMAE's features; other streams as a plain StreamEncoder. On a checkpoint folder (no MLflow)."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from polymae.cli import main
from polymae.orchestration.checkpoint import build_model, load_model, save_checkpoint
from polymae.orchestration.export import load_stream_encoder
from polymae.pipelines.spec import PipelineSpec
from polymae.tokenizer.stream import streams_to_columns

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
PHOTO = DATA / "images" / "chelsea.jpg"
FILES = {"image": PHOTO, "audio": DATA / "audio" / "alsa_Front_Center.wav",  # 1.4 s: most of the window is padding
         "points": DATA / "points" / "kitten.xyz"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny three-stream model with every parameter moved off its initial value (zero biases
    would hide a mis-mapped bias), saved as a checkpoint folder."""
    spec = PipelineSpec.model_validate({
        "name": "export-test",
        "sources": [{"modality": "image", "paths": [str(DATA / "images")], "config": {"img_size": 64}},
                    {"modality": "audio", "paths": [str(DATA / "audio")], "config": {"target_length": 256}},
                    {"modality": "points", "paths": [str(DATA / "points")]}],
        "model": {"preset": "tiny", "overrides": {"depth": 2}},
    })
    model = build_model(spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    folder = tmp_path_factory.mktemp("export") / "ckpt"
    save_checkpoint(folder, model, None, 0, spec)
    return folder


def _encoded(model, stream: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One evaluation view of the stream's file as a batch (every valid token visible) and
    PolyMAE's encoder output for it, (1, 1+K, W) with the K valid tokens in order."""
    plugin = model.plugins[stream]
    view = plugin.tokenize_file(FILES[stream].read_bytes(), str(FILES[stream]), None)[0]
    view.visible = view.valid.copy()
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns(stream, [view]).items()}
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(batch)
    return batch, latent


def test_timm_vit_loads_and_gives_polymae_features(checkpoint, tmp_path):
    out = tmp_path / "vit.pth"
    assert main(["export", "--model", str(checkpoint), "--format", "timm", "--stream", "image",
                 "--out", str(out)]) == 0
    how = json.loads((tmp_path / "vit.pth.json").read_text())
    assert how["model"] == "vit_tiny_patch16_224" and how["kwargs"]["img_size"] == 64
    vit = timm.create_model(how["model"], pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(out), **how["pretrained_cfg_overlay"]),
                            **how["kwargs"]).eval()
    model, _ = load_model(checkpoint)
    plugin = model.plugins["image"]
    data = timm.data.resolve_data_config(model=vit)
    assert tuple(data["mean"]) == plugin.config.mean and tuple(data["input_size"]) == (3, 64, 64)
    # timm's input: the evaluation crop normalised as the plugin does, (1, 3, H, W)
    crop = plugin.view(plugin.decode(PHOTO.read_bytes(), str(PHOTO)), None).astype(np.float32) / 255.0
    pixels = torch.as_tensor((crop - plugin.config.mean) / plugin.config.std, dtype=torch.float32)
    _, expected = _encoded(model, "image")
    with torch.no_grad():
        features = vit.forward_features(pixels.permute(2, 0, 1)[None])
    assert features.shape == expected.shape == (1, 1 + 16, 192)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stream", ["audio", "points"])
def test_torch_encoder_loads_back_and_gives_polymae_features(checkpoint, tmp_path, stream):
    """Audio: a short recording's padding tokens are invalid; points: positions before every block."""
    assert main(["export", "--model", str(checkpoint), "--format", "torch", "--stream", stream,
                 "--out", str(tmp_path / stream)]) == 0
    encoder, config = load_stream_encoder(tmp_path / stream)
    assert config["modality"] == stream
    model, _ = load_model(checkpoint)
    batch, expected = _encoded(model, stream)
    valid = batch[f"{stream}.valid"]
    with torch.no_grad():
        features = encoder(batch[f"{stream}.values"], batch[f"{stream}.coords"], valid)
    kept = torch.cat([torch.ones(1, 1, dtype=torch.bool), valid], dim=1)
    assert 1 < int(valid.sum()) == expected.shape[1] - 1
    assert stream != "audio" or not bool(valid.all())
    torch.testing.assert_close(features[kept][None], expected, atol=1e-5, rtol=1e-5)


def test_timm_format_refuses_other_streams_and_names_the_way(checkpoint, tmp_path, capsys):
    rc = main(["export", "--model", str(checkpoint), "--format", "timm", "--stream", "audio",
               "--out", str(tmp_path / "x.pth")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stream 'audio' is audio: use --format torch" in err and not (tmp_path / "x.pth").exists()
    rc = main(["export", "--model", str(checkpoint), "--format", "torch", "--stream", "lidar",
               "--out", str(tmp_path / "y")])
    assert rc == 2 and "the model has streams image, audio, points" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse names the allowed formats
        main(["export", "--model", str(checkpoint), "--format", "onnx", "--out", "o"])
