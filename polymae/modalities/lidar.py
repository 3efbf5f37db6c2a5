"""LiDAR plugin (Voxel-MAE, R-MAE): a scan → pillars (0.5 × 0.5 m over ±50 m) → one token per
non-empty pillar, plus query tokens at empty pillars for the occupancy loss.

``read_scan`` reads KITTI ``.bin``, PCD / PLY (open3d) and LAS / LAZ (laspy + lazrs);
``voxelize`` makes the pillars with a point cap per pillar and a pillar cap per scan.
Coordinates stay metric and relative to the sensor origin (``sensor_origin``), so the
``radial`` mask (R-MAE) gets true angles: the reference code counts them from the grid corner.

``scan_kind`` says what a file is. ``sensor`` (default): one scan around its sensor, one sample.
``airborne``: a survey with no sensor, cut into tiles of the pillar grid's extent (2 · ``range_xy``)
with heights above the local ground (:mod:`polymae.modalities.lidar_tiles`); each kept tile is a
sample, tiles with fewer than ``min_tile_points`` points in ``z_range`` are counted as skipped
views, so ``z_range`` is a height above ground there. Training turns a tile by a random quarter
turn (a square stays the same square: no point leaves it). The kind is set, not guessed: a
spinning-LiDAR sweep also reaches past the grid and a LAS file may hold a mobile scan, and
``radial`` masking (which needs a sensor) must be refused when the spec is read, before any file.

Token values of a pillar: its K points (x, y relative to the pillar centre, in voxel units;
z / z_scale), zero-padded, then the count fraction n/K and occupancy (1; 0 for the empty query
pillars). Query tokens (``unit = -1``) are never visible and always decoded, so the decoder
learns which masked positions hold points (Voxel-MAE's occupancy). The loss (weights in the
config): Chamfer-L2 between predicted and true points of masked occupied pillars
(:mod:`polymae.models.losses.chamfer`) + MSE of the count fraction + occupancy BCE over masked
and query pillars.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import open3d as o3d
import torch
import torch.nn.functional as F
from pydantic import Field

from polymae.modalities.base import VIEWS_SKIPPED, BadInputError, ModalityPlugin, PluginConfig
from polymae.modalities.lidar_tiles import Tiles, cut_tiles
from polymae.models.losses.chamfer import chamfer_l2
from polymae.ops import MalformedFileError, panel_row, read_open3d, viridis
from polymae.ops.crops import FrameView
from polymae.tokenizer.axes import Axis, metric_axis
from polymae.tokenizer.masking import MaskSpec
from polymae.tokenizer.stream import TokenStream

BEV = 320  # render: side of one bird's-eye panel, pixels
KITTI_RECORD = 16  # bytes per point of a KITTI .bin: float32 x, y, z, intensity
OCCUPANCY_LOGIT = 20.0  # target() states occupancy as a confident logit: target-as-prediction has ~0 loss


class LidarConfig(PluginConfig):
    """Voxel-MAE's voxelisation settings."""

    voxel_size: float = Field(0.5, gt=0, description="pillar side, metres")
    range_xy: float = Field(50.0, gt=0, description="pillars cover x, y in [-range, range) around the sensor")
    z_range: tuple[float, float] = Field((-5.0, 5.0), description="points outside these heights are dropped")
    max_points_per_voxel: int = Field(32, gt=0, description="point cap per pillar")
    max_voxels: int = Field(4096, gt=0, description="pillar cap per scan")
    sensor_origin: tuple[float, float, float] | None = Field(
        (0.0, 0.0, 0.0), description="sensor position in the scan's frame; None (airborne LAS): the scan's centre")
    scan_kind: Literal["sensor", "airborne"] = Field(
        "sensor", description="sensor: one scan around sensor_origin; airborne: a survey cut into tiles of "
        "2 × range_xy with heights above the local ground (sensor_origin unused)")
    min_tile_points: int = Field(1, ge=1, description="airborne: tiles with fewer points in z_range are "
                                 "skipped (counted as views_skipped)")
    ground_cell: float = Field(10.0, gt=0, description="airborne: side of the ground estimate's cells, metres")
    ground_percentile: float = Field(5.0, ge=0, le=100, description="airborne: a cell's ground is this "
                                     "percentile of its z, then the minimum over its 3 × 3 cells")
    num_empty: int = Field(1024, ge=0, description="query tokens at empty pillars, for the occupancy loss")
    z_scale: float = Field(2.0, gt=0, description="heights are divided by this in token values")
    rotate: bool = Field(True, description="training: random rotation about the vertical axis")
    chamfer_weight: float = Field(1.0, ge=0)
    count_weight: float = Field(1.0, ge=0)
    occupancy_weight: float = Field(1.0, ge=0)
    max_file_bytes: int = Field(512 * 2**20, gt=0)


