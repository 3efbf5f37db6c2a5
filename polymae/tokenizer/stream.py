"""The token stream: the one contract between modality plugins, masks and the model.

Every modality of a sample becomes fixed-size arrays (ragged modalities pad and mark
``valid``). In Ray Data batches the fields are numpy columns named ``"<modality>.<field>"``
with a leading batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polymae.tokenizer.axes import Axis, axis_index

FIELDS = ("values", "coords", "unit", "valid", "visible", "decoded")
DTYPES = {
    "values": np.float32,
    "coords": np.float32,
    "unit": np.int32,
    "valid": np.bool_,
    "visible": np.bool_,
    "decoded": np.bool_,
}


@dataclass
class TokenStream:
    """One modality of one sample.

    Shapes (N tokens, D values per token, C coordinates per token):
        values  (N, D) float32  token contents (flattened patch, tube, point group, ...)
        coords  (N, C) float32  one column per axis of ``axes``: a grid index (t, y, x, group)
                                or a metric value (x, y, z in metres)
        unit    (N,)   int32    masking unit: tokens sharing a unit are masked together
        valid   (N,)   bool     False for padding
        visible (N,)   bool     set by the mask policy: what the encoder sees
        decoded (N,)   bool     set by the mask policy: what the decoder sees and reconstructs
                                (VideoMAE V2's decoder mask); default: every valid token.
                                The loss covers tokens that are decoded, valid and not visible.

    ``axes`` (the plugin's, one per coords column) names the coordinates; it is not a column:
    every stream of a plugin has the same axes, and the masks are made before batching.
    """

    values: np.ndarray
    coords: np.ndarray
    unit: np.ndarray
    valid: np.ndarray
    visible: np.ndarray = field(default=None)  # type: ignore[assignment]
    decoded: np.ndarray = field(default=None)  # type: ignore[assignment]
    axes: tuple[Axis, ...] = ()

    def __post_init__(self) -> None:
        n = self.values.shape[0]
        if self.visible is None:
            self.visible = np.zeros(n, dtype=np.bool_)
        if self.decoded is None:
            self.decoded = np.array(self.valid, dtype=np.bool_)
        for name in FIELDS:
            arr = np.asarray(getattr(self, name), dtype=DTYPES[name])
            if arr.shape[0] != n:
                raise ValueError(f"token stream field {name!r} has {arr.shape[0]} rows, expected {n}")
            setattr(self, name, arr)

    @property
    def num_tokens(self) -> int:
        return int(self.values.shape[0])

    def coord(self, axis: str) -> np.ndarray:
        """(N,) coordinates along the axis named ``axis``. Raises KeyError if the stream lacks it."""
        return self.coords[:, axis_index(self.axes, axis)]

    def axis(self, name: str) -> Axis:
        return self.axes[axis_index(self.axes, name)]


def column(modality: str, field_name: str) -> str:
    """Ray Data column name of a token-stream field, e.g. ``image.values``."""
    return f"{modality}.{field_name}"


def streams_to_columns(modality: str, streams: list[TokenStream]) -> dict[str, np.ndarray]:
    """Stack per-sample streams of one modality into batch columns (leading batch axis)."""
    return {
        column(modality, name): np.stack([getattr(s, name) for s in streams])
        for name in FIELDS
    }


def columns_to_streams(modality: str, batch: dict[str, np.ndarray]) -> list[TokenStream]:
    """Inverse of :func:`streams_to_columns`."""
    n = len(batch[column(modality, "values")])
    return [
        TokenStream(**{name: batch[column(modality, name)][i] for name in FIELDS})
        for i in range(n)
    ]
