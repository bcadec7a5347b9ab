#!/usr/bin/env python
"""How close ``sitewatch detect`` comes to the model's own speed, and to a TorchGeo loop.

Prints figures (it is not a test). In one run, on one seeded synthetic Sentinel-2-like scene
and one model, it times:

(a) model only: detect's tiles (same ``TileGrid``), read and normalised into memory before
    the clock starts, through ``sitewatch.imagery.models.inference.predict`` (forward pass *and* heatmap
    decoding, which detect also pays) in several layouts: one model using every core, one
    single-threaded model per core (separate copies, or one module shared), and one model on
    one thread (scaling). The fastest layout using every core is the compute floor;
(b) ``sitewatch.imagery.detect.pipeline.detect`` end to end (plan, stats task, reading, inference, seam merge,
    georeferencing, every output file), with N workers and with 1 (scaling);
(c) the way a TorchGeo user would do it: ``RasterDataset`` + ``GridGeoSampler`` +
    ``DataLoader`` (``stack_samples``) feeding the same model through the same ``predict``
    under ``torch.inference_mode``, normalised with the same per-band lo/hi that detect
    computes; no seam merge and no georeferencing beyond TorchGeo's sample bounds. Several
    ``num_workers`` are tried; the fastest counts.

Each figure is the median of ``--repeats`` runs; the repeats of (a) and (b) alternate, so a drift
in the machine's speed reaches both. tiles/s counts each approach's own tiles, km²/s the scene
area covered per second (for (a): tiles/s times the scene area per grid tile).
The last two lines are ``end_to_end_vs_model_only R`` and ``end_to_end_vs_torchgeo R``
(R = tiles/s of (b) over (a), and km²/s of (b) over (c)).

(b) pays per-scene costs that (a) does not and that do not grow with the scene: the statistics
pass every block waits for (~0.1-0.2 s with one core idle), planning and the output files
(~0.1 s), and a last block that one core finishes alone. So R rises with scene size: on 2 cores
it was 0.89 at 4096² and 0.97 at 8192², where reading and normalising (~5% of the
thread-time) is most of the gap. The default, 8192², is about half a Sentinel-2 tile (10980²).

glibc's allocator maps and unmaps every activation buffer by default, which costs more than
the pipeline (docs: GUIDE, "Measured on these machines"); the script re-executes itself with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_ARENA_MAX=1`` unless those are
already set (``--allocator inherit`` keeps the environment as it is), so all three
measurements run under the same allocator.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torchgeo, psutil) for (c).

    python scripts/benchmark.py                       # 8192² scene (~20 min on 2 cores), every core
    python scripts/benchmark.py --size 4096           # a sixth of a Sentinel-2 tile (~8 min)
    python scripts/benchmark.py --size 768 --repeats 1  # a smoke test
    python scripts/benchmark.py --device cuda          # (a) and (b) on a GPU
"""

from __future__ import annotations

import os
import sys

#: glibc malloc settings that stop per-forward-pass mmap/munmap of activation buffers.
TUNED_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736", "MALLOC_ARENA_MAX": "1"}
_REEXEC_MARK = "SITEWATCH_BENCH_REEXEC"


