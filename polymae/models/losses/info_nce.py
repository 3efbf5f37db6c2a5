"""Symmetric InfoNCE between two views of the same samples (CAV-MAE's audio-visual contrastive term).

For L2-normalised embeddings a_i, b_j of the kept samples and temperature τ:

    s_ij = a_i · b_j / τ
    loss = ½ · [ mean_i −log softmax_j(s_ij)[i]  +  mean_j −log softmax_i(s_ij)[j] ]

CAV-MAE's ``forward_contrastive`` has τ = 0.05 and, by default, only the second direction
(``log_softmax(total, dim=0)``; its ``bidirect_contrast`` option averages both, as here). Its
``forward`` weighs the term 0.01 against the reconstruction loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """a, b (B, W): sample i of ``a`` pairs with sample i of ``b``, every other sample is a
    negative; mask (B,) bool: the samples that take part (both views present). → scalar, float32;
    0 (still in the graph) when fewer than two samples take part."""
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    if a.shape[0] < 2:
        return (a.float().sum() + b.float().sum()) * 0.0
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
