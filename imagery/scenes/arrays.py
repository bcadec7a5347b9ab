"""Scenes as ``xarray.DataArray``: a DataArray in, a scene out, and a scene file opened as one.

:func:`scene_from_dataarray` turns a DataArray with dimensions ``band, y, x`` (NumPy- or
Dask-backed) into a :class:`~sitewatch.imagery.scenes.scene.Scene` that ``detect`` tiles
exactly as it tiles a file: the same tile grid (the model's tile size and overlap), the
same seams and the same outputs. The grid comes from rioxarray's ``rio`` accessor, which
reads what rioxarray and odc-geo write (``spatial_ref`` coordinate with ``crs_wkt``/
``spatial_ref`` and ``GeoTransform``, or the x/y coordinates); band names from the band
coordinate (``["B02", "B03", ...]``, or ``red``/``green``/``blue``/``nir``) or the
``long_name`` attribute rioxarray fills from band descriptions.

How the chunks are used: each Dask task reads its tiles' windows (one window per row of
neighbouring tiles) by slicing the array and computing that slice inside the task, so only
the chunks a window touches are read, and a lazily opened file reads just the window. The
tiles do not follow the chunks: the tile grid is the model's, so detections do not depend
on chunking. Chunks much smaller than a tile make each window gather many chunks (slow):
:func:`chunk_warning` says so.

:func:`open_scene_array` (``sitewatch.open_scene``) opens a raster file or a band directory as
such a DataArray, lazily, with rioxarray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sitewatch.imagery.errors import BandError, InputError, NotGeoreferencedError, UsageError
from sitewatch.imagery.scenes.scene import (
    RASTER_SUFFIXES,
    SUPPORTED_DTYPES,
    ArraySource,
    BandSource,
    Scene,
    _check_grid,
    _open,
    _resolve,
    band_name_in,
)

if TYPE_CHECKING:
    import xarray as xr

#: Prefix of an array scene's ``source`` (and its bands' ``path``): ``xarray:NAME``.
ARRAY_SOURCE = "xarray:"
#: Chunk sides :func:`open_scene_array` uses by default (pixels; all bands in one chunk).
DEFAULT_CHUNK = 2048


def is_dataarray(obj: object) -> bool:
    """Whether ``obj`` is an ``xarray.DataArray`` (without importing xarray for paths)."""
    return type(obj).__name__ == "DataArray" and type(obj).__module__.startswith("xarray")


def _rio(da: xr.DataArray) -> Any:
    import rioxarray  # noqa: F401 - registers the .rio accessor

    return da.rio


def _band_names(da: xr.DataArray, band_dim: str) -> list[str | None]:
    """Names of the bands: string band coordinates, else the ``long_name`` attribute's, else none."""
    n = da.sizes[band_dim]
    if band_dim in da.coords:
        values = list(np.asarray(da.coords[band_dim].values).tolist())
        if all(isinstance(v, str) and v.strip() for v in values):
            return [band_name_in(v) or v for v in values]
    long_name = da.attrs.get("long_name")
    if isinstance(long_name, str) and n == 1:
        long_name = (long_name,)
    if isinstance(long_name, list | tuple) and len(long_name) == n and all(isinstance(v, str) for v in long_name):
        return [(band_name_in(v) or v) if v else None for v in long_name]
    return [None] * n


