"""Site density on a regular grid, and hotspots (Getis-Ord Gi*), from a run's candidate store.

Where are kilns concentrated, where do vessels gather, which districts to inspect first:
:func:`density` counts the store's sites (all candidates, or only those of some review
statuses) per cell of a square grid in metres, per class (and, for vessels, per date), and
computes the Getis-Ord Gi* statistic of each cell's count with PySAL (``esda.G_Local``,
``star=True``: each cell's 3 x 3 neighbourhood, itself included, binary weights), flagging
a cell *hot* (``z >= 1.96``) or *cold* (``z <= -1.96``): a two-sided test at 95% confidence
under the normal approximation, one cell at a time (no correction for testing many cells:
treat the flags as where to look first, not as proof).

**Regions.** A run over several distant places (five ports on three continents) would put
its sites on one grid that is mostly empty, too large to count, and whose Gi* mean (near 0)
makes every occupied cell "hot". So the sites are first split into *regions*
(:func:`split_regions`): single-linkage clusters cut at a gap of :func:`region_gap` (50 km
or 20 cells, whichever is more; great-circle distance): two sites at most that far apart
are in one region, and so are their neighbours' neighbours; two regions are farther apart
than the gap at their closest sites. Regions are named ``r1``, ``r2``, ... from west to
east by the mean longitude of their sites: the same store, filters (``--status``,
``--class``) and cell size give the same names; adding sites (an appended run) can add,
join or renumber regions. A store whose sites are one region gives exactly the grid it
always did.

Each region has its own grid, in metres on the ground: the UTM zone of the region's centre
when it spans at most 6 degrees of longitude, else the global equal-area EASE-Grid 2.0
(EPSG:6933); its origin is a multiple of the cell size, so two runs over the same area
share cells. Each region also has its own Gi*: a cell is hot or cold *relative to its
region* (the region's mean and variance of counts), never compared with another region.
The coarser the cell, the larger the gap, so coarse cells join regions again (100 km
cells: only regions more than 2,000 km apart stay apart). Regions' grids are apart but for
odd shapes (a region of sites ringing another), where their extents may overlap.

Each grid is an ``xarray.Dataset`` (dimensions ``layer``, ``y``, ``x``; variables
``count``, ``gi_z``, ``gi_p`` and ``hotspot``, -1 cold / 0 / 1 hot; the CRS as
``spatial_ref`` in the CF way GDAL and rioxarray read; attributes ``region``, ``regions``,
``region_gap_m``, ``region_bounds``): :func:`density` returns the grid of a one-region run
(or of ``region="r2"``) and refuses several; :func:`density_regions` returns every
region's, by name. :func:`write_density` / :func:`write_density_regions` write them as
GeoTIFF or NetCDF (one grid per file: ``d.tif`` for one region, else ``d-r1.tif``,
``d-r2.tif``, ...; see :func:`region_paths`) or grid-cell polygons in EPSG:4326 (GeoJSON,
GeoPackage: every region in one file, with ``region`` and ``grid_crs`` columns) for QGIS.
:func:`density_geojson` gives the web maps every region's cells at the cell size asked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sitewatch.imagery.candidates.sites import per_date
from sitewatch.imagery.candidates.store import CandidateStore, check_status
from sitewatch.imagery.errors import OutputError, UsageError

#: Two-sided 95% confidence: |Gi* z| at least this flags a cell hot or cold.
Z_95 = 1.959964
#: File formats of :func:`write_density`, by suffix.
FORMATS = {".tif": "gtiff", ".tiff": "gtiff", ".nc": "netcdf", ".geojson": "geojson", ".json": "geojson", ".gpkg": "gpkg"}
#: Most cells a grid may have (a 1 km grid over 1.5 million km² is 1.5 million cells).
MAX_CELLS = 4_000_000
EQUAL_AREA = "EPSG:6933"
#: Sites farther apart than this (metres, on the ground) may be in separate regions, each with its own grid...
REGION_GAP_M = 50_000.0
#: ... or than this many cells, when that is farther (:func:`region_gap`).
REGION_GAP_CELLS = 20
#: The Earth's mean radius (IUGG), for distances between sites.
EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Layer:
    """What one layer of the grid counts: a class, and (vessels) an acquisition date."""

    cls: str
    date: str | None = None

    @property
    def name(self) -> str:
        """``kiln``, or ``vessel 2024-01-05``."""
        return self.cls if self.date is None else f"{self.cls} {self.date}"


def parse_cell(text: str) -> float:
    """A cell size in metres from ``1km``, ``500m`` or ``750``.

    Raises:
        UsageError: not a positive size.
    """
    t = text.strip().lower()
    scale = 1000.0 if t.endswith("km") else 1.0
    number = t[:-2] if t.endswith("km") else t[:-1] if t.endswith("m") else t
    try:
        value = float(number) * scale
    except ValueError:
        raise UsageError(f"--cell {text!r}: give a size such as 1km, 500m or 750 (metres)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--cell {text!r}: must be a positive size")
    return value


def grid_crs(lons: np.ndarray, lats: np.ndarray) -> str:
    """The grid's CRS: the UTM zone of the points' centre, or EPSG:6933 when they span > 6 degrees.

    Points on both sides of the antimeridian (179.9 and -179.9) are measured across it: they
    span 0.2 degrees, in UTM zone 60 or 1.
    """
    lons = np.asarray(lons, dtype=float)
    if len(lons) == 0:
        return EQUAL_AREA
    east = lons % 360.0  # 0..360: continuous across the antimeridian
    if float(np.ptp(east)) < float(np.ptp(lons)):
        lons = east
    if float(np.ptp(lons)) > 6.0:
        return EQUAL_AREA
    lon, lat = (float(np.mean(lons)) + 180.0) % 360.0 - 180.0, float(np.mean(lats))
    zone = int((lon + 180) // 6) % 60 + 1
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def region_gap(cell_m: float) -> float:
    """The gap (metres on the ground) between the sites of two regions at cells of ``cell_m``:
    :data:`REGION_GAP_M` (50 km) or :data:`REGION_GAP_CELLS` (20) cells, whichever is more."""
    return max(REGION_GAP_M, REGION_GAP_CELLS * float(cell_m))


def split_regions(lons: np.ndarray, lats: np.ndarray, gap_m: float) -> np.ndarray:
    """The region of each point: single-linkage clusters of points, cut at ``gap_m``.

    Two points at most ``gap_m`` apart on the ground (great-circle distance on a sphere of
    the Earth's mean radius) are in one region, and so, in a chain, are their neighbours'
    neighbours: two regions are farther apart than ``gap_m`` at their closest points.
    Regions are numbered 0, 1, ... from west to east by the (circular) mean longitude of
    their points; the numbering depends only on the points, not on their order.

    Exact, in about ``n log n``: points go into cubes (in Earth-centred x, y, z) whose
    diagonal is the gap, so the points of one cube are one region, and two cubes are joined
    when a k-d tree finds a pair of their points within the gap.

    Returns:
        An integer array, one region number per point.
    """
    from scipy.spatial import cKDTree

    lons, lats = np.asarray(lons, dtype=float), np.asarray(lats, dtype=float)
    n = len(lons)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lam, phi = np.radians(lons), np.radians(lats)
    xyz = EARTH_RADIUS_M * np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    chord = 2 * EARTH_RADIUS_M * math.sin(min(float(gap_m) / (2 * EARTH_RADIUS_M), math.pi / 2))
    side = chord / math.sqrt(3.0) * (1 - 1e-9)  # a cube's diagonal is within the gap
    keys, inverse = np.unique(np.floor(xyz / side).astype(np.int64), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    order = np.argsort(inverse, kind="stable")
    edges = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
    members = [order[edges[i]:edges[i + 1]] for i in range(len(keys))]
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # points within the gap lie in cubes at most 2 apart along each axis (gap = 1.73 sides)
    steps = [(a, b, c) for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3) if (a, b, c) > (0, 0, 0)]
    where = {k: i for i, k in enumerate(map(tuple, keys.tolist()))}
    trees: dict[int, Any] = {}
    for i, (kx, ky, kz) in enumerate(map(tuple, keys.tolist())):
        for a, b, c in steps:
            j = where.get((kx + a, ky + b, kz + c))
            if j is None or find(i) == find(j):
                continue
            big, small = (i, j) if len(members[i]) >= len(members[j]) else (j, i)
            if big not in trees:
                trees[big] = cKDTree(xyz[members[big]])
            dist, _ = trees[big].query(xyz[members[small]], k=1, distance_upper_bound=chord * (1 + 1e-12))
            if np.isfinite(dist).any():
                parent[find(small)] = find(big)
    roots = np.array([find(int(k)) for k in inverse])
    labels = np.unique(roots, return_inverse=True)[1].ravel()
    k = int(labels.max()) + 1
    east = np.bincount(labels, np.sin(lam), k), np.bincount(labels, np.cos(lam), k)
    centre = np.degrees(np.arctan2(*east))
    south = np.bincount(labels, lats, k) / np.bincount(labels, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((south, centre))] = np.arange(k)
    return rank[labels]


@dataclass(frozen=True)
class Region:
    """A region of a run's sites (:func:`site_regions`) and its grid."""

    #: ``r1``, ``r2``, ... from west to east.
    name: str
    #: The grid's CRS (``EPSG:32633``).
    crs: str
    #: Sites in the region.
    sites: int
    #: Cells of its grid, across (x) and down (y).
    nx: int
    ny: int
    #: ``(west, south, east, north)`` of its grid, in degrees (EPSG:4326).
    bounds: tuple[float, float, float, float]

    def as_json(self) -> dict[str, Any]:
        """``{"name", "grid_crs", "sites", "cells", "bounds"}`` for the web maps."""
        return {"name": self.name, "grid_crs": self.crs, "sites": self.sites, "cells": self.nx * self.ny,
                "shape": [self.ny, self.nx], "bounds": [round(b, 6) for b in self.bounds]}


@dataclass
class _Grid:
    """One region's sites and their grid, before counting."""

    region: Region
    sites: list[Any]
    crs: Any
    x: np.ndarray
    y: np.ndarray
    x0: float
    y0: float


def _grids(store: CandidateStore, cell_m: float, *, statuses: Sequence[str] | None, classes: Sequence[str] | None,
           crs: str | None, gap_m: float | None, con: Any) -> list[_Grid]:
    """Every region of the store's sites with its grid (nothing counted yet)."""
    from pyproj import CRS, Transformer

    for s in statuses or ():
        check_status(s, "--status")
    if not (math.isfinite(cell_m) and cell_m > 0):
        raise UsageError(f"--cell {cell_m!r}: must be a positive size")
    sites = store.sites(status=list(statuses) if statuses else None, cls=list(classes) if classes else None, con=con)
    if not sites:
        which = f" with status {', '.join(statuses)}" if statuses else ""
        raise UsageError(f"{store.path}: no sites{which} to count; review some, or leave out --status")
    lons = np.array([s.lon for s in sites])
    lats = np.array([s.lat for s in sites])
    labels = split_regions(lons, lats, region_gap(cell_m) if gap_m is None else gap_m)
    grids = []
    for k in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == k)
        target = crs or grid_crs(lons[idx], lats[idx])
        try:
            crs_obj = CRS.from_user_input(target)
        except Exception:  # noqa: BLE001 - pyproj raises its own types
            raise UsageError(f"--crs {target!r}: not a CRS pyproj knows (try EPSG:32645 or EPSG:6933)") from None
        if not crs_obj.is_projected:
            raise UsageError(f"--crs {target!r}: the grid needs a projected CRS in metres (a UTM zone, EPSG:6933)")
        to_grid = Transformer.from_crs("EPSG:4326", crs_obj, always_xy=True)
        x, y = to_grid.transform(lons[idx], lats[idx])
        x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
        x0, y0 = math.floor(float(np.min(x)) / cell_m) * cell_m, math.floor(float(np.min(y)) / cell_m) * cell_m
        nx = int(math.floor((float(np.max(x)) - x0) / cell_m)) + 1
        ny = int(math.floor((float(np.max(y)) - y0) / cell_m)) + 1
        try:
            w, s_, e, n = Transformer.from_crs(crs_obj, "EPSG:4326", always_xy=True).transform_bounds(
                x0, y0, x0 + nx * cell_m, y0 + ny * cell_m)
        except Exception:  # noqa: BLE001 - a grid past the projection's area: the sites' own bounds
            w, s_, e, n = float(lons[idx].min()), float(lats[idx].min()), float(lons[idx].max()), float(lats[idx].max())
        region = Region(f"r{k + 1}", crs_obj.to_string(), len(idx), nx, ny, (w, s_, e, n))
        grids.append(_Grid(region, [sites[i] for i in idx], crs_obj, x, y, x0, y0))
    return grids


