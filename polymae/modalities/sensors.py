"""Sensors as data: one :class:`Sensor` record per instrument and product, in a registry.

A record says what a raster of that sensor holds: its bands (name, centre wavelength in nm,
native ground resolution in m, STAC ``eo:common_name``), the nodata value of its products, the
DN → reflectance conversion ``reflectance = DN · scale + offset``, named band groups (SatMAE's
streams) and, where a reference publishes them, per-band reflectance statistics used until the
dataset's own are computed. The multispectral plugin's ``sensor`` config field takes a registered
name or a whole record (a user's sensor, no code); :func:`register_sensor` adds one at run time.

Band names match whatever a file calls them after :func:`canonical_band`: upper case, no spaces,
leading zeros of the number dropped (``B02`` = ``b2`` = ``B2``, ``B08A`` = ``B8A``).

Sources of the numbers (kept next to each record):
- Sentinel-2 MSI: ESA, *Sentinel-2 User Handbook* (2015), table 1 (Sentinel-2A central
  wavelengths and resolutions); *Sentinel-2 Products Specification Document* (L1C/L2A:
  ``QUANTIFICATION_VALUE`` 10000, ``NODATA`` 0; from processing baseline 04.00, January 2022,
  ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` −1000 DN, i.e. ``offset: -0.1`` in the config).
- Landsat: USGS, *Landsat 8-9 OLI/TIRS Collection 2 Level 2 Data Format Control Book* and the
  USGS page "How do I use a scale factor with Landsat Level-2 science products?" (surface
  reflectance = DN · 2.75e-5 − 0.2, fill 0); USGS "What are the band designations for the Landsat
  satellites?" and the *Landsat 8 Data Users Handbook* (OLI centres) and *Landsat 7 Science Data
  Users Handbook* (ETM+ bands). Thermal bands (TIRS B10/B11, ETM+ B6) are left out: they are no
  reflectance.
- Groups: SatMAE (Cong et al. 2022), ``MaskedAutoencoderGroupChannelViT``'s
  ``channel_groups=((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))`` over its ten kept Sentinel-2 bands
  (B1, B9, B10 dropped) = {B2, B3, B4, B8}, {B5, B6, B7, B8A}, {B11, B12}. The Landsat and aerial
  groups follow the same split (visible + NIR, SWIR) by analogy; no paper sets them.
- Reference statistics: SatMAE's ``SentinelIndividualImageDataset.mean`` / ``.std`` (fMoW-Sentinel,
  Sentinel-2 L1C, DN) divided by 10000.
"""

from __future__ import annotations

import re
import threading

from pydantic import BaseModel, ConfigDict, Field, model_validator

_BAND_NUMBER = re.compile(r"B0*(\d+)(A?)")


def canonical_band(name: str) -> str:
    """A band's name as the registry spells it: ``'B02'`` → ``'B2'``, ``' b8a '`` → ``'B8A'``,
    anything that is not ``B<number>[A]`` upper-cased without spaces (``'nir'`` → ``'NIR'``)."""
    text = re.sub(r"\s+", "", str(name)).upper()
    match = _BAND_NUMBER.fullmatch(text)
    return f"B{int(match.group(1))}{match.group(2)}" if match else text


