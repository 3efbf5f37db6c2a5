"""Render captions: each column's caption lands over its own column, the picture is kept as it
was under the strip, row captions go in a left margin, and a caption too wide is cut short."""

import numpy as np

from polymae.ops import GAP, captioned, panel_column, panel_row
from polymae.ops.render import CAPTION


def _ink(region: np.ndarray) -> bool:
    return bool((region < 200).any())


def test_column_captions_sit_over_their_columns_and_the_picture_is_unchanged():
    panels = [np.full((40, 60, 3), 90, np.uint8) for _ in range(3)]
    picture = panel_row(panels)
    out = captioned(picture, ("original", "masked", "recon"), title="video")
    assert out.shape == (40 + 2 * CAPTION, picture.shape[1], 3)
    assert np.array_equal(out[2 * CAPTION:], picture)
    strip = out[CAPTION:2 * CAPTION]
    for i in range(3):
        assert _ink(strip[:, i * (60 + GAP): i * (60 + GAP) + 60]), i
    for i in range(2):  # nothing is drawn in the gaps between columns
        assert not _ink(strip[:, i * (60 + GAP) + 60: (i + 1) * (60 + GAP)])
    assert _ink(out[:CAPTION])  # the title


def test_row_captions_go_in_a_left_margin():
    picture = panel_column([np.full((30, 50, 3), 90, np.uint8) for _ in range(3)])
    out = captioned(picture, rows=("original", "masked", "reconstruction"))
    margin = out.shape[1] - picture.shape[1]
    assert margin > 0 and out.shape[0] == picture.shape[0]
    assert np.array_equal(out[:, margin:], picture)
    for i in range(3):
        assert _ink(out[i * (30 + GAP): i * (30 + GAP) + 14, :margin]), i


def test_a_caption_wider_than_its_column_is_cut_short():
    picture = panel_row([np.full((16, 16, 3), 90, np.uint8) for _ in range(2)])
    out = captioned(picture, ("reconstruction", "reconstruction"))
    assert out.shape[1] == picture.shape[1]
    assert not _ink(out[:CAPTION, 16:16 + GAP])  # the first caption stops before the gap

