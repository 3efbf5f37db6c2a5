"""Per-stream (MultiMAE) decoders, the joint decoder on two streams, and reconstruct."""

import numpy as np
import pytest
import timm.layers
import torch

from polymae.modalities import make_plugin
from polymae.models import PolyMAE, resolve_model_config
from polymae.tokenizer import MaskPolicy, MaskSpec, streams_to_columns

STREAMS = ("a", "b")


def _two_stream_batch(n: int = 3, ratio: float = 0.75, seed: int = 0):
    """Two image streams of 16 tokens each (64² images)."""
    plugin = make_plugin("image", {"img_size": 64})
    rng = np.random.default_rng(seed)
    batch = {}
    for name in STREAMS:
        policy = MaskPolicy({name: MaskSpec(ratio=ratio)})
        streams = []
        for i in range(n):
            sample = {name: plugin.tokenize((rng.random((70, 70, 3)) * 255).astype(np.uint8), None)}
            policy.apply(sample, f"{name}{i}", 0)
            streams.append(sample[name])
        batch.update({k: torch.as_tensor(v) for k, v in streams_to_columns(name, streams).items()})
    return plugin, batch


def _model(plugin, decoder: str = "per_stream", **overrides):
    torch.manual_seed(0)
    cfg = resolve_model_config("tiny", {"depth": 2, "decoder": decoder, "per_stream_width": 64,
                                        "per_stream_heads": 4, **overrides})
    return PolyMAE({m: plugin for m in STREAMS}, cfg).eval()


def test_per_stream_builds_multimae_defaults_and_no_joint_decoder():
    cfg = resolve_model_config("base", {"decoder": "per_stream"})
    assert (cfg.per_stream_width, cfg.per_stream_depth, cfg.per_stream_heads) == (256, 2, 8)
    model = _model(make_plugin("image", {"img_size": 32}))
    assert set(model.decoders) == set(STREAMS)
    assert not hasattr(model, "decoder_blocks")  # DDP: no parameter that never takes part


@pytest.mark.parametrize("fused", [True, False], ids=["fused-attn", "plain-attn"])
def test_per_stream_padded_batch_equals_samples_run_alone(fused: bool):
    """Fewer visible tokens in one sample, a stream absent from another: padding and absence are
    masked out of every attention exactly."""
    plugin, batch = _two_stream_batch(n=3)
    batch["a.visible"][1, torch.nonzero(batch["a.visible"][1])[0]] = False  # 3 visible, not 4
    for field in ("valid", "visible", "decoded"):  # sample 2 lacks stream b
        batch[f"b.{field}"][2] = False
    before = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(fused)
    try:
        model = _model(plugin)
    finally:
        timm.layers.set_fused_attn(before)
    assert model.decoders["a"].blocks[0].attn.fused_attn is fused
    with torch.no_grad():
        _, losses, preds = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        for i in range(3):
            alone = {k: v[i : i + 1] for k, v in batch.items()}
            _, _, pred_alone = model(alone)
            for m in STREAMS:
                seen = batch[f"{m}.valid"][i]
                assert torch.allclose(pred_alone[m][0][seen], preds[m][i][seen], atol=1e-5)


def test_absent_stream_scores_zero_through_its_decoder():
    plugin, batch = _two_stream_batch(n=2)
    for field in ("valid", "visible", "decoded"):
        batch[f"b.{field}"][:] = False
    model = _model(plugin).train()
    loss, losses, _ = model(batch)
    assert losses["b"].item() == 0.0
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # under DDP every parameter takes part in every step


