"""Crop boxes and ImageNet pixel statistics, shared by the image and video plugins.

A box is ``(top, left, height, width)`` in pixels of an (H, W, ...) array.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]


def centre_box(height: int, width: int) -> Box:
    """The largest centred square of a height × width picture (evaluation crops)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` with a numpy generator: a box of ``scale`` × the
    area and aspect ratio in ``ratio`` (log-uniform); after 10 misses, :func:`centre_box`."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return centre_box(height, width)
