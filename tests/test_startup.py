"""Only commands that run models import torch: the others start in a fraction of a second.

Each case is a fresh interpreter that runs one ``sitewatch`` command through
``sitewatch.cli.main`` and then reports which heavy modules it imported. Timings live in
``scripts/startup.py`` (figures, not a test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_review_run

#: Modules that cost seconds to import and only model commands need.
HEAVY = ("torch", "torchvision", "onnxruntime", "onnx")

_PROBE = """
import json, sys
from sitewatch.cli import main
sys.argv = ["sitewatch", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY_NAMES if m in sys.modules)}), file=sys.stderr)
""".replace("HEAVY_NAMES", repr(list(HEAVY)))


def probe(args: list[str]) -> dict[str, object]:
    """Run ``sitewatch ARGS`` in a fresh interpreter; its exit code and the heavy modules it imported."""
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    return json.loads(r.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("startup"))


def test_the_probe_sees_torch_when_a_command_imports_it(run_dir: Path, tmp_path: Path) -> None:
    """The check can fail: a model command (detect) does import torch."""
    out = probe(["detect", str(run_dir / "quicklooks"), "--model", "demo", "--out", str(tmp_path / "r")])
    assert "torch" in out["heavy"]


@pytest.mark.parametrize("args", [
    ["--help"],
    ["detect", "--help"],
    ["train", "--help"],
    ["detect", "--model", "demo", "--out", "x", "--tile-size", "nine", "s.tif"],  # a flag error
    ["models"],
    ["sites", "{run}"],
    ["export", "{run}", "--out", "{tmp}/sites.geojson"],
    ["export", "{run}", "--out", "{tmp}/sites.csv"],
    ["estimate", "{run}", "--sample", "4", "--seed", "1"],
    ["review", "{run}", "--site", "{site}", "--status", "confirmed", "--reviewer", "ana"],
])
def test_light_commands_never_import_torch(args: list[str], run_dir: Path, tmp_path: Path) -> None:
    from sitewatch.imagery.candidates.store import CandidateStore

    site = next(iter(CandidateStore.in_run_dir(run_dir).sites())).site_id
    args = [a.format(run=run_dir, tmp=tmp_path, site=site) for a in args]
    out = probe(args)
    assert out["heavy"] == [], f"sitewatch {' '.join(args)} imported {out['heavy']}"
    assert out["code"] in (0, 2, None)


def test_the_review_server_never_imports_torch(run_dir: Path) -> None:
    code = (
        "import sys\n"
        "from sitewatch.imagery.review.server import make_server\n"
        f"server = make_server({str(run_dir)!r}, '127.0.0.1', 0)\n"
        "server.app.summary(); server.server_close()\n"
        f"print(sorted(m for m in {list(HEAVY)!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