def _check_size(grids: Sequence[_Grid], cell_m: float, max_cells: int) -> None:
    total = sum(g.region.nx * g.region.ny for g in grids)
    if total <= max_cells:
        return
    if len(grids) == 1:
        r = grids[0].region
        raise UsageError(f"--cell {cell_m:g} m: the sites span {r.nx} x {r.ny} cells (more than {max_cells}); "
                         "use a larger --cell")
    sizes = ", ".join(f"{g.region.name} {g.region.nx} x {g.region.ny}" for g in grids)
    raise UsageError(f"--cell {cell_m:g} m: the {len(grids)} regions' grids have {total} cells in all "
                     f"(more than {max_cells}: {sizes}); use a larger --cell")


def _select(grids: list[_Grid], region: str | None, cell_m: float) -> list[_Grid]:
    if region is None:
        return grids
    chosen = [g for g in grids if g.region.name == region]
    if not chosen:
        raise UsageError(f"--region {region!r}: no such region at --cell {cell_m:g} m; the sites' regions are "
                         f"{describe_regions([g.region for g in grids])}")
    return chosen


def describe_regions(regions: Sequence[Region]) -> str:
    """``r1 (12 sites, lon -158.3..-157.6, lat 21.1..21.5), r2 (...)``: for messages."""
    return ", ".join(f"{r.name} ({r.sites} sites, lon {r.bounds[0]:.1f}..{r.bounds[2]:.1f}, "
                     f"lat {r.bounds[1]:.1f}..{r.bounds[3]:.1f})" for r in regions)


