"""The ``sitewatch`` command run as a real process: exit codes, one-line errors, outputs.

A fresh ``python -m sitewatch.cli`` spends ~4 s of CPU importing torch before it reads a
single flag, and a dozen of them overran this suite's budget on a shared 2-core machine.
So the successful run and the flag errors are fresh interpreters, while the bad-input
cases (which all load the model first) each run in a child forked from one interpreter
that imported sitewatch once: every case is still its own process with its own exit code,
stdout and stderr, entered through the same ``sitewatch.cli.main``. All runs start
together in one module fixture; the tests then check their results.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import rasterio
import shapely
from clirun import CLASSES, FAST, NORTH, SITEWATCH, SOUTH, Case, geotiff, noise, run_forked, run_fresh, tree
from pyproj import Transformer


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Case]:
    base = tmp_path_factory.mktemp("cli")
    src = base / "inputs"
    src.mkdir()
    scene = geotiff(src / "scene.tif", noise(4, 80, 96, seed=1))
    half = noise(4, 64, 128, seed=2)
    half[:, :, :64] = 0
    halfnodata = geotiff(src / "halfnodata.tif", half, SOUTH, nodata=0)
    text = src / "notes.tif"
    text.write_text("not a raster at all\n")
    trunc = geotiff(src / "truncated.tif", noise(4, 512, 512, seed=3))
    trunc.write_bytes(trunc.read_bytes()[: int(trunc.stat().st_size * 0.6)])
    nocrs = geotiff(src / "nocrs.tif", noise(4, 32, 32), (None, NORTH[1]))
    notransform = geotiff(src / "notransform.tif", noise(4, 32, 32), ("EPSG:32633", None))
    six = geotiff(src / "six.tif", noise(6, 32, 32))
    junk_model = src / "model.pt"
    junk_model.write_text("junk\n")
    model = str(tiny_checkpoint)

    cases: dict[str, Case] = {}

    def add(
        name: str,
        inputs: list[Path],
        extra: list[str],
        code: int,
        *names: str,
        prepare: str | None = None,
        fresh: bool = False,
    ) -> None:
        parent = base / name
        parent.mkdir()
        out = parent / "run"
        if prepare == "results":
            out.mkdir()
            for f in ("detections.geojson", "run.json", "map.html"):
                (out / f).write_text(f"earlier {f}\n")
        elif prepare == "foreign":
            out.mkdir()
            (out / "thesis.docx").write_text("mine\n")
        args = [*map(str, inputs), "--model", model, "--out", str(out), *extra]
        needles = tuple(n.replace("{out}", str(out)) for n in names)
        cases[name] = Case(["detect", *args], parent, code, needles, fresh=fresh)

    add("not_a_raster", [text], FAST, 3, str(text))
    add("truncated", [trunc], FAST, 3, str(trunc))
    add("no_crs", [nocrs], FAST, 3, str(nocrs), "CRS")
    add("no_geotransform", [notransform], FAST, 3, str(notransform), "geotransform")
    add("six_bands", [six], FAST, 3, str(six), "--bands")
    add("unknown_model", [scene], [*FAST, "--model", "no-such-model"], 4, "--model no-such-model")
    add(
        "junk_checkpoint",
        [scene],
        [*FAST, "--model", str(junk_model)],
        4,
        str(junk_model),
        "not a sitewatch checkpoint",
    )
    add(
        "unreachable_scheduler",
        [scene],
        [*FAST, "--scheduler", "tcp://127.0.0.1:1"],
        2,
        "--scheduler tcp://127.0.0.1:1",
    )
    add("nodata_not_a_number", [scene], [*FAST, "--nodata", "nan"], 2, "--nodata nan", "finite number")
    add("overlap_too_big", [scene], ["--tile-size", "32", "--overlap", "32"], 2, "--overlap", "--tile-size")
    add("unknown_flag", [scene], ["--frobnicate"], 2, "--frobnicate", fresh=True)
    add("bad_value", [scene], ["--tile-size", "big"], 2, "--tile-size", "big", fresh=True)
    add("existing_results", [scene], FAST, 5, "{out}", "--overwrite", prepare="results")
    add("foreign_files", [scene], FAST, 5, "{out}", "thesis.docx", prepare="foreign")
    # One successful run (each costs seconds): it also replaces an earlier run's results.
    good = [*FAST, "--score-threshold", "0.0", "--overwrite"]
    add("good", [scene, halfnodata], good, 0, prepare="results", fresh=True)
    for case in cases.values():
        case.before = tree(case.parent)

    scratch = base / "std"
    scratch.mkdir()
    forked = [c for c in cases.values() if not c.fresh]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(run_forked, forked, scratch)]
        jobs += [pool.submit(run_fresh, c) for c in cases.values() if c.fresh]
        for job in jobs:
            job.result()
    cases["good"].inputs = {"scene": scene, "halfnodata": halfnodata}
    return cases


# --- bad input: one line, the documented exit code, nothing written ------------------------

ERROR_CASES = [
    "not_a_raster",
    "truncated",
    "no_crs",
    "no_geotransform",
    "six_bands",
    "unknown_model",
    "junk_checkpoint",
    "unreachable_scheduler",
    "overlap_too_big",
    "unknown_flag",
    "bad_value",
    "existing_results",
    "foreign_files",
]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_is_one_clear_line(runs, name):
    case = runs[name]
    proc = case.proc
    assert proc is not None
    assert proc.returncode == case.code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.endswith("\n")
    assert lines[0].startswith("sitewatch")
    for needle in case.names:
        assert needle in lines[0]
    assert proc.stdout == ""
    # No run directory, no staging directory, and earlier results byte for byte as they were.
    assert tree(case.parent) == case.before


def test_exit_codes_match_the_documentation():
    from sitewatch import cli

    doc = " ".join((cli.__doc__ or "").split())
    for text in ("2 bad flag or value", "3 bad input file", "4 model problem", "5 output problem"):
        assert text in doc


# --- a successful run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(runs) -> tuple[Case, dict[str, Any], dict[str, Any]]:
    case = runs["good"]
    assert case.proc is not None and case.proc.returncode == 0, case.proc.stderr if case.proc else None
    out = case.parent / "run"
    return case, json.loads((out / "detections.geojson").read_text()), json.loads((out / "run.json").read_text())


def test_successful_run_writes_outputs_quietly(good):
    case, _, _ = good
    out = case.parent / "run"
    assert sorted(p.name for p in out.iterdir()) == ["candidates.gpkg", "detections.geojson", "map.html", "quicklooks",
                                                     "run.json"]
    assert "<html" in (out / "map.html").read_text().lower()
    assert case.proc is not None and case.proc.stderr == ""
    assert str(out) in case.proc.stdout and "vessel" in case.proc.stdout
    assert sorted(p.name for p in case.parent.iterdir()) == ["run"]  # no staging left beside --out


def _scene_lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as ds:
        t = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        cols = np.array([0, ds.width, ds.width, 0, ds.width / 2])
        rows = np.array([0, 0, ds.height, ds.height, ds.height / 2])
        xs, ys = ds.transform @ (cols, rows)
        lon, lat = t.transform(xs, ys)
    return float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))


def test_geojson_is_rfc7946(good):
    case, fc, _ = good
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    feats = fc["features"]
    assert len(feats) > 50  # threshold 0: a random model finds many peaks
    rings = []
    for f in feats:
        assert f["type"] == "Feature" and "crs" not in f
        assert f["geometry"]["type"] == "Polygon"
        (ring,) = f["geometry"]["coordinates"]
        assert len(ring) >= 4 and ring[0] == ring[-1]
        rings.append(ring)
    r = np.array(rings, dtype=float)
    lon, lat = r[..., 0], r[..., 1]
    assert ((lon >= -180) & (lon <= 180)).all() and ((lat >= -90) & (lat <= 90)).all()
    area2 = (lon[:, :-1] * lat[:, 1:] - lon[:, 1:] * lat[:, :-1]).sum(axis=1)
    assert (area2 > 0).all()  # counter-clockwise exterior rings


def test_geojson_properties(good):
    case, fc, _ = good
    feats = fc["features"]
    for f in feats:
        p = f["properties"]
        assert {"class", "score", "scene", "model", "model_version", "detected_at", "lon", "lat"} <= set(p)
        assert p["class"] in CLASSES and 0.0 <= p["score"] <= 1.0
        assert p["model"] == "tiny" and p["model_version"] == "0"
        assert p["detected_at"].endswith("Z")
        when = dt.datetime.fromisoformat(p["detected_at"])
        assert when.utcoffset() == dt.timedelta(0)
    polys = shapely.polygons([f["geometry"]["coordinates"][0] for f in feats])
    lon = np.array([f["properties"]["lon"] for f in feats])
    lat = np.array([f["properties"]["lat"] for f in feats])
    assert shapely.contains_xy(polys, lon, lat).all()
    # lon/lat order: each scene's centres fall inside that scene's own footprint.
    scene_of = np.array([f["properties"]["scene"] for f in feats])
    assert set(scene_of) == {"scene", "halfnodata"}
    for name, path in case.inputs.items():
        w, s, e, n = _scene_lonlat_bounds(path)
        sel = scene_of == name
        pad = 0.01
        assert ((lon[sel] > w - pad) & (lon[sel] < e + pad) & (lat[sel] > s - pad) & (lat[sel] < n + pad)).all(), name


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_json_records_the_run(good, tiny_checkpoint):
    case, fc, run = good
    inputs = {i["name"]: i for i in run["inputs"]}
    assert set(inputs) == {"scene", "halfnodata"}
    for name, path in case.inputs.items():
        files = inputs[name]["files"]
        assert files == {str(path): {"bytes": path.stat().st_size, "sha256": _sha256(path)}}
        assert inputs[name]["status"] == "ok"
    assert run["model"]["checksum"] == _sha256(tiny_checkpoint)
    assert run["model"]["spec"]["name"] == "tiny"
    s = run["settings"]
    assert (s["tile_size"], s["overlap"], s["score_threshold"], s["workers"]) == (32, 8, 0.0, 2)
    assert {"python", "sitewatch", "torch", "rasterio", "gdal", "numpy"} <= set(run["versions"])
    started = dt.datetime.fromisoformat(run["started_at"])
    finished = dt.datetime.fromisoformat(run["finished_at"])
    assert run["started_at"].endswith("Z") and started.utcoffset() == dt.timedelta(0)
    assert started <= finished
    tiles = run["tiles"]
    assert tiles["total"] == sum(i["tiles"]["total"] for i in run["inputs"]) > 0
    assert tiles["skipped"] == sum(i["tiles"]["skipped"] for i in run["inputs"])
    assert tiles["failed"] == 0
    classes = [f["properties"]["class"] for f in fc["features"]]
    assert run["detections"] == {c: classes.count(c) for c in CLASSES}
    for name, rec in inputs.items():
        assert rec["detections"] == sum(f["properties"]["scene"] == name for f in fc["features"])
    assert run["failed_scenes"] == []


def test_nodata_half_is_skipped_and_has_no_detections(good):
    case, fc, run = good
    rec = next(i for i in run["inputs"] if i["name"] == "halfnodata")
    # 32-pixel tiles at stride 24: the tiles starting at columns 0 and 24 hold only nodata.
    assert rec["tiles"]["skipped"] >= 6
    assert rec["detections"] > 0
    feats = [f for f in fc["features"] if f["properties"]["scene"] == "halfnodata"]
    lon = np.array([f["properties"]["lon"] for f in feats])
    lat = np.array([f["properties"]["lat"] for f in feats])
    x, _ = Transformer.from_crs("EPSG:4326", SOUTH[0], always_xy=True).transform(lon, lat)
    cols = (x - SOUTH[1].c) / SOUTH[1].a
    assert cols.min() >= 64 - 0.01, cols.min()


def test_overwrite_replaces_earlier_results(good):
    case, fc, run = good
    out = case.parent / "run"
    for name in ("detections.geojson", "run.json", "map.html"):
        assert (out / name).read_bytes() != case.before[f"run/{name}"]
    assert len(fc["features"]) == sum(run["detections"].values()) > 0


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["detect"], ["demo"]])
def test_help_documents_every_option(command):
    from sitewatch.cli import cli

    proc = subprocess.run([*SITEWATCH, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    cmd: click.Command = cli.commands[command[0]] if command else cli
    text = proc.stdout
    assert text.startswith("Usage: sitewatch")
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, param.name
            for opt in param.opts:
                assert opt in text, opt
    assert "-h, --help" in text
    if not command:
        for sub in ("detect", "demo", "models"):
            assert sub in text


def test_installed_console_script_runs():
    script = shutil.which("sitewatch", path=str(Path(sys.executable).parent)) or shutil.which("sitewatch")
    if script is None:
        pytest.skip("the sitewatch console script is not installed")
    proc = subprocess.run([script, "detect", "--no-such-flag"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "--no-such-flag" in proc.stderr
