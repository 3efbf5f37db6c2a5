"""Patches and tubelets: images and clips ↔ token rows, in MAE's and VideoMAE's value order."""

from __future__ import annotations

import numpy as np


def patchify(image: np.ndarray, p: int) -> np.ndarray:
    """(H, W, C) → (H/p · W/p, p·p·C): patches in row-major order, values in (row, col, channel) order.

    MAE's ``patchify`` for one image; audio uses it on a (frames, mel bins, 1) spectrogram."""
    h, w, c = image.shape[0] // p, image.shape[1] // p, image.shape[2]
    return image.reshape(h, p, w, p, c).transpose(0, 2, 1, 3, 4).reshape(h * w, p * p * c)


def unpatchify(tokens: np.ndarray, p: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """(h·w, p·p·C) → (h·p, w·p, C): inverse of :func:`patchify`."""
    return tokens.reshape(h, w, p, p, channels).transpose(0, 2, 1, 3, 4).reshape(h * p, w * p, channels)


def tubeletify(clip: np.ndarray, tubelet: int, p: int) -> np.ndarray:
    """(T, H, W, 3) → (T/t · H/p · W/p, t·p·p·3) with t = ``tubelet``: tokens in (t, y, x) order,
    values in (frame, row, col, channel) order (VideoMAE's ``rearrange``)."""
    t, h, w = clip.shape[0] // tubelet, clip.shape[1] // p, clip.shape[2] // p
    x = clip.reshape(t, tubelet, h, p, w, p, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(t * h * w, tubelet * p * p * 3)


def untubeletify(tokens: np.ndarray, tubelet: int, p: int, t: int, h: int, w: int) -> np.ndarray:
    """(t·h·w, tubelet·p·p·3) → (t·tubelet, h·p, w·p, 3): inverse of :func:`tubeletify`."""
    x = tokens.reshape(t, h, w, tubelet, p, p, 3).transpose(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(t * tubelet, h * p, w * p, 3)
