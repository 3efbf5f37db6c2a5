"""Reconstruction losses, one per file. Each takes (pred, values, mask) and returns a scalar."""

from polymae.models.losses.norm_pix_mse import masked_mse, norm_pix_target, undo_norm_pix

__all__ = ["masked_mse", "norm_pix_target", "undo_norm_pix"]
