"""Crop boxes, frame views and ImageNet pixel statistics, shared by the picture plugins.

A box is ``(top, left, height, width)`` in pixels of an (H, W, ...) array.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class FrameView:
    """One sample's crop and flip in fractions of its frame (``top``, ``left``, ``height``,
    ``width`` in [0, 1]), so one draw applies to every co-registered stream whatever its
    resolution (an RGB image and its depth map, rasters of one scene at 10 m and 20 m)."""

    top: float
    left: float
    height: float
    width: float
    hflip: bool = False

    @classmethod
    def of_box(cls, box: Box, height: int, width: int, hflip: bool = False) -> FrameView:
        top, left, h, w = box
        return cls(top / height, left / width, h / height, w / width, hflip)

    def box(self, height: int, width: int) -> Box:
        """The crop in pixels of a height × width picture of the frame (at least 1 × 1)."""
        top, left = round(self.top * height), round(self.left * width)
        h = max(1, min(height - top, round(self.height * height)))
        w = max(1, min(width - left, round(self.width * width)))
        return top, left, h, w


def draw_frame_view(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool,
    rng: np.random.Generator | None, random_crop: bool = True,
) -> FrameView:
    """MAE's training view of a height × width picture — a random-resized crop (or the centre
    square without ``random_crop``), then a flip with probability ½ when ``hflip``, in
    torchvision's draw order — or, with ``rng=None``, the evaluation view (centre square)."""
    if rng is not None and random_crop:
        box = random_resized_crop_box(height, width, scale, ratio, rng)
    else:
        box = centre_box(height, width)
    return FrameView.of_box(box, height, width, bool(rng is not None and hflip and rng.random() < 0.5))


def column_strip(array: np.ndarray, start: float, end: float) -> np.ndarray:
    """Columns ``start`` … ``end`` (fractions of the width) of an (H, W, ...) array: the part of a
    frame that training may crop, or the held-out strip that evaluation scores (``split.region``)."""
    width = array.shape[1]
    left, right = round(start * width), round(end * width)
    return array[:, left : max(right, left + 1)]


@dataclass(frozen=True)
class TimeSpan:
    """The seconds one view covers, ``start`` ≤ t < ``end``: a video clip's, handed to the streams
    that share its clock (the file's audio track), so they cover exactly the same time."""

    start: float
    end: float
