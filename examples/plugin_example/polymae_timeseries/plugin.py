"""Time-series plugin (PatchTST's masked pre-training): a CSV of regularly sampled channels →
an instance-normalised window of 512 samples → 12-sample patches of every channel → tokens on
a (t, channel) grid → MSE on the masked patches.

Differences from PatchTST, each for a reason: PolyMAE's token count is fixed per plugin, so a
file has at most ``max_channels`` channels and missing channels are padding (invalid tokens);
the encoder attends across channels (PatchTST encodes each channel alone); one window per file
and epoch, drawn at random in training (PatchTST slides over every window).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from polymae.modalities.base import BadInputError, ModalityPlugin, PluginConfig
from polymae.models.losses import masked_mse, norm_pix_target, undo_norm_pix
from polymae.ops import FrameView, panel_row
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.masking import MaskSpec
from polymae.tokenizer.stream import TokenStream
from pydantic import Field, model_validator

TIME_COLUMNS = ("t", "time", "time_s")  # a first column of sample times in seconds, checked and dropped
REVIN_EPS = 1e-5  # RevIN's epsilon: std = sqrt(var + eps)
ROW, LINE, SHADE = 48, (31, 119, 180), (225, 225, 225)  # render: strip height, trace and hidden-span colours


class TimeseriesConfig(PluginConfig):
    """PatchTST's self-supervised settings (patchtst_pretrain.py)."""

    max_file_bytes: int = Field(64 * 2**20, gt=0)
    context_length: int = Field(512, gt=0, description="samples per window (PatchTST context_points)")
    patch_len: int = Field(12, gt=0, description="samples per patch; stride = patch_len (non-overlapping)")
    max_channels: int = Field(8, gt=0, description="files with more channels are quarantined")
    instance_norm: bool = Field(True, description="RevIN: each channel of a window to mean 0, std 1")
    norm_patch_loss: bool = Field(False, description="MAE's per-patch normalised target (PatchTST: off)")
    random_crop: bool = Field(True, description="random window start in training; else the first window")

    @model_validator(mode="after")
    def _one_patch(self) -> TimeseriesConfig:
        if self.context_length < self.patch_len:
            raise ValueError(f"context_length {self.context_length} < patch_len {self.patch_len}")
        return self


