"""Write a run's outputs: ``candidates.gpkg``, ``detections.geojson`` (RFC 7946), ``run.json``,
``map.html`` and ``quicklooks/<scene>.png``.

The candidate store is the record of every run written into a directory; the other files
are rendered from it, so after ``detect --append`` they cover every scene of every run.
A new run's store is built in the staging directory and renamed into place with the other
files (``run.json`` last). An appended run writes into the existing store in one
transaction (reviewers writing meanwhile wait for it and lose nothing), renders the other
files inside that transaction, commits it, and then renames the files into place.
"""

from __future__ import annotations

import importlib.metadata
import io
import platform
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sitewatch.imagery.candidates.store import (
    STORE_NAME,
    CandidateStore,
    Detection,
    RunInfo,
    SceneInfo,
    StoredDetection,
)
from sitewatch.imagery.detect.mapview import MapLayer, render_map_html
from sitewatch.imagery.detect.outputs import QUICKLOOK_DIR, Staging
from sitewatch.imagery.detect.results import RunSummary
from sitewatch.imagery.scenes.acquisition import acquisition_date
from sitewatch.imagery.scenes.georef import pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import Scene

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


def run_record(summary: RunSummary, quicklooks: Mapping[str, tuple[str, float]] | None = None) -> dict[str, Any]:
    """The ``run.json`` record of one run (:func:`combined_record` joins the runs of a directory).

    ``quicklooks`` maps scene names to their quick-look file (relative to the run
    directory) and scale (scene pixels per quick-look pixel).
    """
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
            "bands": [{"name": b.name, "file": b.path, "resolved": None if r.scene.array is not None else str(Path(b.path).resolve()),
                       "index": b.index}
                      for b in r.scene.bands],
            "files": r.stats.files if r.stats else {},
            "tiles": {"total": r.tiles_total, "skipped": r.tiles_skipped, "failed": r.tiles_failed, "grid": list(grid.shape)},
            "detections": int(len(r.detections["scores"])) if r.detections else 0,
            "warnings": [w for src, w in p.warnings if src == r.scene.source],
        })
        if not r.failed:
            ql = (quicklooks or {}).get(r.scene.name)
            scenes[-1].update({
                "acquired": acquisition_date(r.scene),
                "bounds_lonlat": list(scene_bounds_lonlat(r.scene)),
                "quicklook": ql[0] if ql else None,
                "quicklook_scale": ql[1] if ql else None,
            })
    scenes.extend({"name": None, "path": src, "status": "failed", "errors": [str(exc)], "detections": 0,
                   "tiles": {"total": 0, "skipped": 0, "failed": 0, "grid": [0, 0]}} for src, exc in p.unopened)
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
        "failed_scenes": summary.failures,
    }


def scene_bounds_lonlat(scene: Scene) -> tuple[float, float, float, float]:
    """The scene's ``(west, south, east, north)`` in degrees (from its four corners)."""
    xs, ys = pixel_to_map(scene.affine, np.array([0.0, scene.width, scene.width, 0.0]),
                          np.array([0.0, 0.0, scene.height, scene.height]))
    lon, lat = to_lonlat(scene.crs_wkt, xs, ys)
    return (round(float(lon.min()), 7), round(float(lat.min()), 7), round(float(lon.max()), 7),
            round(float(lat.max()), 7))


