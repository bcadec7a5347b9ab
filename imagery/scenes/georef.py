"""Pixel coordinates to the scene CRS and to WGS84 (EPSG:4326, lon/lat order)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer

WGS84 = "EPSG:4326"


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(src_wkt), CRS.from_user_input(dst), always_xy=True)


def pixel_to_map(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel ``(col, row)`` positions (continuous, 0 at a pixel's corner) to CRS ``(x, y)``."""
    a = transform
    x = a.a * cols + a.b * rows + a.c
    y = a.d * cols + a.e * rows + a.f
    return x, y


def map_to_pixel(transform: Affine, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pixel_to_map`."""
    return pixel_to_map(~transform, xs, ys)


def to_lonlat(crs_wkt: str, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transform CRS coordinates to WGS84 longitude and latitude."""
    t = _transformer(crs_wkt, WGS84)
    lon, lat = t.transform(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
    return np.asarray(lon), np.asarray(lat)


def from_lonlat(crs_wkt: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transform WGS84 longitude and latitude to the CRS."""
    t = _transformer(crs_wkt, WGS84)
    x, y = t.transform(np.asarray(lon, dtype=float), np.asarray(lat, dtype=float), direction="INVERSE")
    return np.asarray(x), np.asarray(y)


def box_corners(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corner columns and rows ``(n, 4)`` of pixel boxes, counter-clockwise on a north-up map.

    Pixel rows grow southwards, so (x0,y1) -> (x1,y1) -> (x1,y0) -> (x0,y0) runs
    counter-clockwise once mapped to a north-up CRS.
    """
    x0, y0, x1, y1 = boxes.T
    cols = np.stack([x0, x1, x1, x0], axis=1)
    rows = np.stack([y1, y1, y0, y0], axis=1)
    return cols, rows


def ground_distance_m(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres (haversine; ample for 10-1000 m separations)."""
    r = 6_371_008.8
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * r * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def local_metres(lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float) -> np.ndarray:
    """Equirectangular east/north metres around ``(lon0, lat0)``: ``(n, 2)``."""
    r = 6_371_008.8
    x = np.radians(np.asarray(lon) - lon0) * r * np.cos(np.radians(lat0))
    y = np.radians(np.asarray(lat) - lat0) * r
    return np.stack([x, y], axis=-1)


def ground_pixel_m(transform: Affine, crs_wkt: str, col: float, row: float) -> float:
    """Ground size in metres of one pixel side at pixel ``(col, row)``.

    Measured on the ground (great circle), so it is right for projected CRSs in metres,
    for Web Mercator (whose map metres shrink with latitude) and for geographic CRSs.
    """
    cols = np.array([col, col + 1.0, col])
    rows = np.array([row, row, row + 1.0])
    x, y = pixel_to_map(transform, cols, rows)
    lon, lat = to_lonlat(crs_wkt, x, y)
    dx = ground_distance_m(lon[0], lat[0], lon[1], lat[1])
    dy = ground_distance_m(lon[0], lat[0], lon[2], lat[2])
    return float(np.sqrt(dx * dy))
