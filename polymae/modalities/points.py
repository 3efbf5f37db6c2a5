"""Point-cloud plugin (Point-MAE): 1024 points → FPS 64 centres → kNN 32 points each → 64 tokens.

Token values are a group's 32 points relative to its centre, flattened in (point, xyz) order
(96 values, nearest first); coords are the centre's xyz (metric, not a grid), encoded by an MLP
(Linear(3,128)–GELU–Linear(128,width)) and added before every block (``position_every_block``).
Tokens are embedded by Point-MAE's mini-PointNet; the head predicts the 96 offsets and the loss is
Chamfer-L2 on masked groups (:mod:`polymae.models.losses.chamfer`). Point-MAE's pre-training
settings (ShapeNet-55): 1024 points, 64 × 32 groups, 60 % random masking, scale-and-translate.

Decoding, with open3d: point clouds ``.ply .pcd .xyz .xyzn .pts`` (vertices of a PLY mesh are its
points), meshes ``.obj .off .stl`` (``mesh_points`` samples spread uniformly over the surface, with a
generator seeded by the file's bytes, so decoding is deterministic; a mesh without faces gives its
vertices) and ``.npy`` arrays (N × ≥3, first three columns). A path without an extension (bytes from
elsewhere) has its format sniffed: a ``ply`` / ``# .PCD`` / ``OFF`` / ``solid`` header, numpy's
magic, a binary-STL size, ``v`` lines (OBJ), else numeric text with ≥ 3 columns (XYZ). The decoded
cloud is normalised as Point-MAE's ``pc_norm`` (in float64, so geo-referenced coordinates keep
their precision); tokenize normalises its 1024-point subset again, as Point-MAE's loader does.

Departures from Point-MAE, each for a reason:

* Subsampling to ``num_points``: training takes a random subset (ShapeNet-55's ``random_sample``);
  the evaluation view takes a deterministic FPS from the first point (Point-MAE samples at random
  there too). A cloud with fewer points keeps all of them and repeats some (training: random
  repeats; evaluation: cyclically); Point-MAE's data always has ≥ 1024 points.
* Fewer distinct points than ``num_group``: open3d's FPS stops early; its centres are repeated
  cyclically to ``num_group``.
* The evaluation FPS is exact over the whole decoded cloud: ~1 ms for a mesh's 8192 points, ~2.5 s
  for a 2-million-point scan (``max_points``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Literal

import numpy as np
import open3d as o3d
import torch
from pydantic import Field, model_validator
from torch import nn

from polymae.modalities.base import BadInputError, ModalityPlugin, PluginConfig
from polymae.models.losses.chamfer import chamfer_l2
from polymae.ops import MalformedFileError, panel_column, panel_row, read_open3d, viridis
from polymae.ops.crops import FrameView
from polymae.ops.mesh_headers import off_counts
from polymae.tokenizer.axes import Axis, metric_axis
from polymae.tokenizer.stream import TokenStream

CLOUD_EXTENSIONS = (".ply", ".pcd", ".xyz", ".xyzn", ".pts")
MESH_EXTENSIONS = (".obj", ".off", ".stl")
PANEL = 224  # render: side of one panel, pixels
VIEWS = ((30.0, 30.0), (30.0, 150.0), (90.0, 0.0))  # render: (pitch, yaw) of the three viewpoints
_NUMBER = re.compile(rb"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?(nan|inf|infinity)", re.IGNORECASE)


class PointsConfig(PluginConfig):
    """Point-MAE's pre-training settings (ShapeNet-55)."""

    max_file_bytes: int = Field(128 * 2**20, gt=0, description="larger files are refused before they are read")
    num_points: int = Field(1024, gt=0, description="points per sample")
    num_group: int = Field(64, gt=0, description="group centres (tokens), by farthest-point sampling")
    group_size: int = Field(32, gt=0, description="points per group: the centre's k nearest")
    mesh_points: int = Field(8192, gt=0, description="points sampled on a mesh surface (ShapeNet-55's count)")
    min_points: int = Field(32, gt=0, description="fewer points in a file: refused")
    max_points: int = Field(2_000_000, gt=0, description="more points: a deterministic subsample of this many")
    scale_range: tuple[float, float] = Field((2 / 3, 3 / 2), description="training: per-axis scale U(lo, hi)")
    translate: float = Field(0.2, ge=0, description="training: per-axis translation U(-t, t)")
    embed: Literal["pointnet", "linear"] = Field("pointnet", description="Point-MAE's mini-PointNet, or one Linear")

    @model_validator(mode="after")
    def _consistent(self) -> PointsConfig:
        if self.num_group > self.num_points or self.group_size > self.num_points:
            raise ValueError("num_group and group_size must not exceed num_points")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("scale_range must be 0 < lo <= hi")
        if self.min_points > self.max_points:
            raise ValueError("min_points must not exceed max_points")
        return self