def site_regions(
    store: CandidateStore,
    cell_m: float,
    *,
    statuses: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    crs: str | None = None,
    gap_m: float | None = None,
    con: Any = None,
) -> list[Region]:
    """The regions the store's sites fall into at cells of ``cell_m``, west to east, with their
    grids' CRS and sizes (nothing is counted). Arguments as :func:`density_regions`.

    Raises:
        UsageError: a bad status or CRS, or no site to count.
    """
    return [g.region for g in _grids(store, cell_m, statuses=statuses, classes=classes, crs=crs, gap_m=gap_m,
                                     con=con)]


def density_regions(
    store: CandidateStore,
    cell_m: float,
    *,
    statuses: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    by_date: bool = True,
    by_class: bool = True,
    crs: str | None = None,
    max_cells: int = MAX_CELLS,
    region: str | None = None,
    gap_m: float | None = None,
    con: Any = None,
) -> dict[str, Any]:
    """Sites per grid cell and their Gi* hotspots, one ``xarray.Dataset`` per region, by name.

    The sites are split into regions (:func:`split_regions`: sites more than ``gap_m`` apart,
    default :func:`region_gap`, 50 km or 20 cells); each region gets its own grid (the UTM
    zone of its centre, or EPSG:6933 when it spans more than 6 degrees of longitude) and its
    own Gi* (hot and cold relative to that region). Names are ``r1``, ``r2``, ... from west
    to east; a run whose sites are one region gives ``{"r1": ds}``. Each dataset is as
    :func:`density` describes, with attributes ``region`` (its name), ``regions`` (how many
    the run has) and ``region_gap_m``; its layers are those with a site in the region.

    Args:
        store: the run's candidate store.
        cell_m: cell side in metres.
        statuses: count only sites with these review statuses (``["confirmed"]``); default all.
        classes: only these classes; default all.
        by_date: vessel classes get one layer per acquisition date (kilns persist: one layer).
        by_class: one layer per class (and date); ``False``: every site in one layer named ``all``.
        crs: every region's grid CRS (any pyproj string in metres); default :func:`grid_crs` of each region.
        max_cells: most cells the grids may have, all regions together.
        region: only this region (``"r2"``).
        gap_m: the gap between regions in metres; default :func:`region_gap` of ``cell_m``.
        con: read through this connection of the store (inside a transaction that writes it).

    Raises:
        UsageError: a bad status, CRS or region, no site to count, or grids of more than
            ``max_cells`` cells in all.
    """
    grids = _grids(store, cell_m, statuses=statuses, classes=classes, crs=crs, gap_m=gap_m, con=con)
    chosen = _select(grids, region, cell_m)
    _check_size(chosen, cell_m, max_cells)
    gap = region_gap(cell_m) if gap_m is None else float(gap_m)
    return {g.region.name: _dataset(store, g, cell_m, statuses=statuses, by_date=by_date, by_class=by_class,
                                    regions=len(grids), gap_m=gap) for g in chosen}


