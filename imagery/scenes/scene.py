"""Scenes: one raster file, a set of single-band files on one grid, or an array.

A :class:`Scene` is a small, picklable description (paths, band mapping, grid, CRS);
pixel data is read window by window inside Dask tasks with :func:`read_tile`, so no
scene is ever loaded whole. A scene made from an ``xarray.DataArray`` (see
:mod:`sitewatch.imagery.scenes.arrays`) carries its array in :attr:`Scene.array` and
reads its windows from it instead of from files. Files are opened read-only, and only where the data is read.
Paths may be GDAL virtual paths (``/vsicurl/https://...``, ``/vsis3/...``, ``/vsizip/...``);
remote ones are opened and read under :data:`REMOTE_GDAL_OPTIONS`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from sitewatch.imagery.errors import (
    BandError,
    CorruptRasterError,
    InputError,
    NotARasterError,
    NotGeoreferencedError,
    UsageError,
)
from sitewatch.imagery.scenes.tiling import Tile

#: Sentinel-2 style band names found in file names and band descriptions.
BAND_PATTERN = re.compile(r"(?<![A-Za-z0-9])(B(?:0[1-9]|1[0-2]|8A))(?![0-9A-Za-z])", re.I)

#: Colour names of the Sentinel-2 10 m bands: a true-colour render's ``red``, ``green``,
#: ``blue`` bands are B04, B03, B02 (and ``nir`` is B08), so one model reads both.
BAND_ALIASES = {"RED": "B04", "GREEN": "B03", "BLUE": "B02", "NIR": "B08"}

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")

#: GDAL virtual file systems that read over the network (also found nested: /vsizip//vsicurl/...).
REMOTE_VSI = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs")

#: GDAL settings for remote reads. An environment variable or an active ``rasterio.Env``
#: setting of the same name wins, so users can tune them without code changes.
REMOTE_GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing request for sidecar files per open
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MAX_RETRY": "3",  # 429 and 5xx answers are retried, with backoff
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # fewer requests for adjacent COG blocks
}


@dataclass(frozen=True)
class BandSource:
    """Where one model band is read from: a file and a 1-based band index in it.

    A band a training scene lacks (opened with ``allow_missing``) has no file: its
    ``path`` is empty, its index 0, and it reads as zeros.
    """

    path: str
    index: int
    name: str

    @property
    def missing(self) -> bool:
        """The scene has no file for this band (it reads as zeros)."""
        return not self.path


class ArraySource:
    """The pixels of an array scene: a NumPy or Dask array ``(band, y, x)`` and its nodata value.

    Not a dataclass on purpose: ``dask.delayed`` looks for collections inside the dataclasses
    and tuples a task is given and would compute a Dask array found there (the whole scene)
    before the task runs. Held in a plain object, the array travels to each task as it is
    (its graph, for a Dask array) and only the windows a task reads are computed, inside
    that task. ``token`` (Dask's :func:`~dask.base.tokenize` of the data) identifies the
    pixels: it stands for the array in equality, hashing and Dask's own task keys.

    Attributes:
        data: every band of the array, ``(band, y, x)``, in the array's band order.
        picks: positions in ``data``'s band axis of the model's bands, in the model's order.
        nodata: the value that marks a pixel without data in every band, if any.
        token: a stable identity of ``data``'s pixels.
    """

    __slots__ = ("data", "nodata", "picks", "token")

    def __init__(self, data: Any, picks: tuple[int, ...], nodata: float | None, token: str) -> None:
        self.data = data
        self.picks = picks
        self.nodata = nodata
        self.token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArraySource) and (self.token, self.picks, self.nodata) == (
            other.token, other.picks, other.nodata)

    def __hash__(self) -> int:
        return hash((self.token, self.picks))

    def __repr__(self) -> str:
        return f"ArraySource({type(self.data).__name__} {tuple(self.data.shape)}, picks={self.picks}, token={self.token[:12]})"

    def __dask_tokenize__(self) -> object:
        return ("sitewatch.ArraySource", self.token, self.picks, self.nodata)

    @property
    def is_dask(self) -> bool:
        """Whether the pixels are a Dask array (computed window by window)."""
        return hasattr(self.data, "dask") and hasattr(self.data, "chunks")

    def read(self, rows: Any, cols: Any) -> np.ndarray:
        """The model's bands at ``rows``/``cols`` (slices or index arrays) as a NumPy array.

        A Dask array is computed here with the synchronous scheduler: this runs inside a
        task already, and only the chunks the window touches are read (Dask fuses the slice
        into the chunks' reads, so a window of a lazily opened file reads just that window).
        """
        n = self.data.shape[0]
        bands: Any = slice(None) if self.picks == tuple(range(n)) else list(self.picks)
        if isinstance(rows, slice) and isinstance(cols, slice):
            part = self.data[bands, rows, cols]
        else:  # index arrays (decimated reads): one axis at a time, as Dask indexes them
            part = self.data[bands][:, rows][:, :, cols]
        if self.is_dask:
            part = part.compute(scheduler="synchronous")
        return np.asarray(part)


@dataclass(frozen=True)
class Scene:
    """A raster scene: its bands (in the model's order) and its pixel grid.

    ``array`` is set for a scene made from an array (its bands' ``path`` then names the
    array, not a file, and :attr:`files` is empty).
    """

    name: str
    source: str
    bands: tuple[BandSource, ...]
    width: int
    height: int
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    dtype: str
    nodata: float | None
    array: ArraySource | None = field(default=None, repr=False)

    @property
    def affine(self) -> Affine:
        """The pixel-to-CRS affine transform."""
        return Affine(*self.transform)

    @property
    def files(self) -> tuple[str, ...]:
        """Distinct files the scene reads, in band order (none for an array scene)."""
        if self.array is not None:
            return ()
        return tuple(dict.fromkeys(b.path for b in self.bands if not b.missing))

    @property
    def missing_bands(self) -> tuple[str, ...]:
        """Bands this scene has no file for (read as zeros; training scenes only)."""
        return tuple(b.name for b in self.bands if b.missing)

    @property
    def pixel_size(self) -> float:
        """Mean pixel side in CRS units (metres for projected CRSs)."""
        a = self.affine
        return float(math.sqrt(abs(a.a * a.e - a.b * a.d)))


def with_nodata(scene: Scene, nodata: float | None) -> Scene:
    """``scene`` with ``nodata`` as the no-data value of its files that carry none (``None``: as it is).

    Files that carry a nodata value keep theirs; an array scene keeps its own (set it on the
    array: ``da.rio.write_nodata(0)``).
    """
    if nodata is None or scene.array is not None or scene.nodata is not None:
        return scene
    return replace(scene, nodata=float(nodata))


def canonical_band(name: str) -> str:
    """A band name for matching: upper case, colour names as their Sentinel-2 band (``red`` -> ``B04``)."""
    upper = name.strip().upper()
    return BAND_ALIASES.get(upper, upper)


def band_name_in(text: str) -> str | None:
    """Return the Sentinel-2 band name (``B02``, ``B8A``...) found in ``text``, if any."""
    match = BAND_PATTERN.search(text)
    return match.group(1).upper() if match else None


def is_remote(path: str) -> bool:
    """Whether ``path`` is a GDAL virtual path read over the network."""
    return path.startswith("/vsi") and any(v in path for v in REMOTE_VSI)


def _gdal_env(path: str) -> AbstractContextManager[object]:
    """``rasterio.Env`` with :data:`REMOTE_GDAL_OPTIONS` for remote paths; nothing for local ones."""
    if not is_remote(path):
        return nullcontext()
    active = rasterio.env.getenv() if rasterio.env.hasenv() else {}
    env: AbstractContextManager[object] = rasterio.Env(
        **{k: v for k, v in REMOTE_GDAL_OPTIONS.items() if k not in os.environ and k not in active}
    )
    return env


def _open(path: str) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings(), _gdal_env(path):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, "r")
    except RasterioError as exc:
        if is_remote(path):
            raise NotARasterError(
                path, f"cannot be opened ({_short(exc)}); check the URL, your network and any credentials"
            ) from None
        raise NotARasterError(
            path, f"not a raster GDAL can read ({_short(exc)}); check the file is a GeoTIFF/COG"
        ) from None


def _short(exc: BaseException) -> str:
    """GDAL's reason in one line: rasterio's "See previous exception" points at the cause."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in str(exc) and str(cause).strip():
        exc = cause
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
    if src.transform.b != 0 or src.transform.d != 0:
        raise NotGeoreferencedError(
            path,
            "raster's geotransform is rotated or sheared; sitewatch reads north-up grids: "
            "warp it first (gdalwarp FILE north_up.tif)",
        )
    if src.dtypes[0] not in SUPPORTED_DTYPES:
        raise BandError(
            path, f"pixel type {src.dtypes[0]} is not supported; convert it to one of {', '.join(SUPPORTED_DTYPES)} "
            "(gdal_translate -ot UInt16 ...)"
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
                upper = [canonical_band(n) if n else None for n in names]
                if canonical_band(item) not in upper:
                    raise UsageError(
                        f"--bands {item}: no band of that name in {path} "
                        f"(it has {_describe(names)})"
                    )
                picks.append(upper.index(canonical_band(item)))
        return picks
    upper = [canonical_band(n) if n else None for n in names]
    if all(canonical_band(w) in upper for w in wanted):
        return [upper.index(canonical_band(w)) for w in wanted]
    # Positional only where no band's own name says otherwise: B05 in B08's place is not B08.
    known = [band_name_in(n) if n else None for n in names]
    if len(names) == len(wanted) and all(k is None or k == canonical_band(w) for k, w in zip(known, wanted, strict=True)):
        return list(range(len(wanted)))
    missing = [w for w in wanted if canonical_band(w) not in upper]
    raise BandError(
        path,
        f"has {len(names)} band(s) ({_describe(names)}) but the model needs "
        f"{len(wanted)} ({', '.join(wanted)})"
        + (f"; missing: {', '.join(missing)}" if any(known) else "")
        + "; pass --bands to say which to use",
    )


def open_scene(
    path: str | Path, model_bands: Sequence[str], bands_flag: Sequence[str] | None = None,
    *, allow_missing: bool = False,
) -> Scene:
    """Open and validate a scene for a model that takes ``model_bands``.

    ``path`` is a raster file (any band count), a GDAL virtual path (``/vsi...``, taken
    as given) or a directory of single-band files whose names contain band names
    (``B02``...). Only metadata is read here.

    With ``allow_missing`` (for training on band directories that lack some bands), a
    band with no file in the directory reads as zeros instead of failing; at least one
    of the model's bands must be there.

    Raises:
        InputError: the path is missing, not a raster, not georeferenced, or its bands
            do not fit the model.
    """
    if isinstance(path, str) and path.startswith("/vsi"):
        # Kept as a string: Path() would fold the "//" of "/vsizip//abs/path.zip".
        name, text = Path(path.split("?", 1)[0]).stem, path
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(p, "no such file or directory")
        if p.is_dir():
            return _open_band_dir(p, model_bands, bands_flag, allow_missing)
        name, text = p.stem, str(p)
    src = _open(text)
    with src:
        _check_grid(text, src)
        names: list[str | None] = [
            (band_name_in(d) if d else None) or d for d in src.descriptions
        ]
        picks = _resolve(model_bands, names, bands_flag, text)
        bands = tuple(
            BandSource(text, i + 1, model_bands[k]) for k, i in enumerate(picks)
        )
        return Scene(
            name=name,
            source=text,
            bands=bands,
            width=src.width,
            height=src.height,
            crs_wkt=src.crs.to_wkt(),
            transform=tuple(src.transform)[:6],  # type: ignore[arg-type]
            dtype=src.dtypes[0],
            nodata=src.nodata,
        )


def _open_band_dir(
    p: Path, model_bands: Sequence[str], bands_flag: Sequence[str] | None, allow_missing: bool = False
) -> Scene:
    files = sorted(
        f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
    )
    if not files:
        raise InputError(p, "directory holds no raster files (.tif/.tiff/.jp2)")
    pairs = [(band_name_in(f.name), str(f)) for f in files]
    if allow_missing and not bands_flag:
        have = {n for n, _ in pairs if n}
        present = [b for b in model_bands if canonical_band(b) in have]
        if present and len(present) < len(model_bands):
            part = open_band_files(p.name, str(p), pairs, present)
            by_name = {b.name: b for b in part.bands}
            bands = tuple(by_name.get(b) or BandSource("", 0, b) for b in model_bands)
            return replace(part, bands=bands)
    return open_band_files(p.name, str(p), pairs, model_bands, bands_flag)


def open_band_files(
    name: str,
    source: str,
    files: Sequence[tuple[str | None, str]],
    model_bands: Sequence[str],
    bands_flag: Sequence[str] | None = None,
) -> Scene:
    """Open a scene made of single-band files on one grid (a band directory, a STAC item).

    Args:
        name: The scene's name.
        source: What the user named (a directory, ``items.json#ITEM_ID``); band errors name it.
        files: ``(band name or None, path)`` pairs; paths may be GDAL virtual paths.
        model_bands: The bands the model takes, in its order.
        bands_flag: The ``--bands`` choice (band names or 1-based positions in ``files``), if any.

    Raises:
        BandError: a band the model needs is missing, a file has more than one band, or the
            files are not on one grid.
        InputError: a file is missing, not a raster or not georeferenced.
    """
    if not files:
        raise InputError(source, "has no band files; expected single-band rasters named by band (B02...)")
    picks = _resolve(model_bands, [n for n, _ in files], bands_flag, source)
    chosen = [files[i][1] for i in picks]
    grid = None
    dtype, nodata = "", None
    for f in chosen:
        src = _open(f)
        with src:
            _check_grid(f, src)
            if src.count != 1:
                raise BandError(f, f"has {src.count} bands; a band directory needs single-band files")
            this = (src.width, src.height, src.crs.to_wkt(), tuple(src.transform)[:6])
            if grid is None:
                grid, dtype, nodata = this, src.dtypes[0], src.nodata
            elif not _same_grid(grid, this):
                raise BandError(
                    f,
                    f"is not on the same grid as {Path(chosen[0].split('?', 1)[0]).name} "
                    "(size, CRS or transform differ); resample the bands to one grid",
                )
    assert grid is not None  # noqa: S101 - chosen is never empty here
    return Scene(
        name=name,
        source=source,
        bands=tuple(BandSource(f, 1, model_bands[k]) for k, f in enumerate(chosen)),
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


def _padded(data: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``data``/``valid`` padded at the bottom and right to ``size`` x ``size``; padding is invalid."""
    h, w = valid.shape
    if w == size and h == size:
        return data, valid
    full = np.zeros((data.shape[0], size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    full[:, :h, :w] = data
    mask[:h, :w] = valid
    return full, mask


def _row_runs(tiles: Sequence[Tile]) -> list[list[Tile]]:
    """Split tiles into runs of the same row whose windows touch or overlap, in order."""
    runs: list[list[Tile]] = []
    for t in tiles:
        prev = runs[-1][-1] if runs else None
        if prev is not None and prev.row_off == t.row_off and prev.size == t.size and t.col_off <= prev.col_off + prev.size:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


#: Datasets kept open by :class:`SceneReader` ``(shared=True)``, most recently used last, with
#: a lock each. Keyed by path and, for local files, size, modification time and inode, so a
#: file replaced on disk is opened afresh.
_SHARED: OrderedDict[tuple[object, ...], tuple[rasterio.DatasetReader, threading.Lock]] = OrderedDict()
_SHARED_LOCK = threading.Lock()
#: Files kept open at most; the least recently used beyond this are dropped (closed once
#: no reader holds them).
SHARED_FILES = 16


def _shared_key(path: str) -> tuple[object, ...]:
    if path.startswith("/vsi"):
        return (path,)
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def _shared_open(path: str) -> tuple[rasterio.DatasetReader, threading.Lock]:
    key = _shared_key(path)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is not None:
            _SHARED.move_to_end(key)
            return found
    found = (_open(path), threading.Lock())
    with _SHARED_LOCK:
        found = _SHARED.setdefault(key, found)
        while len(_SHARED) > SHARED_FILES:
            _SHARED.popitem(last=False)
    return found


def release_shared() -> None:
    """Drop every dataset :class:`SceneReader` ``(shared=True)`` keeps open (each closes once
    no reader holds it); the end of a run calls this so no file stays open after it."""
    with _SHARED_LOCK:
        _SHARED.clear()


class SceneReader:
    """Open datasets of one scene for reading many windows (use inside a task).

    With ``shared``, the datasets stay open in this process for later readers of the same
    files (reads of one file are serialised by a lock), so GDAL's block cache keeps the
    decoded blocks that overlapping tiles of neighbouring tasks share, instead of
    decoding them again for every task.
    """

    def __init__(self, scene: Scene, *, shared: bool = False) -> None:
        self.scene = scene
        self._stack = ExitStack()
        self._locks: dict[str, AbstractContextManager[object]] = {}
        if shared:
            self._ds = {}
            for f in scene.files:
                self._ds[f], self._locks[f] = _shared_open(f)
        else:
            self._ds = {f: self._stack.enter_context(_open(f)) for f in scene.files}
        #: Each file with the positions of its bands in the scene's band order.
        self._groups: list[tuple[str, list[int]]] = [
            (f, [k for k, b in enumerate(scene.bands) if b.path == f]) for f in scene.files
        ]

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _lock(self, path: str) -> AbstractContextManager[object]:
        return self._locks.get(path) or nullcontext()

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Read a window (clipped to the raster) as float32 ``(bands, h, w)`` and a valid mask.

        A pixel is invalid where it is not finite, or where every band holds its file's
        nodata value (a file without nodata makes no pixel nodata). The bands of one file
        are read in one call, so a pixel-interleaved block is decoded once.
        """
        if self.scene.array is not None:
            return self._read_array(col_off, row_off, width, height)
        window = Window(col_off, row_off, width, height)
        alloc = np.zeros if self.scene.missing_bands else np.empty
        out = alloc((len(self.scene.bands), height, width), dtype=np.float32)
        nodata_all: np.ndarray | None = None
        has_nodata = True
        floats = False
        for path, ks in self._groups:
            ds = self._ds[path]
            try:
                with self._lock(path), _gdal_env(path):
                    data = ds.read([self.scene.bands[k].index for k in ks], window=window)
            except RasterioError as exc:
                raise CorruptRasterError(
                    path,
                    f"pixel data cannot be read at window {window.col_off},{window.row_off} "
                    f"({_short(exc)}); the file may be truncated or damaged",
                ) from None
            out[ks] = data
            floats = floats or data.dtype.kind == "f"
            nd = ds.nodata if ds.nodata is not None else self.scene.nodata
            if nd is None or (isinstance(nd, float) and math.isnan(nd)):
                has_nodata = False
            elif has_nodata:
                eq = np.logical_and.reduce(data == nd, axis=0)
                nodata_all = eq if nodata_all is None else np.logical_and(nodata_all, eq, out=nodata_all)
        valid = ~nodata_all if has_nodata and nodata_all is not None else np.ones((height, width), dtype=bool)
        if floats:
            finite = np.isfinite(out).all(axis=0)
            if not finite.all():
                valid &= finite
                np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out, valid

    def _array(self, rows: Any, cols: Any, where: str) -> np.ndarray:
        """Pixels of an array scene as float32; any failure of the array's reads is a :class:`CorruptRasterError`."""
        src = self.scene.array
        assert src is not None  # noqa: S101 - only called for array scenes
        try:
            # Always a copy: a NumPy-backed array's window is a view of the caller's pixels.
            return np.array(src.read(rows, cols), dtype=np.float32, copy=True)
        except Exception as exc:  # noqa: BLE001 - a Dask graph can fail in any way its reader does
            raise CorruptRasterError(
                self.scene.source, f"the array's pixels cannot be read{' ' + where if where else ''} ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}); check the files or store behind the array can be read from here",
            ) from None

    def _valid(self, out: np.ndarray) -> np.ndarray:
        """The valid mask of array pixels, as :meth:`read` makes it; non-finite values become 0."""
        nd = self.scene.array.nodata if self.scene.array is not None else None
        if nd is not None and not math.isnan(nd):
            valid = ~np.logical_and.reduce(out == np.float32(nd), axis=0)
        else:
            valid = np.ones(out.shape[1:], dtype=bool)
        if out.dtype.kind == "f":
            finite = np.isfinite(out).all(axis=0)
            if not finite.all():
                valid &= finite
                np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return valid

    def _read_array(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        out = self._array(slice(row_off, row_off + height), slice(col_off, col_off + width),
                          f"at window {col_off},{row_off}")
        return out, self._valid(out)

    def read_tile(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Read ``tile`` padded to its full size; padding is marked invalid."""
        col, row, w, h = tile.clipped(self.scene.width, self.scene.height)
        return _padded(*self.read(col, row, w, h), tile.size)

    def read_tiles(self, tiles: Sequence[Tile]) -> Iterator[tuple[Tile, tuple[np.ndarray, np.ndarray] | InputError]]:
        """Yield each tile with its padded ``(data, valid)`` (as :meth:`read_tile`) or its read error.

        Neighbouring tiles of one grid row are read as one window and sliced in memory, so
        the pixels they share are read and converted once (overlapping windows re-read them).
        Where that window cannot be read, its tiles are read one by one, so a damaged block
        fails only the tiles that touch it.
        """
        for run in _row_runs(tiles):
            first, last = run[0], run[-1]
            col, row, w, h = first.col_off, first.row_off, last.col_off + last.size - first.col_off, first.size
            w, h = min(w, self.scene.width - col), min(h, self.scene.height - row)
            try:
                data, valid = self.read(col, row, w, h)
            except InputError:
                for tile in run:
                    try:
                        yield tile, self.read_tile(tile)
                    except InputError as exc:
                        yield tile, exc
                continue
            for tile in run:
                x = tile.col_off - col
                yield tile, _padded(data[:, :, x : x + tile.size], valid[:, x : x + tile.size], tile.size)

    def overview(self, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Read the whole scene decimated so its longer side is at most ``max_side``.

        Every block of the file is decoded, so this doubles as an integrity check.
        Returns the data, its valid mask and the decimation factor.
        """
        s = self.scene
        factor = max(1.0, max(s.width, s.height) / max_side)
        h = max(1, round(s.height / factor))
        w = max(1, round(s.width / factor))
        if s.array is not None:
            # Nearest neighbour at pixel centres, as GDAL decimates; a scene within max_side reads whole.
            rows = np.minimum(((np.arange(h) + 0.5) * s.height / h).astype(np.intp), s.height - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * s.width / w).astype(np.intp), s.width - 1)
            out = self._array(slice(None) if h == s.height else rows, slice(None) if w == s.width else cols, "")
            return out, self._valid(out), factor
        out = np.empty((len(s.bands), h, w), dtype=np.float32)
        nodata_all = np.ones((h, w), dtype=bool)
        for k, band in enumerate(s.bands):
            if band.missing:
                out[k] = 0
                continue
            ds = self._ds[band.path]
            try:
                with self._lock(band.path), _gdal_env(band.path):
                    data = ds.read(band.index, out_shape=(h, w))
            except RasterioError as exc:
                raise CorruptRasterError(
                    band.path,
                    f"pixel data cannot be read ({_short(exc)}); the file may be truncated "
                    "or damaged: re-download or re-export it",
                ) from None
            out[k] = data
            nd = ds.nodata if ds.nodata is not None else s.nodata
            if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
                nodata_all &= data == nd
            else:
                nodata_all &= False
        valid = np.isfinite(out).all(axis=0) & ~nodata_all
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out, valid, factor
