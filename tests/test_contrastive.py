"""CAV-MAE's contrastive term: the loss by hand, absent pairs, gradients, the model's key."""

import math

import numpy as np
import pytest
import torch

from polymae.models.losses import symmetric_info_nce


def _by_hand(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T / tau
    rows = -np.mean([s[i, i] - math.log(np.exp(s[i]).sum()) for i in range(len(s))])
    cols = -np.mean([s[j, j] - math.log(np.exp(s[:, j]).sum()) for j in range(len(s))])
    return (rows + cols) / 2


def test_known_values():
    # orthogonal, perfectly matched pairs: the positive logit is 1/τ, the negatives 0
    eye = torch.eye(3)
    expect = -(1 / 0.5 - math.log(math.exp(1 / 0.5) + 2))
    assert math.isclose(float(symmetric_info_nce(eye, eye, 0.5)), expect, rel_tol=1e-5)
    # at CAV-MAE's τ = 0.05 the same pairs are already all but certain: log(1 + 2e^-20)
    assert math.isclose(float(symmetric_info_nce(eye, eye, 0.05)), math.log1p(2 * math.exp(-20)), abs_tol=1e-7)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    got = symmetric_info_nce(torch.tensor(a), torch.tensor(b), 0.5)
    assert math.isclose(float(got), _by_hand(a, b, 0.5), rel_tol=1e-5)
    # symmetric: swapping the views changes nothing
    assert math.isclose(float(symmetric_info_nce(torch.tensor(b), torch.tensor(a), 0.5)), float(got), rel_tol=1e-6)


def test_absent_pairs_are_left_out():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    mask = torch.tensor([True, False, True, True, False])
    got = symmetric_info_nce(torch.tensor(a), torch.tensor(b), 0.05, mask)
    assert math.isclose(float(got), _by_hand(a[[0, 2, 3]], b[[0, 2, 3]], 0.05), rel_tol=1e-5)
    one = symmetric_info_nce(torch.tensor(a, requires_grad=True), torch.tensor(b), 0.05, mask & False)
    assert one.item() == 0.0 and one.requires_grad  # < 2 samples: nothing to contrast, still in the graph


def test_gradient_pulls_pairs_together():
    torch.manual_seed(0)
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6, requires_grad=True)
    opt = torch.optim.SGD([a, b], lr=0.05)
    first = symmetric_info_nce(a, b).item()
    for _ in range(20):
        loss = symmetric_info_nce(a, b)
        opt.zero_grad()
        loss.backward()
        assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
        opt.step()
    assert symmetric_info_nce(a, b).item() < first


def test_model_adds_weighted_term_only_over_samples_with_both_streams():
    from tests.test_decoders import _model, _two_stream_batch

    plugin, batch = _two_stream_batch(n=4)
    model = _model(plugin, "joint", contrastive_weight=0.01)
    with torch.no_grad():
        total, losses, _ = model(batch)
        assert math.isclose(float(total), float(losses["a"] + losses["b"] + 0.01 * losses["contrastive"]), rel_tol=1e-6)
        latent, ids_restore, keep = model.forward_encoder(batch)
        pooled, present = model.pool_streams(latent, ids_restore, keep, batch)
        # by hand: the mean of stream a's visible encoded tokens of sample 0
        visible_a = batch["a.visible"][0].sum()
        order = torch.argsort(ids_restore[0])[: keep.shape[1]]
        from_a = latent[0, 1:][(order < 16) & keep[0]]
        assert from_a.shape[0] == visible_a and torch.allclose(pooled[0, 0], from_a.mean(0), atol=1e-6)
        for field in ("valid", "visible", "decoded"):  # samples 1 and 3 lack stream b
            batch[f"b.{field}"][[1, 3]] = False
        _, losses, _ = model(batch)
        latent, ids_restore, keep = model.forward_encoder(batch)
        pooled, present = model.pool_streams(latent, ids_restore, keep, batch)
        assert present.tolist() == [[True] * 4, [True, False, True, False]]
        expect = symmetric_info_nce(pooled[0], pooled[1], 0.05, present[0] & present[1])
        assert torch.allclose(losses["contrastive"], expect)


def test_contrastive_needs_two_streams():
    from polymae.modalities import make_plugin
    from polymae.models import PolyMAE, resolve_model_config

    with pytest.raises(ValueError, match="two or more streams"):
        PolyMAE({"image": make_plugin("image")}, resolve_model_config("tiny", {"contrastive_weight": 0.01}))
