"""End to end with the shipped ``demo`` model on the seeded synthetic scene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.scenes.georef import local_metres, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.tiling import TileGrid
from sitewatch.imagery.synthetic.sentinel2 import make_scene

pytestmark = pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")


def _sitewatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sitewatch.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_cli_matches_planted_objects(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _sitewatch("demo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((out / "demo-eval.json").read_text())
    for cls in ("vessel", "kiln"):
        m = ev["per_class"][cls]
        assert m["planted"] > 10
        assert m["recall"] >= 0.9, (cls, m)
        assert m["precision"] >= 0.9, (cls, m)
    fc = json.loads((out / "detections.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    assert len(fc["features"]) == sum(ev["per_class"][c]["detected"] for c in ("vessel", "kiln"))
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["spec"]["name"] == "demo"
    assert run["tiles"]["total"] == 25 and run["tiles"]["failed"] == 0
    assert (out / "map.html").stat().st_size > 10_000
    # a second demo into the same directory is refused without --overwrite, accepted with it
    again = _sitewatch("demo", "--out", str(out))
    assert again.returncode == 5 and "--overwrite" in again.stderr
    assert _sitewatch("demo", "--out", str(out), "--overwrite").returncode == 0


def test_objects_on_seams_are_reported_once(tmp_path: Path) -> None:
    """Small tiles put many planted objects on tile edges and corners; each is reported once."""
    scene = tmp_path / "s.tif"
    planted = make_scene(scene, seed=3, width=512, height=512, n_vessels=30, n_kilns=20)
    size, overlap = 64, 16
    grid = TileGrid(512, 512, size, overlap)
    edges = {o for o in grid.col_offsets[1:]} | {o + size for o in grid.col_offsets[:-1]}
    boxes = np.array([o.box for o in planted])
    on_edge = [any(b[0] < e < b[2] for e in edges) or any(b[1] < e < b[3] for e in edges) for b in boxes]
    assert sum(on_edge) >= 15  # the test really exercises seams
    summary = detect([scene], "demo", tmp_path / "run", DetectSettings(tile_size=size, overlap=overlap, workers=2))
    res = summary.results[0]
    d = res.detections
    sc = res.scene
    lon0, lat0 = d["centre_lonlat"].mean(axis=0)
    det_m = local_metres(d["centre_lonlat"][:, 0], d["centre_lonlat"][:, 1], lon0, lat0)
    cx, cy = pixel_to_map(sc.affine, (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
    tlon, tlat = to_lonlat(sc.crs_wkt, cx, cy)
    truth_m = local_metres(tlon, tlat, lon0, lat0)
    classes = summary.plan.model.spec.classes
    found = 0
    for obj, t, edge in zip(planted, truth_m, on_edge, strict=True):
        same = np.array([classes[int(c)] == obj.cls for c in d["labels"]])
        near = (np.linalg.norm(det_m - t, axis=1) <= 20.0) & same
        assert near.sum() <= 1, f"{obj} reported {near.sum()} times"
        found += int(near.sum() == 1 and edge)
    assert found >= 0.9 * sum(on_edge)
