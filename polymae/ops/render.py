"""Picture helpers of the renders: the one colour map, white-gapped rows and columns of panels,
and the captions that say what each column (or row) of a render shows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VIRIDIS_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
GAP = 4  # pixels of white between panels
CAPTION = 14  # pixels of the caption strip (Pillow's default font is 10 px)


def viridis(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape S; clipped) → (S, 3) uint8, a five-stop viridis ramp
    (spectrograms, point depth, LiDAR height)."""
    scaled = np.clip(x, 0.0, 1.0) * (len(VIRIDIS_STOPS) - 1)
    stops = np.arange(len(VIRIDIS_STOPS))
    rgb = [np.interp(scaled, stops, VIRIDIS_STOPS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def panel_row(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels (H, W_i, 3) uint8 → (H, ΣW_i + gap·(n−1), 3): side by side, white gaps between."""
    return _join(panels, gap, axis=1)


def panel_column(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels (H_i, W, 3) uint8 → (ΣH_i + gap·(n−1), W, 3): top to bottom, white gaps between."""
    return _join(panels, gap, axis=0)


def _join(panels: Sequence[np.ndarray], gap: int, axis: int) -> np.ndarray:
    shape = list(panels[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [spacer, panel]
    return np.concatenate(pieces, axis=axis)


def captioned(picture: np.ndarray, columns: Sequence[str] = (), rows: Sequence[str] = (),
              title: str = "", gap: int = GAP) -> np.ndarray:
    """A render (H, W, 3) uint8 of equal panels joined with ``gap`` → the same with a strip on top:
    ``title`` then each of ``columns`` centred over its column, and, with ``rows``, a margin on the
    left with each caption at the top of its row. A caption wider than its column is cut short."""
    font = ImageFont.load_default()
    h, w = picture.shape[:2]
    left = max((int(font.getlength(r)) + gap for r in rows), default=0)
    top = CAPTION * (bool(title) + bool(columns))
    canvas = Image.new("RGB", (w + left, h + top), "white")
    canvas.paste(Image.fromarray(picture), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + 2, 1), title, fill=(0, 0, 0), font=font)
    for i, (start, width) in enumerate(_spans(w, len(columns), gap)):
        text = _fit(columns[i], width, font)
        x = left + start + (width - int(font.getlength(text))) // 2
        draw.text((x, top - CAPTION + 1), text, fill=(60, 60, 60), font=font)
    for i, (start, _) in enumerate(_spans(h, len(rows), gap)):
        draw.text((1, top + start + 1), rows[i], fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def _spans(size: int, n: int, gap: int) -> list[tuple[int, int]]:
    """(start, length) of ``n`` equal panels over ``size`` pixels with ``gap`` between them."""
    if n == 0:
        return []
    length = max(1, (size - gap * (n - 1)) // n)
    return [(i * (length + gap), length) for i in range(n)]


def _fit(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-1]
    return text