class Band(BaseModel):
    """One spectral band of a sensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    wavelength_nm: float = Field(gt=0, description="centre wavelength")
    resolution_m: float = Field(gt=0, description="native ground sample distance")
    common_name: str | None = Field(None, description="STAC eo:common_name (red, nir, swir16, ...): renders use it")


class Sensor(BaseModel):
    """What a raster of one sensor and product holds. ``reflectance = DN · scale + offset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    bands: tuple[Band, ...] = Field(min_length=1)
    nodata: float | None = Field(0.0, description="the DN of a pixel without data (None: every value is data)")
    scale: float = Field(1.0, gt=0)
    offset: float = 0.0
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict, description="named band groups (streams)")
    mean: dict[str, float] | None = Field(None, description="reference reflectance mean per band")
    std: dict[str, float] | None = Field(None, description="reference reflectance std per band")

    @model_validator(mode="after")
    def _names_known(self) -> Sensor:
        names = [canonical_band(b.name) for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"sensor {self.name!r}: band names repeat: {', '.join(names)}")
        known = set(names)
        for group, members in self.groups.items():
            unknown = [m for m in members if canonical_band(m) not in known]
            if unknown or not members:
                raise ValueError(f"sensor {self.name!r}: group {group!r} names {', '.join(unknown) or 'no band'}, "
                                 f"not among its bands {', '.join(names)}")
        for field in ("mean", "std"):
            unknown = [k for k in (getattr(self, field) or {}) if canonical_band(k) not in known]
            if unknown:
                raise ValueError(f"sensor {self.name!r}: {field} of unknown bands {', '.join(unknown)}")
        return self

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(canonical_band(b.name) for b in self.bands)

    def find(self, name: str) -> Band | None:
        """The band called ``name`` (any spelling :func:`canonical_band` maps to it), or None."""
        key = canonical_band(name)
        return next((b for b in self.bands if canonical_band(b.name) == key), None)

    def band(self, name: str) -> Band:
        found = self.find(name)
        if found is None:
            raise KeyError(f"{name!r} is not a band of sensor {self.name} ({', '.join(self.band_names)})")
        return found

    def group(self, name: str) -> tuple[str, ...]:
        if name not in self.groups:
            raise KeyError(f"sensor {self.name} has no group {name!r}; its groups: {', '.join(self.groups) or 'none'}")
        return tuple(canonical_band(b) for b in self.groups[name])

    def reference_stats(self, name: str) -> tuple[float, float] | None:
        """The reference (mean, std) of a band's reflectance, or None where the record has none."""
        means = {canonical_band(k): v for k, v in (self.mean or {}).items()}
        stds = {canonical_band(k): v for k, v in (self.std or {}).items()}
        key = canonical_band(name)
        return (means[key], stds[key]) if key in means and key in stds else None


def _bands(rows: list[tuple[str, float, float, str | None]]) -> tuple[Band, ...]:
    return tuple(Band(name=n, wavelength_nm=w, resolution_m=r, common_name=c) for n, w, r, c in rows)


# Sentinel-2A MSI (ESA Sentinel-2 User Handbook, table 1): name, centre nm, resolution m, common name.
_S2_BANDS = [
    ("B1", 442.7, 60, "coastal"), ("B2", 492.4, 10, "blue"), ("B3", 559.8, 10, "green"),
    ("B4", 664.6, 10, "red"), ("B5", 704.1, 20, "rededge"), ("B6", 740.5, 20, "rededge"),
    ("B7", 782.8, 20, "rededge"), ("B8", 832.8, 10, "nir"), ("B8A", 864.7, 20, "nir08"),
    ("B9", 945.1, 60, "nir09"), ("B10", 1373.5, 60, "cirrus"), ("B11", 1613.7, 20, "swir16"),
    ("B12", 2202.4, 20, "swir22"),
]
# SatMAE's band groups (channel_groups over B2 B3 B4 B5 B6 B7 B8 B8A B11 B12).
_S2_GROUPS = {"rgbn": ("B2", "B3", "B4", "B8"), "rededge": ("B5", "B6", "B7", "B8A"), "swir": ("B11", "B12")}
# SatMAE's SentinelIndividualImageDataset.mean / .std (fMoW-Sentinel, L1C DN, bands B1 … B12 with
# B8A after B8), ÷ 10000 = QUANTIFICATION_VALUE: reflectance.
_S2_ORDER = [b[0] for b in _S2_BANDS]
_S2_MEAN_DN = [1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151,
               1846.87040806, 1762.59530783, 1972.62420416, 582.72633433, 14.77112979, 1732.16362238,
               1247.91870117]
_S2_STD_DN = [633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639,
              1258.36394548, 1233.1492281, 1364.38688993, 472.37967789, 14.3114637, 1310.36996126,
              1087.6020813]

