"""Multispectral plugin (SatMAE): one band group of a raster = one stream of 8×8-patch tokens of a 96² chip.

Files: GeoTIFF and anything else GDAL reads, from bytes (rasterio's ``MemoryFile``). A raster's
bands are named by their descriptions (``B02``, ``B8A``: any spelling
:func:`~polymae.modalities.sensors.canonical_band` maps to a band of the sensor), or by the
config's ``bands`` list when the file has none; every band must be one of the ``sensor``'s
(a raster may hold only some of them). The stream takes the bands of ``group`` — SatMAE's
Sentinel-2 groups {B2, B3, B4, B8}, {B5, B6, B7, B8A}, {B11, B12}, one stream each — in the
group's order, read at their native resolution (no resampling).

Canonical array: (H, W, bands) float32 reflectance (``DN · scale + offset``, the sensor's or the
config's), NaN where a pixel has no data: the file's nodata value or mask, the sensor's nodata
value, a non-finite value.

Ground: ``chip_size`` (96) and ``patch_size`` (8) are pixels at the reference resolution
``reference_m`` (default: the finest band of the sensor's groups, 10 m for Sentinel-2), so a chip
covers 960 m and a token 80 m whatever the group's resolution: a 20 m group has 48 px chips of
4 px patches. Both are whole pixels at the group's resolution, or the config is refused; a file
whose pixels are not the group's size (1 % tolerance; ``resolution_m`` for resampled files) is
refused. :meth:`frame_view` draws a chip on the token grid of the scene as fractions of it, so a
10 m and a 20 m raster of the same ground cut the same ground exactly. In training the chip is
uniform over the positions whose chip has at least ``min_valid_chip`` valid pixels (then SatMAE's
horizontal flip with p = ½; SatMAE's random-resized crop would resample, so it is not used); in
evaluation, the valid position nearest the scene centre. A view drawn by another plugin of the
frame is sampled nearest-neighbour to the chip.

Chips of a scene (:meth:`frame_views`, what the pipeline and :meth:`tokenize_file` use): the scene
is tiled every ``chip_stride`` (:mod:`~polymae.modalities.chips`); tiles with fewer than
``min_valid_chip`` valid pixels are skipped and counted (``views_skipped`` from :meth:`scan_file`).
Evaluation takes the kept tiles in order; training as many chips, each at a random valid position
and flipped with p = ½, so the count never depends on the rng.

Normalisation, the convention saved with a run: per-band z-score of reflectance,
``(ρ − mean_b) / std_b``, with the dataset's mean/std over valid pixels (``scan_file`` sums,
``with_statistics``), else the sensor's reference statistics (SatMAE's fMoW-Sentinel for
Sentinel-2 L1C), else none. Pixels without data are 0 (the band mean) after it: NaN never reaches
the network.

Tokens: values D = p² · bands, z-scores in (row, col, band) order; coords (row, col) on the chip's
token grid, axes ``y``, ``x`` (grid, unit m); a token with fewer than ``min_valid_token`` valid
pixels is ``valid=False`` (never visible, never scored); a chip without a valid token is refused.
Loss: MSE on SatMAE's norm-pix targets of the hidden valid tokens
(:mod:`polymae.models.losses.norm_pix_mse`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rasterio
from pydantic import Field, model_validator
from rasterio.io import MemoryFile

from polymae.modalities.base import VIEWS_SKIPPED, BadInputError, NormPixPlugin, PluginConfig
from polymae.modalities.chips import ChipGrid, chip_grid, tile_positions
from polymae.modalities.ms_render import composites, render_chip
from polymae.modalities.raster import read_group
from polymae.modalities.sensors import Sensor, canonical_band, get_sensor
from polymae.ops import FrameView, patchify
from polymae.tokenizer.axes import Axis, grid_axis
from polymae.tokenizer.stream import TokenStream

STD_FLOOR = 1e-4  # reflectance: a constant band has std 0; floor it so the z-score stays finite


@dataclass(frozen=True)
class Layout:
    """What a config resolves to: the sensor, the group's bands and its pixels per chip and patch."""

    sensor: Sensor
    group: tuple[str, ...]
    resolution_m: float  # pixel size of the group in the files
    reference_m: float  # pixel size chip_size and patch_size count in
    chip_px: int
    patch_px: int
    stride_px: int  # between tiles of a scene

    @property
    def grid(self) -> int:
        return self.chip_px // self.patch_px

    @property
    def step(self) -> int:
        """Token cells between tiles."""
        return self.stride_px // self.patch_px



