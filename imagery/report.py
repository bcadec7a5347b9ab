"""Write a run's outputs: ``detections.geojson`` (RFC 7946), ``run.json`` and ``map.html``."""

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


def features(summary: RunSummary, detected_at: str) -> list[dict[str, Any]]:
    """One GeoJSON Feature per detection (Polygon box; centre as ``lon``/``lat``)."""
    spec = summary.plan.model.spec
    feats: list[dict[str, Any]] = []
    for res in summary.results:
        d = res.detections
        if not d or not len(d["scores"]):
            continue
        rings = np.round(ccw_rings(d["corners_lonlat"]), 7)
        centres = np.round(d["centre_lonlat"], 7)
        for i in range(len(d["scores"])):
            feats.append({
                "type": "Feature",
                "id": len(feats) + 1,
                "geometry": {"type": "Polygon", "coordinates": [rings[i].tolist()]},
                "properties": {
                    "class": spec.classes[int(d["labels"][i])],
                    "score": round(float(d["scores"][i]), 4),
                    "scene": res.scene.name,
                    "model": spec.name,
                    "model_version": spec.version,
                    "detected_at": detected_at,
                    "lon": float(centres[i, 0]),
                    "lat": float(centres[i, 1]),
                },
            })
    return feats


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


def map_layers(summary: RunSummary) -> list[MapLayer]:
    """Quick-look layers for ``map.html``."""
    classes = summary.plan.model.spec.classes
    layers = []
    for r in summary.results:
        if r.stats is None:
            continue
        d = r.detections
        s = r.scene
        xs, ys = pixel_to_map(s.affine, np.array([0.0, s.width, s.width, 0.0]), np.array([0.0, 0.0, s.height, s.height]))
        lon, lat = to_lonlat(s.crs_wkt, xs, ys)
        layers.append(MapLayer(
            scene=s.name,
            image=r.stats.quicklook,
            scale=r.stats.quicklook_scale,
            boxes=d["boxes"],
            classes=tuple(classes[int(c)] for c in d["labels"]),
            scores=d["scores"],
            lonlat=d["centre_lonlat"],
            bounds_lonlat=(float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())),
        ))
    return layers


def write_outputs(summary: RunSummary, *, overwrite: bool) -> None:
    """Stage every output, then move them into the run directory."""
    detected_at = summary.finished.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    staging = Staging(summary.out)
    try:
        fc = {"type": "FeatureCollection", "features": features(summary, detected_at)}
        staging.write_json("detections.geojson", fc)
        title = f"sitewatch candidates: {', '.join(r.scene.name for r in summary.results)}"
        staging.write_text("map.html", render_map_html(map_layers(summary), title, summary.plan.model.spec.name))
        staging.write_json("run.json", run_record(summary))
    except BaseException:
        staging.discard()
        raise
    staging.commit(["detections.geojson", "map.html", "run.json"])
