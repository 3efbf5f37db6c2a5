"""MSE on masked tokens with the normalised-pixel target (MAE, VideoMAE, AudioMAE, SatMAE).

Target, per token over its D values (MAE's ``forward_loss``):

    t = (x − mean(x)) / sqrt(var(x) + 1e-6),   var unbiased (divides by D − 1)

MAE puts the epsilon inside the square root, VideoMAE outside (``/ (std + 1e-6)``); PolyMAE
uses MAE's form everywhere. The loss is the mean over tokens where ``mask`` is true of the
per-token mean squared error, so every masked token counts equally and visible ones not at all.
"""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def norm_pix_target(values: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """values (..., D) → per-token normalised values (..., D)."""
    mean = values.mean(dim=-1, keepdim=True)
    var = values.var(dim=-1, keepdim=True)  # unbiased, as MAE
    return (values - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target (B, N, D); mask (B, N) bool → scalar mean over masked tokens of the
    per-token MSE."""
    per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
