"""Scenes: one raster file, or a directory of single-band files on one grid.

A :class:`Scene` is a small, picklable description (paths, band mapping, grid, CRS);
pixel data is read window by window inside Dask tasks with :func:`read_tile`, so no
scene is ever loaded whole. Files are opened read-only, and only where the data is read.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from imagery.errors import (
    BandError,
    CorruptRasterError,
    InputError,
    NotARasterError,
    NotGeoreferencedError,
    UsageError,
)
from imagery.tiling import Tile

#: Sentinel-2 style band names found in file names and band descriptions.
BAND_PATTERN = re.compile(r"(?<![A-Za-z0-9])(B(?:0[1-9]|1[0-2]|8A))(?![0-9A-Za-z])", re.I)

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class BandSource:
    """Where one model band is read from: a file and a 1-based band index in it."""

    path: str
    index: int
    name: str


@dataclass(frozen=True)
class Scene:
    """A raster scene: its bands (in the model's order) and its pixel grid."""

    name: str
    source: str
    bands: tuple[BandSource, ...]
    width: int
    height: int
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    dtype: str
    nodata: float | None

    @property
    def affine(self) -> Affine:
        """The pixel-to-CRS affine transform."""
        return Affine(*self.transform)

    @property
    def files(self) -> tuple[str, ...]:
        """Distinct files the scene reads, in band order."""
        return tuple(dict.fromkeys(b.path for b in self.bands))

    @property
    def pixel_size(self) -> float:
        """Mean pixel side in CRS units (metres for projected CRSs)."""
        a = self.affine
        return float(math.sqrt(abs(a.a * a.e - a.b * a.d)))


def band_name_in(text: str) -> str | None:
    """Return the Sentinel-2 band name (``B02``, ``B8A``...) found in ``text``, if any."""
    match = BAND_PATTERN.search(text)
    return match.group(1).upper() if match else None


def _open(path: str) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, "r")
    except RasterioError as exc:
        raise NotARasterError(
            path, f"not a raster GDAL can read ({_short(exc)}); check the file is a GeoTIFF/COG"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _check_grid(path: str, src: rasterio.DatasetReader) -> None:
    if src.width < 1 or src.height < 1:
        raise InputError(path, f"raster is {src.width} x {src.height} pixels: it has no pixels")
    if src.crs is None:
        raise NotGeoreferencedError(
            path,
            "raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:32633 FILE) and retry",
        )
    if src.transform == Affine.identity() and not src.gcps[0]:
        raise NotGeoreferencedError(
            path,
            "raster has no geotransform; georeference it (e.g. gdal_edit.py -a_ullr) and retry",
        )
    if src.transform.is_degenerate:
        raise NotGeoreferencedError(path, "raster's geotransform is degenerate (zero pixel size)")
    if src.dtypes[0] not in SUPPORTED_DTYPES:
        raise BandError(
            path, f"pixel type {src.dtypes[0]} is not supported; use uint8, uint16 or float32"
        )


def _describe(names: Sequence[str | None]) -> str:
    """``B02, B03, ?`` for band names, or ``none named`` when no band has a name."""
    if not any(names):
        return "none named"
    return ", ".join(n or "?" for n in names)


def _resolve(
    wanted: Sequence[str], names: Sequence[str | None], bands_flag: Sequence[str] | None, path: str
) -> list[int]:
    """Return 0-based positions in ``names`` for each band the model wants, in order."""
    if bands_flag:
        if len(bands_flag) != len(wanted):
            raise UsageError(
                f"--bands names {len(bands_flag)} bands but the model takes {len(wanted)} "
                f"({', '.join(wanted)}); give one per model band, in the model's order"
            )
        picks = []
        for item in bands_flag:
            if item.isdigit():
                pos = int(item) - 1
                if not 0 <= pos < len(names):
                    raise UsageError(
                        f"--bands {item}: {path} has {len(names)} bands (indexes start at 1)"
                    )
                picks.append(pos)
            else:
                upper = [n.upper() if n else None for n in names]
                if item.upper() not in upper:
                    raise UsageError(
                        f"--bands {item}: no band of that name in {path} "
                        f"(it has {_describe(names)})"
                    )
                picks.append(upper.index(item.upper()))
        return picks
    upper = [n.upper() if n else None for n in names]
    if all(w.upper() in upper for w in wanted):
        return [upper.index(w.upper()) for w in wanted]
    # Positional only where no band's own name says otherwise: B05 in B08's place is not B08.
    known = [band_name_in(n) if n else None for n in names]
    if len(names) == len(wanted) and all(k is None or k == w.upper() for k, w in zip(known, wanted, strict=True)):
        return list(range(len(wanted)))
    missing = [w for w in wanted if w.upper() not in upper]
    raise BandError(
        path,
        f"has {len(names)} band(s) ({_describe(names)}) but the model needs "
        f"{len(wanted)} ({', '.join(wanted)})"
        + (f"; missing: {', '.join(missing)}" if any(known) else "")
        + "; pass --bands to say which to use",
    )


def open_scene(
    path: str | Path, model_bands: Sequence[str], bands_flag: Sequence[str] | None = None
) -> Scene:
    """Open and validate a scene for a model that takes ``model_bands``.

    ``path`` is a raster file (any band count) or a directory of single-band files
    whose names contain band names (``B02``...). Only metadata is read here.

    Raises:
        InputError: the path is missing, not a raster, not georeferenced, or its bands
            do not fit the model.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or directory")
    if p.is_dir():
        return _open_band_dir(p, model_bands, bands_flag)
    src = _open(str(p))
    with src:
        _check_grid(str(p), src)
        names: list[str | None] = [
            (band_name_in(d) if d else None) or d for d in src.descriptions
        ]
        picks = _resolve(model_bands, names, bands_flag, str(p))
        bands = tuple(
            BandSource(str(p), i + 1, model_bands[k]) for k, i in enumerate(picks)
        )
        return Scene(
            name=p.stem,
            source=str(p),
            bands=bands,
            width=src.width,
            height=src.height,
            crs_wkt=src.crs.to_wkt(),
            transform=tuple(src.transform)[:6],  # type: ignore[arg-type]
            dtype=src.dtypes[0],
            nodata=src.nodata,
        )


def _open_band_dir(
    p: Path, model_bands: Sequence[str], bands_flag: Sequence[str] | None
) -> Scene:
    files = sorted(
        f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
    )
    if not files:
        raise InputError(p, "directory holds no raster files (.tif/.tiff/.jp2)")
    names = [band_name_in(f.name) for f in files]
    picks = _resolve(model_bands, names, bands_flag, str(p))
    chosen = [files[i] for i in picks]
    grid = None
    dtype, nodata = "", None
    for f in chosen:
        src = _open(str(f))
        with src:
            _check_grid(str(f), src)
            if src.count != 1:
                raise BandError(f, f"has {src.count} bands; a band directory needs single-band files")
            this = (src.width, src.height, src.crs.to_wkt(), tuple(src.transform)[:6])
            if grid is None:
                grid, dtype, nodata = this, src.dtypes[0], src.nodata
            elif not _same_grid(grid, this):
                raise BandError(
                    f,
                    f"is not on the same grid as {chosen[0].name} "
                    "(size, CRS or transform differ); resample the bands to one grid",
                )
    assert grid is not None  # noqa: S101 - chosen is never empty here
    return Scene(
        name=p.name,
        source=str(p),
        bands=tuple(BandSource(str(f), 1, model_bands[k]) for k, f in enumerate(chosen)),
        width=grid[0],
        height=grid[1],
        crs_wkt=grid[2],
        transform=grid[3],  # type: ignore[arg-type]
        dtype=dtype,
        nodata=nodata,
    )


def _same_grid(a: tuple, b: tuple) -> bool:  # type: ignore[type-arg]
    if a[:2] != b[:2] or not rasterio.crs.CRS.from_wkt(a[2]) == rasterio.crs.CRS.from_wkt(b[2]):
        return False
    return bool(np.allclose(a[3], b[3], rtol=0, atol=1e-6 * max(abs(a[3][0]), 1e-9)))


class SceneReader:
    """Open datasets of one scene for reading many windows (use inside a task)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self._stack = ExitStack()
        self._ds = {f: self._stack.enter_context(_open(f)) for f in scene.files}

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a window (clipped to the raster) as float32 ``(bands, h, w)`` and a valid mask."""
        window = Window(col_off, row_off, width, height)
        out = np.empty((len(self.scene.bands), height, width), dtype=np.float32)
        valid = np.ones((height, width), dtype=bool)
        nodata_all = np.ones((height, width), dtype=bool)
        for k, band in enumerate(self.scene.bands):
            ds = self._ds[band.path]
            try:
                data = ds.read(band.index, window=window)
            except RasterioError as exc:
                raise CorruptRasterError(
                    band.path,
                    f"pixel data cannot be read at window {window.col_off},{window.row_off} "
                    f"({_short(exc)}); the file may be truncated or damaged",
                ) from None
            out[k] = data
            nd = ds.nodata
            if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
                nodata_all &= data == nd
            else:
                nodata_all &= False
        finite = np.isfinite(out).all(axis=0)
        valid &= finite & ~nodata_all
        if not finite.all():
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out, valid

    def read_tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Read ``tile`` padded to its full size; padding is marked invalid."""
        col, row, w, h = tile.clipped(self.scene.width, self.scene.height)
        data, valid = self.read(col, row, w, h)
        if w == tile.size and h == tile.size:
            return data, valid
        full = np.zeros((data.shape[0], tile.size, tile.size), dtype=np.float32)
        mask = np.zeros((tile.size, tile.size), dtype=bool)
        full[:, :h, :w] = data
        mask[:h, :w] = valid
        return full, mask

    def overview(self, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Read the whole scene decimated so its longer side is at most ``max_side``.

        Every block of the file is decoded, so this doubles as an integrity check.
        Returns the data, its valid mask and the decimation factor.
        """
        s = self.scene
        factor = max(1.0, max(s.width, s.height) / max_side)
        h = max(1, round(s.height / factor))
        w = max(1, round(s.width / factor))
        out = np.empty((len(s.bands), h, w), dtype=np.float32)
        nodata_all = np.ones((h, w), dtype=bool)
        for k, band in enumerate(s.bands):
            ds = self._ds[band.path]
            try:
                data = ds.read(band.index, out_shape=(h, w))
            except RasterioError as exc:
                raise CorruptRasterError(
                    band.path,
                    f"pixel data cannot be read ({_short(exc)}); the file may be truncated "
                    "or damaged: re-download or re-export it",
                ) from None
            out[k] = data
            nd = ds.nodata
            if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
                nodata_all &= data == nd
            else:
                nodata_all &= False
        valid = np.isfinite(out).all(axis=0) & ~nodata_all
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out, valid, factor
