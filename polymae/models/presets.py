"""Model sizes. ``base`` and ``large`` are MAE's ViT-B/16 and ViT-L/16 with its 512-wide,
8-block decoder; ``tiny`` is small enough to train on two CPU cores in a test.

A model of one stream takes its plugin's ``reference_decoder`` for the preset where the plugin
lists one (VideoMAE: 4 blocks, 384 wide for ViT-B; Point-MAE: 4 blocks at 384): the reference
trained that encoder with that decoder. So does each stream's per_stream decoder (its blocks
after the cross-attention; ``per_stream_sizes``). A joint decoder over several streams has no
single reference and keeps the preset's. ``tiny`` is never remapped (no plugin lists it): it
stays the test-sized decoder. Fields given in ``overrides`` always win.

The decoder is MAE's one joint decoder over every stream's tokens (``decoder="joint"``) or
MultiMAE's per-stream decoders (``"per_stream"``: one cross-attention to all encoded tokens and
two 256-wide, 8-head blocks per stream, MultiMAE's ``decoder_dim``/``decoder_depth`` and its
output adapter's ``num_heads``). CAV-MAE's contrastive term (weight 0.01, τ = 0.05 in its
reference) is off unless ``contrastive_weight`` > 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DecoderSize = tuple[int, int, int]  # (depth, width, heads)


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
    per_stream_sizes: dict[str, tuple[int, int, int]] = Field(
        default_factory=dict, description="per stream (depth, width, heads) of its per_stream decoder; a stream "
        "not listed: per_stream_depth, _width, _heads")
    contrastive_weight: float = Field(0.0, ge=0, description="CAV-MAE uses 0.01; 0 turns the term off")
    contrastive_temperature: float = Field(0.05, gt=0)

    def stream_decoder(self, stream: str) -> DecoderSize:
        """(depth, width, heads) of ``stream``'s per_stream decoder."""
        return self.per_stream_sizes.get(stream, (self.per_stream_depth, self.per_stream_width, self.per_stream_heads))


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(width=192, depth=4, heads=3, decoder_width=128, decoder_depth=2, decoder_heads=4),
    "small": ModelConfig(width=384, depth=12, heads=6, decoder_width=256, decoder_depth=4, decoder_heads=8),
    "base": ModelConfig(width=768, depth=12, heads=12, decoder_width=512, decoder_depth=8, decoder_heads=16),
    "large": ModelConfig(width=1024, depth=24, heads=16, decoder_width=512, decoder_depth=8, decoder_heads=16),
}


JOINT_FIELDS = ("decoder_depth", "decoder_width", "decoder_heads")
PER_STREAM_FIELDS = ("per_stream_depth", "per_stream_width", "per_stream_heads")


def resolve_model_config(preset: str, overrides: dict | None = None,
                         reference_decoders: Mapping[str, Mapping[str, DecoderSize]] | None = None) -> ModelConfig:
    """The preset's settings, then the reference decoders, then any explicitly given field.

    ``reference_decoders``: stream name → its plugin's reference decoder per preset. A model of
    one stream takes that stream's (for the preset) as its joint decoder; every stream's
    per_stream decoder takes its own (``per_stream_sizes``), except for the per_stream_* fields
    the overrides set, which apply to every stream."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}")
    overrides = overrides or {}
    fields = PRESETS[preset].model_dump()
    references = {m: ref[preset] for m, ref in (reference_decoders or {}).items() if preset in ref}
    if len(reference_decoders or {}) == 1 and references:
        fields.update(zip(JOINT_FIELDS, next(iter(references.values())), strict=True))
    explicit = {i: overrides[f] for i, f in enumerate(PER_STREAM_FIELDS) if f in overrides}
    fields["per_stream_sizes"] = {m: tuple(explicit.get(i, v) for i, v in enumerate(size))
                                  for m, size in references.items()}
    return ModelConfig(**{**fields, **overrides})
