"""Site density on a regular grid, and hotspots (Getis-Ord Gi*), from a run's candidate store.

Where are kilns concentrated, where do vessels gather, which districts to inspect first:
:func:`density` counts the store's sites (all candidates, or only those of some review
statuses) per cell of a square grid in metres, per class (and, for vessels, per date), and
computes the Getis-Ord Gi* statistic of each cell's count with PySAL (``esda.G_Local``,
``star=True``: each cell's 3 x 3 neighbourhood, itself included, binary weights), flagging
a cell *hot* (``z >= 1.96``) or *cold* (``z <= -1.96``): a two-sided test at 95% confidence
under the normal approximation, one cell at a time (no correction for testing many cells:
treat the flags as where to look first, not as proof).

The grid is in metres on the ground: the UTM zone of the sites' centre when they span at
most 6 degrees of longitude, else the global equal-area EASE-Grid 2.0 (EPSG:6933). Its
origin is a multiple of the cell size, so two runs over the same area share cells.

The result is an ``xarray.Dataset`` (dimensions ``layer``, ``y``, ``x``; variables
``count``, ``gi_z``, ``gi_p`` and ``hotspot``, -1 cold / 0 / 1 hot; the CRS as
``spatial_ref`` in the CF way GDAL and rioxarray read), written by :func:`write_density`
as GeoTIFF (one band per layer and variable), NetCDF, or grid-cell polygons (GeoJSON,
GeoPackage) for QGIS.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
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
    """The grid's CRS: the UTM zone of the points' centre, or EPSG:6933 when they span > 6 degrees."""
    if len(lons) == 0 or float(np.ptp(lons)) > 6.0:
        return EQUAL_AREA
    lon, lat = float(np.mean(lons)), float(np.mean(lats))
    zone = int((lon + 180) // 6) % 60 + 1
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


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
    con: Any = None,
) -> Any:
    """Sites per grid cell and their Gi* hotspots, as an ``xarray.Dataset``.

    Args:
        store: the run's candidate store.
        cell_m: cell side in metres.
        statuses: count only sites with these review statuses (``["confirmed"]``); default all.
        classes: only these classes; default all.
        by_date: vessel classes get one layer per acquisition date (kilns persist: one layer).
        by_class: one layer per class (and date); ``False``: every site in one layer named ``all``.
        crs: the grid's CRS (any pyproj string in metres); default :func:`grid_crs`.
        max_cells: most cells the grid may have.
        con: read through this connection of the store (inside a transaction that writes it).

    Raises:
        UsageError: a bad status, no site to count, or a grid of more than ``max_cells`` cells.
    """
    import xarray as xr
    from pyproj import CRS, Transformer

    for s in statuses or ():
        check_status(s, "--status")
    sites = store.sites(status=list(statuses) if statuses else None, cls=list(classes) if classes else None, con=con)
    if not sites:
        which = f" with status {', '.join(statuses)}" if statuses else ""
        raise UsageError(f"{store.path}: no sites{which} to count; review some, or leave out --status")
    lons = np.array([s.lon for s in sites])
    lats = np.array([s.lat for s in sites])
    target = crs or grid_crs(lons, lats)
    try:
        crs_obj = CRS.from_user_input(target)
    except Exception:  # noqa: BLE001 - pyproj raises its own types
        raise UsageError(f"--crs {target!r}: not a CRS pyproj knows (try EPSG:32645 or EPSG:6933)") from None
    if not crs_obj.is_projected:
        raise UsageError(f"--crs {target!r}: the grid needs a projected CRS in metres (a UTM zone, EPSG:6933)")
    x, y = Transformer.from_crs("EPSG:4326", crs_obj, always_xy=True).transform(lons, lats)
    x0, y0 = math.floor(float(np.min(x)) / cell_m) * cell_m, math.floor(float(np.min(y)) / cell_m) * cell_m
    nx = int(math.floor((float(np.max(x)) - x0) / cell_m)) + 1
    ny = int(math.floor((float(np.max(y)) - y0) / cell_m)) + 1
    if nx * ny > max_cells:
        raise UsageError(f"--cell {cell_m:g} m: the sites span {nx} x {ny} cells (more than {max_cells}); "
                         "use a larger --cell")
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
            "title": f"sitewatch density of {store.path.parent.name}",
            "cell_m": cell_m, "crs": crs_obj.to_string(),
            "statuses": ",".join(statuses) if statuses else "all",
            "sites": len(sites),
            "hotspots": "Getis-Ord Gi* (esda.G_Local, star=True, binary queen weights); hot z >= 1.96, cold z <= -1.96",
            "Conventions": "CF-1.8",
        },
    )
    for name in ("count", "gi_z", "gi_p", "hotspot"):
        ds[name].attrs["grid_mapping"] = "spatial_ref"
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


def write_density(ds: Any, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`density`'s grid as GeoTIFF, NetCDF, GeoJSON or GeoPackage (by ``out``'s suffix).

    GeoTIFF: ``count``, ``gi_z`` and ``hotspot`` bands for each layer, named in the band
    descriptions. GeoJSON/GeoPackage: one polygon (EPSG:4326) per cell and layer that holds
    a site or is a hot or cold spot, with ``layer``, ``class``, ``date``, ``count``,
    ``gi_z``, ``gi_p`` and ``hotspot`` (``hot``, ``cold`` or empty). Written under a
    temporary name, then renamed: an existing file is never half-replaced.

    Raises:
        UsageError: an unknown suffix.
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {out}: use .tif, .nc, .geojson or .gpkg")
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out}: already exists; pass --overwrite to replace it or choose another file")
    if out.is_dir():
        raise OutputError(f"--out {out}: is a directory; name a file")
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        if fmt == "gtiff":
            _write_gtiff(ds, tmp)
        elif fmt == "netcdf":
            ds.to_netcdf(tmp, engine="scipy")
        else:
            _write_cells(ds, tmp, fmt)
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


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
        dst.update_tags(cell_m=str(ds.attrs["cell_m"]), statuses=ds.attrs["statuses"], hotspots=ds.attrs["hotspots"])


def cell_features(ds: Any) -> list[dict[str, Any]]:
    """GeoJSON features (EPSG:4326 polygons) of the cells that hold a site or are hot or cold spots."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(ds.attrs["crs"], "EPSG:4326", always_xy=True)
    west, north, cell, _ = _transform(ds)
    feats = []
    for li, layer in enumerate(ds.layer.values):
        count, z, p, hot = (ds[n].values[li] for n in ("count", "gi_z", "gi_p", "hotspot"))
        for r, c in zip(*np.nonzero((count > 0) | (hot != 0)), strict=True):
            x0, y1 = west + c * cell, north - r * cell
            xs, ys = [x0, x0 + cell, x0 + cell, x0, x0], [y1 - cell, y1 - cell, y1, y1, y1 - cell]
            lon, lat = to_ll.transform(xs, ys)
            feats.append({"type": "Feature",
                          "geometry": {"type": "Polygon", "coordinates": [[[round(a, 7), round(b, 7)] for a, b in zip(lon, lat, strict=True)]]},
                          "properties": {"layer": str(layer), "class": str(ds.cls.values[li]),
                                         "date": str(ds.date.values[li]) or None, "count": int(count[r, c]),
                                         "gi_z": round(float(z[r, c]), 4), "gi_p": round(float(p[r, c]), 5),
                                         "hotspot": {1: "hot", -1: "cold"}.get(int(hot[r, c]), "")}})
    return feats


