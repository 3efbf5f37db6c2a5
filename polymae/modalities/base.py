"""The modality plugin protocol.

A plugin turns one raw file into a token stream and supplies the torch pieces between token
values and model width:

    bytes ──decode──▶ canonical array ──tokenize──▶ TokenStream ──embed/position──▶ model
                                                                 ◀──head── loss, render

``decode`` raises :class:`BadInputError` with a reason for any file it cannot use; the
pipeline turns that into a quarantine row and goes on. A plugin's ``Config`` defaults are
the reference paper's settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from polymae.models.losses import masked_mse, norm_pix_target, undo_norm_pix
from polymae.ops.crops import FrameView, TimeSpan, column_strip
from polymae.tokenizer.axes import Axis
from polymae.tokenizer.masking import MaskSpec
from polymae.tokenizer.stream import TokenStream


class BadInputError(Exception):
    """A file a plugin cannot use. ``reason`` ends up in the quarantine table."""

    def __init__(self, reason: str, stage: str = "decode") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


VIEWS_SKIPPED = "views_skipped"  # the key of scan_file's statistics that counts views left out


class PluginConfig(BaseModel):
    """Settings every plugin has; plugins subclass it with their own (reference) defaults."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(256 * 2**20, gt=0, description="larger files are quarantined")


