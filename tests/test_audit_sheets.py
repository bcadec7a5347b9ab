"""scripts/audit_sheets.py: the label-audit round trip on the demo scene.

Labels with objects left out make the demo model's finds of those objects false positives;
the audit pictures them, and its "vessel" decisions, given back to `sitewatch evaluate`
as a second label file, turn them into true positives again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sitewatch.cli import main
from sitewatch.imagery.models.registry import shipped_models
from tests.scriptload import load_script


def _evaluate(demo: Path, labels: list[Path], out: Path) -> dict:  # type: ignore[type-arg]
    args = ["evaluate", "--model", "demo", "--primary", "distance", "--distance-m", "30", "--out", str(out),
            "--workers", "2"]
    for path in labels:
        args += ["--labels", str(path)]
    main([*args, str(demo / "demo-scene.tif")])
    return json.loads((out / "metrics.json").read_text())["per_class"]["vessel"]["distance"]


@pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")
def test_audit_pictures_candidates_and_its_vessels_become_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    audit = load_script("audit_sheets")
    demo = tmp_path / "demo"
    main(["demo", "--out", str(demo), "--workers", "2"])
    # the published labels leave out every other vessel (kilns are left as they are)
    full = json.loads(next(demo.glob("demo-tr*.geojson")).read_text())
    vessels = [f for f in full["features"] if f["properties"]["class"] == "vessel"]
    left_out = vessels[1::2]
    partial = {**full, "features": [f for f in full["features"] if f not in left_out]}
    published = tmp_path / "published.geojson"
    published.write_text(json.dumps(partial))

    before = _evaluate(demo, [published], tmp_path / "eval")
    assert before["fp"] >= len(left_out) - 1 and before["tp"] == len(vessels) - len(left_out), before

    pictures = tmp_path / "audit"
    n, panels = audit.make_sheets([tmp_path / "eval"], pictures)
    candidates = json.loads((pictures / "candidates.geojson").read_text())["features"]
    fps = json.loads((tmp_path / "eval" / "false_positives.geojson").read_text())["features"]
    assert n == len(candidates) == len(fps) > 0 and panels >= 1
    sheets = sorted(pictures.glob("sheet-*.png"))
    assert len(sheets) == -(-n // audit.PER_SHEET)
    with Image.open(sheets[0]) as im:
        assert im.width == audit.COLUMNS * (audit.CHIP_PX * audit.ZOOM + 4)
    assert all(f["properties"]["decision"] is None for f in candidates)

    # an undecided candidate is refused in one line, and nothing is written
    added = tmp_path / "added.geojson"
    capsys.readouterr()
    sys_argv = ["audit_sheets.py", "--added", str(pictures / "candidates.geojson"), "--out", str(added)]
    monkeypatch.setattr("sys.argv", sys_argv)
    assert audit.main() == 2
    err = capsys.readouterr().err
    assert "have no decision yet" in err and len(err.strip().splitlines()) == 1, err
    assert not added.exists()
    # a directory that is not an evaluation's is named in one line
    monkeypatch.setattr("sys.argv", ["audit_sheets.py", str(demo), "--out", str(tmp_path / "more")])
    assert audit.main() == 2
    err = capsys.readouterr().err
    assert str(demo) in err and "not a `sitewatch evaluate` output directory" in err and len(err.splitlines()) == 1

    # the auditor calls every candidate a vessel: each left-out vessel is found again
    for f in candidates:
        f["properties"]["decision"] = "vessel"
    decided = tmp_path / "decided.geojson"
    decided.write_text(json.dumps({"type": "FeatureCollection", "features": candidates}))
    assert audit.added_labels(decided, added) == n
    after = _evaluate(demo, [published, added], tmp_path / "eval-audited")
    assert after["fp"] == 0 and after["tp"] == before["tp"] + before["fp"], (before, after)
    assert after["labels"] == before["labels"] + n
