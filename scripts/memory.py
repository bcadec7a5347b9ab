#!/usr/bin/env python
"""Peak resident memory of ``sitewatch detect`` on a small and a large scene.

The goal: peak memory does not grow with scene size (a 20,000 x 20,000 x 4-band uint16
scene within 1.3x the peak of a 2,000 x 2,000 one). For each ``--sizes`` entry the script
writes a seeded synthetic 4-band uint16 GeoTIFF (tiled 256 x 256, DEFLATE; mostly water,
a strip of land, a few bright vessel-like blobs; written one block row at a time, never
whole in memory: see ``scripts/benchmark.py``), then runs

    sitewatch detect FILE --model MODEL --out DIR --overwrite

as a child process (the ``sitewatch`` beside this Python) and reports

* peak RSS of the process tree: psutil samples the sum over the child and all its
  descendants every ``--interval`` seconds (a spike shorter than that can be missed);
* ``ru_maxrss`` of that child from ``os.wait4`` (the kernel's exact high-water mark of the
  largest single process, descendants it waited for included), and
  ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the same over every child so far);
* wall time and the tiles of the run (from its ``run.json``).

The last line is ``peak_rss_ratio_20k_vs_2k R``: the largest scene's tree peak over the
smallest's (names follow ``--sizes``).

The child inherits this environment (``--allocator tuned`` sets the glibc settings that
``scripts/benchmark.py`` uses); it is printed with the results.

    python scripts/memory.py                          # 2,000² and 20,000²
    python scripts/memory.py --keep /data/memscenes   # write the scenes there once, reuse them
    python scripts/memory.py --sizes 500,1500         # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import TUNED_ALLOCATOR, cpu_model, print_progress, scene_matches, write_synthetic_scene  # noqa: E402

SEED = 0
VESSELS_PER_MPX = 4.0


def size_label(size: int) -> str:
    """20000 -> ``20k``, 2000 -> ``2k``, 1500 -> ``1500``."""
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        psutil = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_procs = total, len(procs)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(cmd: list[str], env: dict[str, str], interval: float, log: Path) -> dict[str, float | int]:
    """Run ``cmd``; returns its exit code, wall time, tree peak RSS and ru_maxrss (bytes)."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        # wait4 gives this child's own rusage; the sampler keeps polling until it has been reaped.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall": wall,
        "tree_peak": sampler.peak,
        "tree_procs": sampler.peak_procs,
        "samples": sampler.samples,
        "ru_maxrss": usage.ru_maxrss * 1024,  # KiB on Linux
        "children_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,20000", help="scene sides in pixels, comma-separated (default 2000,20000)")
    p.add_argument("--model", default="vessels-s2")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the scenes (and runs) into this directory and reuse scenes already there")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples (default 0.1)")
    p.add_argument("--allocator", choices=("inherit", "tuned"), default="inherit",
                   help="inherit: the child gets this environment; tuned: add the glibc settings benchmark.py uses")
    p.add_argument("detect_args", nargs=argparse.REMAINDER,
                   help="after --: more arguments for sitewatch detect (e.g. -- --workers 2)")
    args = p.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sizes {args.sizes}: give comma-separated integers")
    if not sizes or min(sizes) < 64:
        p.error("--sizes: at least one size, each at least 64")
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("psutil is needed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    exe = Path(sys.executable).with_name("sitewatch")
    if not exe.exists():
        print(f"{exe}: no sitewatch beside this Python; pip install -e . into its environment", file=sys.stderr)
        return 2
    extra = [a for a in args.detect_args if a != "--"]

    env = dict(os.environ)
    if args.allocator == "tuned":
        env.update({k: v for k, v in TUNED_ALLOCATOR.items() if k not in env})
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB")
    print("child environment: " + " ".join(f"{k}={env.get(k, '(unset)')}" for k in (*TUNED_ALLOCATOR, "GDAL_CACHEMAX")))

    tmp = tempfile.TemporaryDirectory(prefix="sitewatch-mem-")
    root = args.keep or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for size in sizes:
            scene = root / f"memscene-{size}.tif"
            if scene_matches(scene, size, SEED, VESSELS_PER_MPX):
                print(f"\n{size_label(size)}: reusing {scene}")
            else:
                print(f"\n{size_label(size)}: writing {scene} ({size} x {size} x 4 uint16, "
                      f"{size * size * 8 / 2**20:,.0f} MiB raw)", flush=True)
                t0 = time.perf_counter()
                write_synthetic_scene(scene, size, seed=SEED, vessels_per_mpx=VESSELS_PER_MPX,
                                      progress=print_progress("written"))
                print(f"  {scene.stat().st_size / 2**20:,.0f} MiB on disk in {time.perf_counter() - t0:.0f} s")
            out = root / f"run-{size}"
            cmd = [str(exe), "detect", str(scene), "--model", args.model, "--out", str(out), "--overwrite", *extra]
            print(f"  running: {' '.join(cmd)}", flush=True)
            log = root / f"run-{size}.log"
            r = measure(cmd, env, args.interval, log)
            if r["rc"] != 0:
                print(f"  sitewatch detect failed (exit {r['rc']}); its output:\n{log.read_text()[-3000:]}", file=sys.stderr)
                return 1
            run = json.loads((out / "run.json").read_text())
            r["tiles"] = run.get("tiles", {}).get("total", 0)
            r["detections"] = run.get("detections", "?")
            results[size] = r
            print(f"  wall {r['wall']:.1f} s, {r['tiles']} tiles ({r['tiles'] / r['wall']:.1f} tiles/s); "
                  f"peak RSS: tree {mib(r['tree_peak'])} ({r['tree_procs']} processes, {r['samples']} samples), "
                  f"wait4 ru_maxrss {mib(r['ru_maxrss'])}, RUSAGE_CHILDREN so far {mib(r['children_maxrss'])}", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        tmp.cleanup()

    print("\nsize        tiles   wall s   tree peak RSS   ru_maxrss (wait4)")
    for size, r in results.items():
        print(f"{size:>6} px {r['tiles']:>7} {r['wall']:>8.1f} {mib(r['tree_peak']):>15} {mib(r['ru_maxrss']):>19}")
    small, big = min(results), max(results)
    ratio = results[big]["tree_peak"] / results[small]["tree_peak"]
    ratio_ru = results[big]["ru_maxrss"] / results[small]["ru_maxrss"]
    print(f"goal: peak at {size_label(big)} within 1.3x the peak at {size_label(small)}; "
          f"ru_maxrss ratio {ratio_ru:.3f}")
    print(f"peak_rss_ratio_{size_label(big)}_vs_{size_label(small)} {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
