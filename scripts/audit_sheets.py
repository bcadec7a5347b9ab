"""Pictures for a systematic label audit of a model's held-out detections (run by hand).

    sitewatch evaluate --model M --labels L --score-threshold 0.3 --out EVAL SCENE...
    python scripts/audit_sheets.py EVAL [EVAL ...] --out audit/

Every detection of the evaluations that matched no label (their false_positives.geojson,
so every candidate at or above the threshold they were run with) becomes a numbered
chip: 32 x 32 pixels of natural colour, 4x enlarged, the candidate at the magenta cross.
The chips go on contact sheets (audit/sheet-NN.png) and into audit/candidates.geojson
(a Point per candidate, number and score, "decision": null). A second set of pictures
(audit/panel-SCENE-N.png) covers each scene's water for the open-water pass: every
detection at or above the threshold is ringed magenta, every missed label green, so a
vessel with no ring is one the labels and the model both left out.

The auditor writes each candidate's decision ("vessel", "unsure" or "not_vessel") into
candidates.geojson, adds the open-water finds as Points with "decision": "vessel", and
then

    python scripts/audit_sheets.py --added audit/candidates.geojson --out added.geojson

writes the "vessel" decisions as labels (class "vessel"), to pass to `sitewatch
evaluate` as a second --labels file beside the published ones. docs/audits/README.md
is the audit made this way for sen2ships, with its rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sitewatch.imagery.errors import SitewatchError
from sitewatch.imagery.scenes.georef import from_lonlat, map_to_pixel
from sitewatch.imagery.scenes.scene import Scene, SceneReader, open_scene

CHIP_PX = 32
ZOOM = 4
PER_SHEET = 48
COLUMNS = 8
PANEL_PX = 800
PANEL_OUT_PX = 1100
RGB = ("B04", "B03", "B02")


def _centre(feature: dict[str, Any]) -> tuple[float, float]:
    ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=float)[:-1]  # the ring repeats its first corner
    return float(ring[:, 0].mean()), float(ring[:, 1].mean())


def _natural_colour(scene: Scene) -> np.ndarray:
    """The scene in natural colour, one stretch for all three bands and the whole scene.

    A bright-end stretch (1st to 99.5th percentile, gamma 0.6) keeps water alike in every
    chip and small boats visible against it; quick-looks' per-band 2-98% stretch makes
    open water nearly black.
    """
    with SceneReader(scene) as reader:
        data, valid = reader.read(0, 0, scene.width, scene.height)
    rgb = np.moveaxis(data.astype(np.float32), 0, -1)
    ok = valid & np.isfinite(rgb).all(axis=-1)
    if not ok.any():
        return np.zeros(rgb.shape, dtype=np.uint8)
    lo, hi = np.percentile(rgb[ok], (1, 99.5))
    scaled = np.clip((rgb - lo) / max(float(hi - lo), 1e-12), 0, 1) ** 0.6
    out = np.rint(np.nan_to_num(scaled) * 255).astype(np.uint8)
    out[~ok] = 0
    return out


def _pixels(scene: Scene, lonlat: np.ndarray) -> np.ndarray:
    xs, ys = from_lonlat(scene.crs_wkt, lonlat[:, 0], lonlat[:, 1])
    cols, rows = map_to_pixel(scene.affine, xs, ys)
    return np.column_stack([cols, rows])


def _chip(image: np.ndarray, col: float, row: float) -> Image.Image:
    half = CHIP_PX // 2
    out = np.zeros((CHIP_PX, CHIP_PX, 3), dtype=np.uint8)
    r0, c0 = int(row) - half, int(col) - half
    h, w = image.shape[:2]
    rs, re, cs, ce = max(r0, 0), min(r0 + CHIP_PX, h), max(c0, 0), min(c0 + CHIP_PX, w)
    if rs < re and cs < ce:
        out[rs - r0:re - r0, cs - c0:ce - c0] = image[rs:re, cs:ce]
    chip = Image.fromarray(out).resize((CHIP_PX * ZOOM, CHIP_PX * ZOOM), Image.NEAREST)
    draw, m = ImageDraw.Draw(chip), half * ZOOM
    for x0, y0, x1, y1 in ((m - 14, m, m - 7, m), (m + 7, m, m + 14, m), (m, m - 14, m, m - 7), (m, m + 7, m, m + 14)):
        draw.line((x0, y0, x1, y1), fill=(255, 0, 255), width=2)
    return chip


def _sheet(chips: list[tuple[str, Image.Image]], path: Path) -> None:
    side, caption = CHIP_PX * ZOOM, 14
    rows = (len(chips) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * (side + 4), rows * (side + caption + 4)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for k, (text, chip) in enumerate(chips):
        x, y = (k % COLUMNS) * (side + 4), (k // COLUMNS) * (side + caption + 4)
        sheet.paste(chip, (x, y + caption))
        draw.text((x + 2, y), text, fill=(255, 255, 255))
    sheet.save(path)


def _panels(scene: Scene, image: np.ndarray, rings: list[tuple[np.ndarray, tuple[int, int, int]]], out: Path) -> int:
    h, w = image.shape[:2]
    ny, nx = -(-h // PANEL_PX), -(-w // PANEL_PX)
    n = 0
    for iy in range(ny):
        for ix in range(nx):
            r0, r1, c0, c1 = iy * h // ny, (iy + 1) * h // ny, ix * w // nx, (ix + 1) * w // nx
            zoom = PANEL_OUT_PX / max(r1 - r0, c1 - c0)
            panel = Image.fromarray(image[r0:r1, c0:c1])
            panel = panel.resize((round(panel.width * zoom), round(panel.height * zoom)), Image.BILINEAR)
            draw = ImageDraw.Draw(panel)
            for xy, colour in rings:
                for col, row in xy:
                    x, y, r = (col - c0) * zoom, (row - r0) * zoom, 8
                    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour)
            panel.save(out / f"panel-{scene.name}-{n}.png")
            n += 1
    return n


def make_sheets(evals: list[Path], out: Path) -> tuple[int, int]:
    """Contact sheets, candidates.geojson and open-water panels; (candidates, panels)."""
    out.mkdir(parents=True, exist_ok=True)
    chips: list[tuple[str, Image.Image]] = []
    features: list[dict[str, Any]] = []
    n_panels = 0
    for ev in evals:
        metrics = json.loads((ev / "metrics.json").read_text())
        fps = json.loads((ev / "false_positives.geojson").read_text())["features"]
        fns = json.loads((ev / "false_negatives.geojson").read_text())["features"]
        dets = json.loads((ev / "detections" / "detections.geojson").read_text())["features"]
        threshold = float(metrics["threshold"])
        for source in metrics["inputs"]:
            scene = open_scene(source, RGB)
            image = _natural_colour(scene)
            mine = sorted((f for f in fps if f["properties"]["scene"] == scene.name),
                          key=lambda f: -f["properties"]["score"])
            if mine:
                lonlat = np.array([_centre(f) for f in mine])
                xy = _pixels(scene, lonlat)
                for f, (lon, lat), (col, row) in zip(mine, lonlat, xy, strict=True):
                    k, score = len(features), float(f["properties"]["score"])
                    chips.append((f"{k} {scene.name[:4]} {score:.2f}", _chip(image, col, row)))
                    features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [
                        round(float(lon), 7), round(float(lat), 7)]}, "properties": {
                        "candidate": k, "scene": scene.name, "score": round(score, 3), "decision": None}})
            shown = [f for f in dets if f["properties"]["scene"] == scene.name and f["properties"]["score"] >= threshold]
            missed = [f for f in fns if f["properties"].get("scene") == scene.name]
            rings = [(_pixels(scene, np.array([_centre(f) for f in group])), colour)
                     for group, colour in ((shown, (255, 0, 255)), (missed, (0, 255, 0))) if group]
            n_panels += _panels(scene, image, rings, out)
    for s in range(0, len(chips), PER_SHEET):
        _sheet(chips[s:s + PER_SHEET], out / f"sheet-{s // PER_SHEET:02d}.png")
    (out / "candidates.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    return len(features), n_panels


def added_labels(decided: Path, out: Path) -> int:
    """Write the "vessel" decisions of ``decided`` as labels (class "vessel"); their count."""
    features = json.loads(decided.read_text())["features"]
    undecided = [f["properties"].get("candidate") for f in features if f["properties"].get("decision") is None]
    if undecided:
        raise ValueError(f"{len(undecided)} candidates have no decision yet (first: {undecided[0]}); "
                         "decide each as vessel, unsure or not_vessel")
    vessels = [{**f, "properties": {**f["properties"], "class": "vessel"}}
               for f in features if f["properties"]["decision"] == "vessel"]
    out.write_text(json.dumps({"type": "FeatureCollection", "features": vessels}, indent=1))
    return len(vessels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="*", type=Path, help="`sitewatch evaluate` output directories")
    ap.add_argument("--out", type=Path, required=True, help="directory of the pictures (or, with --added, a file)")
    ap.add_argument("--added", type=Path, help="a decided candidates.geojson: write its vessels to --out")
    args = ap.parse_args()
    if args.added is not None:
        try:
            print(f"{added_labels(args.added, args.out)} vessels written to {args.out}")
        except ValueError as exc:  # undecided candidates, or not JSON
            print(f"audit_sheets: {args.added}: {exc}", file=sys.stderr)
            return 2
        except (OSError, KeyError, TypeError) as exc:
            print(f"audit_sheets: {args.added}: cannot read its decisions ({exc!r}); give the candidates.geojson "
                  "this script wrote, each with a decision", file=sys.stderr)
            return 2
        return 0
    if not args.evals:
        ap.error("give evaluation directories, or --added")
    for ev in args.evals:
        missing = [n for n in ("metrics.json", "false_positives.geojson", "false_negatives.geojson",
                               "detections/detections.geojson") if not (ev / n).is_file()]
        if missing:
            print(f"audit_sheets: {ev}: not a `sitewatch evaluate` output directory (no {missing[0]})", file=sys.stderr)
            return 2
    try:
        n, panels = make_sheets(args.evals, args.out)
    except SitewatchError as exc:  # a scene that is gone, or has no B04, B03, B02
        print(f"audit_sheets: {exc}", file=sys.stderr)
        return 2
    print(f"{n} candidates on {-(-n // PER_SHEET)} sheets and {panels} open-water panels in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