def store_inputs(
    summary: RunSummary, quicklooks: Mapping[str, tuple[str, float]], record: dict[str, Any]
) -> tuple[RunInfo, list[SceneInfo], list[Detection]]:
    """A run as the store takes it: the run, its successful scenes and their detections.

    Detections keep the run's order (scene by scene, best score first), which is the order
    they are grouped into sites.
    """
    spec = summary.plan.model.spec
    by_name = {i["name"]: i for i in record["inputs"]}
    scenes: list[SceneInfo] = []
    detections: list[Detection] = []
    for r in summary.results:
        if r.failed:
            continue
        rec = by_name.get(r.scene.name, {})
        ql = quicklooks.get(r.scene.name)
        scenes.append(SceneInfo(
            name=r.scene.name, source=r.scene.source,
            acquired=rec["acquired"] if "acquired" in rec else acquisition_date(r.scene),
            width=r.scene.width, height=r.scene.height, bounds_lonlat=scene_bounds_lonlat(r.scene),
            quicklook=ql[0] if ql else None, quicklook_scale=ql[1] if ql else None,
        ))
        d = r.detections
        if not d or not len(d["scores"]):
            continue
        rings = np.round(ccw_rings(d["corners_lonlat"]), 7)
        centres = np.round(d["centre_lonlat"], 7)
        for i in range(len(d["scores"])):
            detections.append(Detection(
                scene=r.scene.name, cls=spec.classes[int(d["labels"][i])], score=round(float(d["scores"][i]), 4),
                lon=float(centres[i, 0]), lat=float(centres[i, 1]),
                ring=tuple((float(x), float(y)) for x, y in rings[i]),
                box_px=tuple(round(float(v), 3) for v in d["boxes"][i]),  # type: ignore[arg-type]
            ))
    run = RunInfo(started_at=record["started_at"], finished_at=record["finished_at"], model=spec.name,
                  model_version=spec.version, record=record)
    return run, scenes, detections


def detection_features(detections: Sequence[StoredDetection]) -> list[dict[str, Any]]:
    """One RFC 7946 Feature per stored detection: the box as a Polygon, the centre as ``lon``/``lat``."""
    return [{
        "type": "Feature",
        "id": d.det_id,
        "geometry": {"type": "Polygon", "coordinates": [[list(xy) for xy in d.polygon.exterior.coords]]},
        "properties": {
            "class": d.cls, "score": d.score, "scene": d.scene, "model": d.model, "model_version": d.model_version,
            "detected_at": _second(d.detected_at), "lon": d.lon, "lat": d.lat, "acquired": d.acquired,
            "site_id": d.site_id, "run_id": d.run_id,
        },
    } for d in detections]


def combined_record(runs: Sequence[RunInfo], counts: Mapping[str, int], stored: set[str]) -> dict[str, Any]:
    """``run.json`` of a directory: the latest run's model, settings and versions; inputs,
    tiles and detections of every run; and ``runs``, one entry per run.

    Args:
        runs: the store's runs, oldest first.
        counts: detections per class in the store.
        stored: names of the scenes in the store (a scene that failed in one run and was
            added by a later one is not listed as failed).
    """
    latest = runs[-1].record
    inputs = [{**i, "run_id": run.run_id} for run in runs for i in run.record["inputs"]]
    classes = dict.fromkeys(c for run in runs for c in run.record["model"]["spec"]["classes"])
    failed = [{**f, "run_id": run.run_id} for run in runs for f in run.record["failed_scenes"]
              if not any(i["path"] == f["scene"] and i["name"] in stored for i in inputs)]
    return {
        **{k: v for k, v in latest.items() if k != "run_id"},
        "inputs": inputs,
        "tiles": {k: sum(i["tiles"][k] for i in inputs) for k in ("total", "skipped", "failed")},
        "detections": {c: int(counts.get(c, 0)) for c in [*classes, *counts]},
        "failed_scenes": failed,
        "store": {"file": STORE_NAME, "site_distance_m": runs[-1].site_distance},
        "runs": [{
            "run_id": run.run_id,
            "started_at": run.record["started_at"],
            "finished_at": run.record["finished_at"],
            "model": {"name": run.model, "version": run.model_version, "checksum": run.record["model"]["checksum"]},
            "settings": run.record["settings"],
            "site_distance_m": run.site_distance,
            "scenes": [i["name"] for i in run.record["inputs"] if i["name"] is not None],
            "detections": run.record["detections"],
        } for run in runs],
    }