def density(
    store: CandidateStore,
    cell_m: float,
    *,
    statuses: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    by_date: bool = True,
    by_class: bool = True,
    crs: str | None = None,
    max_cells: int = MAX_CELLS,
    region: str | None = None,
    gap_m: float | None = None,
    con: Any = None,
) -> Any:
    """Sites per grid cell and their Gi* hotspots, as an ``xarray.Dataset``: the grid of a run
    whose sites are one region, or of the ``region`` named.

    Sites in several regions (more than :func:`region_gap` apart) have one grid each: use
    :func:`density_regions` for all of them, or name one with ``region``.

    Args:
        store: the run's candidate store.
        cell_m: cell side in metres.
        statuses: count only sites with these review statuses (``["confirmed"]``); default all.
        classes: only these classes; default all.
        by_date: vessel classes get one layer per acquisition date (kilns persist: one layer).
        by_class: one layer per class (and date); ``False``: every site in one layer named ``all``.
        crs: the grid's CRS (any pyproj string in metres); default :func:`grid_crs`.
        max_cells: most cells the grid may have.
        region: the region (``"r2"``) when the sites are in several.
        gap_m: the gap between regions in metres; default :func:`region_gap` of ``cell_m``.
        con: read through this connection of the store (inside a transaction that writes it).

    Raises:
        UsageError: a bad status, CRS or region, no site to count, sites in several regions
            and no ``region``, or a grid of more than ``max_cells`` cells.
    """
    grids = _grids(store, cell_m, statuses=statuses, classes=classes, crs=crs, gap_m=gap_m, con=con)
    gap = region_gap(cell_m) if gap_m is None else float(gap_m)
    if region is None and len(grids) > 1:
        raise UsageError(f"{store.path}: the sites lie in {len(grids)} regions more than "
                         f"{gap / 1000:g} km apart, one grid each: "
                         f"{describe_regions([g.region for g in grids])}; use density_regions() for all of them, "
                         "or density(..., region='r1') for one")
    (chosen,) = _select(grids, region, cell_m)
    _check_size([chosen], cell_m, max_cells)
    return _dataset(store, chosen, cell_m, statuses=statuses, by_date=by_date, by_class=by_class,
                    regions=len(grids), gap_m=gap)


