"""Seeded synthetic high-resolution RGB scenes of the Brick Belt with planted brick kilns.

Stands in for ~1 m imagery of the Indo-Gangetic plain, which we do not have: a 3-band
uint8 GeoTIFF (red, green, blue) of fields, roads, villages, trees and ponds, with Fixed
Chimney Bull's Trench Kilns (FCBTK) planted among look-alikes. A kiln is a rounded ring
50-90 m by 25-45 m: brick-red rim, an ash-grey or sooty firing track, a central island with
a small dark chimney and its shadow, on a bare-earth apron with rows of drying green bricks.
The look-alikes are there so that no single colour rule finds the kilns: bare earth and clay
pits, brick-red buildings (some with a courtyard, so ring-like), reddish roofs and brick
stacks, circular threshing floors, dark trees, shadows and ponds.

All sizes are in metres, so a scene at ``pixel_m=0.5`` shows the same landscape at twice
the pixels. Everything follows from ``seed`` alone; generation is vectorised numpy (no
per-pixel Python loops), well under a second for 1024x1024 pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.georef import pixel_to_map, to_lonlat
from sitewatch.imagery.synthetic.sentinel2 import _blur121, _segment_coverage, _smooth_field, write_scene

#: Band order (and descriptions) of every scene.
BANDS = ("red", "green", "blue")

#: Blocks of the written GeoTIFF.
BLOCK = 256

#: Smallest scene side.
MIN_SIDE = 64

#: Kiln outline sizes in metres (long side, short side).
KILN_LENGTH_M = (50.0, 90.0)
KILN_WIDTH_M = (25.0, 45.0)

#: Default kilns per 1024 x 1024 m of ground (the count scales with the ground area).
KILNS_PER_KM2 = (8, 15)

# Region the scene's upper-left corner is drawn from (UTM 44N metres: the Indo-Gangetic plain).
_EASTING = (300_000.0, 700_000.0)
_NORTHING = (2_800_000.0, 3_200_000.0)

# Gap in metres kept between kiln outlines, and between kilns and the distractors.
_KILN_GAP_M = 12.0
_CLEAR_M = 6.0
# Points per quarter circle of a kiln outline.
_ARC_POINTS = 8
_ATTEMPTS = 40
_BATCH = 256
_AREA_UNIT = 1024.0 * 1024.0

# Display-space colours (0..1), red, green, blue.
_CROPS = np.array(
    [
        [0.30, 0.42, 0.20],  # wheat, young
        [0.24, 0.36, 0.17],  # dense crop, darker
        [0.36, 0.47, 0.25],  # light green
        [0.27, 0.44, 0.22],  # lush
        [0.64, 0.60, 0.30],  # mustard in flower
        [0.60, 0.55, 0.40],  # stubble / straw
        [0.50, 0.40, 0.31],  # ploughed soil
        [0.60, 0.43, 0.33],  # reddish dry soil
        [0.37, 0.31, 0.26],  # moist dark soil
        [0.24, 0.30, 0.27],  # flooded paddy
    ],
    dtype=np.float32,
)
_BUND = np.array([0.56, 0.51, 0.39], dtype=np.float32)
_ROADS = np.array([[0.52, 0.51, 0.50], [0.62, 0.55, 0.45], [0.42, 0.41, 0.41]], dtype=np.float32)
_ROOFS = np.array(
    [
        [0.80, 0.79, 0.76],  # whitewashed concrete
        [0.58, 0.57, 0.56],  # grey concrete
        [0.24, 0.23, 0.23],  # dark
        [0.60, 0.35, 0.27],  # brick / tile
        [0.50, 0.32, 0.26],  # old brick
        [0.50, 0.56, 0.62],  # blue tin
    ],
    dtype=np.float32,
)
_ROOF_P = np.array([0.25, 0.22, 0.13, 0.22, 0.12, 0.06])
_BRICK = np.array([0.60, 0.35, 0.27], dtype=np.float32)
_EARTH = np.array([0.60, 0.50, 0.40], dtype=np.float32)
_CLAY = np.array([0.44, 0.34, 0.28], dtype=np.float32)
_THRESH = np.array([0.70, 0.64, 0.50], dtype=np.float32)
_TREE = np.array([0.15, 0.23, 0.11], dtype=np.float32)
_WATERS = np.array([[0.12, 0.16, 0.17], [0.17, 0.25, 0.18], [0.26, 0.25, 0.21]], dtype=np.float32)
_ASH = np.array([0.47, 0.45, 0.43], dtype=np.float32)
_SOOT = np.array([0.17, 0.15, 0.14], dtype=np.float32)
_GREEN_BRICK = np.array([0.74, 0.68, 0.58], dtype=np.float32)
_HAZE = np.array([0.74, 0.77, 0.84], dtype=np.float32)


@dataclass(frozen=True)
class Kiln:
    """One kiln planted in a scene.

    Attributes:
        polygon: Outline corners ``(col, row)`` in pixel coordinates (continuous, 0 at a
            pixel's corner): the rotated rounded ring, clipped to the image where the scene
            edge cuts it; open (the first corner is not repeated).
        bbox: ``(x0, y0, x1, y1)``: the outline's pixel bounding box, inside the image.
        centre: ``(col, row)`` of the kiln's centre (always inside the image).
        length_m: Long side of the whole kiln, metres.
        width_m: Short side, metres.
        angle_deg: Direction of the long side, degrees clockwise from the image's x axis.
        cut: Whether the scene edge cuts the kiln.
    """

    polygon: tuple[tuple[float, float], ...]
    bbox: tuple[float, float, float, float]
    centre: tuple[float, float]
    length_m: float
    width_m: float
    angle_deg: float
    cut: bool

    def to_lonlat_polygon(self, transform: Affine, crs: Any) -> list[list[float]]:
        """The outline in WGS84 ``[lon, lat]``: a closed, counter-clockwise ring (RFC 7946).

        Args:
            transform: The scene's pixel-to-CRS affine transform.
            crs: The scene's CRS (anything pyproj accepts, a rasterio CRS included).

        Raises:
            UsageError: ``crs`` is not a CRS.
        """
        cols, rows = np.array(self.polygon, dtype=float).T
        xs, ys = pixel_to_map(transform, cols, rows)
        lon, lat = to_lonlat(_wkt(crs), xs, ys)
        lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
        ring = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lon, lat, strict=True)]
        area2 = float((lon * np.roll(lat, -1) - np.roll(lon, -1) * lat).sum())
        if area2 < 0:
            ring.reverse()
        ring.append(list(ring[0]))
        return ring


def kilns_to_geojson(kilns: Sequence[Kiln], transform: Affine, crs: Any) -> dict[str, Any]:
    """Kilns as an RFC 7946 FeatureCollection of lon/lat Polygons with property ``class: kiln``.

    Args:
        kilns: Kilns returned by :func:`make_rgb_kiln_scene`.
        transform: The scene's pixel-to-CRS affine transform.
        crs: The scene's CRS.

    Returns:
        A FeatureCollection; each exterior ring is closed and counter-clockwise.
    """
    features = [
        {
            "type": "Feature",
            "id": i,
            "geometry": {"type": "Polygon", "coordinates": [k.to_lonlat_polygon(transform, crs)]},
            "properties": {"class": "kiln"},
        }
        for i, k in enumerate(kilns)
    ]
    return {"type": "FeatureCollection", "features": features}


def make_rgb_kiln_scene(
    path: Path,
    seed: int,
    width: int = 1024,
    height: int = 1024,
    pixel_m: float = 1.0,
    crs: str = "EPSG:32644",
    n_kilns: int | None = None,
) -> list[Kiln]:
    """Write a synthetic high-resolution RGB scene with brick kilns; return the kilns.

    The file is a 3-band uint8 GeoTIFF (descriptions ``red``, ``green``, ``blue``; tiled
    256x256, DEFLATE) on a north-up grid of ``pixel_m`` metres whose upper-left corner is
    drawn from the seed in easting 300-700 km, northing 2.8-3.2 Mm (the Indo-Gangetic plain
    in UTM zone 44N). It is written to a temporary name beside ``path`` and renamed.

    Args:
        path: Output GeoTIFF; an existing file is replaced.
        seed: Seed for :func:`numpy.random.default_rng`; equal seeds give equal scenes.
        width: Columns.
        height: Rows.
        pixel_m: Pixel side in metres.
        crs: A projected CRS in metres; the default is UTM zone 44N.
        n_kilns: Kilns to plant; by default a random 8-15 per 1024 x 1024 m of ground
            (as many of those as fit). A kiln's centre is always inside the image; up to
            about a third of it may be cut off by the scene edge.

    Returns:
        The kilns, in the order they were placed.

    Raises:
        UsageError: An argument is out of range, or the kilns do not fit.
        OutputError: The file cannot be written.
    """
    path = Path(path)
    crs_wkt = _check_args(width, height, pixel_m, crs, n_kilns)
    rng = np.random.default_rng(seed)
    h, w, pm = height, width, float(pixel_m)
    transform = _origin(rng, w, h, pm)
    area = w * h * pm * pm / _AREA_UNIT
    if n_kilns is None:
        n_kilns = round(rng.integers(KILNS_PER_KM2[0], KILNS_PER_KM2[1] + 1) * area)
        strict = False
    else:
        strict = True

    sun = _sun(rng, pm)
    kilns = _place_kilns(rng, n_kilns, h, w, pm, strict)
    keep_out = np.array([k.zone for k in kilns], dtype=float).reshape(-1, 4)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = _fine_noise(rng, h, w)
    irregular = _lowres_field(rng, h, w, 10.0 / pm)
    img = _fields(rng, xx, yy, pm, fine)
    roads = _roads(rng, img, xx, yy, pm)
    del xx, yy
    _blobs(rng, img, pm, irregular, fine, keep_out, area)
    villages = _villages_and_buildings(rng, img, pm, sun, keep_out, area, irregular, fine)
    for k in kilns:
        _draw_apron(rng, img, k, pm, irregular, fine)
    _trees(rng, img, pm, sun, keep_out, area, roads, villages, fine)
    style = _KilnStyle(rng)
    for k in kilns:
        _draw_kiln(rng, img, k, pm, sun, style, fine)
    data = _finish(rng, img, pm)
    write_scene(path, data, crs_wkt, transform, BANDS,
                {"SITEWATCH_SYNTHETIC_SEED": str(seed), "SITEWATCH_SYNTHETIC": "rgb-kilns"}, photometric="RGB")
    return [k.kiln for k in kilns]


def scene_transform(seed: int, width: int = 1024, height: int = 1024, pixel_m: float = 1.0) -> Affine:
    """The north-up transform :func:`make_rgb_kiln_scene` gives a scene, without drawing it.

    Lets a caller keep scenes apart on the ground before generating them.
    """
    _check_args(width, height, pixel_m, "EPSG:32644", None)
    return _origin(np.random.default_rng(seed), width, height, float(pixel_m))


def _origin(rng: np.random.Generator, w: int, h: int, pm: float) -> Affine:
    """Upper-left corner drawn inside the region (the first draws from the scene's generator)."""
    ox = math.floor(rng.uniform(_EASTING[0], max(_EASTING[0], _EASTING[1] - w * pm)))
    oy = math.ceil(rng.uniform(min(_NORTHING[1], _NORTHING[0] + h * pm), _NORTHING[1]))
    return Affine(pm, 0.0, float(ox), 0.0, -pm, float(oy))


# --------------------------------------------------------------------------- arguments


@lru_cache(maxsize=16)
def _wkt_cached(crs: str) -> str:
    return str(CRS.from_user_input(crs).to_wkt())


def _wkt(crs: Any) -> str:
    try:
        if isinstance(crs, str):
            return _wkt_cached(crs)
        return str(CRS.from_user_input(crs).to_wkt())
    except CRSError as exc:
        raise UsageError(f"CRS {crs!r} is not understood ({exc}); pass e.g. 'EPSG:32644'") from None


def _check_args(width: int, height: int, pixel_m: float, crs: str, n_kilns: int | None) -> str:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UsageError(f"scene size {width}x{height} is too small; use at least {MIN_SIDE}x{MIN_SIDE} pixels")
    try:
        pm = float(pixel_m)
    except (TypeError, ValueError):
        pm = math.nan
    if not (math.isfinite(pm) and 0.05 <= pm <= 10):
        raise UsageError(f"pixel_m must be between 0.05 and 10 metres, got {pixel_m!r}")
    if n_kilns is not None and n_kilns < 0:
        raise UsageError(f"n_kilns must not be negative, got {n_kilns}")
    wkt = _wkt(crs)
    parsed = CRS.from_wkt(wkt)
    if not parsed.is_projected or parsed.axis_info[0].unit_name not in ("metre", "meter"):
        raise UsageError(f"CRS {crs!r} must be projected in metres (e.g. a UTM zone such as 'EPSG:32644')")
    return wkt


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Sun:
    """Shadow direction (unit vector in pixel coordinates) and shadow length per metre of height, in pixels."""

    sx: float
    sy: float
    per_m: float


def _sun(rng: np.random.Generator, pm: float) -> _Sun:
    # Late-morning sun in the south-east to south-west: shadows fall to the north.
    azimuth = math.radians(rng.uniform(110.0, 250.0))
    zenith = math.radians(rng.uniform(25.0, 50.0))
    return _Sun(-math.sin(azimuth), math.cos(azimuth), math.tan(zenith) / pm)  # rows grow southwards


def _lowres_field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """A smooth field (mean 0, std about 1) of scale ``sigma`` pixels, made coarse and upsampled."""
    f = max(1, min(16, int(sigma // 3)))
    hl, wl = h // f + 2, w // f + 2
    low = _smooth_field(rng, hl, wl, sigma / f)
    ys = np.clip((np.arange(h, dtype=np.float32) + 0.5) / f - 0.5, 0, hl - 1.001)
    xs = np.clip((np.arange(w, dtype=np.float32) + 0.5) / f - 0.5, 0, wl - 1.001)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    rows = low[y0] * (1 - wy) + low[y0 + 1] * wy
    out: np.ndarray = rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx
    return out.astype(np.float32)


def _fine_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Pixel-scale texture: lightly blurred white noise, std about 1."""
    out: np.ndarray = _blur121(rng.standard_normal((h, w), dtype=np.float32)) / np.float32(0.375)
    return out


def _rrect_sdf(u: np.ndarray, v: np.ndarray, a: Any, b: Any, r: Any) -> np.ndarray:
    """Signed distance to a rounded rectangle of half-sides ``a``, ``b`` and corner radius ``r``."""
    qx = np.abs(u) - (a - r)
    qy = np.abs(v) - (b - r)
    out: np.ndarray = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r
    return out


def _window(cx: float, cy: float, half: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(r0, r1, c0, c1)`` of a square window around ``(cx, cy)``, or None if off-scene."""
    r0, r1 = max(0, math.floor(cy - half)), min(h, math.ceil(cy + half))
    c0, c1 = max(0, math.floor(cx - half)), min(w, math.ceil(cx + half))
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1


def _local(win: tuple[int, int, int, int], cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of ``win`` in a frame at ``(cx, cy)`` rotated by ``theta``."""
    r0, r1, c0, c1 = win
    dy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - cx)[None, :]
    ct, st = math.cos(theta), math.sin(theta)
    return dx * ct + dy * st, -dx * st + dy * ct


def _blend(img: np.ndarray, win: tuple[int, int, int, int], colour: np.ndarray, cov: np.ndarray) -> None:
    """``img[win] = img[win] * (1 - cov) + colour * cov``; colour is ``(3,)`` or ``(3, h, w)``."""
    r0, r1, c0, c1 = win
    view = img[:, r0:r1, c0:c1]
    col = colour[:, None, None] if colour.ndim == 1 else colour
    view += (col - view) * cov


def _clear_of(cx: np.ndarray, cy: np.ndarray, radius: Any, zones: np.ndarray) -> np.ndarray:
    """Whether discs at ``(cx, cy)`` stay clear of the boxes ``zones`` ``(n, 4)`` (x0, y0, x1, y1)."""
    if not zones.size:
        return np.ones(np.shape(cx), dtype=bool)
    cx, cy, radius = np.asarray(cx)[:, None], np.asarray(cy)[:, None], np.asarray(radius)
    if radius.ndim:
        radius = radius[:, None]
    dx = np.maximum(np.maximum(zones[None, :, 0] - cx, cx - zones[None, :, 2]), 0)
    dy = np.maximum(np.maximum(zones[None, :, 1] - cy, cy - zones[None, :, 3]), 0)
    out: np.ndarray = (np.hypot(dx, dy) > radius).all(axis=1)
    return out


def _count(rng: np.random.Generator, lo: float, hi: float, area: float) -> int:
    """A random count between ``lo`` and ``hi`` per 1024 x 1024 m, scaled by ``area``."""
    return int(rng.poisson(rng.uniform(lo, hi) * area))


def _stamp(
    h: int,
    w: int,
    cx: np.ndarray,
    cy: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    r: np.ndarray,
    soft: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise many small rounded rectangles at once.

    Returns flat pixel indices, coverage (0..1), object index and the local ``(u, v)`` of
    every covered sample, for :func:`_composite`.
    """
    empty = np.zeros(0, dtype=np.float32)
    if not len(cx):
        return np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.int64), empty, empty
    ext = math.ceil(float(np.max(np.hypot(a, b))) + soft + 1)
    offs = np.arange(-ext, ext + 1)
    px, py = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    cols = px[:, None, None] + offs[None, None, :]
    rows = py[:, None, None] + offs[None, :, None]
    dx = (cols + 0.5 - cx[:, None, None]).astype(np.float32)
    dy = (rows + 0.5 - cy[:, None, None]).astype(np.float32)
    ct, st = np.cos(theta)[:, None, None].astype(np.float32), np.sin(theta)[:, None, None].astype(np.float32)
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    sd = _rrect_sdf(u, v, a[:, None, None], b[:, None, None], r[:, None, None])
    cov = np.clip(0.5 - sd / soft, 0, 1)
    ok = (cov > 0) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    obj = np.broadcast_to(np.arange(len(cx))[:, None, None], ok.shape)[ok]
    return (rows * w + cols)[ok], cov[ok], obj, u[ok], v[ok]


def _composite(img: np.ndarray, idx: np.ndarray, cov: np.ndarray, colour: np.ndarray) -> None:
    """Paint samples (flat index, coverage, colour ``(3, k)``) over ``img``; overlaps average."""
    if not idx.size:
        return
    uniq, inv = np.unique(idx, return_inverse=True)
    alpha = np.bincount(inv, cov, minlength=uniq.size)
    flat = img.reshape(3, -1)
    for c in range(3):
        mean = np.bincount(inv, cov * colour[c], minlength=uniq.size) / alpha
        a = np.minimum(alpha, 1.0)
        flat[c, uniq] = (flat[c, uniq] * (1 - a) + mean * a).astype(np.float32)


def _darken(img: np.ndarray, idx: np.ndarray, cov: np.ndarray, strength: float) -> None:
    """Multiply ``img`` by ``1 - strength * coverage`` (coverage summed over samples, at most 1)."""
    if not idx.size:
        return
    uniq, inv = np.unique(idx, return_inverse=True)
    alpha = np.minimum(np.bincount(inv, cov, minlength=uniq.size), 1.0)
    flat = img.reshape(3, -1)
    flat[:, uniq] *= (1 - strength * alpha).astype(np.float32)


# --------------------------------------------------------------------------- landscape


def _fields(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, pm: float, fine: np.ndarray) -> np.ndarray:
    """Small irregular fields in a warped grid: crop, fallow and flooded parcels with bunds."""
    h, w = xx.shape
    theta = rng.uniform(0, math.pi)
    ct, st = math.cos(theta), math.sin(theta)
    warp = rng.uniform(3.0, 12.0) / pm
    u = xx * ct + yy * st + _lowres_field(rng, h, w, 90.0 / pm) * warp
    v = yy * ct - xx * st + _lowres_field(rng, h, w, 90.0 / pm) * warp
    umin, umax = float(u.min()) - 1, float(u.max()) + 1
    vmin = float(v.min()) - 1
    mean_w = rng.uniform(35.0, 90.0) / pm
    widths = rng.uniform(0.4, 1.6, size=int((umax - umin) / (0.4 * mean_w)) + 2) * mean_w
    edges = (umin + np.concatenate([[0.0], np.cumsum(widths)])).astype(np.float32)
    n_cols = len(edges) - 1
    i = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, n_cols - 1)
    hgt = (rng.uniform(0.3, 1.4, size=n_cols) * rng.uniform(25.0, 80.0) / pm).astype(np.float32)
    off = (vmin - rng.uniform(0, 1, size=n_cols) * hgt).astype(np.float32)
    t = (v - off[i]) / hgt[i]
    j = np.floor(t).astype(np.int64)
    frac = t - j
    n_rows = int(j.max()) + 1
    pid = i * n_rows + j
    n_par = n_cols * n_rows

    # Season: weights of the crop palette, then a class and a colour jitter per parcel.
    weights = rng.dirichlet(np.full(len(_CROPS), 0.8)) + 0.02
    cls = rng.choice(len(_CROPS), size=n_par, p=weights / weights.sum())
    colours = _CROPS[cls] * rng.uniform(0.85, 1.15, size=(n_par, 1)) * rng.uniform(0.95, 1.05, size=(n_par, 3))
    amp = np.where(rng.random(n_par) < 0.45, rng.uniform(0.02, 0.07, n_par), 0.0).astype(np.float32)
    period = (rng.uniform(1.5, 4.5, n_par) / pm).astype(np.float32)
    along_u = rng.random(n_par) < 0.5
    var = rng.uniform(0.01, 0.06, n_par).astype(np.float32)

    stripe_coord = np.where(along_u[pid], u, v)
    tex = amp[pid] * np.sin(stripe_coord * (2 * math.pi / period[pid]))
    tex += var[pid] * _lowres_field(rng, h, w, 8.0 / pm)
    tex += 0.025 * fine
    tex += 0.05 * _lowres_field(rng, h, w, 150.0 / pm)
    colours = colours.astype(np.float32)
    img = np.stack([colours[:, c][pid] for c in range(3)]) * (1 + tex)

    # Bunds along most parcel edges: a thin line of dry earth and grass.
    dist = np.minimum(np.minimum(u - edges[i], edges[i + 1] - u), np.minimum(frac, 1 - frac) * hgt[i])
    bund_w = rng.uniform(0.5, 1.2) / pm
    has_bund = (rng.random(n_par) < 0.8).astype(np.float32)
    cov = np.clip(bund_w + 0.5 - dist, 0, 1) * has_bund[pid]
    img += (_BUND[:, None, None] * (1 + 0.08 * fine) - img) * cov
    return np.ascontiguousarray(img, dtype=np.float32)


def _roads(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, pm: float) -> list[np.ndarray]:
    """Gently winding paved and dirt roads; returns their centre lines as ``(k, 2)`` points."""
    h, w = xx.shape
    lines = []
    n = int(rng.integers(2, 5) * max(0.5, math.sqrt(h * w * pm * pm / _AREA_UNIT)))
    for _ in range(n):
        phi = rng.uniform(0, math.pi)
        c, s = math.cos(phi), math.sin(phi)
        along = xx * c + yy * s
        across = yy * c - xx * s
        lo, hi = float(along.min()), float(along.max())
        knots = np.linspace(lo - 10, hi + 10, max(3, int((hi - lo) * pm / 120)))
        bend = np.cumsum(rng.normal(0, rng.uniform(2.0, 12.0) / pm, size=knots.size))
        bend -= bend.mean()
        b0 = rng.uniform(float(across.min()) + 20, float(across.max()) - 20)
        d = np.abs(across - b0 - np.interp(along, knots, bend).astype(np.float32))
        kind = int(rng.integers(len(_ROADS)))
        half = rng.uniform(1.5, 3.5) / pm if kind != 1 else rng.uniform(1.2, 2.5) / pm
        cov = np.clip(half + 0.5 - d, 0, 1)
        edge = np.clip(half + 1.5 / pm + 0.5 - d, 0, 1) - cov  # worn verge
        colour = _ROADS[kind] * rng.uniform(0.9, 1.1)
        img += (_EARTH[:, None, None] * 0.95 - img) * edge * 0.6
        img += (colour[:, None, None] - img) * cov
        t = np.arange(lo, hi, 4.0 / pm)
        bt = b0 + np.interp(t, knots, bend)
        lines.append(np.stack([t * c - bt * s, t * s + bt * c], axis=1))
    return lines


def _blob_cov(
    win: tuple[int, int, int, int], cx: float, cy: float, a: float, b: float, theta: float,
    wobble: float, irregular: np.ndarray, soft: float,
) -> np.ndarray:
    """Soft coverage of an irregular ellipse-like blob in ``win``."""
    r0, r1, c0, c1 = win
    u, v = _local(win, cx, cy, theta)
    sd = _rrect_sdf(u, v, a, b, min(a, b))
    sd = sd + wobble * irregular[r0:r1, c0:c1]
    out: np.ndarray = np.clip(0.5 - sd / soft, 0, 1)
    return out


def _blobs(
    rng: np.random.Generator, img: np.ndarray, pm: float, irregular: np.ndarray, fine: np.ndarray,
    keep_out: np.ndarray, area: float,
) -> None:
    """Bare-earth patches, clay pits, brick rubble and ponds (distractors and scenery)."""
    h, w = img.shape[1:]
    clear = _CLEAR_M / pm
    kinds = (
        ["earth"] * _count(rng, 3, 9, area)
        + ["pit"] * _count(rng, 2, 6, area)
        + ["rubble"] * _count(rng, 2, 6, area)
        + ["pond"] * _count(rng, 1, 4, area)
    )
    for kind in kinds:
        if kind == "pond":
            a, b = rng.uniform(12, 45) / pm, rng.uniform(10, 35) / pm
        elif kind == "rubble":
            a, b = rng.uniform(8, 30) / pm, rng.uniform(6, 20) / pm
        else:
            a, b = rng.uniform(15, 70) / pm, rng.uniform(10, 45) / pm
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if kind != "earth" and not _clear_of(np.array([cx]), np.array([cy]), max(a, b) + clear, keep_out)[0]:
            continue
        theta = rng.uniform(0, math.pi)
        win = _window(cx, cy, max(a, b) * 1.4 + 8 / pm, h, w)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        tex = fine[r0:r1, c0:c1]
        if kind == "earth":
            cov = _blob_cov(win, cx, cy, a, b, theta, 0.25 * min(a, b), irregular, 3.0 / pm)
            colour = _EARTH * rng.uniform(0.85, 1.12) * rng.uniform(0.96, 1.04, 3)
            colour = colour + np.array([0.04, 0.0, -0.02], np.float32) * rng.uniform(-1, 2)
            _blend(img, win, colour[:, None, None] * (1 + 0.04 * tex), cov * rng.uniform(0.7, 1.0))
        elif kind == "rubble":  # a razed kiln or house: broken brick, patchy
            cov = _blob_cov(win, cx, cy, a, b, theta, 0.4 * min(a, b), irregular, 2.0 / pm)
            colour = _BRICK * rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3)
            patchy = np.clip(0.75 + 0.3 * tex, 0, 1)
            _blend(img, win, colour[:, None, None] * (1 + 0.1 * tex), cov * patchy)
        elif kind == "pit":
            cov = _blob_cov(win, cx, cy, a, b, theta, 0.3 * min(a, b), irregular, 1.5 / pm)
            rim = _blob_cov(win, cx, cy, a + 4 / pm, b + 4 / pm, theta, 0.3 * min(a, b), irregular, 2.0 / pm)
            _blend(img, win, _EARTH * rng.uniform(0.95, 1.1), rim)
            colour = _CLAY * rng.uniform(0.75, 1.2) * rng.uniform(0.95, 1.05, 3)
            _blend(img, win, colour[:, None, None] * (1 + 0.08 * tex), cov)
            if rng.random() < 0.5:  # standing water in the bottom
                wet = _blob_cov(win, cx, cy, 0.5 * a, 0.5 * b, theta, 0.3 * min(a, b), irregular, 1.0 / pm)
                _blend(img, win, _WATERS[int(rng.integers(3))] * rng.uniform(0.9, 1.2), wet)
        else:
            bank = _blob_cov(win, cx, cy, a + 3 / pm, b + 3 / pm, theta, 0.2 * min(a, b), irregular, 1.0 / pm)
            cov = _blob_cov(win, cx, cy, a, b, theta, 0.2 * min(a, b), irregular, 1.0 / pm)
            _blend(img, win, _BUND * rng.uniform(0.9, 1.1), bank)
            colour = _WATERS[int(rng.integers(3))] * rng.uniform(0.8, 1.25)
            _blend(img, win, colour[:, None, None] * (1 + 0.03 * tex), cov)


def _boxes(
    img: np.ndarray, cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray, th: np.ndarray,
    colours: np.ndarray, heights: np.ndarray, sun: _Sun, fine: np.ndarray,
) -> None:
    """Flat-roofed or pitched boxes with their shadows (one batch of similar sizes)."""
    h, w = img.shape[1:]
    if not cx.size:
        return
    r = np.zeros(cx.size)
    shift = heights * sun.per_m
    idx, cov, _, _, _ = _stamp(h, w, cx + sun.sx * shift, cy + sun.sy * shift, a, b, th, r)
    _darken(img, idx, cov, 0.5)
    idx, cov, obj, _, v = _stamp(h, w, cx, cy, a, b, th, r)
    # Pitched roofs: the half facing the sun a little lighter.
    facing = np.sin(th[obj]) * sun.sx - np.cos(th[obj]) * sun.sy
    pitched = np.arange(cx.size)[obj] % 3 == 0
    shade = 1 + 0.08 * np.sign(v * facing) * pitched
    _composite(img, idx, cov, (colours[obj] * shade[:, None]).T * (1 + 0.03 * fine.ravel()[idx]))


def _villages_and_buildings(
    rng: np.random.Generator, img: np.ndarray, pm: float, sun: _Sun, keep_out: np.ndarray, area: float,
    irregular: np.ndarray, fine: np.ndarray,
) -> list[tuple[float, float, float]]:
    """Villages of small roofs, isolated brick-red buildings, brick stacks and round threshing floors.

    Returns the villages as ``(col, row, radius)`` in pixels.
    """
    h, w = img.shape[1:]
    clear = _CLEAR_M / pm
    roofs: list[list[np.ndarray]] = [[] for _ in range(6)]
    villages = []

    for _ in range(_count(rng, 1.0, 3.0, area)):
        radius = rng.uniform(45, 130) / pm
        vx, vy = rng.uniform(0, w), rng.uniform(0, h)
        theta = rng.uniform(0, math.pi)
        win = _window(vx, vy, radius * 1.4, h, w)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        u, v = _local(win, vx, vy, 0.0)
        edge = radius * (1 + 0.25 * irregular[r0:r1, c0:c1]) - np.hypot(u, v)
        ground = np.clip(edge / (6 / pm), 0, 1)
        tone = _EARTH[:, None, None] * rng.uniform(0.85, 1.0)
        _blend(img, win, tone * (1 + 0.05 * fine[r0:r1, c0:c1]), ground)
        villages.append((vx, vy, radius))
        cell = rng.uniform(8, 14) / pm
        n = int(radius / cell) + 1
        gu, gv = np.meshgrid(np.arange(-n, n + 1) * cell, np.arange(-n, n + 1) * cell)
        gu = gu.ravel() + rng.normal(0, 0.08 * cell, gu.size)
        gv = gv.ravel() + rng.normal(0, 0.08 * cell, gv.size)
        dist = np.hypot(gu, gv) / radius
        keep = rng.random(gu.size) < 0.85 * np.clip(1.1 - dist**2, 0, 1)
        gu, gv = gu[keep], gv[keep]
        cx = vx + gu * math.cos(theta) - gv * math.sin(theta)
        cy = vy + gu * math.sin(theta) + gv * math.cos(theta)
        half = rng.uniform(0.3, 0.47, size=(2, cx.size)) * cell
        ok = _clear_of(cx, cy, np.hypot(*half) + clear, keep_out) & (cx > 0) & (cx < w) & (cy > 0) & (cy < h)
        k = int(ok.sum())
        colours = _ROOFS[rng.choice(len(_ROOFS), size=k, p=_ROOF_P)] * rng.uniform(0.85, 1.12, (k, 1))
        for lst, arr in zip(
            roofs,
            (cx[ok], cy[ok], half[0][ok], half[1][ok], theta + rng.normal(0, 0.05, k), colours),
            strict=True,
        ):
            lst.append(arr)
    if roofs[0]:
        cx, cy, a, b, th, colours = (np.concatenate(lst) for lst in roofs)
        _boxes(img, cx, cy, a, b, th, colours, rng.uniform(3, 8, cx.size), sun, fine)

    # Isolated brick-red buildings and sheds, some around a courtyard (ring-like kiln look-alikes).
    n = _count(rng, 8, 20, area)
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    a, b = rng.uniform(6, 24, n) / pm, rng.uniform(4, 11, n) / pm
    ok = _clear_of(cx, cy, np.hypot(a, b) + clear, keep_out)
    cx, cy, a, b = cx[ok], cy[ok], a[ok], b[ok]
    k = cx.size
    th = rng.uniform(0, math.pi, k)
    brick = _BRICK * rng.uniform(0.75, 1.25, (k, 1)) * rng.uniform(0.94, 1.06, (k, 3))
    other = rng.random(k) < 0.25  # a few grey or white sheds
    brick[other] = _ROOFS[rng.choice(3, size=int(other.sum()))]
    _boxes(img, cx, cy, a, b, th, brick, rng.uniform(3, 7, k), sun, fine)
    court = ~other & (a > 8 / pm) & (b > 5 / pm) & (rng.random(k) < 0.45)
    if court.any():
        inner = np.minimum(a[court], b[court]) * rng.uniform(0.35, 0.6, int(court.sum()))
        idx, cov, obj, _, _ = _stamp(h, w, cx[court], cy[court], a[court] - inner, b[court] - inner,
                                     th[court], np.zeros(inner.size))
        court_col = np.where(rng.random((inner.size, 1)) < 0.5, _EARTH * 0.9, _SOOT * 1.6)
        _composite(img, idx, cov, court_col[obj].T * (1 + 0.05 * fine.ravel()[idx]))

    # Brick stacks: small brick-red blocks in rows.
    n = _count(rng, 5, 14, area)
    stacks = rng.integers(3, 12, n)
    rep = np.repeat(np.arange(n), stacks)
    ang = rng.uniform(0, math.pi, n)[rep]
    step = rng.uniform(4, 7) / pm
    pos = (np.arange(rep.size) - np.repeat(np.cumsum(stacks) - stacks, stacks)) * step
    cx, cy = rng.uniform(0, w, n)[rep] + pos * np.cos(ang), rng.uniform(0, h, n)[rep] + pos * np.sin(ang)
    a, b = rng.uniform(1.2, 2.5, rep.size) / pm, rng.uniform(0.8, 1.5, rep.size) / pm
    ok = _clear_of(cx, cy, np.hypot(a, b) + clear, keep_out) & (cx > 0) & (cx < w) & (cy > 0) & (cy < h)
    k = int(ok.sum())
    _boxes(img, cx[ok], cy[ok], a[ok], b[ok], ang[ok] + math.pi / 2, _BRICK * rng.uniform(0.9, 1.15, (k, 1)),
           np.full(k, 1.5), sun, fine)

    # Threshing floors: pale discs of packed earth, some with a dark straw heap.
    n = _count(rng, 4, 12, area)
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    rad = rng.uniform(5, 12, n) / pm
    ok = _clear_of(cx, cy, rad + clear, keep_out)
    cx, cy, rad = cx[ok], cy[ok], rad[ok]
    k = cx.size
    idx, cov, obj, _, _ = _stamp(h, w, cx, cy, rad, rad, np.zeros(k), rad, soft=1.5)
    col = (_THRESH * rng.uniform(0.85, 1.1, (k, 1)))[obj].T * (1 + 0.03 * fine.ravel()[idx])
    _composite(img, idx, cov, col)
    heap = rng.random(k) < 0.5
    if heap.any():
        hr = rad[heap] * rng.uniform(0.2, 0.45, int(heap.sum()))
        idx, cov, obj, _, _ = _stamp(h, w, cx[heap], cy[heap], hr, hr, np.zeros(hr.size), hr, soft=1.5)
        col = np.where(rng.random((hr.size, 1)) < 0.5, _SOOT * 2.0, _CROPS[5] * 0.8)
        _composite(img, idx, cov, col[obj].T)
    return villages


def _trees(
    rng: np.random.Generator, img: np.ndarray, pm: float, sun: _Sun, keep_out: np.ndarray, area: float,
    roads: list[np.ndarray], villages: list[tuple[float, float, float]], fine: np.ndarray,
) -> None:
    """Tree crowns in groves, along roads and scattered, each with its shadow."""
    h, w = img.shape[1:]
    xs, ys = [], []
    for vx, vy, radius in villages:  # trees in and around the villages
        n = int(rng.integers(20, 80))
        ang, dist = rng.uniform(0, 2 * math.pi, n), radius * np.sqrt(rng.uniform(0.1, 1.7, n))
        xs.append(vx + dist * np.cos(ang))
        ys.append(vy + dist * np.sin(ang))
    for _ in range(_count(rng, 6, 14, area)):  # groves and orchards
        gx, gy = rng.uniform(0, w), rng.uniform(0, h)
        n = int(rng.integers(15, 90))
        spread = rng.uniform(10, 40) / pm
        xs.append(gx + rng.normal(0, spread, n))
        ys.append(gy + rng.normal(0, spread * rng.uniform(0.4, 1.0), n))
    for line in roads:  # lines of trees along some roads
        if rng.random() < 0.5 and len(line):
            step = max(1, int(rng.integers(2, 5)))
            pts = line[::step]
            keep = rng.random(len(pts)) < 0.7
            side = rng.choice([-1.0, 1.0]) * rng.uniform(4, 7) / pm
            normal = np.gradient(pts, axis=0)
            normal = np.stack([-normal[:, 1], normal[:, 0]], axis=1) / (np.linalg.norm(normal, axis=1)[:, None] + 1e-9)
            xs.append(pts[keep, 0] + side * normal[keep, 0])
            ys.append(pts[keep, 1] + side * normal[keep, 1])
    n = _count(rng, 100, 300, area)  # scattered
    xs.append(rng.uniform(0, w, n))
    ys.append(rng.uniform(0, h, n))
    cx, cy = np.concatenate(xs), np.concatenate(ys)
    rad = rng.uniform(1.8, 5.5, cx.size) / pm
    ok = _clear_of(cx, cy, rad + 2 / pm, keep_out) & (cx > -rad) & (cx < w + rad) & (cy > -rad) & (cy < h + rad)
    cx, cy, rad = cx[ok], cy[ok], rad[ok]
    if not cx.size:
        return
    height = rad * pm * rng.uniform(1.5, 2.5, cx.size)
    zero = np.zeros(cx.size)
    idx, cov, _, _, _ = _stamp(h, w, cx + sun.sx * height * sun.per_m * 0.8, cy + sun.sy * height * sun.per_m * 0.8,
                               rad, rad * 0.9, zero, rad * 0.9, soft=1.5)
    _darken(img, idx, cov, 0.5)
    idx, cov, obj, u, v = _stamp(h, w, cx, cy, rad, rad, zero, rad, soft=1.2)
    sunny = -(u * sun.sx + v * sun.sy) / rad[obj]  # +1 on the sunlit side of the crown
    tone = rng.uniform(0.8, 1.3, cx.size)[obj] * (1 + 0.22 * sunny) * (1 + 0.12 * fine.ravel()[idx])
    hue = rng.uniform(0.9, 1.1, (cx.size, 3))[obj]
    _composite(img, idx, cov, (_TREE * hue * tone[:, None]).T)


# --------------------------------------------------------------------------- kilns


@dataclass(frozen=True)
class _Placed:
    """A kiln's geometry in pixels while the scene is drawn."""

    kiln: Kiln
    cx: float
    cy: float
    a: float  # half length, pixels
    b: float  # half width, pixels
    r: float  # corner radius, pixels
    theta: float
    zone: tuple[float, float, float, float]  # bbox of the whole (unclipped) outline
    active: bool  # fired this season; idle kilns are fainter, with an overgrown yard


class _KilnStyle:
    """Scene-wide kiln look (one brickfield owner's kilns look alike), varied per kiln."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.brick = _BRICK * rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3)
        self.ash = _ASH * rng.uniform(0.85, 1.15)
        self.soot = rng.uniform(0.3, 0.8)
        self.earth = _EARTH * rng.uniform(0.9, 1.08) * rng.uniform(0.96, 1.04, 3)


def _outline(cx: float, cy: float, a: float, b: float, r: float, theta: float) -> np.ndarray:
    """Corners ``(n, 2)`` of a rotated rounded rectangle, counter-clockwise in (u, v)."""
    pts = []
    for qx, qy, start in ((1, 1, 0.0), (-1, 1, 0.5 * math.pi), (-1, -1, math.pi), (1, -1, 1.5 * math.pi)):
        t = start + np.linspace(0, 0.5 * math.pi, _ARC_POINTS + 1)
        pts.append(np.stack([qx * (a - r) + r * np.cos(t), qy * (b - r) + r * np.sin(t)], axis=1))
    uv = np.concatenate(pts)
    ct, st = math.cos(theta), math.sin(theta)
    out: np.ndarray = np.stack([cx + uv[:, 0] * ct - uv[:, 1] * st, cy + uv[:, 0] * st + uv[:, 1] * ct], axis=1)
    return out


def _clip_polygon(pts: np.ndarray, w: float, h: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon to ``[0, w] x [0, h]``."""
    poly = [tuple(p) for p in pts]
    for axis, limit, keep_below in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        out: list[tuple[float, float]] = []
        for k, cur in enumerate(poly):
            prev = poly[k - 1]
            cur_in = cur[axis] <= limit if keep_below else cur[axis] >= limit
            prev_in = prev[axis] <= limit if keep_below else prev[axis] >= limit
            if cur_in != prev_in:
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append(cross)
            if cur_in:
                out.append(cur)
        poly = out
    return np.array(poly, dtype=float).reshape(-1, 2)


def _make_kiln(cx: float, cy: float, a: float, b: float, r: float, theta: float, w: int, h: int, pm: float) -> Kiln:
    pts = np.round(_clip_polygon(_outline(cx, cy, a, b, r, theta), w, h), 3)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(np.abs(np.diff(pts, axis=0)) > 1e-3, axis=1)
    pts = pts[keep]
    if len(pts) > 1 and np.all(np.abs(pts[0] - pts[-1]) <= 1e-3):
        pts = pts[:-1]
    full = _outline(cx, cy, a, b, r, theta)
    cut = bool(full[:, 0].min() < 0 or full[:, 1].min() < 0 or full[:, 0].max() > w or full[:, 1].max() > h)
    bbox = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
    return Kiln(
        polygon=tuple((float(x), float(y)) for x, y in pts),
        bbox=bbox,
        centre=(round(cx, 3), round(cy, 3)),
        length_m=round(2 * a * pm, 2),
        width_m=round(2 * b * pm, 2),
        angle_deg=round(math.degrees(theta), 2),
        cut=cut,
    )


def _place_kilns(rng: np.random.Generator, n: int, h: int, w: int, pm: float, strict: bool) -> list[_Placed]:
    """Random non-overlapping kilns; the centre is inside the image, the outline may be cut."""
    placed: list[_Placed] = []
    gap = _KILN_GAP_M / pm
    for _ in range(n):
        length = rng.uniform(*KILN_LENGTH_M)
        width = min(rng.uniform(*KILN_WIDTH_M), 0.7 * length)
        a, b = length / 2 / pm, width / 2 / pm
        r = b * rng.uniform(0.45, 1.0)
        theta = rng.uniform(0, math.pi)
        ct, st = abs(math.cos(theta)), abs(math.sin(theta))
        hx, hy = a * ct + b * st, a * st + b * ct  # generous half-extents (of the rectangle)
        zones = np.array([p.zone for p in placed], dtype=float).reshape(-1, 4)
        found = None
        for _ in range(_ATTEMPTS):
            cx = rng.uniform(0.4 * hx, w - 0.4 * hx, _BATCH)
            cy = rng.uniform(0.4 * hy, h - 0.4 * hy, _BATCH)
            ok = np.ones(_BATCH, dtype=bool)
            if zones.size:
                ok = ~(
                    (cx[:, None] - hx - gap < zones[None, :, 2])
                    & (zones[None, :, 0] < cx[:, None] + hx + gap)
                    & (cy[:, None] - hy - gap < zones[None, :, 3])
                    & (zones[None, :, 1] < cy[:, None] + hy + gap)
                ).any(axis=1)
            hits = np.flatnonzero(ok)
            if hits.size:
                found = float(cx[hits[0]]), float(cy[hits[0]])
                break
        if found is None:
            if strict:
                raise UsageError(
                    f"could not fit {n} kilns in a {w}x{h} scene at {pm:g} m; plant fewer or make the scene larger"
                )
            break
        cx, cy = found
        zone = (cx - hx, cy - hy, cx + hx, cy + hy)
        kiln = _make_kiln(cx, cy, a, b, r, theta, w, h, pm)
        placed.append(_Placed(kiln, cx, cy, a, b, r, theta, zone, bool(rng.random() > 0.15)))
    return placed


def _draw_apron(
    rng: np.random.Generator, img: np.ndarray, k: _Placed, pm: float, irregular: np.ndarray, fine: np.ndarray,
) -> None:
    """Bare earth around a kiln, with rows of drying green bricks and a few fired-brick stacks."""
    h, w = img.shape[1:]
    margin = rng.uniform(12, 35) / pm
    win = _window(k.cx, k.cy, math.hypot(k.a, k.b) + margin * 1.6 + 30 / pm, h, w)
    if win is None:
        return
    r0, r1, c0, c1 = win
    u, v = _local(win, k.cx, k.cy, k.theta)
    sd = _rrect_sdf(u, v, k.a, k.b, k.r) - margin * (1 + 0.45 * irregular[r0:r1, c0:c1])
    cov = np.clip(0.5 - sd / (4.0 / pm), 0, 1) * (1.0 if k.active else rng.uniform(0.35, 0.75))
    earth = _EARTH * rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3)
    tex = fine[r0:r1, c0:c1]
    _blend(img, win, earth[:, None, None] * (1 + 0.05 * tex + 0.05 * irregular[r0:r1, c0:c1]), cov)
    if not k.active:
        return

    # Coal heaps: dark piles in the yard.
    for _ in range(int(rng.integers(0, 3))):
        side = rng.choice([-1.0, 1.0])
        hu, hv = rng.uniform(-1.0, 1.0) * k.a, side * (k.b + rng.uniform(5, 15) / pm)
        size = rng.uniform(3, 8) / pm
        heap = np.clip(0.5 - (np.hypot(u - hu, (v - hv) * 1.4) - size) / (1.5 / pm), 0, 1)
        _blend(img, win, _SOOT[:, None, None] * rng.uniform(0.7, 1.3) * (1 + 0.1 * tex), heap)

    # Drying yards: parallel rows of pale unfired bricks, beside the kiln.
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([-1.0, 1.0])
        along = rng.random() < 0.7
        pl, pw = rng.uniform(20, 60) / pm, rng.uniform(8, 22) / pm
        if along:
            pu, pv, ang = rng.uniform(-0.6, 0.6) * k.a, side * (k.b + 3 / pm + pw / 2), 0.0
        else:
            pu, pv, ang = side * (k.a + 3 / pm + pw / 2), rng.uniform(-0.5, 0.5) * k.b, math.pi / 2
        ru, rv = (u - pu), (v - pv)
        ca, sa = math.cos(ang), math.sin(ang)
        lu, lv = ru * ca + rv * sa, -ru * sa + rv * ca
        inside = np.clip(0.5 - _rrect_sdf(lu, lv, pl / 2, pw / 2, 0.0), 0, 1)
        _blend(img, win, earth * 0.97, inside)
        period = rng.uniform(2.2, 3.6) / pm
        half = rng.uniform(0.35, 0.6) / pm
        d_line = np.abs(((lv / period) + 0.5) % 1.0 - 0.5) * period
        rows = np.clip(half + 0.5 - d_line, 0, 1) * inside * (irregular[r0:r1, c0:c1] > rng.uniform(-1.5, -0.3))
        shadow = np.clip(half + 0.5 - np.abs(d_line - half - 0.6 / pm), 0, 1) * inside * 0.5
        img[:, r0:r1, c0:c1] *= 1 - 0.25 * shadow
        _blend(img, win, _GREEN_BRICK[:, None, None] * rng.uniform(0.92, 1.06) * (1 + 0.04 * tex), rows)

    # Stacks of fired bricks near the kiln.
    for _ in range(int(rng.integers(0, 4))):
        side = rng.choice([-1.0, 1.0])
        su, sv = rng.uniform(-1.0, 1.0) * k.a, side * (k.b + rng.uniform(4, 10) / pm)
        inside = np.clip(0.5 - _rrect_sdf(u - su, v - sv, rng.uniform(2, 5) / pm, rng.uniform(1, 2) / pm, 0.0), 0, 1)
        _blend(img, win, _BRICK[:, None, None] * rng.uniform(0.9, 1.15) * (1 + 0.05 * tex), inside)


def _draw_kiln(
    rng: np.random.Generator, img: np.ndarray, k: _Placed, pm: float, sun: _Sun, style: _KilnStyle, fine: np.ndarray,
) -> None:
    """The kiln itself: rim, firing track, inner rim, island, chimney and shadows."""
    h, w = img.shape[1:]
    raise_m = rng.uniform(1.5, 3.5)
    win = _window(k.cx, k.cy, math.hypot(k.a, k.b) + raise_m * sun.per_m + 3, h, w)
    if win is None:
        return
    r0, r1, c0, c1 = win
    u, v = _local(win, k.cx, k.cy, k.theta)
    sd = _rrect_sdf(u, v, k.a, k.b, k.r)
    t = -sd  # depth inside the outline, pixels

    # The raised kiln casts a short shadow on the ground.
    ct, st = math.cos(k.theta), math.sin(k.theta)
    su, sv = (sun.sx * ct + sun.sy * st) * raise_m * sun.per_m, (-sun.sx * st + sun.sy * ct) * raise_m * sun.per_m
    shade = np.clip(0.5 - _rrect_sdf(u - su, v - sv, k.a, k.b, k.r), 0, 1) * np.clip(0.5 + sd, 0, 1)
    img[:, r0:r1, c0:c1] *= 1 - 0.4 * shade

    rim = rng.uniform(1.5, 3.0) / pm
    track = rng.uniform(0.22, 0.32) * 2 * k.b
    rim2 = rng.uniform(1.0, 2.0) / pm
    if k.b - rim - track - rim2 < 2.0 / pm:
        track = max(1.0 / pm, k.b - rim - rim2 - 2.0 / pm)
    tex = fine[r0:r1, c0:c1]
    brick = style.brick * rng.uniform(0.8, 1.1) * rng.uniform(0.95, 1.05, 3)
    grey = rng.uniform(0.0, 0.6)  # some kilns are weathered grey-brown rather than red
    brick = brick * (1 - grey) + _ASH * brick.mean() / _ASH.mean() * grey
    ash = style.ash * rng.uniform(0.85, 1.15)
    if not k.active:  # idle: weathered towards the colour of the earth around it
        brick = brick * 0.6 + style.earth * 0.4
        ash = ash * 0.5 + style.earth * 0.5

    # Firing track: ash-covered brick setting, sooty where the fire is, fresh red where unloaded.
    phi = np.arctan2(v / k.b, u / k.a)
    fire = np.clip((np.cos(phi - rng.uniform(0, 2 * math.pi)) - rng.uniform(-0.2, 0.6)) * 3, 0, 1)
    fire *= style.soot * rng.uniform(0.6, 1.4) * (1.0 if k.active else 0.3)
    fresh = np.clip((np.cos(phi - rng.uniform(0, 2 * math.pi)) - 0.75) * 4, 0, 1) * (rng.random() < 0.6)
    perim = math.pi * (k.a + k.b)
    wickets = 0.06 * np.sin(phi * round(perim / (rng.uniform(1.5, 3.0) / pm)))
    track_col = ash[:, None, None] * (1 - fire) + _SOOT[:, None, None] * fire
    track_col = track_col * (1 - fresh) + brick[:, None, None] * 1.05 * fresh
    track_col = track_col * (1 + wickets + 0.07 * tex)
    island = style.earth * rng.uniform(0.8, 1.0) if rng.random() < 0.6 else brick * 0.9

    c_out = np.clip(0.5 + t, 0, 1)
    c_track = np.clip(0.5 + t - rim, 0, 1)
    c_rim2 = np.clip(0.5 + t - rim - track, 0, 1)
    c_island = np.clip(0.5 + t - rim - track - rim2, 0, 1)
    brick_tex = brick[:, None, None] * (1 + 0.06 * tex)
    colour = (
        brick_tex * (c_out - c_track)
        + track_col * (c_track - c_rim2)
        + brick_tex * 0.92 * (c_rim2 - c_island)
        + island[:, None, None] * (1 + 0.05 * tex) * c_island
    )
    view = img[:, r0:r1, c0:c1]
    view *= 1 - c_out
    view += colour * rng.uniform(0.88, 1.12)

    # Chimney near the centre, with its long thin shadow.
    off = rng.uniform(-0.12, 0.12) * k.a
    hx, hy = k.cx + off * ct, k.cy + off * st
    rc = rng.uniform(1.2, 2.2) / pm
    length = rng.uniform(25, 40) * sun.per_m
    drawn = _segment_coverage(hx, hy, hx + sun.sx * length, hy + sun.sy * length, rc * 0.7, h, w)
    if drawn is not None:
        swin, cov = drawn
        img[(slice(None), *swin)] *= 1 - 0.5 * cov
    cwin = _window(hx, hy, rc + 2, h, w)
    if cwin is not None:
        cu, cv = _local(cwin, hx, hy, 0.0)
        d = np.hypot(cu, cv)
        _blend(img, cwin, brick * 0.45, np.clip(rc + 0.5 - d, 0, 1))
        _blend(img, cwin, _SOOT * 0.5, np.clip(rc * 0.55 + 0.5 - d, 0, 1))


# --------------------------------------------------------------------------- output


def _finish(rng: np.random.Generator, img: np.ndarray, pm: float) -> np.ndarray:
    """Scene-wide illumination, haze, tone curve, sensor blur and noise; to uint8."""
    h, w = img.shape[1:]
    gain = rng.uniform(0.82, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    haze = rng.uniform(0.0, 0.22) * np.clip(1 + 0.5 * _lowres_field(rng, h, w, 250.0 / pm), 0, 2)
    tint = _HAZE * rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    out = img * gain[:, None, None]
    out += (tint[:, None, None] - out) * haze[None]
    np.clip(out, 0, 1, out=out)
    out **= np.float32(rng.uniform(0.85, 1.15))
    if rng.random() < 0.6:
        for c in range(3):
            out[c] = _blur121(out[c])
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(0.004, 0.012))
    data: np.ndarray = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    return data

