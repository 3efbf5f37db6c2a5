"""Shared fixtures: the shipped photos and real bad files made with real encoders."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "data" / "images"

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    return sorted(PHOTOS.glob("*.jpg"))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def bad_image_files(tmp_path_factory) -> dict[str, bytes]:
    """Name → bytes of files an image decoder must reject, each made from a real encoding."""
    good_jpeg = (PHOTOS / "chelsea.jpg").read_bytes()
    corrupt = bytearray(good_jpeg)
    corrupt[600:4000] = bytes(len(corrupt[600:4000]))  # wipe entropy-coded data mid-stream
    corrupt = bytes(corrupt[: len(corrupt) // 2])
    png = _png(np.asarray(Image.open(PHOTOS / "coffee.jpg")))
    return {
        "corrupt.jpg": corrupt,
        "truncated.png": png[: len(png) // 3],
        "not_an_image.jpg": b"this is a text file, not a JPEG\n" * 20,
        "empty.jpg": b"",
        "huge.png": _png(np.zeros((1100, 1000, 3), dtype=np.uint8)),  # over a 1e6-pixel limit
    }
