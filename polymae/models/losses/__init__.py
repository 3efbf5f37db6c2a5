"""Reconstruction losses, one per file. Each takes (pred, values, mask) and returns a scalar."""

from polymae.models.losses.chamfer import chamfer_l2
from polymae.models.losses.masked_l1 import masked_l1
from polymae.models.losses.norm_pix_mse import masked_mse, norm_pix_target, undo_norm_pix

__all__ = ["chamfer_l2", "masked_l1", "masked_mse", "norm_pix_target", "undo_norm_pix"]