def _dataset(store: CandidateStore, grid: _Grid, cell_m: float, *, statuses: Sequence[str] | None, by_date: bool,
             by_class: bool, regions: int, gap_m: float) -> Any:
    """Count one region's sites on its grid and compute their Gi*."""
    import xarray as xr

    sites, x, y, x0, y0, crs_obj = grid.sites, grid.x, grid.y, grid.x0, grid.y0, grid.crs
    nx, ny = grid.region.nx, grid.region.ny
    col = np.clip(((x - x0) // cell_m).astype(int), 0, nx - 1)
    row = np.clip(ny - 1 - ((y - y0) // cell_m).astype(int), 0, ny - 1)  # row 0 is the north edge
    layers: dict[Layer, list[int]] = {}
    for i, s in enumerate(sites):
        key = Layer(s.cls, s.date if by_date and per_date(s.cls) else None) if by_class else Layer("all")
        layers.setdefault(key, []).append(i)
    keys = sorted(layers, key=lambda k: (k.cls, k.date or ""))
    counts = np.zeros((len(keys), ny, nx), np.int32)
    for k, key in enumerate(keys):
        idx = np.array(layers[key])
        np.add.at(counts[k], (row[idx], col[idx]), 1)
    gi_z, gi_p = np.zeros(counts.shape), np.ones(counts.shape)
    for k in range(len(keys)):
        gi_z[k], gi_p[k] = getis_ord_star(counts[k])
    hot = np.where(gi_z >= Z_95, 1, np.where(gi_z <= -Z_95, -1, 0)).astype(np.int8)
    xs = x0 + (np.arange(nx) + 0.5) * cell_m
    ys = y0 + (ny - np.arange(ny) - 0.5) * cell_m
    name = store.path.parent.name
    ds = xr.Dataset(
        {
            "count": (("layer", "y", "x"), counts, {"long_name": "sites per cell"}),
            "gi_z": (("layer", "y", "x"), gi_z.astype(np.float32),
                     {"long_name": "Getis-Ord Gi* z-score (3 x 3 cells, binary weights)"}),
            "gi_p": (("layer", "y", "x"), gi_p.astype(np.float32), {"long_name": "two-sided p-value of gi_z"}),
            "hotspot": (("layer", "y", "x"), hot, {"long_name": "1 hot, -1 cold (95% confidence), 0 neither"}),
        },
        coords={
            "layer": [k.name for k in keys],
            "cls": ("layer", [k.cls for k in keys]),
            "date": ("layer", [k.date or "" for k in keys]),
            "x": ("x", xs, {"units": "m", "standard_name": "projection_x_coordinate"}),
            "y": ("y", ys, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "spatial_ref": ((), 0, {"crs_wkt": crs_obj.to_wkt(), "spatial_ref": crs_obj.to_wkt(),
                                    "GeoTransform": f"{x0} {cell_m} 0 {y0 + ny * cell_m} 0 {-cell_m}"}),
        },
        attrs={
            "title": f"sitewatch density of {name}" if regions == 1
            else f"sitewatch density of {name}, region {grid.region.name} of {regions}",
            "cell_m": cell_m, "crs": crs_obj.to_string(),
            "statuses": ",".join(statuses) if statuses else "all",
            "sites": len(sites),
            "region": grid.region.name, "regions": regions, "region_gap_m": gap_m,
            "region_bounds": " ".join(f"{b:.6f}" for b in grid.region.bounds),
            "hotspots": "Getis-Ord Gi* (esda.G_Local, star=True, binary queen weights) within the region's grid; "
                        "hot z >= 1.96, cold z <= -1.96",
            "Conventions": "CF-1.8",
        },
    )
    for var in ("count", "gi_z", "gi_p", "hotspot"):
        ds[var].attrs["grid_mapping"] = "spatial_ref"
    return ds


def getis_ord_star(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gi* z-scores and two-sided p-values of a 2-D count grid (PySAL's ``esda.G_Local``).

    Each cell's neighbourhood is its 3 x 3 block (queen contiguity, itself included), with
    binary weights. A grid with no variation (all zeros) gives z 0 and p 1.
    """
    from esda import G_Local
    from libpysal.weights import lat2W
    from scipy.stats import norm

    ny, nx = grid.shape
    values = grid.astype(float).ravel()
    if values.size < 2 or np.all(values == values[0]):
        return np.zeros(grid.shape), np.ones(grid.shape)
    w = lat2W(ny, nx, rook=False)  # ids row by row, as ravel()
    with np.errstate(invalid="ignore", divide="ignore"):  # a grid of a few cells can have no variance: z NaN, then 0
        g = G_Local(values, w, transform="B", permutations=0, star=True)
    z = np.nan_to_num(np.asarray(g.Zs, dtype=float), nan=0.0).reshape(grid.shape)
    return z, 2 * norm.sf(np.abs(z))


def region_paths(out: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """The file of each region's grid when writing ``out``: ``out`` itself for one region or
    for cell polygons (.geojson, .gpkg: every region in one file), else ``d.tif`` ->
    ``d-r1.tif``, ``d-r2.tif``, ... (GeoTIFF and NetCDF hold one grid each)."""
    out = Path(out)
    if len(names) <= 1 or FORMATS.get(out.suffix.lower()) in ("geojson", "gpkg"):
        return dict.fromkeys(names, out)
    return {n: out.with_name(f"{out.stem}-{n}{out.suffix}") for n in names}


def write_density(ds: Any, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`density`'s grid as GeoTIFF, NetCDF, GeoJSON or GeoPackage (by ``out``'s suffix).

    GeoTIFF: ``count``, ``gi_z`` and ``hotspot`` bands for each layer, named in the band
    descriptions, and beside it a QGIS style (``d.qml``, :func:`qgis_raster_style`) that QGIS
    opens it with. GeoJSON/GeoPackage: one polygon (EPSG:4326) per cell and layer that holds
    a site or is a hot or cold spot, with ``region``, ``layer``, ``class``, ``date``,
    ``count``, ``gi_z``, ``gi_p``, ``hotspot`` (``hot``, ``cold`` or empty) and ``grid_crs``.
    Written under a temporary name, then renamed: an existing file is never half-replaced.

    Raises:
        UsageError: an unknown suffix.
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    (path,) = write_density_regions({str(ds.attrs.get("region", "r1")): ds}, out, overwrite=overwrite)
    return path


def write_density_regions(grids: Mapping[str, Any], out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write :func:`density_regions`' grids: every region's cells in one GeoJSON or GeoPackage,
    or one GeoTIFF or NetCDF per region named by :func:`region_paths` (``d-r1.tif``, ...;
    ``out`` itself when there is one region).

    Every file is checked (suffix, existing file, directory) before any is written, written
    under a temporary name, and renamed into place only once all are written: an error
    leaves no new or half-written file.

    Returns:
        The files written, in region order.

    Raises:
        UsageError: an unknown suffix, or no grid.
        OutputError: a file exists (without ``overwrite``) or cannot be written.
    """
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {out}: use .tif, .nc, .geojson or .gpkg")
    if not grids:
        raise UsageError(f"--out {out}: no grid to write")
    paths = region_paths(out, list(grids))
    files: dict[Path, list[Any]] = {}
    for name, ds in grids.items():
        files.setdefault(paths[name], []).append(ds)
    for path in [*files, *(p.with_suffix(".qml") for p in files if fmt == "gtiff")]:
        if path.is_dir():
            raise OutputError(f"--out {path}: is a directory; name a file")
        if path.exists() and not overwrite:
            raise OutputError(f"--out {path}: already exists; pass --overwrite to replace it or choose another file")
    tmps = {path: path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}") for path in files}
    if fmt == "gtiff":  # QGIS's default style of each GeoTIFF, beside it
        tmps.update({path.with_suffix(".qml"): path.with_name(f".{path.stem}.{os.getpid()}.tmp.qml") for path in files})
    try:
        for path, dss in files.items():
            if fmt == "gtiff":
                _write_gtiff(dss[0], tmps[path])
                tmps[path.with_suffix(".qml")].write_text(qgis_raster_style(dss[0]))
            elif fmt == "netcdf":
                dss[0].to_netcdf(tmps[path], engine="scipy")
            else:
                _write_cells(dss, tmps[path], fmt)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return list(files)


def _transform(ds: Any) -> tuple[float, float, float, float]:
    """``(west, north, cell, cell)`` of the grid."""
    cell = float(ds.attrs["cell_m"])
    return float(ds.x[0]) - cell / 2, float(ds.y[0]) + cell / 2, cell, cell


def _write_gtiff(ds: Any, path: Path) -> None:
    import rasterio
    from affine import Affine

    west, north, cell, _ = _transform(ds)
    bands = [(f"{name} {layer}", ds[name].sel(layer=layer).values.astype(np.float32))
             for layer in ds.layer.values for name in ("count", "gi_z", "hotspot")]
    profile = {"driver": "GTiff", "width": ds.sizes["x"], "height": ds.sizes["y"], "count": len(bands),
               "dtype": "float32", "crs": ds.attrs["crs"], "transform": Affine(cell, 0.0, west, 0.0, -cell, north),
               "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for k, (name, data) in enumerate(bands, start=1):
            dst.write(data, k)
            dst.set_band_description(k, name)
        tags = {"cell_m": str(ds.attrs["cell_m"]), "statuses": ds.attrs["statuses"], "hotspots": ds.attrs["hotspots"]}
        if "region" in ds.attrs:
            tags.update(region=str(ds.attrs["region"]), regions=str(ds.attrs["regions"]),
                        region_gap_m=str(ds.attrs["region_gap_m"]), region_bounds=str(ds.attrs["region_bounds"]))
        dst.update_tags(**tags)


#: The density ramp of the web maps (imagery/webmap/static/maplayers.js), light to dark.
RAMP = ("#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")


def count_classes(max_count: int) -> list[tuple[int, int]]:
    """Class limits ``(lo, hi)`` of the density ramp for counts ``1..max_count``, as the web maps draw them."""
    top = max(1, int(max_count))
    cuts: list[int] = []
    for k in range(1, len(RAMP) + 1):
        v = max(1, round(top ** (k / len(RAMP))))
        if not cuts or v > cuts[-1]:
            cuts.append(v)
    return [(lo, hi) for lo, hi in zip([1] + [c + 1 for c in cuts[:-1]], cuts, strict=True)]


def qgis_raster_style(ds: Any) -> str:
    """A QGIS style (QML) for a density GeoTIFF: its first band, the count, in the web maps' classes and
    colours, empty cells transparent. QGIS loads ``d.qml`` beside ``d.tif`` as the layer's default style;
    without it QGIS draws the first three bands (count, Gi* z, hotspot) as red, green and blue."""
    counts = ds["count"].isel(layer=0).values
    classes = count_classes(int(np.nanmax(counts)) if counts.size else 1)
    n = len(classes)
    items = ['          <item alpha="0" value="0.5" label="0" color="#ffffff"/>']
    for i, (lo, hi) in enumerate(classes):
        colour = RAMP[round(i * (len(RAMP) - 1) / max(n - 1, 1))]
        label = str(lo) if lo == hi else f"{lo}-{hi}"
        items.append(f'          <item alpha="255" value="{hi + 0.5}" label="{label}" color="{colour}"/>')
    top = classes[-1][1] + 0.5
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n  <pipe>\n'
        f'    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="0.8" alphaBand="-1" '
        f'classificationMin="0" classificationMax="{top}">\n'
        '      <rastershader>\n'
        f'        <colorrampshader colorRampType="DISCRETE" classificationMode="1" clip="0" minimumValue="0" '
        f'maximumValue="{top}">\n' + "\n".join(items) + "\n"
        "        </colorrampshader>\n      </rastershader>\n    </rasterrenderer>\n  </pipe>\n</qgis>\n"
    )


def cell_features(ds: Any) -> list[dict[str, Any]]:
    """GeoJSON features (EPSG:4326 polygons) of the cells that hold a site or are hot or cold spots.

    Properties: ``region``, ``layer``, ``class``, ``date``, ``count``, ``gi_z``, ``gi_p``,
    ``hotspot`` and ``grid_crs`` (the CRS of the region's grid).
    """
    from pyproj import Transformer

    to_ll = Transformer.from_crs(ds.attrs["crs"], "EPSG:4326", always_xy=True)
    west, north, cell, _ = _transform(ds)
    region, crs = str(ds.attrs.get("region", "r1")), str(ds.attrs["crs"])
    feats = []
    for li, layer in enumerate(ds.layer.values):
        count, z, p, hot = (ds[n].values[li] for n in ("count", "gi_z", "gi_p", "hotspot"))
        for r, c in zip(*np.nonzero((count > 0) | (hot != 0)), strict=True):
            x0, y1 = west + c * cell, north - r * cell
            xs, ys = [x0, x0 + cell, x0 + cell, x0, x0], [y1 - cell, y1 - cell, y1, y1, y1 - cell]
            lon, lat = to_ll.transform(xs, ys)
            feats.append({"type": "Feature",
                          "geometry": {"type": "Polygon", "coordinates": [[[round(a, 7), round(b, 7)] for a, b in zip(lon, lat, strict=True)]]},
                          "properties": {"region": region, "layer": str(layer), "class": str(ds.cls.values[li]),
                                         "date": str(ds.date.values[li]) or None, "count": int(count[r, c]),
                                         "gi_z": round(float(z[r, c]), 4), "gi_p": round(float(p[r, c]), 5),
                                         "hotspot": {1: "hot", -1: "cold"}.get(int(hot[r, c]), ""),
                                         "grid_crs": crs}})
    return feats


#: Most cells of the grid that :func:`density_geojson` computes for a web map (Gi* of a larger
#: grid takes too long for a page to wait on).
MAP_MAX_CELLS = 60_000


def density_geojson(store: CandidateStore, cell_m: float, status: str | Sequence[str] | None = "all", *,
                    max_cells: int = MAP_MAX_CELLS, con: Any = None) -> dict[str, Any]:
    """The density of all the store's sites (every class in one layer) and its Gi* hotspots, for
    the web maps: an RFC 7946 FeatureCollection of the cells (EPSG:4326 polygons) that hold a site
    or are hot or cold spots.

    The sites are split into regions as by :func:`density_regions`, each on its own grid of
    ``cell_m`` (so a run over five distant ports shows 1 km cells at every port) with its own
    Gi*. Each feature's properties: ``count`` (int), ``gi_z`` and ``gi_p`` (float, or null
    where not finite), ``hotspot`` (``"hot"``, ``"cold"`` or null), ``region`` (``r1``, ...).
    Top level: ``cell_m``, ``grid_crs`` (the grids' CRS, such as ``EPSG:32645``, when every
    region's grid has the same; else null), ``regions`` (one ``{"name", "grid_crs", "sites",
    "cells", "shape", "bounds"}`` per region, west to east; bounds in degrees), ``status``,
    ``sites`` (sites counted) and ``max_count``. A store with no such site gives no features
    (``grid_crs`` null, no ``regions``).

    Args:
        store: the run's candidate store.
        cell_m: cell side in metres.
        status: ``"all"`` (or None), one review status or several.
        max_cells: most cells the grids may have, all regions together.
        con: read through this connection of the store.

    Raises:
        UsageError: a bad cell size or status, or grids of more than ``max_cells`` cells.
    """
    if not (isinstance(cell_m, int | float) and math.isfinite(cell_m) and cell_m > 0):
        raise UsageError(f"cell: {cell_m!r}: give a positive size in metres")
    statuses = [status] if isinstance(status, str) else list(status or [])
    statuses = [s for s in statuses if s != "all"]
    for s in statuses:
        check_status(s, "status")
    empty = {"type": "FeatureCollection", "features": [], "cell_m": cell_m, "grid_crs": None,
             "status": ",".join(statuses) or "all", "sites": 0, "max_count": 0}
    if not store.sites(status=statuses or None, limit=1, con=con):
        return empty
    grids = density_regions(store, cell_m, statuses=statuses or None, by_date=False, by_class=False,
                            max_cells=max_cells, con=con)
    feats = []
    for ds in grids.values():
        for f in cell_features(ds):
            p = f["properties"]
            feats.append({"type": "Feature", "geometry": f["geometry"], "properties": {
                "count": int(p["count"]),
                "gi_z": p["gi_z"] if math.isfinite(p["gi_z"]) else None,
                "gi_p": p["gi_p"] if math.isfinite(p["gi_p"]) else None,
                "hotspot": p["hotspot"] or None,
                "region": p["region"],
            }})
    regions = [{"name": name, "grid_crs": ds.attrs["crs"], "sites": int(ds.attrs["sites"]),
                "cells": int(ds.sizes["x"] * ds.sizes["y"]), "shape": [int(ds.sizes["y"]), int(ds.sizes["x"])],
                "bounds": [round(float(b), 6) for b in ds.attrs["region_bounds"].split()]}
               for name, ds in grids.items()]
    crss = {r["grid_crs"] for r in regions}
    return {**empty, "features": feats, "grid_crs": crss.pop() if len(crss) == 1 else None, "regions": regions,
            "sites": sum(r["sites"] for r in regions),
            "max_count": max((f["properties"]["count"] for f in feats), default=0)}


def density_for_map(store: CandidateStore, cell: str = "1000", status: str = "all") -> dict[str, Any]:
    """:func:`density_geojson` from the text of a web request: ``GET /api/density?cell=1000&status=all``.

    ``cell``: metres (``1000``, ``1km``, ``500m``), 10 m to 1,000 km. ``status``: ``all``, or
    statuses separated by commas (``confirmed,unsure``).

    Raises:
        UsageError: a bad cell or status, or a grid of more than :data:`MAP_MAX_CELLS` cells.
    """
    cell_m = parse_cell(cell)
    if not 10 <= cell_m <= 1_000_000:
        raise UsageError(f"cell {cell!r}: give 10 m to 1000 km")
    statuses = [s.strip() for s in status.split(",") if s.strip()] or ["all"]
    return density_geojson(store, cell_m, statuses)


def _write_cells(grids: Sequence[Any], path: Path, fmt: str) -> None:
    feats = [f for ds in grids for f in cell_features(ds)]
    if fmt == "geojson":
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")
        return
    import shapely
    from pyogrio.raw import write

    geoms = np.array([shapely.to_wkb(shapely.geometry.shape(f["geometry"])) for f in feats], dtype=object)
    names = ["region", "layer", "class", "date", "count", "gi_z", "gi_p", "hotspot", "grid_crs"]
    text = {"region", "layer", "class", "date", "hotspot", "grid_crs"}
    columns = [np.array([f["properties"][n] if f["properties"][n] is not None else "" for f in feats],
                        dtype=object if n in text else None) for n in names]
    write(path, geoms, columns, names, driver="GPKG", layer="density", geometry_type="Polygon", crs="EPSG:4326",
          promote_to_multi=False)
