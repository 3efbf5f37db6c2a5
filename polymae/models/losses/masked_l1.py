"""L1 on the pixels of masked tokens, missing pixels left out (MultiMAE's depth loss).

MultiMAE's ``MaskedL1Loss`` (depth, ``norm_pix=False``): the absolute error of every pixel of
every masked patch; per sample, the mean over those pixels; then the mean over the samples
that have any (a sample without a masked patch does not count). PolyMAE keeps that reduction
and adds a per-pixel validity mask (a depth sensor's holes): a pixel without a reading is left
out of both the sum and the count, so whatever is predicted there never changes the loss.

    loss = mean over samples b with S_b > 0 of  Σ_{masked tokens, valid pixels} |p − t| / S_b,
    S_b = number of valid pixels in the masked tokens of sample b
"""

from __future__ import annotations

import torch


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pixel_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """pred, target (B, N, D); mask (B, N) bool (the tokens to score); pixel_valid (B, N, D) bool,
    optional (False: no reading, not scored) → scalar. 0, still through ``pred``, when nothing is
    scored. Float32 whatever the input dtype; differentiable in ``pred``."""
    weights = mask.bool()[..., None].expand(pred.shape)
    if pixel_valid is not None:
        weights = weights & pixel_valid.bool()
    error = torch.where(weights, (pred.float() - target.float()).abs(), 0.0)  # unscored: exactly 0
    counts = weights.flatten(1).sum(dim=1).float()  # (B,)
    per_sample = error.flatten(1).sum(dim=1) / counts.clamp(min=1.0)
    scored = counts > 0
    if not bool(scored.any()):
        return pred.float().sum() * 0.0
    return per_sample[scored].mean()
