"""Running ``sitewatch`` commands as real processes, shared by the CLI tests.

A fresh ``python -m sitewatch.cli`` spends ~4 s of CPU importing torch before it reads a
single flag, so most cases run in a child forked from one interpreter that imported
sitewatch once (:func:`run_forked`): each case is still its own process with its own exit
code, stdout and stderr, entered through the same ``sitewatch.cli.main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

SITEWATCH = [sys.executable, "-m", "sitewatch.cli"]
CLASSES = ("vessel", "kiln")
#: Scene grids: UTM 33N near 15 E / 43.35 N, and UTM 19S near -71 E / -23.5 N (signs differ).
NORTH = ("EPSG:32633", Affine(10, 0, 500_000, 0, -10, 4_800_000))
SOUTH = ("EPSG:32719", Affine(10, 0, 300_000, 0, -10, 7_400_000))
# Two workers: torch then runs one thread per task, which stays fast beside other busy processes.
FAST = ["--tile-size", "32", "--overlap", "8", "--workers", "2"]


def geotiff(
    path: Path, data: np.ndarray, grid: tuple[str | None, Affine | None] = NORTH, nodata: float | None = None
) -> Path:
    """Write a tiled DEFLATE GeoTIFF; the module fixture needs rasters before any test runs,
    so it cannot use the function-scoped ``make_geotiff``."""
    crs, transform = grid
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
        "compress": "deflate",
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def noise(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((bands, height, width)) * 1000 + 100).astype("uint16")


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (hidden ones included) with its bytes; ``None`` for directories."""
    return {str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes()) for p in sorted(path.rglob("*"))}


@dataclass
class Case:
    """One CLI invocation and what to check about it."""

    args: list[str]
    parent: Path
    code: int = 0
    names: tuple[str, ...] = ()
    before: dict[str, bytes | None] = field(default_factory=dict)
    proc: subprocess.CompletedProcess[str] | None = None
    inputs: dict[str, Path] = field(default_factory=dict)
    fresh: bool = False  # a fresh interpreter rather than a fork of the preloaded one


#: Runs each case of a JSON list in a forked child of this (preloaded) interpreter, as
#: ``python -m sitewatch.cli`` would: ``main(argv)``, then exit with its status, a
#: traceback on stderr for an uncaught exception. Prints the exit codes as JSON.
_FORK_RUNNER = r"""
import json, os, sys, traceback
from sitewatch.cli import main
import sitewatch.imagery.detect.pipeline, sitewatch.imagery.detect.report  # the costly imports, paid once

cases = json.load(sys.stdin)
pids = []
for case in cases:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            f = os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
        try:
            main(case["args"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    pids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
"""

# A short connect timeout so that the unreachable --scheduler case fails in 1 s, not 30.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}


def run_forked(cases: list[Case], scratch: Path) -> None:
    jobs = []
    for k, case in enumerate(cases):
        out, err = scratch / f"{k}.out", scratch / f"{k}.err"
        jobs.append({"args": case.args, "cwd": str(case.parent), "stdout": str(out), "stderr": str(err)})
    runner = subprocess.run(
        [sys.executable, "-c", _FORK_RUNNER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    # The shared imports must be silent too: a warning there would be a second stderr line.
    assert runner.returncode == 0 and runner.stderr == "", runner.stderr
    for case, job, code in zip(cases, jobs, json.loads(runner.stdout), strict=True):
        case.proc = subprocess.CompletedProcess(
            [*SITEWATCH, *case.args], code, Path(job["stdout"]).read_text(), Path(job["stderr"]).read_text()
        )


def run_fresh(case: Case) -> None:
    case.proc = subprocess.run(
        [*SITEWATCH, *case.args], cwd=case.parent, capture_output=True, text=True, timeout=300, env=ENV
    )


