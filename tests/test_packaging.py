"""What ``pip install sitewatch`` puts into an environment: one import name, ``sitewatch``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_sitewatch_with_its_data(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("sitewatch-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sitewatch"}  # no top-level `imagery` or `training` to collide with a user's modules
    for expected in ("sitewatch/imagery/detect/pipeline.py", "sitewatch/training/run.py", "sitewatch/cli.py",
                     "sitewatch/imagery/review/static/review.js", "sitewatch/imagery/detect/static/map.html",
                     "sitewatch/imagery/weights/vessels-s2/model.pt", "sitewatch/imagery/weights/vessels-s2/config.yaml",
                     "sitewatch/imagery/weights/kilns-s2/model.pt", "sitewatch/imagery/weights/kilns-s2/model_card.md",
                     # the vendored Leaflet, its licence and images, and the maps' shared layers
                     "sitewatch/imagery/webmap/static/leaflet/leaflet.js",
                     "sitewatch/imagery/webmap/static/leaflet/leaflet.css",
                     "sitewatch/imagery/webmap/static/leaflet/LICENSE",
                     "sitewatch/imagery/webmap/static/leaflet/images/layers.png",
                     "sitewatch/imagery/webmap/static/maplayers.js", "sitewatch/imagery/webmap/static/maplayers.css"):
        assert expected in names
    # every module of the source tree is in the wheel, under its installed name
    for folder, prefix in (("imagery", "sitewatch/imagery"), ("training", "sitewatch/training")):
        for path in (ROOT / folder).rglob("*.py"):
            assert f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}" in names
