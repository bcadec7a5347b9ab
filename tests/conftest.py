"""Shared fixtures: tiny seeded GeoTIFFs and checkpoints, built in code (no binary fixtures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

MakeGeoTiff = Callable[..., Path]


@pytest.fixture
def make_geotiff(tmp_path: Path) -> MakeGeoTiff:
    """Factory: ``make_geotiff(width, height, crs, transform, dtype, nodata, bands, ...)`` -> path.

    Pixel values are seeded random noise unless ``data`` is given. ``descriptions`` sets
    band descriptions; ``crs=None`` writes a raster with no CRS.
    """
    counter = iter(range(10_000))

    def make(
        width: int = 64,
        height: int = 64,
        crs: str | None = "EPSG:32633",
        transform: Affine | None = None,
        dtype: str = "uint16",
        nodata: float | None = None,
        bands: int = 4,
        *,
        data: np.ndarray | None = None,
        descriptions: Sequence[str] | None = None,
        name: str | None = None,
        seed: int = 0,
        tiled: bool = True,
    ) -> Path:
        path = tmp_path / (name or f"raster{next(counter)}.tif")
        if data is None:
            rng = np.random.default_rng(seed)
            data = (rng.random((bands, height, width)) * 1000 + 100).astype(dtype)
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": dtype,
            "transform": transform if transform is not None else Affine(10, 0, 500000, 0, -10, 4_800_000),
        }
        if crs is not None:
            profile["crs"] = crs
        if nodata is not None:
            profile["nodata"] = nodata
        if tiled and width >= 16 and height >= 16:
            profile.update(tiled=True, blockxsize=16 * max(1, min(16, width // 16)), blockysize=16 * max(1, min(16, height // 16)), compress="deflate")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if descriptions:
                for i, d in enumerate(descriptions, start=1):
                    dst.set_band_description(i, d)
        return path

    return make


TINY_PARAMS = {"head_width": 16, "widths": [8, 16, 16, 16]}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-band, 2-class CenterNet: fast, and scores every peak (threshold 0 finds many)."""
    import torch

    from sitewatch.imagery.models.architectures import build_model
    from sitewatch.imagery.models.checkpoint import ModelSpec, save_checkpoint

    torch.manual_seed(0)
    model = build_model("centernet", 4, 2, TINY_PARAMS)
    spec = ModelSpec(
        name="tiny",
        version="0",
        arch="centernet",
        classes=("vessel", "kiln"),
        bands=("B02", "B03", "B04", "B08"),
        arch_params=TINY_PARAMS,
        score_threshold=0.5,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, spec, model)
    return path


AddScene = Callable[..., object]


@pytest.fixture
def add_scene() -> AddScene:
    """Factory: ``add_scene(store, name, [(cls, lon, lat, score), ...], acquired=None, half_m=15.0)``.

    Adds one scene (its own run) with square detection boxes of ``2 * half_m`` metres around
    each centre to a :class:`sitewatch.imagery.candidates.store.CandidateStore`, without running a detector;
    returns the :class:`sitewatch.imagery.candidates.store.AddedRun`. ``site_distance=`` is passed through.
    """
    from sitewatch.imagery.candidates.store import Detection, RunInfo, SceneInfo

    def add(store, name, dets, acquired=None, half_m=15.0, site_distance=None):
        detections = []
        for cls, lon, lat, score in dets:
            dlon = half_m / (111_195.0 * np.cos(np.radians(lat)))
            dlat = half_m / 111_195.0
            ring = ((lon - dlon, lat - dlat), (lon + dlon, lat - dlat), (lon + dlon, lat + dlat),
                    (lon - dlon, lat + dlat), (lon - dlon, lat - dlat))
            detections.append(Detection(name, cls, score, lon, lat, ring))
        lons = [d.lon for d in detections] or [0.0]
        lats = [d.lat for d in detections] or [0.0]
        scene = SceneInfo(name, f"/data/{name}.tif", acquired, 100, 100,
                          (min(lons) - 0.01, min(lats) - 0.01, max(lons) + 0.01, max(lats) + 0.01))
        run = RunInfo("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "test", "1",
                      {"model": {"spec": {"classes": ["vessel", "kiln"]}}})
        return store.add_detections(run, [scene], detections, site_distance=site_distance)

    return add


def make_review_run(base: Path) -> Path:
    """A real detect run with the shipped demo model on two small synthetic scenes of two dates
    (for the review page's tests)."""
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect
    from sitewatch.imagery.synthetic.sentinel2 import make_scene

    scenes = base / "scenes"
    scenes.mkdir()
    paths = [scenes / "S2_20240105_coast.tif", scenes / "S2_20240220_coast.tif"]
    for p in paths:  # the same place twice: kilns stay (sites seen on both dates), vessels are per date
        make_scene(p, seed=3, width=384, height=384, n_vessels=6, n_kilns=5)
    run = base / "run"
    detect(paths, "demo", run, DetectSettings(workers=2))
    return run


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT (Ctrl-C): a shell running the
    suite as a background job passes SIGINT on as *ignored*, and Python then installs no
    KeyboardInterrupt handler, so the child would never see the signal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
