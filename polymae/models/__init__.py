"""Masked-autoencoder model, sizes, position codes and losses.

``PolyMAE`` is imported on first use: plugins import ``polymae.models.losses`` in every Ray Data
worker, and the model pulls in timm (≈ 13 s of imports on this machine's cores).
"""

from typing import Any

from polymae.models.presets import PRESETS, ModelConfig, resolve_model_config

__all__ = ["PRESETS", "ModelConfig", "PolyMAE", "resolve_model_config"]


def __getattr__(name: str) -> Any:
    if name == "PolyMAE":
        from polymae.models.mae import PolyMAE

        return PolyMAE
    raise AttributeError(f"module 'polymae.models' has no attribute {name!r}")