def _read_kitti(data: bytes) -> np.ndarray:
    if len(data) % KITTI_RECORD:
        raise BadInputError(f"mis-shaped KITTI scan: {len(data)} bytes is not a multiple of {KITTI_RECORD} "
                            "(float32 x, y, z, intensity)")
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4).astype(np.float64)


def _read_las(data: bytes) -> np.ndarray:
    import laspy  # optional at import time: only LAS / LAZ scans need it

    try:
        las = laspy.read(io.BytesIO(data))
    except Exception as err:  # laspy raises its own LaspyException and plain errors for bad headers
        raise BadInputError(f"not a readable LAS/LAZ file: {str(err).splitlines()[0][:200]}") from err
    intensity = np.asarray(las.intensity, dtype=np.float64) / 65535.0
    return np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z), intensity], axis=1)


def _read_open3d(data: bytes, ext: str) -> np.ndarray:
    try:
        points = np.asarray(read_open3d(data, ext).points)  # no path: open3d reads a temporary copy of the bytes
    except MalformedFileError as err:  # the body does not hold what the header declares
        raise BadInputError(str(err)) from err
    if len(points) == 0:
        raise BadInputError(f"no points could be read (empty or not a valid {ext} file)")
    return np.concatenate([points, np.zeros((len(points), 1))], axis=1)


def sniff_scan(data: bytes) -> str:
    """The extension a scan's bytes look like (for paths without one): LAS by its signature,
    PLY and PCD by their headers, otherwise a KITTI .bin."""
    head = data[:256].lstrip()
    if data[:4] == b"LASF":
        return ".las"
    if head.startswith(b"ply"):
        return ".ply"
    if head.startswith((b"# .PCD", b"VERSION")):
        return ".pcd"
    return ".bin"