def scene_from_dataarray(
    da: xr.DataArray, model_bands: Sequence[str], bands_flag: Sequence[str] | None = None, *, name: str | None = None,
) -> Scene:
    """A scene that reads its pixels from ``da`` (dims ``band, y, x``, any order of names rioxarray knows).

    Args:
        da: the scene. Its CRS and transform as rioxarray reads them (``da.rio.crs``,
            ``da.rio.transform()``); its band names as band coordinates or ``long_name``.
        model_bands: the bands the model takes, in its order.
        bands_flag: the ``bands`` setting (band names, or 1-based positions in ``da``), if any.
        name: the scene's name in the outputs; defaults to ``da.name``.

    Raises:
        InputError: (a :class:`~sitewatch.imagery.errors.SitewatchError`) no name, no CRS or
            transform, no band names, bands that do not fit the model, an unsupported pixel type,
            or dimensions that are not ``band, y, x``. The message says what to set.
    """
    label = name or (str(da.name) if da.name is not None else None)
    if not label:
        raise UsageError("the DataArray has no name, and a scene needs one for the outputs: "
                         "name it (da.rename('my_scene')) or pass name=")
    source = ARRAY_SOURCE + label
    rio = _rio(da)
    try:
        x_dim, y_dim = rio.x_dim, rio.y_dim
    except Exception:  # noqa: BLE001 - rioxarray raises its own MissingSpatialDimensionError
        raise InputError(source, f"DataArray has dimensions {tuple(da.dims)}: expected (band, y, x); "
                                 "rename them (da.rename({'lat': 'y', 'lon': 'x'}))") from None
    if da.ndim == 2:
        da = da.expand_dims("band")
    others = [d for d in da.dims if d not in (x_dim, y_dim)]
    if da.ndim != 3 or len(others) != 1:
        raise InputError(source, f"DataArray has dimensions {tuple(da.dims)}: expected (band, {y_dim}, {x_dim}); "
                                 "select one time step (da.isel(time=0)) or stack bands into one band dimension")
    band_dim = others[0]
    da = da.transpose(band_dim, y_dim, x_dim)
    rio = _rio(da)
    height, width = int(da.sizes[y_dim]), int(da.sizes[x_dim])
    if width < 1 or height < 1:
        raise InputError(source, f"DataArray is {width} x {height} pixels: it has no pixels")
    crs = rio.crs
    if crs is None:
        raise NotGeoreferencedError(source, "DataArray has no CRS; set one with da.rio.write_crs('EPSG:32633') "
                                            "(import rioxarray) and retry")
    grid_mapping = rio.grid_mapping
    has_transform = grid_mapping in da.coords and "GeoTransform" in da.coords[grid_mapping].attrs
    if not has_transform and (x_dim not in da.coords or y_dim not in da.coords):
        raise NotGeoreferencedError(source, "DataArray has no transform (no x/y coordinates and no GeoTransform); "
                                            "set one with da.rio.write_transform(Affine(...)) and retry")
    transform = rio.transform(recalc=not has_transform)
    if transform.is_degenerate:
        raise NotGeoreferencedError(source, "DataArray's transform is degenerate (zero pixel size); "
                                            "set one with da.rio.write_transform(...)")
    if transform.b != 0 or transform.d != 0:
        raise NotGeoreferencedError(source, "DataArray's transform is rotated or sheared; sitewatch reads north-up "
                                            "grids: reproject it first (da.rio.reproject(da.rio.crs))")
    dtype = np.dtype(da.dtype).name
    if dtype not in SUPPORTED_DTYPES:
        raise BandError(source, f"pixel type {dtype} is not supported; convert it (da.astype('float32'))")
    names = _band_names(da, band_dim)
    if not any(names) and not bands_flag:
        raise BandError(source, f"DataArray's {da.sizes[band_dim]} bands have no names; name them "
                                f"(da.assign_coords({band_dim}=['B02', 'B03', 'B04', 'B08'])) or pass the bands setting")
    picks = _resolve(model_bands, names, bands_flag, source)
    nodata = rio.nodata
    if nodata is None:
        nodata = rio.encoded_nodata
    nodata_f = None if nodata is None else float(nodata)
    if nodata_f is not None and math.isnan(nodata_f):
        nodata_f = None  # NaN is no data anyway: non-finite pixels are invalid
    data = da.data
    import dask.base

    array = ArraySource(data, tuple(picks), nodata_f, dask.base.tokenize(data))
    return Scene(
        name=label,
        source=source,
        bands=tuple(BandSource(source, i + 1, model_bands[k]) for k, i in enumerate(picks)),
        width=width,
        height=height,
        crs_wkt=crs.to_wkt(),
        transform=tuple(transform)[:6],  # type: ignore[arg-type]
        dtype=dtype,
        nodata=nodata_f,
        array=array,
    )