def scene_corners(runs: Sequence[RunInfo]) -> dict[str, tuple[tuple[float, float], ...]]:
    """Scene name -> its four corners in lon/lat (top-left, top-right, bottom-right, bottom-left),
    from the runs' records (later runs win); a scene whose CRS pyproj cannot use is left out."""
    from affine import Affine

    out: dict[str, tuple[tuple[float, float], ...]] = {}
    for run in runs:
        for i in run.record.get("inputs", []):
            if not (i.get("name") and i.get("crs") and i.get("transform") and i.get("width") and i.get("height")):
                continue
            try:
                x, y = pixel_to_map(Affine(*i["transform"][:6]), np.array([0.0, i["width"], i["width"], 0.0]),
                                    np.array([0.0, 0.0, i["height"], i["height"]]))
                lon, lat = to_lonlat(i["crs"], x, y)
            except Exception:  # noqa: BLE001, S112 - placed by its bounds instead
                continue
            if np.isfinite(lon).all() and np.isfinite(lat).all():
                out[i["name"]] = tuple((float(a), float(b)) for a, b in zip(lon, lat, strict=True))
    return out


#: Cell sizes (metres) tried in turn for the density layer of ``map.html``: the next when the sites
#: span too many cells of one.
MAP_DENSITY_CELLS = (1000.0, 5000.0, 25000.0, 100000.0)


def map_density(store: CandidateStore, con: sqlite3.Connection | None = None) -> dict[str, Any] | None:
    """The density and Gi* hotspots of every site of the store, for ``map.html`` (None: no site,
    or too wide an area for the largest of :data:`MAP_DENSITY_CELLS`).

    Through :func:`~sitewatch.imagery.candidates.density.density_geojson`: sites in distant
    regions (a run over several ports) get a grid each, so every region is shown at the
    finest cell whose grids, all regions together, fit its cap."""
    from sitewatch.imagery.candidates.density import density_geojson
    from sitewatch.imagery.errors import UsageError

    for cell in MAP_DENSITY_CELLS:
        try:
            fc = density_geojson(store, cell, "all", con=con)
        except UsageError:
            continue
        return fc if fc["features"] else None
    return None


def store_map_layers(scenes: Sequence[SceneInfo], detections: Sequence[StoredDetection],
                     images: Mapping[str, np.ndarray], pngs: Mapping[str, bytes] | None = None,
                     corners: Mapping[str, tuple[tuple[float, float], ...]] | None = None) -> list[MapLayer]:
    """Quick-look layers of ``map.html`` for every scene with a quick-look image in ``images``
    (``pngs``: the same images already encoded, where known; ``corners``: the scenes' corners,
    see :func:`scene_corners`)."""
    by_scene: dict[str, list[StoredDetection]] = {}
    for d in detections:
        by_scene.setdefault(d.scene, []).append(d)
    layers = []
    for s in scenes:
        image = images.get(s.name)
        if image is None or s.quicklook_scale is None:
            continue
        ds = [d for d in by_scene.get(s.name, []) if d.box_px is not None]
        layers.append(MapLayer(
            scene=s.name, image=image, scale=s.quicklook_scale,
            boxes=np.array([d.box_px for d in ds], dtype=float).reshape(-1, 4),
            classes=tuple(d.cls for d in ds), scores=np.array([d.score for d in ds]),
            lonlat=np.array([(d.lon, d.lat) for d in ds], dtype=float).reshape(-1, 2),
            bounds_lonlat=s.bounds_lonlat, png=(pngs or {}).get(s.name, b""),
            corners_lonlat=(corners or {}).get(s.name), scene_size=(s.width, s.height) if s.width and s.height else None,
        ))
    return layers


