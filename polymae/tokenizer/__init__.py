"""The shared tokenizer layer: token streams and the mask policies that mark what is visible."""

from polymae.tokenizer.masking import (
    MaskPolicy,
    MaskSpec,
    available_strategies,
    register_strategy,
    sample_rng,
)
from polymae.tokenizer.stream import TokenStream, column, columns_to_streams, streams_to_columns

__all__ = [
    "MaskPolicy",
    "MaskSpec",
    "TokenStream",
    "available_strategies",
    "column",
    "columns_to_streams",
    "register_strategy",
    "sample_rng",
    "streams_to_columns",
]
