"""The shared tokenizer layer: token streams, their named axes, the mask strategies that group
a stream's tokens and the policies that decide how many of each stream stay visible."""

from polymae.tokenizer.axes import Axis, grid_axis, metric_axis
from polymae.tokenizer.masking import (
    MaskSpec,
    available_strategies,
    get_strategy,
    register_strategy,
    sample_rng,
)
from polymae.tokenizer.policies import MaskPolicy, available_policies, register_policy
from polymae.tokenizer.stream import TokenStream, column, columns_to_streams, streams_to_columns

__all__ = [
    "Axis",
    "MaskPolicy",
    "MaskSpec",
    "TokenStream",
    "available_policies",
    "available_strategies",
    "column",
    "columns_to_streams",
    "get_strategy",
    "grid_axis",
    "metric_axis",
    "register_policy",
    "register_strategy",
    "sample_rng",
    "streams_to_columns",
]
