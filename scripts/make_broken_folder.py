#!/usr/bin/env python
"""Write a folder of good and broken scenes, to try ``sitewatch detect`` on as a new user would.

    python scripts/make_broken_folder.py /tmp/broken
    sitewatch detect /tmp/broken --model demo --out /tmp/broken-run

The two good scenes (``good-*.tif``) are seeded synthetic Sentinel-2-like scenes with planted
vessels and kilns, as the demo makes. Every other file is broken in one way (see
:data:`BROKEN`). Expected: one ``sitewatch: error: scene failed: FILE: reason`` line per
broken file, a warning for the coarse scene, detections for the good scenes in
``/tmp/broken-run``, ``run.json`` listing each failure, and exit code 6.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from sitewatch.imagery.synthetic.sentinel2 import make_scene

UTM = "EPSG:32633"
GRID = Affine(10, 0, 500_000, 0, -10, 4_800_000)

#: File name -> what is wrong with it.
BROKEN = {
    "notes.tif": "not a raster (text)",
    "empty.tif": "zero bytes",
    "truncated.tif": "a GeoTIFF cut at 60% of its bytes",
    "damaged.tif": "header intact, compressed tiles overwritten",
    "nocrs.tif": "no CRS",
    "notransform.tif": "no geotransform",
    "rotated.tif": "rotated geotransform",
    "complex.tif": "complex64 pixels",
    "two-bands.tif": "two bands for a four-band model",
    "coarse.tif": "30 m pixels for a 10 m model (runs, with a warning)",
    "all-nodata.tif": "every pixel nodata (runs: zero detections)",
}


def _write(path: Path, data: np.ndarray, crs: str | None = UTM, transform: Affine | None = GRID,
           nodata: float | None = None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}
    if crs:
        profile["crs"] = crs
    if transform:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def make_folder(folder: Path, seed: int = 0) -> None:
    """Write the good and broken scenes into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def noise(bands: int = 4, side: int = 256, dtype: str = "uint16") -> np.ndarray:
        return (rng.random((bands, side, side)) * 1000 + 100).astype(dtype)

    for k in range(2):
        make_scene(folder / f"good-{k + 1}.tif", seed=seed + k, width=512, height=512, n_vessels=8, n_kilns=6)
    (folder / "notes.tif").write_text("field notes, not a raster\n")
    (folder / "empty.tif").write_bytes(b"")
    trunc = _write(folder / "truncated.tif", noise(side=512))
    trunc.write_bytes(trunc.read_bytes()[: int(trunc.stat().st_size * 0.6)])
    damaged = _write(folder / "damaged.tif", noise(side=512))
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8000] = b"\xab" * 8000
    damaged.write_bytes(bytes(raw))
    _write(folder / "nocrs.tif", noise(), crs=None)
    _write(folder / "notransform.tif", noise(), transform=None)
    _write(folder / "rotated.tif", noise(), transform=Affine(10, 2, 500_000, 2, -10, 4_800_000))
    _write(folder / "complex.tif", noise().astype("complex64"))
    _write(folder / "two-bands.tif", noise(bands=2))
    _write(folder / "coarse.tif", noise(), transform=Affine(30, 0, 500_000, 0, -30, 4_800_000))
    _write(folder / "all-nodata.tif", np.zeros((4, 256, 256), "uint16"), nodata=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    make_folder(args.folder, args.seed)
    print(f"wrote 2 good scenes and {len(BROKEN)} broken ones to {args.folder}:")
    for name, what in BROKEN.items():
        print(f"  {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