def read_scan(data: bytes, path: str) -> np.ndarray:
    """Bytes of a scan → (P, 4) float64 x, y, z, intensity (0 where the format has none)."""
    if len(data) == 0:
        raise BadInputError("empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower() or sniff_scan(data)
    if ext == ".bin":
        points = _read_kitti(data)
    elif ext in (".las", ".laz"):
        points = _read_las(data)
    elif ext in (".pcd", ".ply"):
        points = _read_open3d(data, ext)
    else:
        raise BadInputError(f"unsupported extension {ext!r} (expects .bin .pcd .ply .las .laz)")
    if len(points) == 0:
        raise BadInputError("empty scan: no points")
    if not np.isfinite(points[:, :3]).all():
        raise BadInputError("non-finite coordinates (NaN or inf)")
    return points


@dataclass
class Pillars:
    """A voxelised scan. V pillars, K = max_points_per_voxel.

    centres (V, 2) metric x, y of each pillar's centre, relative to the sensor
    points  (V, K, 4) the pillar's points (x, y, z, intensity), relative to the sensor, zero-padded
    counts  (V,)      points kept in each pillar (≤ K)
    index   (V, K)    row of each kept point in the scan, -1 for padding
    """

    centres: np.ndarray
    points: np.ndarray
    counts: np.ndarray
    index: np.ndarray


def voxelize(scan: np.ndarray, config: LidarConfig, rng: np.random.Generator | None = None,
             origin: np.ndarray | None = None) -> Pillars:
    """(P, 4) scan → pillars over the non-empty cells within range of ``origin`` (None: the
    config's ``sensor_origin``, or the bounding-box centre when that is None).

    Every in-range point lands in exactly one pillar; a pillar keeps its first K points in scan
    order (a random K with ``rng``); with more than ``max_voxels`` non-empty pillars, the nearest
    to the sensor are kept (a random subset with ``rng``). Raises BadInputError when no point is
    in range.
    """
    if origin is None:
        origin = np.asarray(config.sensor_origin if config.sensor_origin is not None
                            else (scan[:, :3].max(axis=0) + scan[:, :3].min(axis=0)) / 2)
    xyz = scan[:, :3] - origin
    r, vs = config.range_xy, config.voxel_size
    inside = ((np.abs(xyz[:, :2]) < r).all(axis=1) & (xyz[:, 2] >= config.z_range[0])
              & (xyz[:, 2] < config.z_range[1]))
    rows = np.flatnonzero(inside)
    if len(rows) == 0:
        raise BadInputError(f"no points within ±{r} m (x, y) and z in {config.z_range} of the sensor")
    if rng is not None:
        rows = rng.permutation(rows)
    side = int(np.ceil(2 * r / vs))
    cell_xy = np.clip(np.floor((xyz[rows, :2] + r) / vs).astype(np.int64), 0, side - 1)
    cell = cell_xy[:, 1] * side + cell_xy[:, 0]
    order = np.argsort(cell, kind="stable")  # keeps scan (or shuffled) order within a pillar
    rows, cell = rows[order], cell[order]
    cells, first, sizes = np.unique(cell, return_index=True, return_counts=True)
    centres = (np.stack([cells % side, cells // side], axis=1) + 0.5) * vs - r
    if len(cells) > config.max_voxels:
        pick = (rng.permutation(len(cells)) if rng is not None
                else np.argsort(np.hypot(centres[:, 0], centres[:, 1]), kind="stable"))[: config.max_voxels]
        pick = np.sort(pick)
        cells, first, sizes, centres = cells[pick], first[pick], sizes[pick], centres[pick]
    k = config.max_points_per_voxel
    counts = np.minimum(sizes, k)
    slot = np.arange(k)[None, :]
    index = np.where(slot < counts[:, None], rows[np.minimum(first[:, None] + slot, len(rows) - 1)], -1)
    points = np.where((index >= 0)[..., None], np.concatenate([xyz, scan[:, 3:4]], axis=1)[np.maximum(index, 0)], 0.0)
    return Pillars(centres, points.astype(np.float32), counts.astype(np.int64), index)


class LidarPlugin(ModalityPlugin):
    name = "lidar"
    Config = LidarConfig
    extensions = (".bin", ".pcd", ".ply", ".las", ".laz")
    render_columns = ("original (top view)", "visible", "reconstruction")
    reference = "Voxel-MAE (Hess et al. 2023), R-MAE (Yang et al. 2023)"
    default_mask = {"strategy": "random", "ratio": 0.7}
    config: LidarConfig

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Pillar centres in metres, relative to the sensor (radial sectors read their angle)."""
        return metric_axis("x"), metric_axis("y")

    @property
    def token_shape(self) -> tuple[int, int, int]:
        cfg = self.config
        return cfg.max_voxels + cfg.num_empty, 3 * cfg.max_points_per_voxel + 2, 2

    def check_mask(self, spec: MaskSpec) -> str | None:
        if spec.strategy == "radial" and self.config.scan_kind == "airborne":
            return "radial masking needs the sensor position: airborne tiles have none (scan_kind: airborne)"
        if spec.strategy == "radial" and self.config.sensor_origin is None:
            return "radial masking needs the sensor position: set sensor_origin (this scan has none, e.g. airborne LAS)"
        return None

    @classmethod
    def check_native(cls) -> str:
        import laspy

        if not laspy.LazBackend.Lazrs.is_available():
            raise RuntimeError("laspy finds no lazrs backend: LAZ scans cannot be read")
        las = laspy.LasData(laspy.LasHeader(point_format=0, version="1.2"))
        las.x = las.y = las.z = np.zeros(4)
        buf = io.BytesIO()
        las.write(buf, do_compress=True, laz_backend=laspy.LazBackend.Lazrs)  # a LAZ round trip through lazrs
        assert len(laspy.read(io.BytesIO(buf.getvalue())).x) == 4
        return f"laspy {laspy.__version__} + lazrs, open3d {o3d.__version__}"

    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (P, 4) float64 x, y, z, intensity; at least one point in range (a sensor scan)
        or one kept tile (an airborne survey)."""
        scan = read_scan(data, path)
        if self.config.scan_kind == "airborne":
            self.tiles(scan)  # raises when no tile is kept
        else:
            voxelize(scan, self.config)  # raises when nothing is in range
        return scan

    def tiles(self, scan: np.ndarray) -> Tiles:
        """An airborne survey's tiles (:func:`~polymae.modalities.lidar_tiles.cut_tiles`). Raises
        BadInputError when every tile is skipped."""
        cfg = self.config
        tiles = cut_tiles(scan, cfg.range_xy, cfg.z_range, cfg.min_tile_points, cfg.ground_cell,
                          cfg.ground_percentile)
        if len(tiles.centres) == 0:
            raise BadInputError(f"no tile of the survey holds min_tile_points={cfg.min_tile_points} points with "
                                f"heights above ground in z_range {cfg.z_range} ({tiles.skipped} tiles skipped)")
        return tiles

    def tokenize_file(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[TokenStream]:
        """A sensor scan: one sample. An airborne survey: one per kept tile, row-major, from one decode."""
        if self.config.scan_kind == "airborne":
            return self._tile_streams(read_scan(data, path), rng)[0]
        return super().tokenize_file(data, path, rng)

    def scan_file(self, data: bytes, path: str, region: tuple[float, float] | None = None,
                  ) -> tuple[int, dict[str, float]]:
        """(samples, {}); an airborne survey: (kept tiles, each tokenized; ``views_skipped``: the
        tiles skipped)."""
        if self.config.scan_kind == "sensor":
            return super().scan_file(data, path, region)
        streams, tiles = self._tile_streams(read_scan(data, path), None)
        return len(streams), {VIEWS_SKIPPED: float(tiles.skipped)}

    def _tile_streams(self, scan: np.ndarray, rng: np.random.Generator | None) -> tuple[list[TokenStream], Tiles]:
        """Every kept tile of a survey tokenized, and the tiles."""
        tiles = self.tiles(scan)
        return [self._tokenize_points(tiles.points(scan, t), rng, np.zeros(3))
                for t in range(len(tiles.centres))], tiles

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        """A sensor scan → its token stream. An airborne survey → its first kept tile's (every tile:
        :meth:`tokenize_file`)."""
        cfg = self.config
        if cfg.scan_kind == "airborne":
            return self._tokenize_points(self.tiles(array).points(array, 0), rng, np.zeros(3))
        origin = None if cfg.sensor_origin is None else np.asarray(cfg.sensor_origin, np.float64)
        return self._tokenize_points(array, rng, origin)

    def _tokenize_points(self, array: np.ndarray, rng: np.random.Generator | None,
                         origin: np.ndarray | None) -> TokenStream:
        """(P, 4) points → tokens of the pillar grid around ``origin`` (None: the bounding-box centre).
        Training turns them about the origin (about (0, 0) when None): by a random angle (Voxel-MAE),
        or by a random quarter turn for an airborne tile (its square stays the same square)."""
        cfg = self.config
        if rng is not None and cfg.rotate:
            if cfg.scan_kind == "airborne":
                turn = np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), int(rng.integers(4)))
            else:
                a = rng.uniform(-np.pi, np.pi)
                turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            centre = np.zeros(2) if origin is None else origin[:2]
            array = array.copy()
            array[:, :2] = (array[:, :2] - centre) @ turn.T + centre
        pillars = voxelize(array, cfg, rng, origin)
        n, d, _ = self.token_shape
        k, v = cfg.max_points_per_voxel, len(pillars.counts)
        values = np.zeros((n, d), np.float32)
        coords = np.zeros((n, 2), np.float32)
        rel = pillars.points[..., :3].copy()
        rel[..., :2] = (rel[..., :2] - pillars.centres[:, None, :]) / cfg.voxel_size
        rel[..., 2] /= cfg.z_scale
        rel[np.arange(k)[None, :] >= pillars.counts[:, None]] = 0.0
        values[:v, : 3 * k] = rel.reshape(v, 3 * k)
        values[:v, 3 * k] = pillars.counts / k
        values[:v, 3 * k + 1] = 1.0
        coords[:v] = pillars.centres
        empty = self._empty_cells(pillars.centres, rng)
        coords[cfg.max_voxels : cfg.max_voxels + len(empty)] = empty
        unit = np.arange(n)
        unit[cfg.max_voxels :] = -1  # query tokens: never shown to the encoder
        valid = np.zeros(n, bool)
        valid[:v] = True
        valid[cfg.max_voxels : cfg.max_voxels + len(empty)] = True
        return TokenStream(values, coords, unit, valid, axes=self.axes)

    def _empty_cells(self, occupied: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Centres (≤ num_empty, 2) of empty pillars in range: random in training, evenly strided."""
        cfg = self.config
        side = int(np.ceil(2 * cfg.range_xy / cfg.voxel_size))
        taken = np.zeros(side * side, bool)
        cells = np.floor((occupied + cfg.range_xy) / cfg.voxel_size).astype(np.int64)
        taken[cells[:, 1] * side + cells[:, 0]] = True
        free = np.flatnonzero(~taken)
        count = min(cfg.num_empty, len(free))
        pick = rng.choice(free, count, replace=False) if rng is not None else \
            free[np.linspace(0, len(free) - 1, count).round().astype(np.int64)]
        return (np.stack([pick % side, pick // side], axis=1) + 0.5) * cfg.voxel_size - cfg.range_xy

    def target(self, values: torch.Tensor) -> torch.Tensor:
        """The K point slots filled by repeating a pillar's n real points (so a prediction equal
        to the target has zero Chamfer), the count fraction, occupancy as a confident logit."""
        k = self.config.max_points_per_voxel
        values = values.float()
        counts = (values[..., 3 * k] * k).round().long().clamp(min=1)
        slots = torch.arange(k, device=values.device) % counts[..., None]  # (..., K)
        pts = torch.gather(values[..., : 3 * k].reshape(*values.shape[:-1], k, 3), -2,
                           slots[..., None].expand(*slots.shape, 3))
        occupancy = (2 * values[..., -1:] - 1) * OCCUPANCY_LOGIT
        return torch.cat([pts.flatten(-2), values[..., 3 * k : 3 * k + 1], occupancy], dim=-1)

    def loss(self, pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Chamfer-L2 on the points + count MSE of masked occupied pillars; occupancy BCE on all
        masked ones (query pillars included). pred (B, N, 3K+2), values (B, N, 3K+2), mask (B, N)."""
        cfg, k = self.config, self.config.max_points_per_voxel
        pred, values = pred.float(), values.float()
        occupied = mask & (values[..., -1] > 0.5)
        chamfer = count = pred.new_zeros(())
        if bool(occupied.any()):
            # all K predicted points against the pillar's n real ones (the slots past n are padding)
            real = torch.arange(k, device=pred.device) < (values[..., 3 * k] * k).round().long()[..., None]
            chamfer = chamfer_l2(pred[..., : 3 * k], values[..., : 3 * k], occupied, target_valid=real)
            count = F.mse_loss(pred[..., 3 * k][occupied], values[..., 3 * k][occupied])
        occupancy = F.binary_cross_entropy_with_logits(pred[..., -1][mask], values[..., -1][mask]) \
            if bool(mask.any()) else pred.new_zeros(())
        return cfg.chamfer_weight * chamfer + cfg.count_weight * count + cfg.occupancy_weight * occupancy

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """Bird's-eye view, original | visible pillars | reconstruction (visible pillars' points +
        the predicted points of masked pillars predicted occupied), heights coloured."""
        cfg, k = self.config, self.config.max_points_per_voxel
        occupied = stream.valid & (stream.values[:, -1] > 0.5)
        hidden = stream.valid & ~stream.visible

        def points(values: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
            rel = values[rows, : 3 * k].reshape(-1, k, 3)
            xy = rel[..., :2] * cfg.voxel_size + stream.coords[rows][:, None, :]
            pts = np.concatenate([xy, rel[..., 2:] * cfg.z_scale], axis=-1)
            return pts[np.arange(k)[None, :] < counts[:, None]]

        true_counts = np.rint(stream.values[:, 3 * k] * k).astype(int)
        guess_counts = np.clip(np.rint(pred[:, 3 * k] * k), 0, k).astype(int)
        original = points(stream.values, np.flatnonzero(occupied), true_counts[occupied])
        seen = occupied & stream.visible
        visible = points(stream.values, np.flatnonzero(seen), true_counts[seen])
        shown = hidden & (pred[:, -1] > 0)
        recon = np.concatenate([visible, points(pred, np.flatnonzero(shown), guess_counts[shown])])
        return panel_row([self._bev(original), self._bev(visible), self._bev(recon)])

    def _bev(self, pts: np.ndarray) -> np.ndarray:
        """(P, 3) metric points → (BEV, BEV, 3) image of ±range, x right, y up, coloured by z."""
        r = self.config.range_xy
        canvas = np.full((BEV, BEV, 3), 255, np.uint8)
        col = np.clip(((pts[:, 0] + r) / (2 * r) * BEV).astype(int), 0, BEV - 1)
        row = np.clip(((r - pts[:, 1]) / (2 * r) * BEV).astype(int), 0, BEV - 1)
        z = np.clip((pts[:, 2] - self.config.z_range[0]) / (self.config.z_range[1] - self.config.z_range[0]), 0, 1)
        canvas[row, col] = viridis(z)
        return canvas
