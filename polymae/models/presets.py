"""Model sizes. ``base`` and ``large`` are MAE's ViT-B/16 and ViT-L/16 with its 512-wide,
8-block decoder; ``tiny`` is small enough to train on two CPU cores in a test."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    decoder_width: int = Field(gt=0)
    decoder_depth: int = Field(gt=0)
    decoder_heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    drop_path: float = Field(0.0, ge=0, lt=1)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(width=192, depth=4, heads=3, decoder_width=128, decoder_depth=2, decoder_heads=4),
    "small": ModelConfig(width=384, depth=12, heads=6, decoder_width=256, decoder_depth=4, decoder_heads=8),
    "base": ModelConfig(width=768, depth=12, heads=12, decoder_width=512, decoder_depth=8, decoder_heads=16),
    "large": ModelConfig(width=1024, depth=24, heads=16, decoder_width=512, decoder_depth=8, decoder_heads=16),
}


def resolve_model_config(preset: str, overrides: dict | None = None) -> ModelConfig:
    """The preset's settings with any explicitly given field replaced."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[preset].model_dump(), **(overrides or {})})
