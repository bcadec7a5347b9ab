"""``sitewatch sites|review|export|estimate`` as real processes: outputs, one-line errors, exit codes.

These commands never import torch, so each is a fresh ``python -m sitewatch.cli`` (~0.5 s);
the error cases run in parallel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from sitewatch.imagery.candidates.store import CandidateStore

SITEWATCH = [sys.executable, "-m", "sitewatch.cli"]
LON0, LAT0 = 88.40, 22.60


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SITEWATCH, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def run_dir(tmp_path, add_scene) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    store = CandidateStore.create(d / "candidates.gpkg")
    add_scene(store, "s1", [("kiln", LON0 + 0.01 * i, LAT0, 0.3 + 0.05 * i) for i in range(12)]
              + [("vessel", LON0, LAT0 + 0.1, 0.9)], acquired="2024-01-05")
    return d


def test_errors_are_one_line_with_the_documented_exit_codes(run_dir, tmp_path):
    (tmp_path / "exists.csv").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        "bad status": (["review", run_dir, "--site", "kiln-000001", "--status", "maybe"], 2, ["--status", "maybe"]),
        "unknown site": (["review", run_dir, "--site", "kiln-000999", "--status", "confirmed", "--reviewer", "a"], 2,
                         ["kiln-000999", "no such site"]),
        "missing dir": (["export", tmp_path / "nope", "--out", tmp_path / "x.csv"], 3, ["nope", "no such run directory"]),
        "no store": (["sites", tmp_path / "empty"], 3, ["empty", "candidates.gpkg"]),
        "bad format": (["export", run_dir, "--format", "shp", "--out", tmp_path / "x.shp"], 2, ["--format", "shp"]),
        "bad export status": (["export", run_dir, "--status", "done", "--out", tmp_path / "x.csv"], 2, ["--status"]),
        "existing out": (["export", run_dir, "--out", tmp_path / "exists.csv"], 5, ["exists.csv", "--overwrite"]),
        "no sample": (["estimate", run_dir], 2, ["no review sample", "--sample"]),
        "bad recall": (["estimate", run_dir, "--recall", "kiln=high"], 2, ["--recall"]),
        "bad sample": (["estimate", run_dir, "--sample", "0"], 2, ["--sample"]),
    }
    with ThreadPoolExecutor(4) as pool:
        procs = dict(zip(cases, pool.map(lambda c: _run(*c[0]), cases.values()), strict=True))
    for name, (_, code, needles) in cases.items():
        p = procs[name]
        assert p.returncode == code, (name, p.stderr)
        assert p.stdout == "", name
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sitewatch"), (name, p.stderr)
        for n in needles:
            assert n in lines[0], (name, lines[0])
    assert (tmp_path / "exists.csv").read_text() == "x"
    assert CandidateStore.in_run_dir(run_dir).reviews() == []


def test_review_export_and_estimate_from_the_command_line(run_dir, tmp_path):
    p = _run("review", run_dir, "--site", "kiln-000003", "--status", "confirmed", "--reviewer", "ana", "--note", "stack")
    assert p.returncode == 0 and p.stdout.startswith("kiln-000003: confirmed by ana"), p.stderr
    p = _run("sites", run_dir, "--status", "confirmed")
    assert p.returncode == 0 and p.stdout.splitlines()[0].startswith("kiln-000003  kiln  confirmed")
    assert p.stdout.splitlines()[-1] == "1 site(s)"

    p = _run("export", run_dir, "--status", "confirmed", "--out", tmp_path / "labels.geojson")
    assert p.returncode == 0 and "1 site(s)" in p.stdout
    (feature,) = json.loads((tmp_path / "labels.geojson").read_text())["features"]
    assert feature["properties"]["note"] == "stack" and feature["geometry"]["type"] == "Polygon"
    p = _run("export", run_dir, "--class", "kiln", "--format", "csv", "--out", tmp_path / "kilns.txt")
    assert p.returncode == 0 and len((tmp_path / "kilns.txt").read_text().splitlines()) == 13

    p = _run("estimate", run_dir, "--sample", "8", "--seed", "4", "--class", "kiln")
    assert p.returncode == 0, p.stderr
    assert "kiln: sampled 8 of 12 sites in 4 score strata (seed 4)" in p.stdout
    sample = CandidateStore.in_run_dir(run_dir).sample("kiln")
    listed = _run("sites", run_dir, "--sample").stdout.splitlines()[:-1]
    assert sorted(line.split()[0] for line in listed) == sorted(m.site_id for m in sample)
    store = CandidateStore.in_run_dir(run_dir)
    for m in sample:  # truth: kilns scoring at least 0.6 are real
        store.review(m.site_id, "confirmed" if store.site(m.site_id).max_score >= 0.6 else "rejected", "ben")
    p = _run("estimate", run_dir, "--recall", "0.9", "--recall-se", "0.05")
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith("kiln"))
    assert row.split()[1:3] == ["12", "8"] and "missed" in p.stdout
    doc = json.loads((run_dir / "estimate.json").read_text())
    kiln = doc["classes"]["kiln"]
    assert kiln["low"] <= 6 <= kiln["high"] and kiln["with_missed"]["estimate"] == pytest.approx(kiln["estimate"] / 0.9)


@pytest.mark.parametrize("command", ["sites", "review", "export", "estimate"])
def test_help_documents_every_option(command):
    from sitewatch.cli import cli

    p = _run(command, "--help")
    assert p.returncode == 0 and p.stdout.startswith(f"Usage: sitewatch {command} [OPTIONS] DIR")
    cmd: click.Command = cli.commands[command]
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, param.name
            for opt in param.opts:
                assert opt in p.stdout, opt


def test_sites_check_passes_a_clean_store_and_names_edited_sites(run_dir):
    from sitewatch.imagery.candidates.gpkg import connect as gpkg_connect
    from sitewatch.imagery.candidates.store import AUDIT_TRIGGERS

    assert _run("review", run_dir, "--site", "kiln-000001", "--status", "rejected", "--reviewer", "ana").returncode == 0
    ok = _run("sites", run_dir, "--check")
    assert ok.returncode == 0 and "13 site(s); every status is its last review" in ok.stdout
    with gpkg_connect(run_dir / "candidates.gpkg") as con:  # someone (in QGIS, say) drops the triggers and edits
        for name in AUDIT_TRIGGERS:
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE sites SET status = 'confirmed' WHERE site_id = 'kiln-000001'")
    bad = _run("sites", run_dir, "--check")
    assert bad.returncode == 3
    assert bad.stdout.splitlines() == ["site kiln-000001: status 'confirmed' but its last review says 'rejected' "
                                       f"by ana at {CandidateStore(run_dir / 'candidates.gpkg').reviews()[0].time}"]
    assert len(bad.stderr.splitlines()) == 1 and "re-review" in bad.stderr
    for args in (("export", run_dir, "--out", run_dir / "x.geojson"), ("estimate", run_dir)):
        r = _run(*args)
        assert r.returncode == 3 and len(r.stderr.splitlines()) == 1 and "sites DIR --check" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (run_dir / "x.geojson").exists()
