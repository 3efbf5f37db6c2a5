import numpy as np
import pytest
import timm.layers
import torch

from polymae.modalities import make_plugin
from polymae.models import PolyMAE, resolve_model_config
from polymae.models.losses import masked_mse, norm_pix_target
from polymae.models.pos_embed import sincos_nd
from polymae.tokenizer import MaskPolicy, MaskSpec, streams_to_columns


def test_loss_is_hand_computed_norm_pix_mse_over_masked_tokens_only():
    values = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 9.0]]])
    pred = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0], [9.0, 9.0, 9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    # by hand: per token, mean 3 and unbiased var (4+1+0+9)/3 = 14/3
    t0 = (np.array([1, 2, 3, 6]) - 3) / np.sqrt(14 / 3 + 1e-6)
    t1 = (np.array([0, 0, 1, 1]) - 0.5) / np.sqrt(1 / 3 + 1e-6)
    expected = (np.mean((0 - t0) ** 2) + np.mean((np.array([1, -1, 1, -1]) - t1) ** 2)) / 2
    image = make_plugin("image")  # the image plugin's loss is exactly this
    assert np.isclose(float(image.loss(pred, values, mask)), expected, rtol=1e-6)
    assert np.isclose(float(masked_mse(pred, norm_pix_target(values), mask)), expected, rtol=1e-6)
    # the visible token does not count at all
    pred2 = pred.clone()
    pred2[0, 2] = -100.0
    assert float(image.loss(pred2, values, mask)) == float(image.loss(pred, values, mask))
    # without norm-pix the target is the values themselves
    raw = ((pred[0, :2] - values[0, :2]) ** 2).mean(-1).mean()
    plain = make_plugin("image", {"norm_pix_loss": False})
    assert np.isclose(float(plain.loss(pred, values, mask)), float(raw))


def test_sincos_matches_closed_form_and_mae_table():
    width = 16
    coords = torch.tensor([[3.0, 5.0]])
    got = sincos_nd(coords, width)[0].numpy()
    d = width // 2
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    expect = np.concatenate([np.sin(3 * omega), np.cos(3 * omega), np.sin(5 * omega), np.cos(5 * omega)])
    assert np.allclose(got, expect, atol=1e-6)
    # MAE's get_2d_sincos_pos_embed(16, grid 14) row for (y=3, x=5) is [emb(x) | emb(y)]
    mae_row = np.concatenate([expect[d:], expect[:d]])
    assert np.allclose(np.concatenate([got[d:], got[:d]]), mae_row)


def _batch(n: int = 3, ratio: float = 0.75, seed: int = 0):
    plugin = make_plugin("image", {"img_size": 64})
    rng = np.random.default_rng(seed)
    streams = []
    policy = MaskPolicy({"image": MaskSpec(ratio=ratio)})
    for i in range(n):
        s = {"image": plugin.tokenize((rng.random((80, 90, 3)) * 255).astype(np.uint8), rng)}
        policy.apply(s, str(i), 0)
        streams.append(s["image"])
    return plugin, {k: torch.as_tensor(v) for k, v in streams_to_columns("image", streams).items()}


def _model(plugin):
    torch.manual_seed(0)
    return PolyMAE({"image": plugin}, resolve_model_config("tiny", {"depth": 2})).eval()


def test_encoder_sees_visible_tokens_only():
    plugin, batch = _batch()
    model = _model(plugin)
    latent, ids_restore, keep = model.forward_encoder(batch)
    assert latent.shape == (3, 1 + 4, 192)  # 16 tokens at 64², 4 visible
    changed = dict(batch)
    changed["image.values"] = batch["image.values"].clone()
    changed["image.values"][~batch["image.visible"]] = 99.0
    assert torch.allclose(model.forward_encoder(changed)[0], latent)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-attn", "plain-attn"])
def test_padded_batch_equals_samples_run_alone(fused: bool):
    """Samples with fewer visible tokens are padded and masked out of attention exactly, on both
    of timm's attention paths (the plain one adds the mask as a bias; before timm 1.0.26 it added
    a boolean mask as 0/1, attending to padding)."""
    plugin, batch = _batch(n=2)
    batch["image.visible"][1, torch.nonzero(batch["image.visible"][1])[0]] = False  # 3 visible, not 4
    before = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(fused)  # each Attention caches the choice when it is built
    try:
        model = _model(plugin)
    finally:
        timm.layers.set_fused_attn(before)
    assert model.blocks[0].attn.fused_attn is fused
    assert model.decoder_blocks[0].attn.fused_attn is fused
    with torch.no_grad():
        _, losses, preds = model(batch)
        for i in range(2):
            alone = {k: v[i : i + 1] for k, v in batch.items()}
            _, _, pred_alone = model(alone)
            assert torch.allclose(pred_alone["image"][0], preds["image"][i], atol=1e-5)


def test_loss_falls_when_training_on_one_batch():
    plugin, batch = _batch(n=4)
    model = _model(plugin).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss, _, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first


def test_position_every_block_is_added_before_each_block():
    """Point-MAE's encoder adds the position code before every block, not once at the input."""
    from polymae.modalities.image import ImagePlugin

    class EveryBlock(ImagePlugin):
        position_every_block = True

    plugin = EveryBlock({"img_size": 32})
    rng = np.random.default_rng(0)
    streams = [plugin.tokenize(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), None) for _ in range(2)]
    policy = MaskPolicy({"image": MaskSpec(ratio=0.75)})
    for i, s in enumerate(streams):
        policy.apply({"image": s}, f"s{i}", 0)
    batch = {k: torch.as_tensor(v) for k, v in streams_to_columns("image", streams).items()}
    torch.manual_seed(0)
    model = PolyMAE({"image": plugin}, resolve_model_config("tiny")).eval()
    latent, _, _ = model.forward_encoder(batch)
    # by hand: visible tokens (no position at the input), cls first, position before each block
    vis = batch["image.visible"]
    tokens = model.embed["image"](batch["image.values"]) + model.modality_embed["image"]
    pos = model.position["image"](batch["image.coords"])
    x = torch.stack([tokens[i][vis[i]] for i in range(2)])
    p = torch.stack([pos[i][vis[i]] for i in range(2)])
    x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
    p = torch.cat([torch.zeros_like(p[:, :1]), p], dim=1)
    for block in model.blocks:
        x = block(x + p)
    assert torch.allclose(latent, model.norm(x), atol=1e-5)
