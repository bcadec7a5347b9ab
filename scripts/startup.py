"""How long the light commands take to start, and how much memory an idle review server holds.

Figures, not a test. Runs the installed ``sitewatch`` command as a user would (a new process
each time) and prints the median wall time of each command and the review server's resident
memory once it answers ``/api/summary``:

    python scripts/startup.py                 # makes a demo run in a temporary directory first
    python scripts/startup.py --run demo-run  # or uses an existing run directory
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _sitewatch() -> str:
    exe = Path(sys.executable).with_name("sitewatch")
    return str(exe) if exe.exists() else (shutil.which("sitewatch") or "sitewatch")


def _time(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the CLI may re-execute itself)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return total / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def review_rss(exe: str, run: Path) -> float:
    """Resident MB of ``sitewatch review RUN`` once it answers, idle for 2 s."""
    port = _free_port()
    proc = subprocess.Popen([exe, "review", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # An old server answers /api/summary; a server with tokens answers /healthz.
                for path in ("/healthz", "/api/summary"):
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)  # noqa: S310
                        break
                    except urllib.error.HTTPError as e:
                        if e.code in (401, 403):
                            break
                else:
                    raise OSError
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(2)
        return _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run directory (default: make a demo run)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    exe = _sitewatch()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "demo-run"
            subprocess.run([exe, "demo", "--out", str(run)], check=True, stdout=subprocess.DEVNULL)
        out = Path(tmp) / "sites.geojson"
        rows = [
            ("sitewatch --help", [exe, "--help"]),
            ("sitewatch detect --help", [exe, "detect", "--help"]),
            ("sitewatch models", [exe, "models"]),
            ("sitewatch sites RUN", [exe, "sites", str(run)]),
            ("sitewatch export RUN", [exe, "export", str(run), "--out", str(out), "--overwrite"]),
        ]
        for label, cmd in rows:
            print(f"{label:<28} median of {args.repeats}: {_time(cmd, args.repeats):6.2f} s")
        print(f"{'sitewatch review RUN':<28} idle resident memory: {review_rss(exe, run):6.0f} MB")


if __name__ == "__main__":
    main()
