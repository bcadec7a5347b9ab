"""Seeded synthetic Sentinel-2-like scenes with planted vessels and brick kilns.

The demo and the tests need imagery with known answers and no downloads. A scene is a
4-band (B02, B03, B04, B08) uint16 GeoTIFF in reflectance x 10000: dark water and bright,
vegetated land split by a wavy coastline, bright roads and piers as distractors, vessels
on the water and kilns on the land. Everything follows from ``seed`` alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.errors import RasterioError

from sitewatch.imagery.errors import OutputError, UsageError
from sitewatch.imagery.scenes.georef import box_corners, pixel_to_map, to_lonlat

#: Band order of every synthetic scene.
BANDS = ("B02", "B03", "B04", "B08")

#: Classes that can be planted.
CLASSES = ("vessel", "kiln")

#: Blocks of the written GeoTIFF (aligned reads are several times faster than unaligned).
BLOCK = 256

#: Pixels kept clear between an object and the coast, a distractor, nodata or another object.
CLEARANCE = 3

#: Smallest scene side that leaves room for a coastline and a few objects.
MIN_SIDE = 64

# Mean reflectance x 10000 per band (B02, B03, B04, B08).
_WATER = np.array([650.0, 560.0, 420.0, 320.0], dtype=np.float32)
_LAND = np.array([1650.0, 1950.0, 1900.0, 3400.0], dtype=np.float32)
_ROAD = np.array([3400.0, 3450.0, 3550.0, 3300.0], dtype=np.float32)
_PIER = np.array([4600.0, 4650.0, 4700.0, 4400.0], dtype=np.float32)
_VESSEL = np.array([7200.0, 7400.0, 7500.0, 8000.0], dtype=np.float32)
_KILN_RING = np.array([1700.0, 1950.0, 3400.0, 2300.0], dtype=np.float32)
_KILN_CENTRE = np.array([700.0, 700.0, 760.0, 820.0], dtype=np.float32)
_NOISE_SIGMA = np.array([35.0, 35.0, 40.0, 50.0], dtype=np.float32)

# Sub-samples per pixel side when rasterising objects, for anti-aliased edges.
_SUPERSAMPLE = 5
# Placement attempts (each a vectorised batch of candidate centres) before giving up.
_ATTEMPTS = 40
_BATCH = 512


@dataclass(frozen=True)
class PlantedObject:
    """One object drawn into a synthetic scene.

    Attributes:
        cls: ``"vessel"`` or ``"kiln"``.
        box: Axis-aligned bounding box ``(x0, y0, x1, y1)`` in pixel coordinates
            (x is the column, y the row), continuous, 0 at a pixel's corner.
    """

    cls: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.cls not in CLASSES:
            raise UsageError(f"planted object class {self.cls!r} is not one of {', '.join(CLASSES)}")
        if len(self.box) != 4:
            raise UsageError(f"planted object box must be (x0, y0, x1, y1), got {self.box!r}")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise UsageError(f"planted object box must have x1 > x0 and y1 > y0, got {self.box!r}")


@dataclass(frozen=True)
class _Shape:
    """A superellipse (p=2 ellipse, larger p squarer) centred at (cx, cy), rotated by theta."""

    cx: float
    cy: float
    a: float  # half-length along the rotated u axis
    b: float  # half-width along the rotated v axis
    p: float
    theta: float

    def extents(self) -> tuple[float, float]:
        """Half-extents (x, y) of the axis-aligned bounding box."""
        t = np.linspace(0.0, 2.0 * math.pi, 2048, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        u = self.a * np.sign(c) * np.abs(c) ** (2.0 / self.p)
        v = self.b * np.sign(s) * np.abs(s) ** (2.0 / self.p)
        ct, st = math.cos(self.theta), math.sin(self.theta)
        return float(np.abs(u * ct - v * st).max()), float(np.abs(u * st + v * ct).max())

    def box(self) -> tuple[float, float, float, float]:
        """Bounding box, rounded outwards to 1/1000 pixel."""
        hx, hy = self.extents()
        return (
            math.floor((self.cx - hx) * 1000) / 1000,
            math.floor((self.cy - hy) * 1000) / 1000,
            math.ceil((self.cx + hx) * 1000) / 1000,
            math.ceil((self.cy + hy) * 1000) / 1000,
        )


def make_scene(
    path: Path,
    *,
    seed: int = 0,
    width: int = 1024,
    height: int = 1024,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 4_800_000.0),
    pixel_size: float = 10.0,
    n_vessels: int = 25,
    n_kilns: int = 15,
    nodata_border: int = 0,
) -> list[PlantedObject]:
    """Write a synthetic Sentinel-2-like scene and return the objects planted in it.

    The file is a 4-band uint16 GeoTIFF (B02, B03, B04, B08; tiled 256x256, DEFLATE,
    nodata 0) on a north-up grid whose upper-left corner is ``origin``. It is written to a
    temporary name beside ``path`` and renamed into place.

    Args:
        path: Output GeoTIFF; an existing file is replaced.
        seed: Seed for :func:`numpy.random.default_rng`; equal seeds give equal scenes.
        width: Columns.
        height: Rows.
        crs: Any CRS pyproj understands; the default is UTM zone 33N.
        origin: ``(x, y)`` of the upper-left corner in ``crs`` units.
        pixel_size: Pixel side in ``crs`` units.
        n_vessels: Vessels to plant on the water.
        n_kilns: Kilns to plant on the land.
        nodata_border: Columns on the left set to 0 (nodata) in every band, kept free of
            objects.

    Returns:
        The planted objects, vessels first.

    Raises:
        UsageError: An argument is out of range, or the objects do not fit.
        OutputError: The file cannot be written.
    """
    path = Path(path)
    crs_wkt = _check_args(width, height, crs, pixel_size, n_vessels, n_kilns, nodata_border)
    rng = np.random.default_rng(seed)

    land_soft, field = _terrain(rng, height, width)
    land = land_soft >= 0.5
    img = _base_image(rng, land_soft, height, width)

    blocked = np.zeros((height, width), dtype=bool)
    if nodata_border:
        blocked[:, :nodata_border] = True
    _draw_roads(rng, img, land_soft, blocked)
    _draw_piers(rng, img, land, field, blocked)

    objects: list[PlantedObject] = []
    footprints: list[tuple[int, int, int, int]] = []
    for cls, count, bad in (("vessel", n_vessels, land | blocked), ("kiln", n_kilns, ~land | blocked)):
        sat = _integral(bad)
        for _ in range(count):
            shape = _random_shape(rng, cls)
            shape = _place(rng, shape, sat, footprints, height, width, cls, count)
            _draw_object(img, shape, cls, rng)
            box = shape.box()
            footprints.append(_footprint(box))
            objects.append(PlantedObject(cls, box))

    img += rng.standard_normal(img.shape, dtype=np.float32) * _NOISE_SIGMA[:, None, None]
    data = np.clip(np.rint(img), 1, 65535).astype(np.uint16)
    if nodata_border:
        data[:, :, :nodata_border] = 0

    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    write_scene(path, data, crs_wkt, transform, BANDS, {"SITEWATCH_SYNTHETIC_SEED": str(seed)}, nodata=0)
    return objects


def truth_to_geojson(objects: Sequence[PlantedObject], transform: Affine, crs: Any) -> dict[str, Any]:
    """Planted objects as an RFC 7946 FeatureCollection (WGS84 lon/lat), e.g. for labels.

    Args:
        objects: Objects returned by :func:`make_scene`.
        transform: The scene's pixel-to-CRS affine transform.
        crs: The scene's CRS (anything pyproj accepts, a rasterio CRS included).

    Returns:
        A FeatureCollection of counter-clockwise box polygons with property ``class``.

    Raises:
        UsageError: ``crs`` is not a CRS.
    """
    try:
        wkt = CRS.from_user_input(crs).to_wkt()
    except CRSError as exc:
        raise UsageError(f"CRS {crs!r} is not understood ({exc}); pass e.g. 'EPSG:32633'") from None
    boxes = np.array([o.box for o in objects], dtype=float).reshape(-1, 4)
    cols, rows = box_corners(boxes)
    xs, ys = pixel_to_map(transform, cols, rows)
    lon, lat = to_lonlat(wkt, xs, ys)
    lon, lat = np.asarray(lon).reshape(-1, 4), np.asarray(lat).reshape(-1, 4)
    # Shoelace sign: a transform that is not north-up can mirror the ring, so fix it here.
    area2 = (lon * np.roll(lat, -1, axis=1) - np.roll(lon, -1, axis=1) * lat).sum(axis=1)
    features = []
    for i, obj in enumerate(objects):
        ring = [[round(float(x), 8), round(float(y), 8)] for x, y in zip(lon[i], lat[i], strict=True)]
        if area2[i] < 0:
            ring.reverse()
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "id": i,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"class": obj.cls},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _check_args(
    width: int, height: int, crs: str, pixel_size: float, n_vessels: int, n_kilns: int, nodata_border: int
) -> str:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UsageError(f"scene size {width}x{height} is too small; use at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise UsageError(f"pixel_size must be a positive number, got {pixel_size!r}")
    if n_vessels < 0 or n_kilns < 0:
        raise UsageError(f"object counts must not be negative, got n_vessels={n_vessels}, n_kilns={n_kilns}")
    if not 0 <= nodata_border <= width // 2:
        raise UsageError(f"nodata_border must be between 0 and half the width ({width // 2}), got {nodata_border}")
    try:
        return str(CRS.from_user_input(crs).to_wkt())
    except CRSError as exc:
        raise UsageError(f"CRS {crs!r} is not understood ({exc}); pass e.g. 'EPSG:32633'") from None


def _smooth_field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (sigma in pixels), scaled to mean 0 and std 1."""
    noise = rng.standard_normal((h, w), dtype=np.float32)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(h, w)).astype(np.float32)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _blur121(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge padding."""
    p = np.pad(a, 1, mode="edge")
    a = (p[:-2, 1:-1] + 2 * p[1:-1, 1:-1] + p[2:, 1:-1]) / 4
    p = np.pad(a, 1, mode="edge")
    out: np.ndarray = (p[1:-1, :-2] + 2 * p[1:-1, 1:-1] + p[1:-1, 2:]) / 4
    return out


def _terrain(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft land fraction per pixel (0 water .. 1 land) and the field whose level set is the coast."""
    # A tilted plane makes one coastline across the scene; smooth noise makes it wavy
    # (and now and then an island or a lagoon).
    phi = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = max(h, w)
    plane = ((xx - w / 2) * math.cos(phi) + (yy - h / 2) * math.sin(phi)) / (side / 2)
    field = plane + 0.35 * _smooth_field(rng, h, w, side / 14) + 0.08 * _smooth_field(rng, h, w, side / 60)
    land_fraction = rng.uniform(0.4, 0.6)
    level = np.quantile(field[:: max(1, h // 256), :: max(1, w // 256)], 1 - land_fraction)
    field -= level
    land_soft = _blur121((field >= 0).astype(np.float32))
    return land_soft, field


def _base_image(rng: np.random.Generator, land_soft: np.ndarray, h: int, w: int) -> np.ndarray:
    """Water and land reflectance without objects, as float32 ``(4, h, w)``."""
    side = max(h, w)
    broad = _smooth_field(rng, h, w, side / 40)
    fine = _smooth_field(rng, h, w, 1.5)
    soil = np.clip(_smooth_field(rng, h, w, side / 80) - 1.0, 0, 1.0)  # bare fields: redder, less NIR
    water = _WATER[:, None, None] + np.array([40, 40, 30, 25], np.float32)[:, None, None] * broad
    land = (
        _LAND[:, None, None]
        + np.array([150, 170, 190, 260], np.float32)[:, None, None] * broad
        + np.array([120, 130, 150, 220], np.float32)[:, None, None] * fine
        + np.array([300, 350, 700, -900], np.float32)[:, None, None] * soil
    )
    img: np.ndarray = (water + (land - water) * land_soft).astype(np.float32)
    return img


def _segment_coverage(
    x0: float, y0: float, x1: float, y1: float, half_width: float, h: int, w: int
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Soft coverage (0..1) of a thick segment within its bounding window, or None if off-scene."""
    c0 = max(0, math.floor(min(x0, x1) - half_width - 1))
    c1 = min(w, math.ceil(max(x0, x1) + half_width + 1))
    r0 = max(0, math.floor(min(y0, y1) - half_width - 1))
    r1 = min(h, math.ceil(max(y0, y1) + half_width + 1))
    if c1 <= c0 or r1 <= r0:
        return None
    py, px = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    dist = np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))
    return (slice(r0, r1), slice(c0, c1)), np.clip(half_width + 0.5 - dist, 0, 1)


def _draw_roads(rng: np.random.Generator, img: np.ndarray, land_soft: np.ndarray, blocked: np.ndarray) -> None:
    """Bright straight roads, on land only."""
    h, w = land_soft.shape
    for _ in range(max(2, round(6 * h * w / 1024**2))):
        x0, x1 = rng.uniform(-0.1 * w, 1.1 * w, size=2)
        y0, y1 = rng.uniform(-0.1 * h, 1.1 * h, size=2)
        drawn = _segment_coverage(x0, y0, x1, y1, rng.uniform(0.4, 1.0), h, w)
        if drawn is None:
            continue
        win, cov = drawn
        cov = cov * land_soft[win]
        img[(slice(None), *win)] += (_ROAD[:, None, None] - img[(slice(None), *win)]) * cov
        blocked[win] |= cov > 0.05


def _draw_piers(
    rng: np.random.Generator, img: np.ndarray, land: np.ndarray, field: np.ndarray, blocked: np.ndarray
) -> None:
    """Bright piers from the coast into the water: vessel look-alikes."""
    h, w = land.shape
    coast = land.copy()
    coast[1:-1, 1:-1] &= ~(land[:-2, 1:-1] & land[2:, 1:-1] & land[1:-1, :-2] & land[1:-1, 2:])
    coast[[0, -1], :] = False
    coast[:, [0, -1]] = False
    idx = np.flatnonzero(coast)
    if idx.size == 0:
        return
    gy, gx = np.gradient(field)
    for i in rng.choice(idx, size=min(idx.size, max(2, round(5 * h * w / 1024**2))), replace=False):
        r, c = divmod(int(i), w)
        nx, ny = -float(gx[r, c]), -float(gy[r, c])  # the field grows towards land
        norm = math.hypot(nx, ny)
        if norm == 0:
            continue
        length = rng.uniform(10, 30)
        x0, y0 = c + 0.5, r + 0.5
        drawn = _segment_coverage(x0, y0, x0 + nx / norm * length, y0 + ny / norm * length, rng.uniform(0.5, 1.2), h, w)
        if drawn is None:
            continue
        win, cov = drawn
        img[(slice(None), *win)] += (_PIER[:, None, None] - img[(slice(None), *win)]) * cov
        blocked[win] |= cov > 0.05


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=sat[1:, 1:])
    return sat


def _random_shape(rng: np.random.Generator, cls: str) -> _Shape:
    """Size, squareness and orientation of one object, centred at the origin."""
    theta = rng.uniform(0, math.pi)
    if cls == "vessel":
        length = rng.uniform(3.0, 12.0)
        width = rng.uniform(2.0, min(5.0, length))
        return _Shape(0.0, 0.0, length / 2, width / 2, 2.0, theta)
    a, b = rng.uniform(8.0, 14.0, size=2) / 2
    return _Shape(0.0, 0.0, float(a), float(b), float(rng.choice([2.0, 5.0])), theta)


def _footprint(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Pixel rows and columns ``(r0, r1, c0, c1)`` a box touches (half-open)."""
    x0, y0, x1, y1 = box
    return math.floor(y0), math.ceil(y1), math.floor(x0), math.ceil(x1)


def _place(
    rng: np.random.Generator,
    shape: _Shape,
    sat: np.ndarray,
    footprints: list[tuple[int, int, int, int]],
    h: int,
    w: int,
    cls: str,
    count: int,
) -> _Shape:
    """Move ``shape`` to a random spot clear of bad pixels and other objects."""
    hx, hy = shape.extents()
    placed = np.array(footprints, dtype=np.int64).reshape(-1, 4)
    margin_x, margin_y = hx + CLEARANCE + 1, hy + CLEARANCE + 1
    for _ in range(_ATTEMPTS):
        cx = rng.uniform(margin_x, w - margin_x, size=_BATCH)
        cy = rng.uniform(margin_y, h - margin_y, size=_BATCH)
        r0 = np.floor(cy - hy).astype(np.int64) - CLEARANCE
        r1 = np.ceil(cy + hy).astype(np.int64) + CLEARANCE
        c0 = np.floor(cx - hx).astype(np.int64) - CLEARANCE
        c1 = np.ceil(cx + hx).astype(np.int64) + CLEARANCE
        ok = (r0 >= 0) & (c0 >= 0) & (r1 <= h) & (c1 <= w)
        r0, r1, c0, c1 = (np.clip(v, 0, n) for v, n in ((r0, h), (r1, h), (c0, w), (c1, w)))
        ok &= (sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]) == 0
        if placed.size:
            overlap = (
                (r0[:, None] < placed[None, :, 1])
                & (placed[None, :, 0] < r1[:, None])
                & (c0[:, None] < placed[None, :, 3])
                & (placed[None, :, 2] < c1[:, None])
            )
            ok &= ~overlap.any(axis=1)
        hits = np.flatnonzero(ok)
        if hits.size:
            k = hits[0]
            return _Shape(float(cx[k]), float(cy[k]), shape.a, shape.b, shape.p, shape.theta)
    terrain = "water" if cls == "vessel" else "land"
    raise UsageError(
        f"could not fit {count} objects of class {cls!r} on the {terrain} of a {w}x{h} scene; "
        f"plant fewer objects or make the scene larger"
    )


def _coverage(shape: _Shape, scale: float, win: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each pixel in ``win`` inside ``shape`` shrunk by ``scale``."""
    r0, r1, c0, c1 = win
    s = _SUPERSAMPLE
    ys = r0 + (np.arange((r1 - r0) * s, dtype=np.float32) + 0.5) / s - shape.cy
    xs = c0 + (np.arange((c1 - c0) * s, dtype=np.float32) + 0.5) / s - shape.cx
    ct, st = math.cos(shape.theta), math.sin(shape.theta)
    u = xs[None, :] * ct + ys[:, None] * st
    v = -xs[None, :] * st + ys[:, None] * ct
    inside = np.abs(u / (shape.a * scale)) ** shape.p + np.abs(v / (shape.b * scale)) ** shape.p <= 1
    cov: np.ndarray = inside.reshape(r1 - r0, s, c1 - c0, s).mean(axis=(1, 3), dtype=np.float32)
    return cov


def _draw_object(img: np.ndarray, shape: _Shape, cls: str, rng: np.random.Generator) -> None:
    """Blend one object into ``img`` in place."""
    win = _footprint(shape.box())
    r0, r1, c0, c1 = win
    view = img[:, r0:r1, c0:c1]
    outer = _coverage(shape, 1.0, win)
    if cls == "vessel":
        bright = _VESSEL * np.float32(rng.uniform(0.75, 1.15))
        view += (bright[:, None, None] - view) * outer
        return
    ring_width = rng.uniform(1.8, 3.0)
    inner = _coverage(shape, 1.0 - ring_width / min(shape.a, shape.b), win)
    ring = outer - inner
    view += (_KILN_RING[:, None, None] - view) * ring + (_KILN_CENTRE[:, None, None] - view) * inner


def write_scene(
    path: Path, data: np.ndarray, crs_wkt: str, transform: Affine, band_names: Sequence[str],
    tags: dict[str, str], *, nodata: float | None = None, photometric: str | None = None,
) -> None:
    """Write ``data`` as a tiled GeoTIFF (DEFLATE, named bands, ``tags``) to a temporary name, then rename it.

    Raises:
        OutputError: the file cannot be written (names it).
    """
    count, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
        "crs": crs_wkt, "transform": transform, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
        "compress": "deflate", "predictor": 2,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if photometric is not None:
        profile["photometric"] = photometric
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, name in enumerate(band_names, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(**tags)
        os.replace(tmp, path)
    except (RasterioError, OSError) as exc:
        raise OutputError(
            f"{path}: cannot write the synthetic scene ({exc}); check the folder exists and is writable"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
