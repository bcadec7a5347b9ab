"""Latency and memory of the review API's list on a large store.

    python scripts/review_bench.py --sites 100000 --store /tmp/bench100k

Builds (once, then reuses) a store of N kiln sites through the store's own API, serves it
with the real review server in a child process, asks ``GET /api/sites?limit=50`` (sorted by
score, and by uncertainty) ``--repeats`` times, and prints the median latency and the server
process's peak resident memory (VmHWM) after the requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sitewatch.imagery.candidates.store import CandidateStore, Detection, RunInfo, SceneInfo

SERVE = """
import sys
from sitewatch.imagery.review.server import make_server
server = make_server(sys.argv[1], port=0)
print(server.server_address[1], server.secret, flush=True)
server.serve_forever()
"""


def build(run: Path, n: int) -> None:
    """A run directory with ``n`` kiln sites on a grid (one detection each), in scenes of 20,000."""
    run.mkdir(parents=True, exist_ok=True)
    store = CandidateStore.create(run / "candidates.gpkg")
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    for start in range(0, n, 20_000):
        dets = []
        for i in range(start, min(n, start + 20_000)):
            lon, lat = 88.0 + 0.003 * (i % side), 22.0 + 0.003 * (i // side)
            d = 0.0001
            ring = ((lon - d, lat - d), (lon + d, lat - d), (lon + d, lat + d), (lon - d, lat + d), (lon - d, lat - d))
            dets.append(Detection(f"s{start}", "kiln", float(rng.uniform(0.05, 1.0)), lon, lat, ring))
        lons, lats = [x.lon for x in dets], [x.lat for x in dets]
        scene = SceneInfo(f"s{start}", f"/data/s{start}.tif", None, 100, 100, (min(lons), min(lats), max(lons), max(lats)))
        run_info = RunInfo("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "bench", "1",
                           {"model": {"spec": {"classes": ["kiln"], "score_threshold": 0.5}}})
        store.add_detections(run_info, [scene], dets)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--store", type=Path, required=True, help="run directory to build or reuse")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if not (args.store / "candidates.gpkg").exists():
        t = time.perf_counter()
        build(args.store, args.sites)
        print(f"built {args.sites} sites in {time.perf_counter() - t:.0f} s")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(args.store)], stdout=subprocess.PIPE, text=True)
    try:
        port_text, secret = proc.stdout.readline().split()  # type: ignore[union-attr]
        port = int(port_text)
        print(f"server idle: peak RSS {peak_rss_mb(proc.pid):.0f} MB")
        for sort in ("score", "uncertainty"):
            times = []
            for _ in range(args.repeats):
                con = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                t = time.perf_counter()
                con.request("GET", f"/api/sites?limit=50&sort={sort}", headers={"Authorization": f"Bearer {secret}"})
                resp = con.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"review_bench: the server answered {resp.status}: {body[:200]!r}")
                times.append(time.perf_counter() - t)
                con.close()
            doc = json.loads(body)
            print(f"GET /api/sites?limit=50&sort={sort}: {len(doc['sites'])} of {doc['total']} sites; median "
                  f"{1000 * statistics.median(times):.1f} ms (min {1000 * min(times):.1f}, max {1000 * max(times):.1f}); "
                  f"server peak RSS {peak_rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
