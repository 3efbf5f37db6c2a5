"""Ops shared by the modality plugins: patches, crops, renders, open3d reads and the header checks before them."""

from polymae.ops.crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameView,
    TimeSpan,
    centre_box,
    column_strip,
    draw_frame_view,
    random_resized_crop_box,
)
from polymae.ops.mesh_headers import MalformedFileError, check_declared_size
from polymae.ops.open3d_io import read_open3d
from polymae.ops.patches import patchify, tubeletify, unpatchify, untubeletify
from polymae.ops.render import GAP, captioned, panel_column, panel_row, viridis

__all__ = [
    "GAP",
    "FrameView",
    "TimeSpan",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MalformedFileError",
    "centre_box",
    "check_declared_size",
    "column_strip",
    "draw_frame_view",
    "captioned",
    "panel_column",
    "panel_row",
    "patchify",
    "random_resized_crop_box",
    "read_open3d",
    "tubeletify",
    "unpatchify",
    "untubeletify",
    "viridis",
]
