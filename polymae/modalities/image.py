"""Image plugin (MAE): Pillow decode → random-resized crop to 224 → 16×16 patches → 196 tokens.

Token values are ImageNet-normalised pixels of a patch flattened in (row, col, channel)
order, as MAE's ``patchify`` (:mod:`polymae.ops.patches`); the loss is norm-pix MSE on masked
patches (:mod:`polymae.models.losses.norm_pix_mse`).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from polymae.modalities.base import BadInputError, NormPixPlugin, PluginConfig
from polymae.ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameView,
    draw_frame_view,
    panel_row,
    patchify,
    unpatchify,
)
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.stream import TokenStream


class ImageConfig(PluginConfig):
    """MAE's pre-training settings."""

    img_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    max_pixels: int = Field(89_478_485, gt=0, description="decompression-bomb guard (Pillow's)")
    max_file_bytes: int = Field(64 * 2**20, gt=0)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random_crop: bool = Field(True, description="random-resized crop in training; else centre crop")
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    norm_pix_loss: bool = True


class ImagePlugin(NormPixPlugin):
    name = "image"
    Config = ImageConfig
    extensions = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    render_columns = ("original", "masked", "reconstruction", "visible pasted")
    reference = "MAE (He et al. 2022)"
    reference_decoder = {"base": (8, 512, 16), "large": (8, 512, 16)}  # MAE's dec512d8b
    config: ImageConfig

    @property
    def grid(self) -> int:
        return self.config.img_size // self.config.patch_size

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Patch rows and columns of the crop (the grid is a fraction of the crop, as depth's)."""
        return grid_axis("y", "px", self.grid), grid_axis("x", "px", self.grid)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return self.grid**2, self.config.patch_size**2 * 3, 2

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (H, W, 3) uint8 RGB, EXIF orientation applied."""
        self.check_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.config.max_pixels:
                    raise BadInputError(
                        f"oversized: {width}x{height} = {width * height} pixels "
                        f"> max_pixels {self.config.max_pixels}"
                    )
                image.load()
        except BadInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadInputError(f"oversized: {err}") from err
        except UnidentifiedImageError as err:
            raise BadInputError("not a recognised image format") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadInputError(f"corrupt or truncated image: {err}") from err
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth: scale to 8 bits
            arr = np.asarray(image, dtype=np.float32)
            span = max(float(arr.max() - arr.min()), 1e-6)
            image = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if min(arr.shape[:2]) < 1:
            raise BadInputError(f"mis-shaped: image of size {arr.shape[1]}x{arr.shape[0]}")
        return arr

    def frame_view(self, array: np.ndarray, rng: np.random.Generator | None) -> FrameView:
        """Random-resized crop + flip in training (rng given), the centre square otherwise."""
        cfg = self.config
        return draw_frame_view(*array.shape[:2], cfg.crop_scale, cfg.crop_ratio, cfg.hflip, rng, cfg.random_crop)

    def view(self, array: np.ndarray, rng: np.random.Generator | None, view: FrameView | None = None) -> np.ndarray:
        """The (S, S, 3) uint8 crop the tokens come from (``view``, or one drawn by :meth:`frame_view`)."""
        cfg = self.config
        view = view or self.frame_view(array, rng)
        top, left, h, w = view.box(*array.shape[:2])
        crop = Image.fromarray(array[top : top + h, left : left + w])
        out = np.asarray(crop.resize((cfg.img_size, cfg.img_size), Image.BICUBIC))
        return out[:, ::-1] if view.hflip else out

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        cfg = self.config
        pixels = (self.view(array, rng, view).astype(np.float32) / 255.0 - cfg.mean) / cfg.std
        g = self.grid
        rows, cols = np.divmod(np.arange(g * g), g)
        return TokenStream(
            values=patchify(pixels.astype(np.float32), cfg.patch_size),
            coords=np.stack([rows, cols], axis=1),
            unit=np.arange(g * g),
            valid=np.ones(g * g, dtype=bool),
            axes=self.axes,
        )

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Token values (N, D) → (S, S, 3) uint8 image."""
        cfg = self.config
        image = unpatchify(values, cfg.patch_size, self.grid, self.grid) * cfg.std + cfg.mean
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """original | masked input | reconstruction | reconstruction with visible patches pasted."""
        values = stream.values
        pred = self.prediction_values(pred, values)
        vis = stream.visible[:, None]
        per_value = self.config.patch_size**2  # patch values are (row, col, channel) triples
        grey = (0.5 - np.tile(self.config.mean, per_value)) / np.tile(self.config.std, per_value)
        panels = [values, np.where(vis, values, grey), pred, np.where(vis, values, pred)]
        return panel_row([self.to_pixels(p.astype(np.float32)) for p in panels])