#: Most cells of the grid that :func:`density_geojson` computes for a web map (Gi* of a larger
#: grid takes too long for a page to wait on).
MAP_MAX_CELLS = 60_000


def density_geojson(store: CandidateStore, cell_m: float, status: str | Sequence[str] | None = "all", *,
                    max_cells: int = MAP_MAX_CELLS, con: Any = None) -> dict[str, Any]:
    """The density of all the store's sites (every class in one grid) and its Gi* hotspots, for
    the web maps: an RFC 7946 FeatureCollection of the cells (EPSG:4326 polygons) that hold a site
    or are hot or cold spots.

    Each feature's properties: ``count`` (int), ``gi_z`` and ``gi_p`` (float, or null where
    not finite), ``hotspot`` (``"hot"``, ``"cold"`` or null). Top level: ``cell_m``,
    ``grid_crs`` (the grid's CRS, such as ``EPSG:32645``), ``status``, ``sites`` (sites
    counted) and ``max_count``. A store with no such site gives no features (and ``grid_crs``
    null).

    Args:
        store: the run's candidate store.
        cell_m: cell side in metres.
        status: ``"all"`` (or None), one review status or several.
        max_cells: most cells the grid may have.
        con: read through this connection of the store.

    Raises:
        UsageError: a bad cell size or status, or a grid of more than ``max_cells`` cells.
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
    ds = density(store, cell_m, statuses=statuses or None, by_date=False, by_class=False, max_cells=max_cells,
                 con=con)
    feats = []
    for f in cell_features(ds):
        p = f["properties"]
        feats.append({"type": "Feature", "geometry": f["geometry"], "properties": {
            "count": int(p["count"]),
            "gi_z": p["gi_z"] if math.isfinite(p["gi_z"]) else None,
            "gi_p": p["gi_p"] if math.isfinite(p["gi_p"]) else None,
            "hotspot": p["hotspot"] or None,
        }})
    return {**empty, "features": feats, "grid_crs": ds.attrs["crs"], "sites": int(ds.attrs["sites"]),
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


def _write_cells(ds: Any, path: Path, fmt: str) -> None:
    feats = cell_features(ds)
    if fmt == "geojson":
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")
        return
    import shapely
    from pyogrio.raw import write

    geoms = np.array([shapely.to_wkb(shapely.geometry.shape(f["geometry"])) for f in feats], dtype=object)
    names = ["layer", "class", "date", "count", "gi_z", "gi_p", "hotspot"]
    columns = [np.array([f["properties"][n] if f["properties"][n] is not None else "" for f in feats],
                        dtype=object if n in ("layer", "class", "date", "hotspot") else None) for n in names]
    write(path, geoms, columns, names, driver="GPKG", layer="density", geometry_type="Polygon", crs="EPSG:4326",
          promote_to_multi=False)