def ensure_tuned_allocator() -> None:
    """Re-execute this process with :data:`TUNED_ALLOCATOR` set where any of it is unset.

    glibc reads these when the process starts, so setting them from Python is too late.
    """
    if "--allocator" in sys.argv and "inherit" in sys.argv[sys.argv.index("--allocator") + 1 :][:1]:
        return
    if "--allocator=inherit" in sys.argv or os.environ.get(_REEXEC_MARK):
        return
    missing = {k: v for k, v in TUNED_ALLOCATOR.items() if k not in os.environ}
    if missing:
        env = {**os.environ, **missing, _REEXEC_MARK: "1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    ensure_tuned_allocator()

import argparse
import copy
import dataclasses
import functools
import math
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

BANDS = ("B02", "B03", "B04", "B08")
BLOCK = 256
# Reflectance x 10000 of open water and of a vessel (B02, B03, B04, B08), and the water's noise.
_WATER = np.array([650.0, 560.0, 420.0, 320.0], dtype=np.float32)
_VESSEL = np.array([7200.0, 7400.0, 7500.0, 8000.0], dtype=np.float32)
_LAND = np.array([1650.0, 1950.0, 1900.0, 3400.0], dtype=np.float32)
_SIGMA = np.array([35.0, 35.0, 40.0, 50.0], dtype=np.float32)
#: Land covers the columns left of a wavy coastline at about this fraction of the width, so the
#: per-scene percentile stretch spans water to land as in a real coastal scene.
_LAND_FRACTION = 0.2


def _coast(rows: np.ndarray, size: int) -> np.ndarray:
    """Column of the coastline on each row."""
    return size * (_LAND_FRACTION + 0.03 * np.sin(2 * math.pi * rows / max(size * 0.37, 1.0)))


# --------------------------------------------------------------------------- the scene


def _vessels(size: int, seed: int, per_mpx: float) -> np.ndarray:
    """``(n, 5)`` vessels: centre col, centre row, half length, half width, angle."""
    rng = np.random.default_rng([seed, 1])
    n = max(1, round(per_mpx * size * size / 1e6))
    margin = 12
    rows = rng.uniform(margin, max(size - margin, margin + 1), n)
    west = _coast(rows, size) + margin  # on the water
    return np.stack(
        [
            west + rng.uniform(0.0, 1.0, n) * np.maximum(size - margin - west, 1.0),
            rows,
            rng.uniform(4.0, 10.0, n),
            rng.uniform(1.5, 3.0, n),
            rng.uniform(0.0, math.pi, n),
        ],
        axis=1,
    )


def _draw_vessels(img: np.ndarray, row0: int, vessels: np.ndarray) -> None:
    """Blend the vessels that touch rows ``row0 .. row0 + img.shape[1]`` into ``img`` (bands, h, w)."""
    h, w = img.shape[1:]
    for cx, cy, hl, hw, ang in vessels:
        r = hl + 2
        if cy + r < row0 or cy - r >= row0 + h:
            continue
        c0, c1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
        y0, y1 = max(int(cy - r), row0), min(int(cy + r) + 1, row0 + h)
        yy, xx = np.mgrid[y0:y1, c0:c1].astype(np.float32) + 0.5
        dx, dy = xx - cx, yy - cy
        u = dx * math.cos(ang) + dy * math.sin(ang)
        v = -dx * math.sin(ang) + dy * math.cos(ang)
        rad = np.sqrt((u / hl) ** 2 + (v / hw) ** 2)
        cover = np.clip((1.0 - rad) * hw + 0.5, 0.0, 1.0)
        view = img[:, y0 - row0 : y1 - row0, c0:c1]
        view += (_VESSEL[:, None, None] - view) * cover


def write_synthetic_scene(
    path: Path,
    size: int,
    *,
    seed: int = 0,
    vessels_per_mpx: float = 4.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 4_800_000.0),
    pixel_size: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
    overviews: bool = False,
) -> None:
    """Write a ``size`` x ``size`` 4-band uint16 Sentinel-2-like GeoTIFF one block row at a time.

    With ``overviews``, internal overviews (2x, 4x, ... down to about 256 px) are added, as in
    the Sentinel-2 L2A COGs that STAC catalogues serve.

    Mostly open water, land west of a wavy coastline (per-band means and noise as in
    ``sitewatch.imagery.synthetic.sentinel2``), bright vessel-like ellipses on the water, tiled 256 x 256, DEFLATE with a horizontal predictor, nodata 0, bands named
    B02 B03 B04 B08, 10 m pixels on UTM zone 33N. Never holds more than one 256-row strip,
    so any size can be written. Each strip has its own seeded generator: equal seeds give
    equal files. Written to a temporary name and renamed.
    """
    path = Path(path)
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": size, "height": size, "count": len(BANDS), "dtype": "uint16",
        "crs": crs, "transform": Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1]),
        "nodata": 0, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
        "compress": "deflate", "predictor": 2, "num_threads": "ALL_CPUS", "bigtiff": "IF_SAFER",
    }
    vessels = _vessels(size, seed, vessels_per_mpx)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, name in enumerate(BANDS, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(SITEWATCH_BENCH_SCENE=f"size={size} seed={seed} vessels_per_mpx={vessels_per_mpx} "
                                                  f"overviews={overviews}")
            for row0 in range(0, size, BLOCK):
                h = min(BLOCK, size - row0)
                rng = np.random.default_rng([seed, 2, row0])
                img = rng.standard_normal((len(BANDS), h, size), dtype=np.float32)
                img *= _SIGMA[:, None, None]
                land = np.arange(size)[None, :] < _coast(np.arange(row0, row0 + h), size)[:, None]
                img += np.where(land, _LAND[:, None, None], _WATER[:, None, None])
                _draw_vessels(img, row0, vessels)
                np.rint(img, out=img)
                np.clip(img, 1, 65535, out=img)
                dst.write(img.astype(np.uint16), window=Window(0, row0, size, h))
                if progress:
                    progress(row0 + h, size)
        if overviews:
            from rasterio.enums import Resampling

            levels = [2**k for k in range(1, 16) if size // 2**k >= 256]
            with rasterio.open(tmp, "r+") as dst:
                dst.build_overviews(levels, Resampling.average)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def scene_matches(path: Path, size: int, seed: int, vessels_per_mpx: float, overviews: bool = False) -> bool:
    """``path`` is a scene this script wrote with these arguments."""
    try:
        with rasterio.open(path) as src:
            tag = src.tags().get("SITEWATCH_BENCH_SCENE")
    except (rasterio.errors.RasterioError, OSError):
        return False
    return tag == f"size={size} seed={seed} vessels_per_mpx={vessels_per_mpx} overviews={overviews}"


def print_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback printing ``label`` and a percentage every 10%."""
    state = {"next": 0.0, "t0": time.perf_counter()}

    def report(done: int, total: int) -> None:
        frac = done / total
        if frac >= state["next"] or done == total:
            print(f"  {label}: {100 * frac:5.1f}%  ({time.perf_counter() - state['t0']:.0f} s)", flush=True)
            state["next"] = math.floor(frac * 10 + 1) / 10

    return report


# --------------------------------------------------------------------------- helpers


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


@dataclasses.dataclass
class Figure:
    """One timed configuration: tiles per run and the seconds of each repeat."""

    name: str
    tiles: int
    seconds: list[float]
    km2: float  # scene area each run covers (scene-equivalent for a tile subset)
    note: str = ""

    @property
    def sec(self) -> float:
        return median(self.seconds)

    @property
    def tiles_s(self) -> float:
        return self.tiles / self.sec

    @property
    def km2_s(self) -> float:
        return self.km2 / self.sec


def print_table(title: str, figs: Sequence[Figure]) -> None:
    """Figures as an aligned table."""
    print(f"\n{title}")
    width = max(len(f.name) for f in figs) + 2
    print(f"  {'':{width}}{'tiles':>7} {'seconds':>9} {'tiles/s':>9} {'km2/s':>8}  runs (s)")
    for f in figs:
        runs = " ".join(f"{s:.2f}" for s in f.seconds)
        print(f"  {f.name:{width}}{f.tiles:7d} {f.sec:9.2f} {f.tiles_s:9.2f} {f.km2_s:8.2f}  {runs}{f.note}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_environment(args: argparse.Namespace) -> None:
    """Cores, threads, versions, CPU and allocator settings."""
    import dask
    import torch

    try:
        import torchgeo

        tg = torchgeo.__version__
    except ImportError:
        tg = "not installed (pip install -e '.[bench]')"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("environment")
    print(f"  cpu: {cpu_model()}; os.cpu_count {os.cpu_count()}, usable {affinity}; load average {os.getloadavg()}")
    print(f"  torch {torch.__version__} (intra-op threads {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}); torchgeo {tg}")
    print(f"  python {platform.python_version()}; numpy {np.__version__}; rasterio {rasterio.__version__} "
          f"(GDAL {rasterio.__gdal_version__}); dask {dask.__version__}")
    alloc = " ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in TUNED_ALLOCATOR)
    print(f"  allocator: {alloc}{' (re-executed to set them)' if os.environ.get(_REEXEC_MARK) else ''}")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GDAL_CACHEMAX", "GDAL_NUM_THREADS"):
        if k in os.environ:
            print(f"  {k}={os.environ[k]}")
    if args.device == "cuda":
        print(f"  cuda: {torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})")


# --------------------------------------------------------------------------- shared inputs


@dataclasses.dataclass
class Setup:
    """Everything the three measurements share."""

    scene: Path
    width: int
    height: int
    pixel_size: float
    model_path: str
    checksum: str
    model: Any  # sitewatch.imagery.models.checkpoint.LoadedModel
    tile_size: int
    overlap: int
    batch_size: int
    workers: int
    score_threshold: float
    lo: np.ndarray
    hi: np.ndarray
    nodata: float | None
    device: str = "cpu"
    runtime: str = "torch"  # where (a) and (b) run the model: sitewatch.imagery.models.runtime (onnx or torch)

    @property
    def km2(self) -> float:
        return self.width * self.height * self.pixel_size**2 / 1e6


def load_model(model: str) -> Any:
    """The model as detect's workers get it (``sitewatch.imagery.detect.worker.get_model``: one per process)."""
    from sitewatch.imagery.models.checkpoint import load_checkpoint
    from sitewatch.imagery.models.registry import resolve_model

    path = resolve_model(model)
    checksum = load_checkpoint(path).checksum
    try:
        from sitewatch.imagery.detect.worker import get_model

        return get_model(str(path), checksum)
    except (ImportError, TypeError):  # the worker module is being reworked: same loader underneath
        return load_checkpoint(path)


def norm_stats(path: Path, norm: Any, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-band lo/hi as detect's stats task computes them: percentiles of a decimated read."""
    with rasterio.open(path) as src:
        factor = max(1.0, max(src.width, src.height) / max_side)
        h, w = max(1, round(src.height / factor)), max(1, round(src.width / factor))
        data = src.read(out_shape=(src.count, h, w)).astype(np.float32)
        valid = ~(data == src.nodata).all(axis=0) if src.nodata is not None else np.ones((h, w), bool)
    return norm.scene_stats(data[: len(BANDS)], valid)


def read_tiles(s: Setup, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Detect's grid tiles (an evenly spaced subset of at most ``limit``), normalised as detect does.

    Returns ``(tiles (n, bands, size, size) float32, valid masks (n, size, size), grid tiles)``.
    """
    from sitewatch.imagery.scenes.normalise import apply
    from sitewatch.imagery.scenes.tiling import TileGrid

    grid = TileGrid(s.width, s.height, s.tile_size, s.overlap)
    tiles = grid.tiles()
    if len(tiles) > limit:
        tiles = tuple(tiles[int(i)] for i in np.linspace(0, len(tiles) - 1, limit).round())
    size = s.tile_size
    data = np.zeros((len(tiles), len(BANDS), size, size), np.float32)
    valid = np.zeros((len(tiles), size, size), bool)
    with rasterio.open(s.scene) as src:
        for i, t in enumerate(tiles):
            col, row, w, h = t.clipped(s.width, s.height)
            raw = src.read(list(range(1, len(BANDS) + 1)), window=Window(col, row, w, h)).astype(np.float32)
            ok = ~(raw == s.nodata).all(axis=0) if s.nodata is not None else np.ones((h, w), bool)
            data[i, :, :h, :w] = apply(raw, s.lo, s.hi, ok)
            valid[i, :h, :w] = ok
    return data, valid, len(grid)


# --------------------------------------------------------------------------- (a) model only


def time_layout(
    models: Sequence[Any], threads_each: int, data: np.ndarray, valid: np.ndarray, s: Setup,
) -> float:
    """Seconds for ``len(models)`` Python threads, each running one model with ``threads_each``
    torch threads, to share out every batch of ``data`` (a queue: the idle thread takes the next).

    Each thread runs one untimed warm-up batch first; the clock starts when all are warm.
    """
    import torch

    from sitewatch.imagery.models.inference import predict

    bs = s.batch_size
    starts = list(range(0, len(data), bs))
    lock = threading.Lock()
    nxt = iter(starts)
    ready = threading.Barrier(len(models) + 1)
    errors: list[BaseException] = []

    def work(model: torch.nn.Module) -> None:
        try:
            torch.set_num_threads(threads_each)
            predict(model, data[:bs], valid[:bs], s.score_threshold, False, s.model.spec.max_box_px)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
        ready.wait()
        while not errors:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            try:
                predict(model, data[i : i + bs], valid[i : i + bs], s.score_threshold, False, s.model.spec.max_box_px)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,), daemon=True) for m in models]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return dt


def model_only(s: Setup, args: argparse.Namespace) -> tuple[list[Figure], list[Callable[[], None]]]:
    """(a): every layout, as empty figures and one callable per layout that times one more run
    into its figure (so the caller can interleave the repeats of (a) and (b))."""
    t0 = time.perf_counter()
    data, valid, grid_tiles = read_tiles(s, args.model_tiles)
    print(f"\n(a) pre-read and normalised {len(data)} of the grid's {grid_tiles} tiles in "
          f"{time.perf_counter() - t0:.1f} s (not timed)", flush=True)
    km2_per_tile = s.km2 / grid_tiles
    base = s.model.model
    n = s.workers
    layouts: list[tuple[str, list[Any], int]] = []
    if args.device == "cuda":
        gpu = copy.deepcopy(base).to("cuda")
        layouts.append((f"1 model on cuda, {n} cpu threads", [gpu], n))
    elif s.runtime == "onnx":
        # The runtime detect uses (sitewatch.imagery.models.runtime): ONNX Runtime sessions of the same model.
        from sitewatch.imagery.models.runtime import OnnxModel

        one = OnnxModel(base, 1)
        layouts.append((f"onnx: 1 session x {n} threads", [OnnxModel(base, n)], n))
        if n > 1:
            layouts.append((f"onnx: {n} sessions x 1 thread", [one] + [OnnxModel(base, 1) for _ in range(n - 1)], 1))
            layouts.append((f"onnx: {n} threads x 1 thread, one shared session", [one] * n, 1))
        layouts.append(("onnx: 1 session x 1 thread (1 worker)", [one], 1))
    else:
        layouts.append((f"1 model x {n} threads", [base], n))
        if n > 1:
            layouts.append((f"{n} models x 1 thread (copies)", [base] + [copy.deepcopy(base) for _ in range(n - 1)], 1))
            layouts.append((f"{n} threads x 1 thread, one shared model", [base] * n, 1))
        # Scaling: the same work on one core.
        layouts.append(("1 model x 1 thread (1 worker)", [base], 1))
    figs: list[Figure] = []
    runs: list[Callable[[], None]] = []
    for name, models, each in layouts:
        fig = Figure(name, len(data), [], km2_per_tile * len(data))
        figs.append(fig)

        def run(fig: Figure = fig, models: list[Any] = models, each: int = each) -> None:
            import torch

            fig.seconds.append(time_layout(models, each, data, valid, s))
            torch.set_num_threads(n)
            print(f"  (a) {fig.name}: {fig.seconds[-1]:.2f} s", flush=True)

        runs.append(run)
    return figs, runs


def model_only_summary(figs: Sequence[Figure]) -> tuple[Figure, Figure | None]:
    """The floor (fastest layout using every core) and the one-worker figure of (a)."""
    all_cores = [f for f in figs if "(1 worker)" not in f.name] or list(figs)
    floor = max(all_cores, key=lambda f: f.tiles_s)
    one = next((f for f in figs if "(1 worker)" in f.name), None)
    return floor, one


# --------------------------------------------------------------------------- (b) detect


class Breakdown:
    """Wall and thread-seconds inside detect: the graph, the stats task, blocks, ``predict``.

    Wraps module attributes of ``sitewatch.imagery.detect.pipeline`` and ``sitewatch.imagery.detect.worker`` for the duration of a
    run (only those that exist: both modules are being reworked); the wrappers cost a
    ``perf_counter`` call each.
    """

    TARGETS = (
        ("sitewatch.imagery.detect.pipeline", "_run_graph", "graph"),
        ("sitewatch.imagery.detect.pipeline", "_run_job", "job (graph + recording)"),
        ("sitewatch.imagery.detect.pipeline", "run_tasks", "graph"),
        ("sitewatch.imagery.detect.pipeline", "scene_stats", "stats task"),
        ("sitewatch.imagery.detect.pipeline", "detect_block", "block tasks"),
        ("sitewatch.imagery.detect.worker", "predict", "predict() in blocks"),
        ("sitewatch.imagery.detect.pipeline", "write_outputs", "write outputs"),
    )

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._saved: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Breakdown:
        import importlib

        for mod_name, attr, label in self.TARGETS:
            mod = importlib.import_module(mod_name)
            fn = getattr(mod, attr, None)
            if not callable(fn):
                continue
            self._saved.append((mod, attr, fn))
            setattr(mod, attr, self._wrap(fn, label))
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, attr, fn in reversed(self._saved):
            setattr(mod, attr, fn)
        self._saved.clear()

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    self.totals[label] = self.totals.get(label, 0.0) + dt
                    self.calls[label] = self.calls.get(label, 0) + 1

        return timed


def run_detect(s: Setup, workers: int, out: Path, breakdown: bool) -> tuple[float, int, dict[str, int], dict[str, float], dict[str, int]]:
    """One ``detect`` call; returns seconds, grid tiles, detections per class and the breakdown."""
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect

    fields = {f.name for f in dataclasses.fields(DetectSettings)}
    # No flip averaging: (a) and (c) run the plain forward pass, so (b) must too.
    kw: dict[str, Any] = {"tile_size": s.tile_size, "overlap": s.overlap, "batch_size": s.batch_size, "workers": workers,
                          "tta": False, "runtime": s.runtime}
    if "device" in fields:
        kw["device"] = s.device
    settings = DetectSettings(**kw)
    bd = Breakdown()
    t0 = time.perf_counter()
    if breakdown:
        with bd:
            summary = detect([str(s.scene)], s.model_path, out, settings, overwrite=True)
    else:
        summary = detect([str(s.scene)], s.model_path, out, settings, overwrite=True)
    dt = time.perf_counter() - t0
    tiles = sum(r.tiles_total for r in summary.results)
    return dt, tiles, summary.counts(), bd.totals, bd.calls


def end_to_end(s: Setup, args: argparse.Namespace, workdir: Path) -> tuple[list[Figure], list[Callable[[], None]]]:
    """(b): detect with N workers and with 1, as empty figures and one callable per worker
    count that times one more run into its figure."""
    from sitewatch.imagery.detect.pipeline import DetectSettings

    if args.device == "cuda" and "device" not in {f.name for f in dataclasses.fields(DetectSettings)}:
        print("\n(b) note: DetectSettings has no device setting; detect runs its model where get_model puts it")
    figs: list[Figure] = []
    runs: list[Callable[[], None]] = []
    for w in sorted({s.workers, 1}, reverse=True):
        fig = Figure(f"detect, {w} worker{'s' if w > 1 else ''}", 0, [], s.km2)
        figs.append(fig)

        def run(fig: Figure = fig, w: int = w) -> None:
            out = workdir / f"detect-w{w}-r{len(fig.seconds)}"
            dt, tiles, dets, totals, calls = run_detect(s, w, out, args.breakdown)
            fig.seconds.append(dt)
            fig.tiles = tiles
            if not args.keep_outputs:
                import shutil

                shutil.rmtree(out, ignore_errors=True)
            print(f"  (b) {fig.name}: {dt:.2f} s; detections {dets}", flush=True)
            if totals:
                parts = "; ".join(f"{k} {v:.2f} s ({calls[k]} calls)" for k, v in totals.items())
                print(f"      wall inside / thread-seconds summed over workers: {parts}")
                if "block tasks" in totals and "predict() in blocks" in totals:
                    blk, prd = totals["block tasks"], totals["predict() in blocks"]
                    print(f"      blocks spent {prd / blk:.0%} of their thread-time in predict(); "
                          f"{blk - prd:.2f} thread-s reading, normalising, in-core filtering, georeferencing")

        runs.append(run)
    return figs, runs


# --------------------------------------------------------------------------- (c) TorchGeo


def torchgeo_loop(s: Setup, args: argparse.Namespace) -> tuple[list[Figure], Figure]:
    """(c): RasterDataset + GridGeoSampler + DataLoader feeding ``predict``; the fastest num_workers counts."""
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler, Units

    from sitewatch.imagery.models.inference import predict

    class BenchScene(RasterDataset):
        filename_glob = s.scene.name
        is_image = True
        separate_files = False
        all_bands = BANDS

    lo = torch.from_numpy(s.lo).view(1, -1, 1, 1)
    span = torch.from_numpy(s.hi - s.lo).view(1, -1, 1, 1)
    model = s.model.model if args.device == "cpu" else copy.deepcopy(s.model.model).to(args.device)
    nodata = s.nodata

    def one_pass(num_workers: int) -> tuple[float, int]:
        torch.set_num_threads(s.workers)
        t0 = time.perf_counter()
        ds = BenchScene(paths=[str(s.scene)], bands=BANDS)
        sampler = GridGeoSampler(ds, size=s.tile_size, stride=s.tile_size - s.overlap, units=Units.PIXELS)
        loader = DataLoader(ds, sampler=sampler, batch_size=s.batch_size, num_workers=num_workers, collate_fn=stack_samples)
        n = 0
        with torch.inference_mode():
            for batch in loader:
                x = batch["image"]
                valid = (x != nodata).any(dim=1) if nodata is not None else torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool)
                x = ((x - lo) / span).clamp_(-1.0, 4.0) * valid.unsqueeze(1)
                predict(model, x.numpy(), valid.numpy(), s.score_threshold, False, s.model.spec.max_box_px)
                n += x.shape[0]
        return time.perf_counter() - t0, n

    tried = sorted({0, max(s.workers - 1, 0), s.workers})
    figs = []
    for nw in tried:
        secs, tiles = [], 0
        for _ in range(args.repeats):
            dt, tiles = one_pass(nw)
            secs.append(dt)
        figs.append(Figure(f"TorchGeo, DataLoader num_workers={nw}, model {s.workers} threads", tiles, secs, s.km2))
        print(f"  num_workers={nw}: {median(secs):.2f} s", flush=True)
    torch.set_num_threads(s.workers)
    best = max(figs, key=lambda f: f.km2_s)
    return figs, best


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192,
                   help="scene side in pixels (default 8192: about half a Sentinel-2 tile, whose per-scene costs "
                        "a whole-scene run amortises as real runs do)")
    p.add_argument("--model", default="vessels-s2", help="model name or checkpoint path (default vessels-s2)")
    p.add_argument("--tile-size", type=int, default=None, help="tile side (default: the model's)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: detect's default)")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; medians are reported (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers / cores to use (default: cpu count)")
    p.add_argument("--skip-torchgeo", action="store_true", help="leave out (c)")
    p.add_argument("--model-tiles", type=int, default=512,
                   help="at most this many grid tiles (evenly spaced) are pre-read for (a) (default 512)")
    p.add_argument("--scene", type=Path, default=None, help="use this scene file instead of writing one")
    p.add_argument("--workdir", type=Path, default=None, help="where the scene and outputs go (default: a temporary directory)")
    p.add_argument("--keep-outputs", action="store_true", help="keep detect's output directories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime", choices=("auto", "onnx", "torch"), default="auto",
                   help="runtime of (a) and (b), as detect's --runtime (default auto: ONNX Runtime on the CPU); "
                        "(c) always feeds the PyTorch module, as a TorchGeo user would")
    p.add_argument("--no-overviews", dest="overviews", action="store_false",
                   help="write the scene without internal overviews (detect's statistics pass then decodes every "
                        "block once more); by default it has them, as Sentinel-2 L2A COGs do")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="do not time the stats task, blocks and predict() inside detect")
    p.add_argument("--allocator", choices=("tuned", "inherit"), default="tuned",
                   help="tuned: re-run with the glibc settings above unless set; inherit: as the environment has them")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.workers < 1 or args.size < 64:
        p.error("--repeats and --workers must be at least 1, --size at least 64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.set_num_threads(args.workers)
    print_environment(args)

    with tempfile.TemporaryDirectory(prefix="sitewatch-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.scene:
            scene = args.scene
        else:
            scene = workdir / f"bench-scene-{args.size}{'' if args.overviews else '-noovr'}.tif"
            if not scene_matches(scene, args.size, args.seed, 4.0, args.overviews):
                t0 = time.perf_counter()
                write_synthetic_scene(scene, args.size, seed=args.seed, overviews=args.overviews,
                                      progress=print_progress("writing scene") if args.size >= 8192 else None)
                print(f"\nwrote {scene} ({scene.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")

        lm = load_model(args.model)
        spec = lm.spec
        from sitewatch.imagery.detect.pipeline import DetectSettings
        from sitewatch.imagery.models.runtime import resolve_runtime

        with rasterio.open(scene) as src:
            width, height, nodata = src.width, src.height, src.nodata
            pixel = abs(src.transform.a)
            if src.count < len(BANDS):
                print(f"{scene}: needs {len(BANDS)} bands (B02 B03 B04 B08)", file=sys.stderr)
                return 2
        lo, hi = norm_stats(scene, spec.normalisation)
        s = Setup(
            scene=scene, width=width, height=height, pixel_size=pixel, model_path=lm.path, checksum=lm.checksum,
            model=lm, tile_size=args.tile_size or spec.tile_size,
            overlap=args.overlap if args.overlap is not None else spec.overlap,
            batch_size=args.batch_size or DetectSettings().batch_size, workers=args.workers,
            score_threshold=spec.score_threshold, lo=lo, hi=hi, nodata=nodata, device=args.device,
            runtime=resolve_runtime(args.runtime, args.device),
        )
        print(f"\nscene {scene.name}: {width} x {height} px, {s.km2:.1f} km2; model {spec.name} {spec.version} "
              f"({lm.path}); tiles {s.tile_size} overlap {s.overlap}, batch {s.batch_size}, {s.workers} workers, "
              f"device {args.device}, runtime {s.runtime} for (a) and (b)")

        # (a) and (b) take turns, repeat by repeat, so a drift in the machine's speed (other
        # tenants, thermal limits) reaches both and not only their ratio.
        a_figs, a_runs = model_only(s, args)
        b_figs, b_runs = end_to_end(s, args, workdir)
        print(f"\n(a) model only and (b) detect end to end, alternating, {args.repeats} repeats", flush=True)
        for rep in range(args.repeats):
            print(f" repeat {rep + 1}", flush=True)
            for run in [*a_runs, *b_runs]:
                run()
        floor, a_one = model_only_summary(a_figs)
        b_full = b_figs[0]
        b_one = b_figs[-1] if len(b_figs) > 1 else None
        c_figs: list[Figure] = []
        c_best = None
        if not args.skip_torchgeo:
            try:
                import torchgeo  # noqa: F401
            except ImportError:
                print("\n(c) skipped: torchgeo is not installed (pip install -e '.[bench]')")
            else:
                print("\n(c) TorchGeo loop", flush=True)
                c_figs, c_best = torchgeo_loop(s, args)

        print_table("(a) model only: sitewatch.imagery.models.inference.predict (forward + heatmap decode) on pre-read, "
                    "normalised tiles; km2/s is scene-equivalent", a_figs)
        print_table("(b) sitewatch detect end to end (sitewatch.imagery.detect.pipeline.detect, whole call, all outputs)", b_figs)
        if c_figs:
            print_table("(c) TorchGeo RasterDataset + GridGeoSampler + DataLoader -> predict (no seam merge, "
                        "no georeferencing)", c_figs)
        print("\nsummary")
        print(f"  (a) floor: {floor.name}: {floor.tiles_s:.2f} tiles/s, {floor.km2_s:.2f} km2/s")
        if a_one:
            print(f"  (a) scaling 1 -> {s.workers} workers: {a_one.tiles_s:.2f} -> {floor.tiles_s:.2f} tiles/s "
                  f"({floor.tiles_s / a_one.tiles_s:.2f}x)")
        print(f"  (b) {b_full.name}: {b_full.tiles_s:.2f} tiles/s, {b_full.km2_s:.2f} km2/s")
        if b_one:
            print(f"  (b) scaling 1 -> {s.workers} workers: {b_one.tiles_s:.2f} -> {b_full.tiles_s:.2f} tiles/s "
                  f"({b_full.tiles_s / b_one.tiles_s:.2f}x)")
        if c_best:
            print(f"  (c) best: {c_best.name}: {c_best.tiles_s:.2f} tiles/s ({c_best.tiles} tiles), {c_best.km2_s:.2f} km2/s")
        print("  goals: (b) >= 0.9 x (a) tiles/s; (b) >= 1.5 x (c) km2/s")
        print(f"end_to_end_vs_model_only {b_full.tiles_s / floor.tiles_s:.3f}")
        if c_best:
            print(f"end_to_end_vs_torchgeo {b_full.km2_s / c_best.km2_s:.3f}")
        else:
            print("end_to_end_vs_torchgeo nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
