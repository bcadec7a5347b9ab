"""Write a synthetic high-resolution RGB brick-kiln data set (train and test splits).

    python scripts/make_kilns_highres.py --out data/kilns-synth
    sitewatch train --config configs/kilns-highres.yaml --images 'data/kilns-synth/train/*.tif' \
        --labels data/kilns-synth/train-labels.geojson --out models/kilns-synth

Writes OUT/train/*.tif, OUT/test/*.tif (3-band uint8 GeoTIFFs, ~1 m pixels, UTM 44N) and
OUT/train-labels.geojson, OUT/test-labels.geojson (one lon/lat FeatureCollection of kiln
outlines per split, property ``class: kiln``). Train and test scenes use different seeds,
and no two scenes overlap on the ground (a label goes to every scene that holds it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affine import Affine  # noqa: E402

from sitewatch.imagery.errors import SitewatchError  # noqa: E402
from sitewatch.imagery.synthetic.highres import kilns_to_geojson, make_rgb_kiln_scene, scene_transform  # noqa: E402

CRS = "EPSG:32644"
# Seeds of split k start at base * SEED_STRIDE + k * SPLIT_STRIDE, so the splits never share one.
SEED_STRIDE = 100_000
SPLIT_STRIDE = 50_000


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _overlaps(box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder (created).")
    parser.add_argument("--train", type=int, default=15, help="Training scenes (default 15).")
    parser.add_argument("--test", type=int, default=12, help="Test scenes (default 12).")
    parser.add_argument("--size", type=int, default=1024, help="Scene side in pixels (default 1024).")
    parser.add_argument("--pixel-m", type=float, default=1.0, help="Pixel side in metres (default 1).")
    parser.add_argument("--seed", type=int, default=0, help="Base seed (default 0).")
    args = parser.parse_args(argv)
    if args.train < 0 or args.test < 0:
        parser.error("--train and --test must not be negative")

    footprints: list[tuple[float, float, float, float]] = []
    start = time.perf_counter()
    try:
        for k, (split, count) in enumerate((("train", args.train), ("test", args.test))):
            folder = args.out / split
            folder.mkdir(parents=True, exist_ok=True)
            features: list[dict] = []
            n_cut = 0
            seed = args.seed * SEED_STRIDE + k * SPLIT_STRIDE
            for i in range(count):
                path = folder / f"kilns-{split}-{i:03d}.tif"
                transform = scene_transform(seed, args.size, args.size, args.pixel_m)
                box = _bounds(transform, args.size, args.size)
                while _overlaps(box, footprints):  # rare: ~1 in 100 data sets
                    print(f"  seed {seed} overlaps an earlier scene on the ground; trying the next seed")
                    seed += 1
                    transform = scene_transform(seed, args.size, args.size, args.pixel_m)
                    box = _bounds(transform, args.size, args.size)
                footprints.append(box)
                kilns = make_rgb_kiln_scene(path, seed, args.size, args.size, pixel_m=args.pixel_m, crs=CRS)
                seed += 1
                fc = kilns_to_geojson(kilns, transform, CRS)
                for feature in fc["features"]:
                    feature["id"] = len(features)
                    feature["properties"]["image"] = path.name
                    features.append(feature)
                n_cut += sum(kiln.cut for kiln in kilns)
                print(f"  {split}/{path.name}: seed {seed - 1}, {len(kilns)} kilns")
            labels = args.out / f"{split}-labels.geojson"
            labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}) + "\n")
            print(f"{split}: {count} scenes, {len(features)} kilns ({n_cut} cut by the scene edge) -> {labels}")
    except (SitewatchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