def _whole(x: float) -> int | None:
    return int(round(x)) if abs(x - round(x)) < 1e-6 and round(x) >= 1 else None


def resolve_layout(cfg: MultispectralConfig) -> Layout:
    """The config's layout. Raises ValueError naming what does not fit."""
    try:
        sensor = get_sensor(cfg.sensor)
        if cfg.group is None:
            group = sensor.group(next(iter(sensor.groups))) if sensor.groups else sensor.band_names
        elif isinstance(cfg.group, str):
            group = sensor.group(cfg.group)
        else:
            group = tuple(canonical_band(sensor.band(b).name) for b in cfg.group)
        for name in cfg.bands or ():
            sensor.band(name)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from err
    if len(set(group)) != len(group) or not group:
        raise ValueError(f"group bands repeat or are empty: {', '.join(group)}")
    native = {sensor.band(b).resolution_m for b in group}
    if cfg.resolution_m is None and len(native) > 1:
        raise ValueError(f"group {', '.join(group)} mixes native resolutions "
                         f"({', '.join(f'{r:g} m' for r in sorted(native))}); set resolution_m for a resampled file")
    resolution = cfg.resolution_m or native.pop()
    grouped = {b for members in sensor.groups.values() for b in members} or set(sensor.band_names)
    reference = cfg.reference_m or min(sensor.band(b).resolution_m for b in grouped)
    chip, patch = _whole(cfg.chip_size * reference / resolution), _whole(cfg.patch_size * reference / resolution)
    if chip is None or patch is None or chip % patch:
        raise ValueError(f"chip_size {cfg.chip_size} and patch_size {cfg.patch_size} px at {reference:g} m are "
                         f"not whole pixels (or a whole number of patches) at the group's {resolution:g} m")
    stride = cfg.chip_stride or cfg.chip_size
    if stride % cfg.patch_size:
        raise ValueError(f"chip_stride {stride} is not a multiple of patch_size {cfg.patch_size}: tiles sit on the "
                         "token grid, so every group's tiles cut the same ground")
    return Layout(sensor, group, float(resolution), float(reference), chip, patch, stride * patch // cfg.patch_size)


class MultispectralConfig(PluginConfig):
    """SatMAE's settings (96² chips at 10 m, 8×8 patches, norm-pix loss) for one band group."""

    sensor: str | Sensor = Field("sentinel2_l1c", description="a registered sensor name or a whole record")
    bands: tuple[str, ...] | None = Field(None, description="the file's bands in order, for files without descriptions")
    group: str | tuple[str, ...] | None = Field(
        None, description="a group of the sensor or band names: this stream's bands (None: the sensor's first group)")
    chip_size: int = Field(96, gt=0, description="chip side in pixels at reference_m")
    chip_stride: int | None = Field(None, gt=0, description="pixels at reference_m between the tiles of a scene, "
                                    "a multiple of patch_size (None: chip_size, every pixel in one tile)")
    patch_size: int = Field(8, gt=0, description="patch side in pixels at reference_m")
    reference_m: float | None = Field(None, gt=0, description="the pixel size chip_size and patch_size count "
                                      "(None: the finest band of the sensor's groups)")
    resolution_m: float | None = Field(None, gt=0, description="pixel size of the files (None: the group's native one)")
    nodata: float | None = Field(None, description="DN without data (None: the sensor's), besides the file's own mask")
    scale: float | None = Field(None, gt=0, description="DN → reflectance scale (None: the sensor's)")
    offset: float | None = Field(None, description="DN → reflectance offset (None: the sensor's)")
    min_valid_token: float = Field(0.5, gt=0, le=1, description="a token with fewer valid pixels is invalid")
    min_valid_chip: float = Field(0.5, ge=0, le=1, description="chips with fewer valid pixels are skipped "
                                  "(counted as views_skipped) and never drawn")
    random_chip: bool = Field(True, description="random chip position in training; else the central one")
    hflip: bool = Field(True, description="SatMAE's RandomHorizontalFlip in training")
    mean: dict[str, float] | None = Field(None, description="dataset reflectance mean per band (from the scan)")
    std: dict[str, float] | None = Field(None, description="dataset reflectance std per band (from the scan)")
    norm_pix_loss: bool = True
    max_pixels: int = Field(89_478_485, gt=0, description="H × W cap until windowed reads land")

    @model_validator(mode="after")
    def _fits(self) -> MultispectralConfig:
        resolve_layout(self)
        return self


class MultispectralPlugin(NormPixPlugin):
    name = "multispectral"
    Config = MultispectralConfig
    extensions = (".tif", ".tiff", ".jp2", ".img", ".vrt")
    reference = "SatMAE (Cong et al. 2022), one band group per stream"
    default_mask = {"strategy": "random", "ratio": 0.75}
    config: MultispectralConfig

    def __init__(self, config: MultispectralConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.layout = resolve_layout(self.config)
        self.statistics = tuple(f"{b}_{k}" for b in self.layout.group for k in ("sum", "sumsq", "count"))

    @classmethod
    def check_native(cls) -> str:
        with MemoryFile() as mem:  # a deflate GeoTIFF round trip through GDAL
            with mem.open(driver="GTiff", width=4, height=4, count=2, dtype="uint16", compress="deflate",
                          crs="EPSG:32618", transform=rasterio.Affine(10, 0, 0, 0, -10, 40)) as ds:
                ds.write(np.arange(32, dtype=np.uint16).reshape(2, 4, 4))
                ds.set_band_description(1, "B02")
            with mem.open() as ds:
                assert int(ds.read(2)[3, 3]) == 31 and ds.descriptions[0] == "B02" and ds.res == (10.0, 10.0)
        return f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}"

    @property
    def axes(self) -> tuple[Axis, ...]:
        """Token rows and columns of the chip (a step is patch_size · reference_m metres of ground)."""
        g = self.layout.grid
        return grid_axis("y", "m", g), grid_axis("x", "m", g)

    @property
    def token_shape(self) -> tuple[int, int, int]:
        lay = self.layout
        return lay.grid**2, lay.patch_px**2 * len(lay.group), 2

    # --- decode ------------------------------------------------------------------------------
    def decode(self, data: bytes, path: str) -> np.ndarray:
        """Bytes → (H, W, bands of the group) float32 reflectance, NaN where there is no data."""
        cfg, lay = self.config, self.layout
        self.check_bytes(data)
        raw, valid = read_group(data, lay.sensor, lay.group, declared=cfg.bands,
                                nodata=cfg.nodata if cfg.nodata is not None else lay.sensor.nodata,
                                resolution_m=lay.resolution_m, min_side=lay.chip_px, max_pixels=cfg.max_pixels)
        scale = cfg.scale if cfg.scale is not None else lay.sensor.scale
        offset = cfg.offset if cfg.offset is not None else lay.sensor.offset
        with np.errstate(invalid="ignore", over="ignore"):
            reflectance = raw.astype(np.float64) * scale + offset
        valid &= np.isfinite(reflectance)
        if not valid.any():
            raise BadInputError(f"all nodata: no pixel of bands {', '.join(lay.group)} has data")
        return np.where(valid, reflectance, np.nan).astype(np.float32).transpose(1, 2, 0)

    # --- chips and tokens ----------------------------------------------------------------------
    def chips(self, array: np.ndarray) -> ChipGrid:
        """The scene's chip positions and their valid fractions. Raises BadInputError when the
        scene is smaller than a chip."""
        lay = self.layout
        height, width = array.shape[:2]
        if min(height, width) < lay.chip_px:
            raise BadInputError(f"frame of {width}x{height} px is smaller than a chip ({lay.chip_px} px)")
        return chip_grid(array, lay.patch_px, lay.grid)

    def _usable(self, grid: ChipGrid) -> np.ndarray:
        ok = grid.ok(self.config.min_valid_chip)
        if len(ok) == 0:
            raise BadInputError(f"no chip of {self.layout.chip_px} px has ≥ {self.config.min_valid_chip:.0%} valid "
                                f"pixels (best {grid.fraction.max():.1%})")
        return ok

    def frame_view(self, array: np.ndarray, rng: np.random.Generator | None) -> FrameView:
        """One chip on the scene's token grid (fractions of the scene), among the positions whose
        chip has ≥ ``min_valid_chip`` valid pixels: uniform in training, nearest the centre in
        evaluation (``rng=None``); then the flip. Raises BadInputError when no position qualifies."""
        cfg, grid = self.config, self.chips(array)
        ok = self._usable(grid)
        if rng is not None and cfg.random_chip:
            top, left = ok[rng.integers(len(ok))]
        else:
            rows, cols = grid.fraction.shape
            centre = np.array([(rows - 1) / 2, (cols - 1) / 2])
            top, left = ok[np.argmin(((ok - centre) ** 2).sum(axis=1))]
        return grid.view(int(top), int(left), bool(rng is not None and cfg.hflip and rng.random() < 0.5))

    def tiles(self, array: np.ndarray) -> tuple[list[FrameView], int]:
        """(the tiles of the scene every ``chip_stride`` that have ≥ ``min_valid_chip`` valid pixels,
        row-major; the number of tiles skipped for having fewer). Raises BadInputError when no
        chip position of the scene has that many."""
        grid = self.chips(array)
        self._usable(grid)
        tiles = tile_positions(grid, self.layout.step)
        kept = grid.fraction[tiles[:, 0], tiles[:, 1]] >= max(self.config.min_valid_chip, 1e-12)
        return [grid.view(int(r), int(c)) for r, c in tiles[kept]], int((~kept).sum())

    def frame_views(self, array: np.ndarray, rng: np.random.Generator | None) -> list[FrameView]:
        """The scene's chips, as many as it has kept tiles (:meth:`tiles`, whatever the rng). In
        evaluation (``rng=None``) the kept tiles in order; in training each view is a chip drawn
        uniformly over every position with ≥ ``min_valid_chip`` valid pixels, then flipped with p = ½
        (SatMAE's random crops and flips; without ``random_chip`` the kept tiles, flipped)."""
        cfg, tiles = self.config, self.tiles(array)[0]
        if rng is None:
            return tiles
        if cfg.random_chip:
            grid = self.chips(array)
            ok = self._usable(grid)
            picks = ok[rng.integers(len(ok), size=len(tiles))]
            tiles = [grid.view(int(r), int(c)) for r, c in picks]
        flips = rng.random(len(tiles)) < 0.5 if cfg.hflip else np.zeros(len(tiles), bool)
        return [replace(v, hflip=bool(f)) for v, f in zip(tiles, flips, strict=True)]

    def chip(self, array: np.ndarray, view: FrameView) -> np.ndarray:
        """The (c, c, bands) chip of a view, NaN where there is no data: its box, nearest-neighbour
        sampled to c = chip px (the identity for a view this plugin drew), flipped if the view says."""
        c = self.layout.chip_px
        top, left, h, w = view.box(*array.shape[:2])
        rows = top + np.minimum(((np.arange(c) + 0.5) * h / c).astype(np.int64), h - 1)
        cols = left + np.minimum(((np.arange(c) + 0.5) * w / c).astype(np.int64), w - 1)
        out = array[rows[:, None], cols[None, :]]
        return out[:, ::-1] if view.hflip else out

    def norm_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(bands,) mean and std of reflectance: the dataset's, else the sensor's reference, else 0 and 1."""
        cfg, sensor = self.config, self.layout.sensor
        means, stds = [], []
        for band in self.layout.group:
            if cfg.mean and cfg.std and band in cfg.mean and band in cfg.std:
                stats: tuple[float, float] = (cfg.mean[band], cfg.std[band])
            else:
                stats = sensor.reference_stats(band) or (0.0, 1.0)
            means.append(stats[0])
            stds.append(max(stats[1], STD_FLOOR))
        return np.array(means, np.float64), np.array(stds, np.float64)

    def tokenize(self, array: np.ndarray, rng: np.random.Generator | None,
                 view: FrameView | None = None) -> TokenStream:
        lay = self.layout
        chip = self.chip(array, view or self.frame_view(array, rng))
        has = np.isfinite(chip).all(axis=2)  # (c, c): a pixel counts when every band has data
        mean, std = self.norm_stats()
        z = np.where(np.isfinite(chip), (chip - mean) / std, 0.0).astype(np.float32)
        fraction = patchify(has[..., None].astype(np.float32), lay.patch_px).mean(axis=1)
        valid = fraction >= self.config.min_valid_token
        if not valid.any():
            raise BadInputError(f"all-nodata chip: no token has ≥ {self.config.min_valid_token:.0%} valid pixels "
                                f"({has.mean():.1%} of the chip is valid)", stage="tokenize")
        g = lay.grid
        rows, cols = np.divmod(np.arange(g * g), g)
        return TokenStream(values=patchify(z, lay.patch_px), coords=np.stack([rows, cols], axis=1),
                           unit=np.arange(g * g), valid=valid, axes=self.axes)

    def tokenize_file(self, data: bytes, path: str, rng: np.random.Generator | None) -> list[TokenStream]:
        """Every chip of the scene (:meth:`frame_views`), from one decode."""
        array = self.decode(data, path)
        return [self.tokenize(array, rng, view) for view in self.frame_views(array, rng)]

    def scan_file(self, data: bytes, path: str, region: tuple[float, float] | None = None,
                  ) -> tuple[int, dict[str, float]]:
        """(the scene's kept tiles, each tokenized; per band the sums over every valid pixel, and
        ``views_skipped``: the tiles over the no-data threshold). ``region``: the part of the scene
        that training reads (``split.region``): tiles and sums are of that part, so the held-out
        strip's pixels never set the normalisation."""
        array = self.decode(data, path)
        part = array if region is None else self.region(array, *region)
        views, skipped = self.tiles(part)
        for view in views:
            self.tokenize(part, None, view)
        stats: dict[str, float] = {VIEWS_SKIPPED: float(skipped)}
        for i, band in enumerate(self.layout.group):
            v = part[..., i][np.isfinite(part[..., i])].astype(np.float64)
            stats |= {f"{band}_sum": float(v.sum()), f"{band}_sumsq": float((v**2).sum()),
                      f"{band}_count": float(v.size)}
        return len(views), stats

    def with_statistics(self, totals: dict[str, float]) -> dict[str, Any]:
        """Per-band dataset mean and std (floored at STD_FLOOR) of valid reflectance."""
        mean, std = {}, {}
        for band in self.layout.group:
            count = totals.get(f"{band}_count", 0.0)
            if count > 0:
                m = totals[f"{band}_sum"] / count
                mean[band] = float(m)
                std[band] = float(max(np.sqrt(max(totals[f"{band}_sumsq"] / count - m * m, 0.0)), STD_FLOOR))
        return {"mean": mean, "std": std} if mean else {}

    # --- loss, render --------------------------------------------------------------------------
    def composites(self) -> list[tuple[int, int, int]]:
        """Band indexes (into the group) of the true- and false-colour composites the group can
        show, by the sensor's common names; else its first three bands (repeated if fewer)."""
        return composites(self.layout.sensor, self.layout.group)

    def render(self, stream: TokenStream, pred: np.ndarray) -> np.ndarray:
        """original | visible | reconstruction (hidden tokens predicted, visible ones pasted), one row
        per composite (:func:`~polymae.modalities.ms_render.render_chip`)."""
        lay = self.layout
        values = stream.values.astype(np.float32)
        pred = self.prediction_values(np.asarray(pred, np.float32), values)
        return render_chip(stream, values, pred, lay.patch_px, lay.grid, len(lay.group), self.composites())
