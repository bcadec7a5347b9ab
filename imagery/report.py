"""Write a run's outputs: ``candidates.gpkg``, ``detections.geojson`` (RFC 7946), ``run.json``,
``map.html`` and ``quicklooks/<scene>.png``.

The candidate store is the record of every run written into a directory; the other files
are rendered from it, so after ``detect --append`` they cover every scene of every run.
A new run's store is built in the staging directory and renamed into place with the other
files (``run.json`` last). An appended run writes into the existing store in one
transaction (other writers, such as reviewers, keep writing to it meanwhile), renders the
other files from that transaction, commits it, and then renames the files into place.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from typing import TYPE_CHECKING, Any

import numpy as np

from imagery.georef import pixel_to_map, to_lonlat
from imagery.mapview import MapLayer, render_map_html
from imagery.outputs import Staging

if TYPE_CHECKING:
    from imagery.pipeline import RunSummary

PACKAGES = ("sitewatch", "torch", "torchvision", "rasterio", "dask", "distributed", "numpy", "pyproj", "shapely", "xarray")


def ccw_rings(corners: np.ndarray) -> np.ndarray:
    """Closed, counter-clockwise rings ``(n, 5, 2)`` from ``(n, 4, 2)`` lon/lat corners."""
    x, y = corners[..., 0], corners[..., 1]
    area2 = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    rings = np.where((area2 < 0)[:, None, None], corners[:, ::-1], corners)
    return np.concatenate([rings, rings[:, :1]], axis=1)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out


def run_record(summary: RunSummary) -> dict[str, Any]:
    """The content of ``run.json``."""
    p = summary.plan
    spec = p.model.spec
    scenes = []
    for r, grid in zip(summary.results, p.grids, strict=True):
        scenes.append({
            "name": r.scene.name,
            "path": r.scene.source,
            "status": "failed" if r.failed else "ok",
            "errors": r.errors,
            "width": r.scene.width,
            "height": r.scene.height,
            "crs": r.scene.crs_wkt,
            "transform": list(r.scene.transform),
            "bands": [{"name": b.name, "file": b.path, "index": b.index} for b in r.scene.bands],
            "files": r.stats.files if r.stats else {},
            "tiles": {"total": r.tiles_total, "skipped": r.tiles_skipped, "failed": r.tiles_failed, "grid": list(grid.shape)},
            "detections": int(len(r.detections["scores"])) if r.detections else 0,
        })
    return {
        "sitewatch_run": 1,
        "started_at": summary.started.isoformat().replace("+00:00", "Z"),
        "finished_at": summary.finished.isoformat().replace("+00:00", "Z"),
        "inputs": scenes,
        "model": {
            "ref": p.model_ref,
            "path": p.model.path,
            "checksum": p.model.checksum,
            "spec": spec.to_dict(),
        },
        "settings": summary.settings_dict(),
        "versions": _versions(),
        "tiles": {
            "total": sum(r.tiles_total for r in summary.results),
            "skipped": sum(r.tiles_skipped for r in summary.results),
            "failed": sum(r.tiles_failed for r in summary.results),
        },
        "detections": summary.counts(),
        "failed_scenes": [{"scene": r.scene.source, "errors": r.errors} for r in summary.failed_scenes],
    }


