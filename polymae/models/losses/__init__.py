"""Losses, one per file: reconstruction losses take (pred, values, mask) → scalar; InfoNCE pairs embeddings."""

from polymae.models.losses.chamfer import chamfer_l2
from polymae.models.losses.info_nce import symmetric_info_nce
from polymae.models.losses.masked_l1 import masked_l1
from polymae.models.losses.norm_pix_mse import masked_mse, norm_pix_target, undo_norm_pix

__all__ = ["chamfer_l2", "masked_l1", "masked_mse", "norm_pix_target", "symmetric_info_nce", "undo_norm_pix"]
