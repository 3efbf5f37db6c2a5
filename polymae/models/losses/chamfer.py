"""Chamfer-L2 on masked point groups (Point-MAE; LiDAR pillars too).

Each token holds a small point set flattened in (point, xyz) order: D = K·dims values. For every
masked token the predicted set P (K points) and the true set T are compared with Point-MAE's
``ChamferDistanceL2`` (the PoinTr/GRNet CUDA extension): squared Euclidean distances, then

    loss = mean over all predicted points of min_t ‖p − t‖²  +  mean over all true points of min_p ‖p − t‖²

where "all" spans every masked group of the batch (Point-MAE flattens the masked groups to
(B·M, K, 3) and takes ``torch.mean(dist1) + torch.mean(dist2)``), so every point weighs the same.
As every group has the same K, this is also the mean over masked groups of the per-group Chamfer
distance. A true set may be padded to K slots (a LiDAR pillar holds n ≤ K points): ``target_valid``
marks its real points; padding is nobody's nearest point and is left out of the second mean.
Computed with ``torch.cdist`` (no compiled extension), exact (no matmul shortcut).
"""

from __future__ import annotations

import torch


def chamfer_pairs(
    pred: torch.Tensor, target: torch.Tensor, target_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point sets pred (M, K, dims), target (M, K', dims) → (dist1 (M, K), dist2 (M, K')):
    each predicted point's squared distance to its nearest true point, and the reverse.

    ``target_valid`` (M, K') bool: only these true points count as nearest; dist2 is +inf at the
    others (padding), which the caller leaves out."""
    dist = torch.cdist(pred, target, compute_mode="donot_use_mm_for_euclid_dist").square()  # (M, K, K')
    if target_valid is not None:
        dist = dist.masked_fill(~target_valid[:, None, :], float("inf"))
    return dist.min(dim=2).values, dist.min(dim=1).values


def chamfer_l2(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dims: int = 3,
    target_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """pred, target (B, N, D) with D = K·dims; mask (B, N) bool → scalar Chamfer-L2 over the masked
    tokens (0 when no token is masked). ``target_valid`` (B, N, K) bool, optional: the real points
    of each true set (the rest is padding). Float32 whatever the input dtype; differentiable in ``pred``."""
    d = pred.shape[-1]
    if d % dims:
        raise ValueError(f"token width {d} is not a multiple of {dims} coordinates")
    selected = mask.bool()
    p = pred.float()[selected].reshape(-1, d // dims, dims)
    t = target.float()[selected].reshape(-1, d // dims, dims)
    if p.shape[0] == 0:
        return pred.float().sum() * 0.0  # keeps the graph: a batch without masked groups adds nothing
    valid = None if target_valid is None else target_valid.bool()[selected]  # (M, K)
    dist1, dist2 = chamfer_pairs(p, t, valid)
    return dist1.mean() + (dist2.mean() if valid is None else dist2[valid].mean())
