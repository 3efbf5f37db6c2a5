"""Rasters through rasterio (GDAL) from bytes, for the multispectral plugin: band names, the bands
of one group, per-pixel validity, pixel-size checks. Every failure is a BadInputError with a reason.

Validity of a pixel of a band: GDAL's mask says it has data (the file's nodata value, its mask band
or alpha), its DN is not the sensor's nodata value, and (done by the caller, after DN → reflectance)
it is finite.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from polymae.modalities.base import BadInputError
from polymae.modalities.sensors import Sensor, canonical_band

RESOLUTION_TOLERANCE = 0.01  # a file's pixel size may differ from the expected one by 1 %
_VSIMEM = re.compile(r"'?(/vsimem/)?[^\s:,']*[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}[^\s:,']*'?:?\s*")


def file_bands(descriptions: Sequence[str | None], declared: Sequence[str] | None, sensor: Sensor) -> tuple[str, ...]:
    """The canonical names of a file's bands in file order: its descriptions, or ``declared`` (the
    config's ``bands``) when it has none; both must agree where both are given, and every band must
    be one of the sensor's. Raises BadInputError naming both sides."""
    count, shown = len(descriptions), ", ".join(d or "?" for d in descriptions)
    if declared is not None and len(declared) != count:
        raise BadInputError(f"band count mismatch: the file has {count} bands ({shown}), the config's bands "
                            f"list {len(declared)} ({', '.join(declared)})")
    given = [canonical_band(b) for b in declared] if declared is not None else None
    described = [canonical_band(d) if d else None for d in descriptions]
    for i, d in enumerate(described):
        if given is not None and d is not None and d != given[i]:
            raise BadInputError(f"band {i + 1} of the file is described {descriptions[i]!r}, the config's bands "
                                f"list says {declared[i]!r}")  # type: ignore[index]
    names = given if given is not None else described
    if any(n is None for n in names):
        raise BadInputError(f"the file's bands have no (or not every) description ({shown}); give the config a "
                            f"bands list of {count} names of sensor {sensor.name} ({', '.join(sensor.band_names)})")
    for i, name in enumerate(names):
        if sensor.find(str(name)) is None:
            raise BadInputError(f"band {descriptions[i] or name!r} (band {i + 1} of the file) is not a band of "
                                f"sensor {sensor.name} ({', '.join(sensor.band_names)})")
    if len(set(names)) != count:
        raise BadInputError(f"the file's bands repeat: {', '.join(map(str, names))}")
    return tuple(str(n) for n in names)


def pixel_metres(ds: Any) -> tuple[float, float] | None:
    """(x, y) pixel size in metres of a projected dataset, or None (no CRS, or one in degrees)."""
    crs = ds.crs
    if crs is None or not crs.is_projected:
        return None
    try:
        factor = float(crs.linear_units_factor[1])
    except Exception:  # a CRS without a linear unit GDAL knows: the size cannot be checked
        return None
    return abs(ds.res[0]) * factor, abs(ds.res[1]) * factor


def read_group(
    data: bytes, sensor: Sensor, group: Sequence[str], *, declared: Sequence[str] | None = None,
    nodata: float | None = None, resolution_m: float | None = None, min_side: int = 1,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raster bytes → the ``group``'s bands in group order: DN (bands, H, W) in the file's dtype and
    validity (bands, H, W) bool. ``nodata``: a DN without data besides the file's own mask;
    ``resolution_m``: the pixel size the file must have (checked for projected files, 1 %);
    ``min_side``: the smallest H and W allowed (a chip); ``max_pixels``: cap on H × W."""
    if len(data) == 0:
        raise BadInputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(data) as mem, mem.open() as ds:
                return _read(ds, sensor, tuple(group), declared, nodata, resolution_m, min_side, max_pixels)
    except BadInputError:
        raise
    except (RasterioError, OSError, ValueError) as err:
        detail = _VSIMEM.sub("", str(err.__cause__ or err)).strip() or type(err).__name__
        if "not recognized" in detail or "not recognised" in detail:
            raise BadInputError("not a raster format GDAL reads") from err
        raise BadInputError(f"corrupt or truncated raster: {detail}") from err


def _read(ds: Any, sensor: Sensor, group: tuple[str, ...], declared: Sequence[str] | None, nodata: float | None,
          resolution_m: float | None, min_side: int, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    odd = sorted({t for t in ds.dtypes if np.dtype(t).kind not in "uif"})
    if odd:
        raise BadInputError(f"unexpected dtype {', '.join(odd)}: bands must be real numbers (DN or reflectance)")
    if max_pixels is not None and ds.width * ds.height > max_pixels:
        raise BadInputError(f"oversized: {ds.width}x{ds.height} = {ds.width * ds.height} pixels > max_pixels "
                            f"{max_pixels}")
    names = file_bands(tuple(ds.descriptions), declared, sensor)
    missing = [b for b in group if b not in names]
    if missing:
        raise BadInputError(f"the file lacks band(s) {', '.join(missing)} of the group {', '.join(group)}; "
                            f"it has {', '.join(names)}")
    pixel = pixel_metres(ds)
    if resolution_m is not None and pixel is not None and any(
            abs(p - resolution_m) > RESOLUTION_TOLERANCE * resolution_m for p in pixel):
        raise BadInputError(f"pixel size {pixel[0]:g}×{pixel[1]:g} m, but group {', '.join(group)} is read at "
                            f"{resolution_m:g} m (sensor {sensor.name}); set resolution_m for such files")
    if min(ds.height, ds.width) < min_side:
        raise BadInputError(f"scene of {ds.width}x{ds.height} px is smaller than a chip ({min_side} px)")
    indexes = [names.index(b) + 1 for b in group]
    raw = ds.read(indexes)
    valid = ds.read_masks(indexes) > 0  # GDAL's mask: the file's nodata value, mask band or alpha
    if nodata is not None:
        valid &= raw != nodata
    return raw, valid