class TimeseriesPlugin(ModalityPlugin):
    name = "timeseries"
    Config = TimeseriesConfig
    extensions = (".csv",)
    reference = "PatchTST (Nie et al. 2023)"
    default_mask = {"strategy": "random", "ratio": 0.4}  # PatchTST's mask_ratio
    config: TimeseriesConfig

    @property
    def patches(self) -> int:
        """Patches per channel: 42 of 12 samples in a 512-sample window (the last 8 are dropped)."""
        return self.config.context_length // self.config.patch_len

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Patch steps over the window's seconds, then the channel index."""
        return grid_axis("t", "s", self.patches), grid_axis("channel", "index", self.config.max_channels)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return self.config.max_channels * self.patches, self.config.patch_len, 2

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """CSV bytes (a header row of channel names, one row per sample) → (T, C) float32."""
        cfg = self.config
        if len(data) == 0:
            raise BadInputError("empty file (0 bytes)")
        if len(data) > cfg.max_file_bytes:
            raise BadInputError(f"oversized file: {len(data)} bytes > max_file_bytes {cfg.max_file_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadInputError(f"not a text file: {err.reason} at byte {err.start}") from err
        first, _, body = text.partition("\n")
        header = [h.strip().lower() for h in first.split(",")]
        if all(_is_number(h) for h in header):
            raise BadInputError("no header row: the first row must name the columns")
        if not body.strip():
            raise BadInputError("no data rows: only a header")
        try:
            table = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as err:  # ragged rows (a truncated file), text in a number column
            raise BadInputError(f"not a numeric CSV table: {str(err).split(';')[0]}") from err
        if table.shape[1] != len(header):
            raise BadInputError(f"rows have {table.shape[1]} columns, the header names {len(header)}")
        if not np.isfinite(table).all():
            rows = np.flatnonzero(~np.isfinite(table).all(axis=1))
            raise BadInputError(f"non-finite values (missing samples?) in {len(rows)} rows, "
                                f"first on line {rows[0] + 2}")
        if header[0] in TIME_COLUMNS:
            step = np.diff(table[:, 0])
            if len(step) and (step.min() <= 0 or step.max() - step.min() > 0.01 * np.median(step)):
                raise BadInputError(f"irregular sampling: steps of the time column from {step.min():g} s "
                                    f"to {step.max():g} s")
            table = table[:, 1:]
        if table.shape[1] == 0:
            raise BadInputError("no channels: only a time column")
        if table.shape[1] > cfg.max_channels:
            raise BadInputError(f"too many channels: {table.shape[1]} > max_channels {cfg.max_channels}")
        if len(table) < cfg.patch_len:
            raise BadInputError(f"too short: {len(table)} samples, less than one patch of {cfg.patch_len}")
        return table.astype(np.float32)

    def window(self, array: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """(T, C) → (≤ patches·patch_len, C) float32: a random window in training, else the first;
        each channel instance-normalised (RevIN, biased variance) over the window."""
        cfg, length = self.config, self.patches * self.config.patch_len
        start = 0
        if rng is not None and cfg.random_crop and len(array) > length:
            start = int(rng.integers(0, len(array) - length + 1))
        window = array[start : start + length].astype(np.float32)
        if cfg.instance_norm:
            window = (window - window.mean(axis=0)) / np.sqrt(window.var(axis=0) + REVIN_EPS)
        return window

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        """Token c·patches + p is patch p of channel c; tokens past the file's channels or samples
        are padding. Each token is its own masking unit (PatchTST masks every channel's patches
        independently)."""
        window, p, n = self.window(array, rng), self.config.patch_len, self.patches
        padded = np.zeros((n * p, self.config.max_channels), dtype=np.float32)
        padded[: len(window), : window.shape[1]] = window
        values = padded.T.reshape(-1, p)  # (channels · patches, patch_len)
        channel, t = np.divmod(np.arange(len(values)), n)
        valid = (channel < window.shape[1]) & (t * p < len(window))
        return TokenStream(values=values, coords=np.stack([t, channel], axis=1), unit=np.arange(len(values)),
                           valid=valid, axes=self.axes)

    def check_mask(self, spec: MaskSpec) -> str | None:
        if spec.strategy == "block" and self.config.max_channels == 1:
            return "block masking needs a 2-D grid and max_channels is 1; allowed: random, time"
        return None

    def target(self, values: torch.Tensor) -> torch.Tensor:
        """The instance-normalised patches (PatchTST) or, with norm_patch_loss, MAE's norm-pix."""
        return norm_pix_target(values.float()) if self.config.norm_patch_loss else values.float()

    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """PatchTST's pre-training loss: the mean over masked patches of their MSE."""
        return masked_mse(pred, self.target(values), mask)

    def prediction_values(self, pred: np.ndarray, values: np.ndarray) -> np.ndarray:
        return undo_norm_pix(pred, values) if self.config.norm_patch_loss else pred

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """original | masked input (hidden patches grey, no trace) | reconstruction (visible
        patches pasted): one strip per channel, time to the right, each strip scaled to the original."""
        n, p = self.patches, self.config.patch_len
        grid = stream.valid.reshape(-1, n)
        channels, steps = int(grid.any(axis=1).sum()), int(grid.any(axis=0).sum())

        def series(tokens: np.ndarray) -> np.ndarray:  # (N, p) → (steps·p, channels)
            return tokens.reshape(-1, n, p)[:channels, :steps].reshape(channels, -1).T

        pasted = np.where(stream.visible[:, None], stream.values, self.prediction_values(pred, stream.values))
        hidden = series(np.repeat(~stream.visible[:, None], p, axis=1))
        original = series(stream.values)
        lo, hi = original.min(axis=0), original.max(axis=0)
        panels = [(original, None), (original, hidden), (series(pasted), None)]
        return panel_row([_strips(s, h, lo, hi) for s, h in panels])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _strips(series: np.ndarray, hidden: np.ndarray | None, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(L, C) values → (C·ROW, L, 3) uint8: one white strip per channel with its trace; where
    ``hidden`` is true the strip is grey and has no trace."""
    length, channels = series.shape
    y = np.rint((hi - series) / np.maximum(hi - lo, 1e-6) * (ROW - 1)).clip(0, ROW - 1).astype(np.int64)
    rows = np.arange(ROW)[:, None]
    picture = np.full((channels, ROW, length, 3), 255, dtype=np.uint8)
    for c in range(channels):
        previous = np.r_[y[0, c], y[:-1, c]]  # join each sample to the one before: a continuous trace
        trace = (rows >= np.minimum(previous, y[:, c])) & (rows <= np.maximum(previous, y[:, c]))
        if hidden is not None:
            picture[c][:, hidden[:, c]] = SHADE
            trace &= ~hidden[:, c]
        picture[c][trace] = LINE
    return picture.reshape(channels * ROW, length, 3)
