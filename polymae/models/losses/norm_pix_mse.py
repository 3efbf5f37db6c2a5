"""MSE on masked tokens with the normalised-pixel target (MAE, VideoMAE, AudioMAE, SatMAE).

Target, per token over its D values (MAE's ``forward_loss``):

    t = (x − mean(x)) / sqrt(var(x) + 1e-6),   var unbiased (divides by D − 1)

MAE puts the epsilon inside the square root, VideoMAE outside (``/ (std + 1e-6)``); PolyMAE
uses MAE's form everywhere. The loss is the mean over tokens where ``mask`` is true of the
per-token mean squared error, so every masked token counts equally and visible ones not at all.
"""

from __future__ import annotations

import numpy as np
import torch

NORM_PIX_EPS = 1e-6


def norm_pix_target(values: torch.Tensor, eps: float = NORM_PIX_EPS, channels: int = 1) -> torch.Tensor:
    """values (..., D) → per-token normalised values (..., D).

    ``channels=1``: one mean/var over the whole token (MAE). ``channels=C``: the token's values
    are (..., C) interleaved and each channel is normalised on its own (VideoMAE's tubelets)."""
    shape = values.shape
    grouped = values.reshape(*shape[:-1], shape[-1] // channels, channels)
    mean = grouped.mean(dim=-2, keepdim=True)
    var = grouped.var(dim=-2, keepdim=True)  # unbiased, as MAE and VideoMAE
    return ((grouped - mean) / (var + eps).sqrt()).reshape(shape)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target (B, N, D); mask (B, N) bool → scalar mean over masked tokens of the
    per-token MSE."""
    per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def undo_norm_pix(pred: np.ndarray, values: np.ndarray, channels: int = 1, eps: float = NORM_PIX_EPS) -> np.ndarray:
    """Predicted normalised tokens (N, D) → value space, with the statistics of the true tokens
    ``values`` (N, D): what a render shows. Inverse of :func:`norm_pix_target` per token."""
    n, d = values.shape
    grouped = values.reshape(n, d // channels, channels)
    mean = grouped.mean(axis=1, keepdims=True)
    std = np.sqrt(grouped.var(axis=1, ddof=1, keepdims=True) + eps)
    return (pred.reshape(n, d // channels, channels) * std + mean).reshape(n, d)
