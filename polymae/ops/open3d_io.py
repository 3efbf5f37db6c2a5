"""Reading point clouds and meshes with open3d, which reads only from files named by format."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from polymae.ops.mesh_headers import check_declared_size

if TYPE_CHECKING:
    import open3d as o3d


def read_open3d(
    data: bytes, ext: str, path: str | None = None, *, mesh: bool = False,
) -> o3d.geometry.PointCloud | o3d.geometry.TriangleMesh:
    """A file's bytes → open3d's ``read_triangle_mesh`` (``mesh=True``) or ``read_point_cloud``
    (format from ``ext``, e.g. ``".ply"``) of them, open3d's own messages below errors silenced.

    open3d cannot read from memory, so the bytes go through a temporary file with suffix ``ext``;
    when ``path`` is given and already is that file (same extension and size), it is read instead.
    The header is checked against the body first (``check_declared_size``: a short body would
    come back as uninitialised points), raising MalformedFileError (a ValueError) with the reason.
    open3d's errors (RuntimeError, ValueError, OSError) pass through to the caller."""
    import open3d as o3d  # here, not at the top: importing polymae.ops must not load open3d (seconds)

    check_declared_size(data, ext)

    with tempfile.NamedTemporaryFile(suffix=ext) as tmp:
        source = path
        if not (path and os.path.splitext(path)[1].lower() == ext and os.path.isfile(path)
                and os.path.getsize(path) == len(data)):
            tmp.write(data)
            tmp.flush()
            source = tmp.name
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            if mesh:
                return o3d.io.read_triangle_mesh(source)
            return o3d.io.read_point_cloud(source, format="auto")
