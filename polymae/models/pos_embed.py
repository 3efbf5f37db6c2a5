"""Position codes computed from token coordinates.

Fixed sin-cos (MAE, VideoMAE, AudioMAE, SatMAE) generalises to any number of coordinate
axes: the width is split into one equal, even-sized slice per axis, and each slice holds
``[sin(p·ω_k), cos(p·ω_k)]`` with ``ω_k = 10000^(−k/(d/2))``, k = 0 … d/2−1 — exactly MAE's
``get_1d_sincos_pos_embed_from_grid``. For an image grid with coords (y, x) this is MAE's 2D
table with the two halves in (y, x) order (MAE puts x first); being fixed, the order does not
matter to the model. Widths not divisible by 2·C leave the last few channels zero.
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """pos (...,) → (..., dim) with dim even: [sin(pos·ω), cos(pos·ω)]."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64)[..., None] * omega
    return torch.cat([torch.sin(out), torch.cos(out)], dim=-1).to(torch.float32)


def sincos_nd(coords: torch.Tensor, width: int) -> torch.Tensor:
    """coords (..., C) → (..., width): one sin-cos slice per coordinate axis."""
    num_axes = coords.shape[-1]
    per_axis = (width // num_axes) // 2 * 2
    parts = [sincos_1d(coords[..., a], per_axis) for a in range(num_axes)]
    pad = width - per_axis * num_axes
    if pad:
        parts.append(coords.new_zeros(*coords.shape[:-1], pad, dtype=torch.float32))
    return torch.cat(parts, dim=-1)


class SinCosPosition(nn.Module):
    """Fixed (not learned) sin-cos code of each token's coordinates: (B, N, C) → (B, N, width)."""

    def __init__(self, width: int, num_axes: int) -> None:
        super().__init__()
        self.width = width
        self.num_axes = num_axes

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return sincos_nd(coords, self.width)


class MLPPosition(nn.Module):
    """Learned code of metric coordinates (Point-MAE): Linear → GELU → Linear."""

    def __init__(self, width: int, num_axes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_axes, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.net(coords)
