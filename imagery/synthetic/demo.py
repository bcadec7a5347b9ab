"""``sitewatch demo``: a seeded synthetic scene, the ``demo`` model, the full pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sitewatch.imagery.candidates.matching import Counts, match_centres
from sitewatch.imagery.detect.outputs import check_out_dir
from sitewatch.imagery.detect.pipeline import DetectSettings, Plan, RunSummary, detect
from sitewatch.imagery.scenes.georef import local_metres, pixel_to_map, to_lonlat
from sitewatch.imagery.synthetic.sentinel2 import PlantedObject, make_scene, truth_to_geojson

SCENE = "demo-scene.tif"
TRUTH = "demo-truth.geojson"
EVAL = "demo-eval.json"
#: Centre distance within which a detection matches a planted object.
MATCH_M = 20.0


def evaluate_planted(summary: RunSummary, planted: list[PlantedObject]) -> dict[str, Any]:
    """Match a run's detections to planted objects by class and centre distance."""
    res = summary.results[0]
    sc = res.scene
    classes = summary.plan.model.spec.classes
    d = res.detections
    lon0, lat0 = (float(v) for v in d["centre_lonlat"].mean(axis=0)) if len(d["scores"]) else (0.0, 0.0)
    per: dict[str, Any] = {}
    total = Counts(0, 0, 0)
    for k, cls in enumerate(classes):
        truth = np.array([o.box for o in planted if o.cls == cls], dtype=float).reshape(-1, 4)
        tx, ty = pixel_to_map(sc.affine, (truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2)
        tlon, tlat = to_lonlat(sc.crs_wkt, tx, ty)
        sel = d["labels"] == k
        pred = d["centre_lonlat"][sel]
        m = match_centres(local_metres(pred[:, 0], pred[:, 1], lon0, lat0), d["scores"][sel],
                          local_metres(tlon, tlat, lon0, lat0), MATCH_M)
        tp = int((m >= 0).sum())
        c = Counts(tp, int(sel.sum()) - tp, len(truth) - tp)
        total = total + c
        per[cls] = {"planted": len(truth), "detected": int(sel.sum()), **c.as_dict()}
    return {"match_distance_m": MATCH_M, "per_class": per, "all": total.as_dict()}


def run_demo(out: str | Path, *, seed: int = 0, workers: int | None = None, overwrite: bool = False,
             on_tiles: Callable[[int], None] | None = None,
             on_plan: Callable[[Plan], None] | None = None) -> dict[str, Any]:
    """Write the demo scene into ``out``, detect on it, and score against the planted objects."""
    out = Path(out)
    own = (SCENE, TRUTH, EVAL)
    check_out_dir(out, overwrite, own)
    out.mkdir(parents=True, exist_ok=True)
    planted = make_scene(out / SCENE, seed=seed)
    import rasterio

    with rasterio.open(out / SCENE) as src:
        truth = truth_to_geojson(planted, src.transform, src.crs)
    (out / TRUTH).write_text(json.dumps(truth))
    summary = detect([out / SCENE], "demo", out, DetectSettings(workers=workers), overwrite=True,
                     on_tiles=on_tiles, on_plan=on_plan, own_files=own)
    result = evaluate_planted(summary, planted)
    (out / EVAL).write_text(json.dumps(result, indent=1))
    return result
