"""The confusion matrix as a picture: cells coloured by the row's fraction (viridis), counts written in."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from polymae.ops import viridis

CELL = 28  # pixels per cell
MARGIN = 110  # room for the class names (rows: true, columns: predicted, written as their index)


def render_confusion(matrix: np.ndarray, classes: list[str]) -> Image.Image:
    """(C, C) counts (row = true, column = predicted) → an RGB image; rows are labelled with the
    class names, columns with their index."""
    n = len(classes)
    fraction = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    cells = viridis(fraction).repeat(CELL, axis=0).repeat(CELL, axis=1)
    image = Image.new("RGB", (MARGIN + n * CELL + 4, 20 + n * CELL + 4), "white")
    image.paste(Image.fromarray(cells), (MARGIN, 20))
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(classes):
        draw.text((2, 20 + i * CELL + 8), f"{i} {name}"[:17], fill="black")
        draw.text((MARGIN + i * CELL + 8, 4), str(i), fill="black")
        for j in range(n):
            dark = fraction[i, j] < 0.5  # white text on the dark end of viridis
            draw.text((MARGIN + j * CELL + 3, 20 + i * CELL + 8), str(int(matrix[i, j])),
                      fill="white" if dark else "black")
    return image