def chunk_warning(scene: Scene, tile_size: int) -> str | None:
    """A warning when a Dask-backed scene's chunks are much smaller than the model's tiles, else ``None``.

    Each window a task reads gathers every chunk it touches: a 256-pixel tile over 32-pixel
    chunks computes 64+ chunks per tile, which is slow for nothing.
    """
    src = scene.array
    if src is None or not src.is_dask:
        return None
    _, ys, xs = src.data.chunks
    side = min(max(ys), max(xs))
    if side * 2 >= tile_size:
        return None
    return (f"{scene.source}: the array's chunks are {max(ys)} x {max(xs)} pixels, much smaller than the model's "
            f"{tile_size}-pixel tiles, so every tile gathers many chunks; rechunk it "
            f"(da.chunk({{'y': {max(1024, tile_size)}, 'x': {max(1024, tile_size)}}})) for speed")


def open_scene_array(path: str | Path, *, chunks: int | dict[str, int] | None = None,
                     name: str | None = None) -> xr.DataArray:
    """A raster file or band directory as a lazy, Dask-backed ``DataArray`` with band names.

    Args:
        path: a raster file (any band count) or a directory of single-band files named by band
            (``B02``...), as ``sitewatch detect`` takes them.
        chunks: chunk side in pixels along y and x (or a rioxarray chunks dict); all bands are
            in one chunk. Defaults to :data:`DEFAULT_CHUNK`.
        name: the DataArray's (and the scene's) name; defaults to the file or directory name.

    Returns:
        A DataArray ``(band, y, x)`` whose ``band`` coordinate holds band names (the
        descriptions' Sentinel-2 names, the descriptions, or ``band_1``, ``band_2``... for unnamed
        bands), with ``rio.crs``, ``rio.transform()`` and ``rio.nodata`` from the file.

    Raises:
        InputError: the path is missing, not a raster, or not georeferenced.
    """
    import rioxarray
    import xarray as xr

    p = Path(path)
    files: list[tuple[str | None, str]]
    if p.is_dir():
        by_band: dict[str, str] = {}
        for f in sorted(p.iterdir()):
            band = band_name_in(f.name)
            if band and f.is_file() and f.suffix.lower() in RASTER_SUFFIXES:
                by_band.setdefault(band, str(f))  # the first file of a band wins, as detect's band directories
        if not by_band:
            raise InputError(p, "directory holds no single-band raster files named by band (B02...)")
        files = sorted(by_band.items(), key=lambda kv: kv[0])
    else:
        files = [(None, str(path))]
    # The same checks and messages as detect's file input (missing, not a raster, no CRS...).
    for _, f in files:
        if not str(f).startswith("/vsi") and not Path(f).exists():
            raise InputError(f, "no such file or directory")
        with _open(str(f)) as src:
            _check_grid(str(f), src)
    side = DEFAULT_CHUNK if chunks is None else chunks
    chunk_spec: dict[str, int] = {"band": -1, "y": side, "x": side} if isinstance(side, int) else dict(side)
    parts = []
    for band, f in files:
        arr = rioxarray.open_rasterio(f, chunks=chunk_spec, masked=False)
        if isinstance(arr, list | xr.Dataset):
            raise InputError(f, "holds subdatasets; open one of them (a GDAL subdataset path)")
        descriptions = arr.attrs.get("long_name")
        if isinstance(descriptions, str):
            descriptions = (descriptions,)
        if band is not None and arr.sizes["band"] == 1:
            names = [band]
        elif isinstance(descriptions, list | tuple) and len(descriptions) == arr.sizes["band"]:
            names = [(band_name_in(d) if d else None) or d or f"band_{i + 1}" for i, d in enumerate(descriptions)]
        else:
            names = [f"band_{i + 1}" for i in range(arr.sizes["band"])]
        parts.append(arr.assign_coords(band=names))
    try:
        da = parts[0] if len(parts) == 1 else xr.concat(parts, dim="band", join="exact", combine_attrs="drop_conflicts")
    except ValueError:  # join="exact": the files' x/y coordinates differ
        raise BandError(p, "band files are not on the same grid (size or transform differ); resample the bands "
                           "to one grid") from None
    if da.sizes["band"] > 1:
        da = da.chunk({"band": -1})
    return da.rename(name or (p.name if p.is_dir() else p.stem))