def pc_norm(points: np.ndarray) -> np.ndarray:
    """Point-MAE's ``pc_norm``: subtract the centroid, divide by the largest distance to it."""
    centred = points - points.mean(axis=0)
    return centred / np.sqrt((centred**2).sum(axis=1)).max()


def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """(P, 3) → (count, 3): open3d's farthest-point sampling from point 0 (deterministic); when the
    cloud has fewer distinct points than ``count`` the chosen ones repeat cyclically."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    chosen = np.asarray(cloud.farthest_point_down_sample(count).points)
    return np.resize(chosen, (count, 3)) if len(chosen) < count else chosen


def group(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """Each centre's k nearest points, nearest first (ties by point order) → indices (G, k)."""
    d2 = ((centres[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    if k >= d2.shape[1]:
        return np.argsort(d2, axis=1, kind="stable")[:, :k]
    # partial selection (O(P) per centre, not a full sort), then order the k by (distance, index)
    near = np.sort(np.argpartition(d2, k - 1, axis=1)[:, :k], axis=1)
    order = np.argsort(np.take_along_axis(d2, near, axis=1), axis=1, kind="stable")
    return np.take_along_axis(near, order, axis=1)


def sniff(data: bytes) -> str | None:
    """The extension a file's bytes look like, or None."""
    head = data[:65536]
    lines = [ln.strip() for ln in head.splitlines() if ln.strip() and not ln.strip().startswith(b"#")]
    if head.startswith(b"ply"):
        return ".ply"
    if head.startswith(b"# .PCD") or b"\nFIELDS " in head and b"\nDATA " in head:
        return ".pcd"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if lines and lines[0].split()[0].endswith(b"OFF"):
        return ".off"
    if head.startswith(b"solid") or len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return ".stl"
    if any(ln.startswith((b"v ", b"v\t")) for ln in lines):
        return ".obj"
    if lines and len(lines[0].split()) >= 3 and all(_NUMBER.fullmatch(t) for t in lines[0].split()[:3]):
        return ".xyz"
    return None


def _text_vertices(data: bytes, ext: str) -> np.ndarray:
    """Vertices of an OBJ or OFF without faces (open3d reads none) → (V, 3) float64."""
    lines = [ln.split() for ln in data.splitlines() if ln.strip() and not ln.strip().startswith(b"#")]
    try:
        if ext == ".obj":
            rows = [ln[1:4] for ln in lines if ln[0] == b"v"]
        else:  # OFF: header word, counts (maybe on the same line), then the vertex lines
            vertices, _, body = off_counts(lines)
            rows = [ln[:3] for ln in body[:vertices]]
        return np.array(rows, dtype=np.float64).reshape(-1, 3)
    except (ValueError, IndexError) as err:  # MalformedFileError too (a ValueError)
        raise BadInputError(f"corrupt {ext} vertices: {err}") from err


def triangle_areas(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) vertices, (F, 3) vertex indices → (F,) triangle areas."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, seed: bytes) -> np.ndarray:
    """``count`` points uniform on the mesh surface: triangles chosen by area, barycentric
    coordinates uniform, generator seeded by ``seed`` (the file's bytes) → (count, 3) float64."""
    rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "little"))
    area = triangle_areas(vertices, triangles)
    pick = rng.choice(len(triangles), size=count, p=area / area.sum())
    a, b, c = (vertices[triangles[pick, i]] for i in range(3))
    u, v = rng.random((2, count, 1))
    flip = (u + v) > 1  # fold the square onto the triangle
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a + u * (b - a) + v * (c - a)


class PointNetEmbed(nn.Module):
    """Point-MAE's group encoder: shared MLP 3→128→256, max-pool, concat with each point's feature,
    shared MLP 512→512→width, max-pool. (B, N, K·3) → (B, N, width); BatchNorm over all points."""

    def __init__(self, width: int, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.first = nn.Sequential(nn.Linear(3, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 256))
        self.second = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, width))

    @staticmethod
    def _points(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Shared MLP on (G, K, C) points; BatchNorm1d sees (G·K, C)."""
        return mlp(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        b, n, _ = values.shape
        pts = values.reshape(b * n, self.group_size, 3)
        feat = self._points(self.first, pts)
        feat = torch.cat([feat.max(dim=1, keepdim=True).values.expand_as(feat), feat], dim=-1)
        return self._points(self.second, feat).max(dim=1).values.reshape(b, n, -1)


class PointsPlugin(ModalityPlugin):
    name = "points"
    Config = PointsConfig
    extensions = CLOUD_EXTENSIONS + MESH_EXTENSIONS + (".npy",)
    render_columns = ("original", "visible groups", "reconstruction")
    reference = "Point-MAE (Pang et al. 2022)"
    # Point-MAE's one size: 4 decoder blocks at its 384 width, 6 heads (for every preset but tiny)
    reference_decoder = {"small": (4, 384, 6), "base": (4, 384, 6), "large": (4, 384, 6)}
    default_mask = {"strategy": "random", "ratio": 0.6}
    position_every_block = True
    config: PointsConfig

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Group centres in the cloud's metric frame."""
        return metric_axis("x"), metric_axis("y"), metric_axis("z")

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return self.config.num_group, self.config.group_size * 3, 3

    # --- decode ------------------------------------------------------------------------------

    @classmethod
    def check_native(cls) -> str:
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.eye(3)))
        assert len(cloud.points) == 3
        return f"open3d {o3d.__version__}"

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (P, 3) float32 cloud, normalised to the unit sphere (``pc_norm``)."""
        cfg = self.config
        self.check_bytes(data)
        ext = os.path.splitext(path)[1].lower()
        if not ext:
            ext = sniff(data) or ""
            if not ext:
                raise BadInputError("not a recognised point-cloud or mesh format")
        elif ext not in self.extensions:
            raise BadInputError(f"unsupported extension {ext!r} (expects {' '.join(self.extensions)})")
        points = self._read(data, path, ext)
        if len(points) == 0:
            raise BadInputError(f"no points could be read (empty or not a valid {ext} file)")
        if not np.isfinite(points).all():  # before the subsample: it must not hide a bad point
            raise BadInputError("non-finite coordinates (NaN or inf)")
        if len(points) > cfg.max_points:  # documented rule: a seeded (by the bytes) subsample, not refused
            rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))
            points = points[np.sort(rng.choice(len(points), cfg.max_points, replace=False))]
        if len(points) < cfg.min_points:
            raise BadInputError(f"too few points: {len(points)} < min_points {cfg.min_points}")
        if np.ptp(points, axis=0).max() <= 1e-9 * max(1.0, float(np.abs(points).max())):
            raise BadInputError("degenerate: all points identical (zero extent)")
        cloud = pc_norm(points)
        if not np.isfinite(cloud).all():  # coordinates so large that their squares overflow
            raise BadInputError("coordinates out of range: they overflow when normalised")
        return cloud.astype(np.float32)

    def _read(self, data: bytes, path: str, ext: str) -> np.ndarray:
        """(P, 3) float64 points of a file of the given format, unchecked."""
        if ext == ".npy":
            return self._read_npy(data)
        try:
            mesh = read_open3d(data, ext, path, mesh=True) if ext in MESH_EXTENSIONS + (".ply",) else None
            if mesh is None or len(mesh.triangles) == 0 and ext == ".ply":  # a cloud, or a PLY without faces
                return np.asarray(read_open3d(data, ext, path).points)
        except MalformedFileError as err:  # the body does not hold what the header declares
            raise BadInputError(str(err)) from err
        except (RuntimeError, ValueError, OSError) as err:
            raise BadInputError(f"corrupt {ext} file: {err}") from err
        vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
        if len(vertices) == 0 and ext in (".obj", ".off"):
            vertices = _text_vertices(data, ext)
        if len(triangles) == 0 or not np.isfinite(vertices).all() or len(vertices) > self.config.max_points:
            return vertices  # no faces: the vertices are the points (decode checks them)
        if triangles.min() < 0 or triangles.max() >= len(vertices):
            raise BadInputError("corrupt mesh: a face refers to a missing vertex")
        if not triangle_areas(vertices, triangles).sum() > 0:
            return vertices  # all faces degenerate: fall back to the vertices
        return sample_surface(vertices, triangles, self.config.mesh_points, data)

    @staticmethod
    def _read_npy(data: bytes) -> np.ndarray:
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise BadInputError(f"not a readable .npy array: {err}") from err
        if array.ndim != 2 or array.shape[1] < 3 or array.dtype.kind not in "iuf":
            raise BadInputError(f"mis-shaped: .npy array {array.shape} of {array.dtype}, expects numbers N×≥3")
        return array[:, :3].astype(np.float64)

    # --- tokens ------------------------------------------------------------------------------
    def view(self, array: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """(P, 3) → the (num_points, 3) float64 cloud the tokens come from: subset, ``pc_norm``, then
        in training (rng given) per-axis scale and translation (PointcloudScaleAndTranslate)."""
        cfg, n = self.config, len(array)
        if n > cfg.num_points:
            pts = array[rng.choice(n, cfg.num_points, replace=False)] if rng is not None else \
                farthest_points(array, cfg.num_points)
        elif rng is not None:
            pts = array[np.concatenate([rng.permutation(n), rng.choice(n, cfg.num_points - n)])]
        else:
            pts = array[np.resize(np.arange(n), cfg.num_points)]
        pts = pc_norm(pts.astype(np.float64))
        if rng is not None:
            pts = pts * rng.uniform(*cfg.scale_range, size=3) + rng.uniform(-cfg.translate, cfg.translate, size=3)
        return pts

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        cfg = self.config
        pts = self.view(array, rng)
        centres = farthest_points(pts, cfg.num_group)
        neighbours = pts[group(pts, centres, cfg.group_size)] - centres[:, None, :]  # (G, K, 3)
        return TokenStream(
            values=neighbours.reshape(cfg.num_group, -1).astype(np.float32),
            coords=centres.astype(np.float32),
            unit=np.arange(cfg.num_group),
            valid=np.ones(cfg.num_group, dtype=bool),
            axes=self.axes,
        )

    # --- model, loss, render -------------------------------------------------------------------
    def build_embed(self, width: int) -> nn.Module:
        if self.config.embed == "linear":
            return nn.Linear(self.token_shape[1], width)
        return PointNetEmbed(width, self.config.group_size)

    def build_position(self, width: int) -> nn.Module:
        from polymae.models.pos_embed import MLPPosition

        return MLPPosition(width, 3)

    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return chamfer_l2(pred, self.target(values), mask, dims=3)

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """Columns original points | visible groups (hidden ones light grey) | reconstruction (visible
        groups and the predicted points of hidden ones); one row per viewpoint of ``VIEWS``
        (orthographic, points coloured by depth, near points on top)."""
        k = self.config.group_size
        centres = stream.coords[:, None, :].astype(np.float64)
        true = stream.values.reshape(-1, k, 3) + centres
        guess = np.asarray(pred, dtype=np.float64).reshape(-1, k, 3) + centres
        vis, hid = stream.visible & stream.valid, ~stream.visible & stream.valid
        rows = []
        for pitch, yaw in VIEWS:
            frame = Projection(true[stream.valid].reshape(-1, 3), pitch, yaw)
            panels = [
                frame.draw([(true[stream.valid], None)]),
                frame.draw([(true[hid], (215, 215, 215)), (true[vis], None)]),
                frame.draw([(np.concatenate([true[vis], guess[hid]]), None)]),
            ]
            rows.append(panel_row(panels))
        return panel_column(rows)


class Projection:
    """An orthographic view (``pitch`` degrees about x, then ``yaw`` about y) fitted to ``points``
    (N, 3), drawn on white PANEL² canvases."""

    def __init__(self, points: np.ndarray, pitch: float = 30.0, yaw: float = 30.0) -> None:
        a, b = np.deg2rad(pitch), np.deg2rad(yaw)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        self.rotation = ry @ rx
        rotated = points @ self.rotation.T
        self.centre = (rotated.max(axis=0) + rotated.min(axis=0)) / 2
        self.scale = (PANEL / 2 - 6) / max(float(np.abs(rotated[:, :2] - self.centre[:2]).max()), 1e-9)
        self.depth = (float(rotated[:, 2].min()), float(rotated[:, 2].max()))

    def draw(self, layers: list[tuple[np.ndarray, tuple[int, int, int] | None]]) -> np.ndarray:
        """Layers of points (..., 3), each one colour or None (by depth), later layers on top;
        within a layer each pixel shows its nearest point. 2×2-pixel dots."""
        canvas = np.full((PANEL * PANEL, 3), 255, dtype=np.uint8)
        for points, colour in layers:
            points = points.reshape(-1, 3)
            points = points[np.isfinite(points).all(axis=1)]  # a diverged prediction draws nothing
            p = (points @ self.rotation.T - self.centre) * [self.scale, -self.scale, 1.0]
            col, row = (np.floor(np.clip(p[:, i] + PANEL / 2, -1, PANEL)).astype(np.int64) for i in (0, 1))
            lo, hi = self.depth
            rgb = viridis((p[:, 2] - lo) / max(hi - lo, 1e-9)).astype(np.float32)
            if colour is not None:
                rgb[:] = colour
            dots = [(row + dr, col + dc) for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1))]
            r, c = np.concatenate([d[0] for d in dots]), np.concatenate([d[1] for d in dots])
            depth, rgb = np.tile(p[:, 2], 4), np.tile(rgb, (4, 1))
            inside = (r >= 0) & (r < PANEL) & (c >= 0) & (c < PANEL)
            pixel, depth, rgb = (r * PANEL + c)[inside], depth[inside], rgb[inside]
            order = np.lexsort((-depth, pixel))  # per pixel, the nearest (largest depth) point first
            first = order[np.unique(pixel[order], return_index=True)[1]]
            canvas[pixel[first]] = rgb[first].round().astype(np.uint8)
        return canvas.reshape(PANEL, PANEL, 3)
