"""``polymae reconstruct``: argument errors and the function behind it, on a checkpoint folder
(no MLflow, no Ray)."""

import numpy as np
import pytest
from PIL import Image

from polymae.cli import main
from polymae.orchestration.checkpoint import build_model, load_model, save_checkpoint
from polymae.orchestration.reconstruct import parse_files, reconstruct_files
from polymae.pipelines.spec import PipelineSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    rng = np.random.default_rng(0)
    for name in ("rgb", "depth"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{name}.png")
    spec = PipelineSpec.model_validate({
        "name": "two-cameras",
        "sources": [{"name": s, "modality": "image", "paths": [str(root)], "config": {"img_size": 32}}
                    for s in ("rgb", "depth")],
        "model": {"preset": "tiny", "overrides": {"depth": 1, "decoder": "per_stream", "per_stream_width": 32,
                                                  "per_stream_heads": 2, "per_stream_depth": 1}},
    })
    save_checkpoint(root / "ckpt", build_model(spec), None, 0, spec)
    return root


def test_parse_files():
    assert parse_files(["rgb=a.png", "depth=b=c.png"]) == {"rgb": "a.png", "depth": "b=c.png"}
    for bad in (["rgb"], ["=a.png"], ["rgb="], ["rgb=a", "rgb=b"]):
        with pytest.raises(ValueError):
            parse_files(bad)


def test_bad_stream_names_the_allowed_streams(checkpoint, capsys):
    rc = main(["reconstruct", "--model", str(checkpoint / "ckpt"), "--inputs", "lidar", "--targets", "depth",
               "--files", f"rgb={checkpoint / 'rgb.png'}", f"depth={checkpoint / 'depth.png'}",
               "--out", str(checkpoint / "out")])
    assert rc == 2
    assert "input stream 'lidar': the model has streams rgb, depth" in capsys.readouterr().err
    rc = main(["reconstruct", "--model", str(checkpoint / "ckpt"), "--inputs", "rgb", "--targets", "depth",
               "--files", f"rgb={checkpoint / 'rgb.png'}", "--out", str(checkpoint / "out")])
    assert rc == 2 and "no file for stream(s) depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --targets is required
        main(["reconstruct", "--model", "m", "--inputs", "rgb", "--files", "rgb=a", "--out", "o"])


def test_cli_writes_the_target_render(checkpoint):
    rc = main(["reconstruct", "--model", str(checkpoint / "ckpt"), "--inputs", "rgb", "--targets", "depth",
               "--files", f"rgb={checkpoint / 'rgb.png'}", f"depth={checkpoint / 'depth.png'}",
               "--out", str(checkpoint / "out")])
    assert rc == 0
    picture = np.asarray(Image.open(checkpoint / "out" / "depth.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3


def test_function_takes_a_loaded_model_and_depends_on_inputs_only(checkpoint, tmp_path):
    model, spec = load_model(checkpoint / "ckpt")
    files = {"rgb": str(checkpoint / "rgb.png"), "depth": str(checkpoint / "depth.png")}
    written = reconstruct_files(model, spec, ["rgb"], ["depth"], files, tmp_path / "a")
    assert set(written) == {"depth"} and written["depth"].suffix == ".png"
    # the depth file's content reaches the picture only as the "original" panel, not the prediction
    other = np.asarray(Image.open(files["depth"]))[::-1].copy()
    Image.fromarray(other).save(tmp_path / "depth2.png")
    import torch

    from polymae.orchestration.inference import evaluation_views, stream_plugin
    from polymae.tokenizer.stream import streams_to_columns

    def batch(depth_path):
        cols = {}
        for s, p in (("rgb", files["rgb"]), ("depth", depth_path)):
            view = evaluation_views(stream_plugin(spec, s), p, "x", s)[0][s]
            cols.update({k: torch.as_tensor(v) for k, v in streams_to_columns(s, [view]).items()})
        return cols

    one = model.reconstruct(batch(files["depth"]), ["rgb"], ["depth"])["depth"]
    two = model.reconstruct(batch(str(tmp_path / "depth2.png")), ["rgb"], ["depth"])["depth"]
    assert torch.equal(one, two)
