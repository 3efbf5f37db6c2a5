"""Model sizes. ``base`` and ``large`` are MAE's ViT-B/16 and ViT-L/16 with its 512-wide,
8-block decoder; ``tiny`` is small enough to train on two CPU cores in a test.

A model of one stream takes its plugin's ``reference_decoder`` for the preset where the plugin
lists one (VideoMAE: 4 blocks, 384 wide for ViT-B; Point-MAE: 4 blocks at 384): the reference
trained that encoder with that decoder. A joint decoder over several streams has no single
reference and keeps the preset's. ``tiny`` is never remapped (no plugin lists it): it stays the
test-sized 128-wide, 2-block decoder. Fields given in ``overrides`` always win.

The decoder is MAE's one joint decoder over every stream's tokens (``decoder="joint"``) or
MultiMAE's per-stream decoders (``"per_stream"``: one cross-attention to all encoded tokens and
two 256-wide, 8-head blocks per stream, MultiMAE's ``decoder_dim``/``decoder_depth`` and its
output adapter's ``num_heads``). CAV-MAE's contrastive term (weight 0.01, τ = 0.05 in its
reference) is off unless ``contrastive_weight`` > 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

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
    decoder: Literal["joint", "per_stream"] = "joint"
    per_stream_width: int = Field(256, gt=0, description="MultiMAE's decoder_dim")
    per_stream_depth: int = Field(2, ge=0, description="self-attention blocks after the cross-attention")
    per_stream_heads: int = Field(8, gt=0)
    contrastive_weight: float = Field(0.0, ge=0, description="CAV-MAE uses 0.01; 0 turns the term off")
    contrastive_temperature: float = Field(0.05, gt=0)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(width=192, depth=4, heads=3, decoder_width=128, decoder_depth=2, decoder_heads=4),
    "small": ModelConfig(width=384, depth=12, heads=6, decoder_width=256, decoder_depth=4, decoder_heads=8),
    "base": ModelConfig(width=768, depth=12, heads=12, decoder_width=512, decoder_depth=8, decoder_heads=16),
    "large": ModelConfig(width=1024, depth=24, heads=16, decoder_width=512, decoder_depth=8, decoder_heads=16),
}


DecoderSize = tuple[int, int, int]  # (depth, width, heads)
DECODER_FIELDS = ("decoder_depth", "decoder_width", "decoder_heads")


def resolve_model_config(preset: str, overrides: dict | None = None,
                         reference_decoders: Sequence[Mapping[str, DecoderSize]] = ()) -> ModelConfig:
    """The preset's settings, the one stream's reference decoder for the preset (when
    ``reference_decoders``, one mapping per stream, has exactly one entry and it lists the
    preset), then any explicitly given field."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}")
    fields = PRESETS[preset].model_dump()
    if len(reference_decoders) == 1 and preset in reference_decoders[0]:
        fields.update(zip(DECODER_FIELDS, reference_decoders[0][preset], strict=True))
    return ModelConfig(**{**fields, **(overrides or {})})