class ModalityPlugin(ABC):
    """Base class of modality plugins. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    extensions: ClassVar[tuple[str, ...]] = ()
    reference: ClassVar[str] = ""
    statistics: ClassVar[tuple[str, ...]] = ()  # names of the additive statistics scan_file returns
    default_mask: ClassVar[dict[str, Any]] = {"strategy": "random", "ratio": 0.75}  # the reference's mask
    position_every_block: ClassVar[bool] = False  # Point-MAE adds the position code before every block
    # the reference's decoder per model preset, (depth, width, heads), taken by a one-stream model
    # (models/presets.py); a preset it does not list keeps the preset's decoder
    reference_decoder: ClassVar[dict[str, tuple[int, int, int]]] = {}
    # what the render's columns (left to right) and rows (top to bottom) show: its captions
    render_columns: ClassVar[tuple[str, ...]] = ("original", "masked", "reconstruction")
    render_rows: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PluginConfig | dict[str, Any] | None = None) -> None:
        if config is None or isinstance(config, dict):
            config = self.Config(**(config or {}))
        self.config = config

    @classmethod
    def check_native(cls) -> str:
        """Exercise the plugin's native libraries on a tiny input (``polymae doctor`` and set-up
        call it, so a broken build fails there, not mid-run) → their versions. Importing the
        plugin's module already loads them; override to call into them too."""
        return ""

    # --- data side (numpy, runs in Ray Data workers) -------------------------------------
    @abstractmethod
    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Raw file bytes → canonical array. Raises BadInputError with a reason."""

    @abstractmethod
    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        """Canonical array → token stream (``visible`` unset). ``rng=None``: the deterministic
        evaluation view (no augmentation). ``view``: the sample's crop and flip, drawn once for
        every stream of one spatial frame (see :meth:`frame_view`); None: the plugin draws its own."""

    def frame_view(self, array: np.ndarray, rng: np.random.Generator | None) -> FrameView | None:
        """The crop and flip of this sample in fractions of its frame, for plugins whose
        streams can share a spatial frame (``sources[].frame``): the pipeline draws it with the
        frame's first stream and hands it to every stream of the frame. None (default): the
        plugin has no spatial frame."""
        return None

    def frame_views(self, array: np.ndarray, rng: np.random.Generator | None) -> list[FrameView]:
        """Every view of one frame, in a fixed order (a scene's chips): the pipeline draws the list
        with the frame's first stream and tokenizes each view in every stream of the frame (view k
        of each pairs up). Their number must not depend on ``rng`` and equals the count of
        :meth:`scan_file` (called with the same ``region``). Default: one view, :meth:`frame_view`."""
        view = self.frame_view(array, rng)
        if view is None:
            raise NotImplementedError(f"{self.name} has no spatial frame to draw views of")
        return [view]

    def region(self, array: np.ndarray, start: float, end: float) -> np.ndarray:
        """The part of a canonical array between ``start`` and ``end`` (fractions of the frame's
        width), for ``split.region``: training crops only inside (0, 1 − r), evaluation scores
        (1 − r, 1). Default for frame plugins: columns of an (H, W, ...) array (override if yours
        is laid out otherwise)."""
        if not self.has_frame():
            raise NotImplementedError(f"{self.name} has no spatial frame to hold a region out of")
        return column_strip(array, start, end)

    def tokenize_timed(self, data: bytes, path: str, rng: np.random.Generator | None,
                       ) -> tuple[list[TokenStream], list[TimeSpan]]:
        """For a clock's first stream (``sources[].clock``): the views of :meth:`tokenize_file`
        and the seconds each covers (a video's clips). Plugins whose views are spans of time
        override it."""
        raise NotImplementedError(f"{self.name} views are not spans of time")

    def tokenize_spans(self, data: bytes, path: str, spans: list[TimeSpan]) -> list[TokenStream]:
        """For a clock's other streams: one view per span of seconds, as the first stream drew them
        (an audio track: the fbank of each clip's seconds). Plugins that can override it."""
        raise NotImplementedError(f"{self.name} cannot cut views at given times")

    @classmethod
    def clock_roles(cls) -> list[str]:
        """What this plugin can be in a clock group: "lead" (draws the spans), "follow" (takes them)."""
        return [role for role, method in (("lead", "tokenize_timed"), ("follow", "tokenize_spans"))
                if getattr(cls, method) is not getattr(ModalityPlugin, method)]

    @classmethod
    def has_frame(cls) -> bool:
        """Whether this plugin's streams can share a spatial frame (it overrides ``frame_view``)."""
        return cls.frame_view is not ModalityPlugin.frame_view

    def tokenize_file(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[TokenStream]:
        """One file → the samples it yields, in a fixed order: several clips of one decoded video,
        the windows of a long recording. Default: one sample, ``tokenize(decode(...))``.

        The number of samples must not depend on ``rng``: the scan counts them with ``rng=None``
        and the training stream relies on that count."""
        return [self.tokenize(self.decode(data, path), rng)]

    def scan_file(self, data: bytes, path: str, region: tuple[float, float] | None = None,
                  ) -> tuple[int, dict[str, float]]:
        """Check a file end to end (raises BadInputError) → (samples it yields, statistics).

        Statistics are additive numbers (sums, counts) that the scan totals over all good files
        with a Ray Data aggregation and hands to :meth:`with_statistics`. Default: none. Besides
        them a plugin may report ``VIEWS_SKIPPED``: views of the file it leaves out (chips over
        the no-data threshold); the scan keeps that number per file and the run's counts total it
        (``data/views_skipped``, ``data/<stream>/views_skipped``).

        ``region`` (only for plugins with a spatial frame, under ``split.region``): the part of the
        frame that training reads; the count is of the views of that part (:meth:`frame_views` of
        :meth:`region`), the number the training stream emits. Default: one view per frame plugin
        (``frame_views``), else ``tokenize_file``'s."""
        if region is not None:
            return len(self.frame_views(self.region(self.decode(data, path), *region), None)), {}
        return len(self.tokenize_file(data, path, None)), {}

    def with_statistics(self, totals: dict[str, float]) -> dict[str, Any]:
        """Config fields set from the dataset totals of :meth:`scan_file` statistics (e.g. the
        spectrogram mean and std); they are merged into the source config and saved with the run."""
        return {}

    def check_mask(self, spec: MaskSpec) -> str | None:
        """A reason why this plugin (as configured) cannot use a mask spec, or None. Called when a
        pipeline spec is validated, so the error comes before anything runs."""
        return None

    @property
    @abstractmethod
    def axes(self) -> tuple[Axis, ...]:
        """The coordinate axes, one per ``coords`` column in order (``tokenizer.axes``): names and
        units that mask strategies and cross-stream policies read. Streams carry them."""

    @property
    @abstractmethod
    def token_shape(self) -> tuple[int, int, int]:
        """(N tokens, D values per token, C coordinates per token) of every stream."""

    # --- model side (torch) --------------------------------------------------------------
    def build_embed(self, width: int) -> nn.Module:
        """Token values (B, N, D) → (B, N, width)."""
        return nn.Linear(self.token_shape[1], width)

    def build_position(self, width: int) -> nn.Module:
        """Coordinates (B, N, C) → position codes (B, N, width). Default: fixed sin-cos."""
        from polymae.models.pos_embed import SinCosPosition

        return SinCosPosition(width, self.token_shape[2])

    def build_head(self, width: int) -> nn.Module:
        """Decoder features (B, N, width) → predictions (B, N, D′) in the space of :meth:`target`
        (default D′ = D; depth predicts its p² depths, not the validity half)."""
        return nn.Linear(width, self.token_shape[1])

    def target(self, values: torch.Tensor) -> torch.Tensor:
        """What a prediction is compared with, (..., D) → (..., D). Default: the values."""
        return values.float()

    @abstractmethod
    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``pred`` against ``target(values)`` over tokens where ``mask`` (B, N) is true."""

    def prediction_values(self, pred: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A prediction (N, D) in the head's space → token values (N, D), what renders show.
        Default: the same (the head predicts values). Norm-pix plugins undo the per-token
        normalisation with the statistics of the true tokens ``values``."""
        return pred

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """A picture (H, W, 3 uint8) of original, masked input and reconstruction."""
        raise NotImplementedError(f"{self.name} has no render")

    def render_frames(self, stream: TokenStream, pred: np.ndarray) -> list[np.ndarray] | None:
        """Frames (H, W, 3 uint8) of an animation (saved as a GIF), or None: a still is enough."""
        return None

    def check_bytes(self, data: bytes) -> None:
        """The read-stage refusals every decoder shares: an empty file, one over ``max_file_bytes``."""
        if len(data) == 0:
            raise BadInputError("empty file (0 bytes)")
        if len(data) > self.config.max_file_bytes:
            raise BadInputError(f"oversized file: {len(data)} bytes > max_file_bytes {self.config.max_file_bytes}")

    # --- description ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        n, d, c = self.token_shape
        return {
            "name": self.name,
            "reference": self.reference,
            "extensions": list(self.extensions),
            "tokens": {"N": n, "D": d, "C": c},
            "axes": [str(a) for a in self.axes],
            "default_mask": dict(self.default_mask),
            "config": self.config.model_dump(),
        }


class NormPixPlugin(ModalityPlugin):
    """A plugin with MAE's norm-pix targets: each hidden token's values normalised by their own
    mean and variance (``config.norm_pix_loss``; off: the values), masked MSE, and the inverse for
    renders with the true token's statistics. ``norm_pix_channels``: normalise per channel
    (VideoMAE's tubelets: 3) instead of over the whole token (None)."""

    norm_pix_channels: ClassVar[int | None] = None

    def _channels(self) -> dict[str, int]:
        return {} if self.norm_pix_channels is None else {"channels": self.norm_pix_channels}

    def target(self, values: torch.Tensor) -> torch.Tensor:
        return norm_pix_target(values.float(), **self._channels()) if self.config.norm_pix_loss else values.float()

    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(pred, self.target(values), mask)

    def prediction_values(self, pred: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Undo norm-pix with each true token's own statistics (MAE's visualisation)."""
        return undo_norm_pix(pred, values, **self._channels()) if self.config.norm_pix_loss else pred
