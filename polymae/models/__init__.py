"""Masked-autoencoder model, sizes, position codes and losses."""

from polymae.models.mae import PolyMAE
from polymae.models.presets import PRESETS, ModelConfig, resolve_model_config

__all__ = ["PRESETS", "ModelConfig", "PolyMAE", "resolve_model_config"]