def write_outputs(summary: RunSummary, *, overwrite: bool, append: bool = False,
                  site_distance: Mapping[str, float] | None = None) -> None:
    """Write the run's outputs into ``summary.out`` atomically (see the module docstring).

    Args:
        summary: the run.
        overwrite: the directory's earlier results are being replaced.
        append: add to the directory's existing store and outputs (a new store if none).
        site_distance: site distance in metres per class (see :mod:`sitewatch.imagery.candidates.sites`).
    """
    out = summary.out
    staging = Staging(out)
    try:
        done = [r for r in summary.results if not r.failed and r.stats is not None]
        images = {r.scene.name: r.stats.quicklook for r in done if r.stats is not None}
        pngs = {r.scene.name: r.stats.png() for r in done if r.stats is not None}
        existing = _quicklook_names(out) if append else set()
        quicklooks: dict[str, tuple[str, float]] = {}
        for r in summary.results:
            if r.scene.name in images and r.stats is not None:
                name = _quicklook_name(r.scene.name, existing)
                staging.write_bytes(name, pngs[r.scene.name])
                quicklooks[r.scene.name] = (name, float(r.stats.quicklook_scale))
        record = run_record(summary, quicklooks)
        store_path = out / STORE_NAME
        if append and store_path.exists():
            store = CandidateStore(store_path)
            with store.write() as con:
                store.add_detections(*store_inputs(summary, quicklooks, record), site_distance=site_distance, con=con)
                names = _stage_documents(store, con, staging, images, pngs, summary)
            staging.commit([*(q for q, _ in quicklooks.values()), *names])
            return
        store = CandidateStore.create(staging.path(STORE_NAME))
        store.add_detections(*store_inputs(summary, quicklooks, record), site_distance=site_distance)
        names = _stage_documents(store, None, staging, images, pngs, summary)
    except BaseException:
        staging.discard()
        raise
    staging.commit([STORE_NAME, *(q for q, _ in quicklooks.values()), *names])
    if overwrite:  # what belonged to the replaced run: its quick-looks and its estimate
        keep = {q for q, _ in quicklooks.values()}
        for p in (out / QUICKLOOK_DIR).glob("*.png"):
            if f"{QUICKLOOK_DIR}/{p.name}" not in keep:
                p.unlink(missing_ok=True)
        (out / "estimate.json").unlink(missing_ok=True)


def _stage_documents(store: CandidateStore, con: sqlite3.Connection | None, staging: Staging,
                     images: dict[str, np.ndarray], pngs: dict[str, bytes], summary: RunSummary) -> list[str]:
    """Render detections.geojson, map.html and run.json of every run in the store into the staging directory."""
    with store.read(con) as c:
        detections = store.detections(con=c)
        scenes = store.scenes(con=c)
        runs = store.runs(con=c)
        density = map_density(store, c)
        sites = store.sites(con=c)
    counts: dict[str, int] = {}
    for d in detections:
        counts[d.cls] = counts.get(d.cls, 0) + 1
    staging.write_json("detections.geojson", {"type": "FeatureCollection", "features": detection_features(detections)})
    for s in scenes:
        if s.name not in images and s.quicklook and (summary.out / s.quicklook).is_file():
            pngs[s.name] = (summary.out / s.quicklook).read_bytes()
            with Image.open(io.BytesIO(pngs[s.name])) as im:
                images[s.name] = np.asarray(im.convert("RGB"))
    title = f"sitewatch candidates: {', '.join(s.name for s in scenes)}"
    staging.write_text("map.html", render_map_html(store_map_layers(scenes, detections, images, pngs, scene_corners(runs)),
                                                   title, summary.plan.model.spec.name, density, sites))
    staging.write_json("run.json", combined_record(runs, counts, {s.name for s in scenes}))
    return ["detections.geojson", "map.html", "run.json"]


def _quicklook_names(out: Path) -> set[str]:
    d = out / QUICKLOOK_DIR
    return {f"{QUICKLOOK_DIR}/{p.name}" for p in d.iterdir()} if d.is_dir() else set()


def _quicklook_name(scene: str, taken: set[str]) -> str:
    """``quicklooks/<scene>.png`` with unsafe characters replaced, numbered if the name is taken."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", scene).strip("._") or "scene"
    name, k = f"{QUICKLOOK_DIR}/{stem}.png", 2
    while name in taken:
        name, k = f"{QUICKLOOK_DIR}/{stem}-{k}.png", k + 1
    taken.add(name)
    return name


def _second(when: str | None) -> str | None:
    """``2024-05-01T09:30:00.123Z`` -> ``2024-05-01T09:30:00Z``."""
    if when and "." in when and when.endswith("Z"):
        return when.split(".")[0] + "Z"
    return when