# Landsat 8/9 OLI (Landsat 8 Data Users Handbook, table of OLI band edges: centre = midpoint, e.g. B4
# 0.636–0.673 µm → 654.5 nm). B8 is panchromatic.
_OLI_BANDS = [
    ("B1", 443, 30, "coastal"), ("B2", 482, 30, "blue"), ("B3", 561.5, 30, "green"), ("B4", 654.5, 30, "red"),
    ("B5", 865, 30, "nir08"), ("B6", 1608.5, 30, "swir16"), ("B7", 2200.5, 30, "swir22"),
    ("B8", 589.5, 15, "pan"), ("B9", 1373.5, 30, "cirrus"),
]
# Landsat 7 ETM+ (USGS band designations: B1 0.45–0.52 µm … B8 0.52–0.90 µm; midpoints). No thermal B6.
_ETM_BANDS = [
    ("B1", 485, 30, "blue"), ("B2", 560, 30, "green"), ("B3", 660, 30, "red"), ("B4", 835, 30, "nir08"),
    ("B5", 1650, 30, "swir16"), ("B7", 2220, 30, "swir22"), ("B8", 710, 15, "pan"),
]
# RGB + NIR aerial, as USDA NAIP (Leica ADS100 bands: blue 435–495, green 525–585, red 619–651,
# NIR 808–882 nm; 0.6 m since 2018; file band order R, G, B, NIR; 8-bit, no calibration to reflectance).
_AERIAL_BANDS = [("R", 635, 0.6, "red"), ("G", 555, 0.6, "green"), ("B", 465, 0.6, "blue"),
                 ("NIR", 845, 0.6, "nir")]

_LANDSAT_L2 = {"scale": 2.75e-5, "offset": -0.2, "nodata": 0.0}  # USGS Collection 2 Level-2 surface reflectance

BUILTIN_SENSORS: tuple[Sensor, ...] = (
    Sensor(name="sentinel2_l1c", description="Sentinel-2 MSI Level-1C top-of-atmosphere reflectance × 10000 "
           "(processing baseline < 04.00; later products: offset −0.1)", bands=_bands(_S2_BANDS),
           nodata=0.0, scale=1e-4, offset=0.0, groups=_S2_GROUPS,
           mean={b: m / 1e4 for b, m in zip(_S2_ORDER, _S2_MEAN_DN, strict=True)},
           std={b: s / 1e4 for b, s in zip(_S2_ORDER, _S2_STD_DN, strict=True)}),
    Sensor(name="sentinel2_l2a", description="Sentinel-2 MSI Level-2A surface reflectance × 10000 (no B10; "
           "processing baseline < 04.00; later products: offset −0.1)",
           bands=_bands([b for b in _S2_BANDS if b[0] != "B10"]), nodata=0.0, scale=1e-4, offset=0.0,
           groups=_S2_GROUPS),
    Sensor(name="landsat_oli", description="Landsat 8/9 OLI, Collection 2 Level-2 surface reflectance",
           bands=_bands(_OLI_BANDS), groups={"vnir": ("B2", "B3", "B4", "B5"), "swir": ("B6", "B7")},
           **_LANDSAT_L2),
    Sensor(name="landsat7_etm", description="Landsat 7 ETM+, Collection 2 Level-2 surface reflectance",
           bands=_bands(_ETM_BANDS), groups={"vnir": ("B1", "B2", "B3", "B4"), "swir": ("B5", "B7")},
           **_LANDSAT_L2),
    Sensor(name="aerial_rgbn", description="RGB + NIR aerial imagery (NAIP-like), 8-bit DN / 255",
           bands=_bands(_AERIAL_BANDS), nodata=None, scale=1 / 255, offset=0.0,
           groups={"rgbn": ("R", "G", "B", "NIR")}),
)

_SENSORS: dict[str, Sensor] = {s.name: s for s in BUILTIN_SENSORS}
_lock = threading.Lock()


def register_sensor(sensor: Sensor) -> Sensor:
    """Add a sensor record by its name (a name can be registered once, with one record)."""
    with _lock:
        existing = _SENSORS.get(sensor.name)
        if existing is not None and existing != sensor:
            raise ValueError(f"sensor {sensor.name!r} is already registered with another record")
        _SENSORS[sensor.name] = sensor
    return sensor


def available_sensors() -> list[str]:
    return sorted(_SENSORS)


def get_sensor(sensor: str | Sensor) -> Sensor:
    """A registered sensor by name, or the record itself. Raises KeyError naming the registered ones."""
    if isinstance(sensor, Sensor):
        return sensor
    if sensor not in _SENSORS:
        raise KeyError(f"unknown sensor {sensor!r}; registered: {', '.join(available_sensors())} "
                       "(or give a whole sensor record in the config)")
    return _SENSORS[sensor]
