"""Depth plugin (MultiMAE's depth domain): a depth (or disparity) map → 16×16 patches of 1 channel.

Files: single-channel PNG/TIFF — 16-bit (Kinect-style millimetres, KITTI-style disparity × 256),
32-bit integer or float; 8-bit only with ``kind: disparity`` (an 8-bit depth map has 256 steps);
``.npy`` 2-D arrays; ``.pfm`` (1 channel). An integer value times ``scale`` is the map's unit
(default 0.001: millimetres → metres); float maps are read as they are, times ``float_scale``.
A reading of 0, a negative one or a non-finite one is missing.

Canonical array: (H, W) float32 in that unit, NaN where there is no reading (the validity mask).

Frame: :meth:`DepthPlugin.frame_view` draws the image plugin's view — the same random-resized crop
and flip, the same config field names, the same order of draws — so a view drawn by either one
crops the same part of the scene in every stream of a frame, whatever each stream's resolution.
The crop is resized to ``img_size`` with nearest-neighbour sampling: every output pixel is one
real reading or a hole, never a blend of a foreground and a background surface (bilinear or
bicubic invents "flying pixels" at depth edges) and never a blend of a hole into a reading.

Normalisation (MultiMAE's ``standardize_depth``, its "robust" variant over valid pixels only): per
crop, the valid readings sorted, the bottom and top ``trunc`` (10 %) left out, then
``(d − mean) / sqrt(var + 1e-6)`` with the mean and unbiased variance of the rest; missing pixels
are 0 afterwards.

Tokens: 14 × 14 patches at 224² with coords (row, col), as the image plugin, so an RGB stream and
a depth stream of one frame are co-registered token for token. Values, D = 2·p²: the p² normalised
depths in (row, col) order, then p² pixel validity flags (1 reading, 0 hole). The embed sees both
halves (a hole is 0, like the mean depth; the flag tells the two apart); the head predicts the p²
depths only; the loss is :func:`~polymae.models.losses.masked_l1` on the depths of hidden tokens,
scoring valid pixels only. A patch without any reading is ``valid=False``: never shown, never
scored, as padding (a crop wholly inside a hole is a sample without this stream).
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from torch import nn

from polymae.modalities.base import BadInputError, ModalityPlugin, PluginConfig
from polymae.models.losses import masked_l1
from polymae.ops import FrameView, draw_frame_view, panel_row, patchify, unpatchify, viridis
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.stream import TokenStream

STANDARDIZE_EPS = 1e-6
HIDDEN_GREY = 128  # render: hidden patches
HOLE = 0  # render: pixels without a reading (black)


class DepthConfig(PluginConfig):
    """MultiMAE's depth settings; the view fields are the image plugin's (MAE's)."""

    kind: Literal["depth", "disparity"] = Field(
        "depth", description="what the map holds; disparity (inverse depth) allows 8-bit files")
    scale: float = Field(0.001, gt=0, description="integer value × scale = the map's unit (mm → m)")
    float_scale: float = Field(1.0, gt=0, description="float value × float_scale = the map's unit")
    img_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb guard (Pillow's)")
    max_file_bytes: int = Field(64 * 2**20, gt=0)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random_crop: bool = Field(True, description="random-resized crop in training; else centre crop")
    hflip: bool = True
    standardize: bool = Field(True, description="MultiMAE's truncated per-crop standardisation")
    trunc: float = Field(0.1, ge=0, lt=0.5, description="fraction left out at each end for its statistics")


def _read_pfm(data: bytes) -> np.ndarray:
    """Portable float map → (H, W) float32, top row first."""
    header = data.split(b"\n", 3)
    if len(header) < 4:
        raise BadInputError("corrupt or truncated PFM: incomplete header")
    kind, dims, scale, body = header
    if kind.strip() == b"PF":
        raise BadInputError("wrong channels: a 3-channel PFM (PF); a depth map has one channel (Pf)")
    try:
        width, height = (int(v) for v in dims.split())
        endian = "<" if float(scale) < 0 else ">"
    except ValueError as err:
        raise BadInputError(f"corrupt PFM header: {err}") from err
    if width < 1 or height < 1:
        raise BadInputError(f"mis-shaped: PFM of size {width}x{height}")
    if len(body) < 4 * width * height:
        raise BadInputError(f"corrupt or truncated PFM: {len(body)} data bytes < {4 * width * height}")
    arr = np.frombuffer(body, dtype=f"{endian}f4", count=width * height).reshape(height, width)
    return arr[::-1].astype(np.float32)  # PFM stores the bottom row first


class DepthPlugin(ModalityPlugin):
    name = "depth"
    Config = DepthConfig
    extensions = (".png", ".tif", ".tiff", ".npy", ".pfm")
    render_columns = ("depth", "visible", "prediction", "visible pasted")
    reference = "MultiMAE (Bachmann et al. 2022), depth domain"
    config: DepthConfig

    @property
    def grid(self) -> int:
        return self.config.img_size // self.config.patch_size

    @property
    def pixels(self) -> int:
        """Pixels per patch, p²: the depth half (and the validity half) of a token's values."""
        return self.config.patch_size**2

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Patch rows and columns, as the image plugin's: an RGB and a depth stream of one frame line up."""
        return grid_axis("y", "px", self.grid), grid_axis("x", "px", self.grid)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return self.grid**2, 2 * self.pixels, 2

    # --- decode ------------------------------------------------------------------------------
    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (H, W) float32 depth (or disparity) in the map's unit, NaN where missing."""
        cfg = self.config
        self.check_bytes(data)
        if data.startswith(b"\x93NUMPY"):
            raw, is_float = self._read_npy(data)
        elif data[:2] in (b"Pf", b"PF") and data[2:3] in (b"\n", b"\r", b" "):
            raw, is_float = _read_pfm(data), True
        else:
            raw, is_float = self._read_image(data)
        if raw.ndim != 2 or min(raw.shape) < 1:
            raise BadInputError(f"mis-shaped: depth map of shape {raw.shape}, expected (H, W)")
        if raw.size > cfg.max_pixels:
            raise BadInputError(f"oversized: {raw.shape[1]}x{raw.shape[0]} = {raw.size} pixels "
                                f"> max_pixels {cfg.max_pixels}")
        with np.errstate(invalid="ignore", over="ignore"):
            depth = raw.astype(np.float64) * (cfg.float_scale if is_float else cfg.scale)
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
        if not np.isfinite(depth).any():
            raise BadInputError("all-missing depth: no pixel has a reading (all 0, negative or non-finite)")
        return depth

    def _read_npy(self, data: bytes) -> tuple[np.ndarray, bool]:
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise BadInputError(f"unusable .npy (object arrays are not read): {err}") from err
        except (OSError, EOFError) as err:
            raise BadInputError(f"corrupt or truncated .npy: {err}") from err
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise BadInputError(f"wrong channels: .npy array of shape {arr.shape}; a depth map is (H, W)")
        if arr.dtype.kind not in "fiu":
            raise BadInputError(f"wrong dtype: .npy array of {arr.dtype}; a depth map is numbers")
        return arr, arr.dtype.kind == "f"

    def _read_image(self, data: bytes) -> tuple[np.ndarray, bool]:
        cfg = self.config
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > cfg.max_pixels:
                    raise BadInputError(f"oversized: {width}x{height} = {width * height} pixels "
                                        f"> max_pixels {cfg.max_pixels}")
                image.load()
        except BadInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadInputError(f"oversized: {err}") from err
        except UnidentifiedImageError as err:
            raise BadInputError("not a recognised depth format (PNG/TIFF image, .npy or .pfm)") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadInputError(f"corrupt or truncated image: {err}") from err
        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            return np.asarray(image).astype(np.int64), False
        if mode == "F":
            return np.asarray(image, dtype=np.float32), True
        if mode == "L":
            if cfg.kind != "disparity":
                raise BadInputError("wrong bit depth: an 8-bit map (256 steps) is no depth map; use a 16-bit "
                                    "PNG or a float map, or set kind: disparity for an 8-bit disparity map")
            return np.asarray(image).astype(np.int64), False
        if mode == "1":
            raise BadInputError("wrong bit depth: a 1-bit image; a depth map needs 16 bits or floats")
        bands = image.getbands()
        raise BadInputError(f"wrong channels: a {mode} image with {len(bands)} channel(s) "
                            f"({''.join(bands)}); a depth map has one (16-bit greyscale)")

    # --- view and tokens ---------------------------------------------------------------------
    def frame_view(self, array: np.ndarray, rng: np.random.Generator | None) -> FrameView:
        """The image plugin's view, drawn in the same order: the crop box, then the flip."""
        cfg = self.config
        return draw_frame_view(*array.shape[:2], cfg.crop_scale, cfg.crop_ratio, cfg.hflip, rng, cfg.random_crop)

    def view(self, array: np.ndarray, rng: np.random.Generator | None, view: FrameView | None = None) -> np.ndarray:
        """The (S, S) float32 crop the tokens come from, NaN where missing: nearest-neighbour
        sampling of the crop box (output pixel i samples box row ⌊(i + ½)·h / S⌋, as Pillow)."""
        s = self.config.img_size
        view = view or self.frame_view(array, rng)
        top, left, h, w = view.box(*array.shape[:2])
        rows = top + np.minimum(((np.arange(s) + 0.5) * h / s).astype(np.int64), h - 1)
        cols = left + np.minimum(((np.arange(s) + 0.5) * w / s).astype(np.int64), w - 1)
        out = array[rows[:, None], cols[None, :]]
        return out[:, ::-1] if view.hflip else out

    def standardize(self, crop: np.ndarray) -> np.ndarray:
        """(S, S) with NaN holes → truncated-standardised depths, 0 in the holes."""
        valid = np.isfinite(crop)
        if not valid.any():
            return np.zeros(crop.shape, np.float32)
        if not self.config.standardize:
            return np.where(valid, crop, 0.0).astype(np.float32)
        v = np.sort(crop[valid].astype(np.float64))
        lo, hi = int(self.config.trunc * len(v)), int((1 - self.config.trunc) * len(v))
        kept = v[lo:hi] if hi - lo >= 2 else v
        var = kept.var(ddof=1) if len(kept) > 1 else 0.0
        out = (crop.astype(np.float64) - kept.mean()) / np.sqrt(var + STANDARDIZE_EPS)
        return np.where(valid, out, 0.0).astype(np.float32)

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        p, g = self.config.patch_size, self.grid
        crop = self.view(array, rng, view)
        holes = ~np.isfinite(crop)
        depth = patchify(self.standardize(crop)[..., None], p)
        flags = patchify((~holes).astype(np.float32)[..., None], p)
        rows, cols = np.divmod(np.arange(g * g), g)
        return TokenStream(
            values=np.concatenate([depth, flags], axis=1),
            coords=np.stack([rows, cols], axis=1),
            unit=np.arange(g * g),
            valid=flags.any(axis=1),
            axes=self.axes,
        )

    # --- model side --------------------------------------------------------------------------
    def build_head(self, width: int) -> nn.Module:
        """Decoder features → the p² depths of a patch (the validity half is not predicted)."""
        return nn.Linear(width, self.pixels)

    def target(self, values: torch.Tensor) -> torch.Tensor:
        """The depth half of the values (MultiMAE's depth loss has no norm-pix)."""
        return values[..., : self.pixels].float()

    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked L1 on the valid pixels of the tokens where ``mask`` is true."""
        return masked_l1(pred, self.target(values), mask, pixel_valid=values[..., self.pixels :] > 0.5)

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """original | masked input | reconstruction | reconstruction with visible patches pasted,
        viridis over the original's 1st–99th percentile (near = dark for depth); holes black,
        hidden patches grey, patches without a reading black in every panel."""
        q = self.pixels
        depth, has = stream.values[:, :q], stream.values[:, q:] > 0.5
        pred = np.asarray(pred, np.float32)[:, :q]
        lo, hi = np.percentile(depth[has], [1, 99]) if has.any() else (-2.0, 2.0)
        span = max(float(hi - lo), 1e-6)
        vis, tok = stream.visible[:, None], stream.valid[:, None]

        def picture(vals: np.ndarray, show: np.ndarray, grey: np.ndarray) -> np.ndarray:
            rgb = viridis((vals - lo) / span)  # (N, q, 3)
            rgb = np.where(show[..., None], rgb, np.uint8(HOLE))
            rgb = np.where(grey[..., None], np.uint8(HIDDEN_GREY), rgb)
            p, g = self.config.patch_size, self.grid
            return unpatchify(rgb.reshape(len(vals), q * 3), p, g, g, channels=3).astype(np.uint8)

        none = np.zeros_like(has)
        pasted = np.where(vis, depth, pred)
        return panel_row([
            picture(depth, has, none),
            picture(depth, has & vis, tok & ~vis & np.ones_like(has)),
            picture(pred, tok & np.ones_like(has), none),
            picture(pasted, np.where(vis, has, tok & np.ones_like(has)), none),
        ])