@pytest.mark.parametrize("decoder", ["joint", "per_stream"])
@pytest.mark.parametrize("absent", STREAMS)
def test_stream_parameters_are_exactly_those_an_absent_stream_leaves_at_zero(decoder: str, absent: str):
    """The trainer drops these gradients when no worker has the stream (train.train_step). With
    per-stream decoders, decoder a's code for stream b belongs to both streams."""
    plugin, batch = _two_stream_batch(n=2)
    for field in ("valid", "visible", "decoded"):
        batch[f"{absent}.{field}"][:] = False
    model = _model(plugin, decoder).train()
    model(batch)[0].backward()
    zero = {n for n, p in model.named_parameters() if not p.grad.any()}
    ids = {id(p) for p in model.stream_parameters(absent)}
    assert zero == {n for n, p in model.named_parameters() if id(p) in ids}
    assert len(ids) == len(model.stream_parameters(absent))  # no parameter twice


@pytest.mark.parametrize("decoder", ["joint", "per_stream"])
def test_prediction_reads_the_other_streams_visible_tokens(decoder: str):
    """Cross-modal information flows: changing b's visible values changes a's prediction of its
    hidden tokens; changing b's hidden values does not."""
    plugin, batch = _two_stream_batch(n=2)
    model = _model(plugin, decoder)
    hidden_a = ~batch["a.visible"]
    with torch.no_grad():
        base = model(batch)[2]["a"][hidden_a]
        vis_changed = dict(batch, **{"b.values": torch.where(batch["b.visible"][..., None], 5.0, batch["b.values"])})
        hid_changed = dict(batch, **{"b.values": torch.where(batch["b.visible"][..., None], batch["b.values"], 5.0)})
        assert not torch.allclose(model(vis_changed)[2]["a"][hidden_a], base, atol=1e-4)
        assert torch.allclose(model(hid_changed)[2]["a"][hidden_a], base, atol=1e-6)


@pytest.mark.parametrize("decoder", ["joint", "per_stream"])
def test_two_stream_loss_falls_when_training_on_one_batch(decoder: str):
    plugin, batch = _two_stream_batch(n=4)
    model = _model(plugin, decoder, contrastive_weight=0.01).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss, losses, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert set(losses) == {"a", "b", "contrastive"}
    assert loss.item() < 0.8 * first  # two streams' losses summed: 2.6 → 1.85 (joint) in 30 steps


@pytest.mark.parametrize("decoder", ["joint", "per_stream"])
def test_reconstruct_b_from_a(decoder: str):
    plugin, batch = _two_stream_batch(n=2)
    model = _model(plugin, decoder)
    pred = model.reconstruct(batch, inputs=["a"], targets=["b"])["b"]
    assert pred.shape == batch["b.values"].shape
    b_changed = dict(batch, **{"b.values": batch["b.values"] + 3.0})
    assert torch.equal(model.reconstruct(b_changed, ["a"], ["b"])["b"], pred)  # b truly hidden
    a_changed = dict(batch, **{"a.values": batch["a.values"].flip(1)})
    assert not torch.allclose(model.reconstruct(a_changed, ["a"], ["b"])["b"], pred, atol=1e-4)
    # the batch's mask on the inputs, when asked: a's hidden tokens then do not matter
    a_hidden_changed = dict(batch, **{"a.values": torch.where(batch["a.visible"][..., None], batch["a.values"], 7.0)})
    masked = model.reconstruct(batch, ["a"], ["b"], use_mask=True)["b"]
    assert torch.allclose(model.reconstruct(a_hidden_changed, ["a"], ["b"], use_mask=True)["b"], masked, atol=1e-6)
    # value space: norm-pix undone with the true tokens' statistics, as the render does
    values = model.reconstruct(batch, ["a"], ["b"], to_values=True)["b"]
    expect = plugin.prediction_values(pred[0].numpy(), batch["b.values"][0].numpy())
    assert np.allclose(values[0].numpy(), expect, atol=1e-5)


def test_reconstruct_names_the_allowed_streams():
    plugin, batch = _two_stream_batch(n=1)
    model = _model(plugin)
    with pytest.raises(ValueError, match="the model has a, b"):
        model.reconstruct(batch, ["c"], ["b"])
    only_a = {k: v for k, v in batch.items() if k.startswith("a.")}
    with pytest.raises(ValueError, match="need their columns"):
        model.reconstruct(only_a, ["a"], ["b"])
