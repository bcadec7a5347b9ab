#!/usr/bin/env python
"""Hostile load on ``sitewatch review``: a header flood, 200 concurrent chip requests, slow clients.

    python scripts/review_flood.py                     # builds a small run in /tmp/review-flood once
    python scripts/review_flood.py --run DIR           # an existing run directory
    python scripts/review_flood.py --python /work/main/.venv/bin/python --cwd /work/main   # another checkout

Starts ``sitewatch review RUN --port 0`` as a child process (with ``--python``, from another
checkout: the figures before and after a change), reads the token from the link it prints, and:

a. **header flood**: ``--flood`` connections (200) at once, each sending a request line and
   ``--headers`` (97) header lines of ``--header-bytes`` (65,000) bytes as fast as the server
   reads them, reconnecting when the server closes, for ``--flood-s`` seconds. Meanwhile the
   server process's resident memory is sampled (psutil, every 50 ms) and a normal
   ``GET /api/summary`` is timed every 250 ms. The flooding threads run in 4 processes of their
   own at niceness ``--flood-nice`` (10), so that neither this process's GIL nor the attacker's
   CPU use (an attacker is on another machine) is what the timed request measures.
b. **chips**: ``--chips`` (200) threads released together, each one ``GET /api/sites/ID/chip.png``
   on its own connection: completed (200), refused (connection refused/reset or 503) and failed
   (anything else), their median and slowest latency, and the kernel's listen-queue drops
   (``TcpExtListenDrops`` of /proc/net/netstat, machine-wide) over the burst.
c. **slow clients**: ``--slow`` (300) connections each sending one header line every 5 s for
   ``--slow-s`` seconds: how many the server cut off, when, and the normal request's latency.
d. **safety** (first): a token-less call and a DNS-rebinding ``Host`` on loopback and on
   ``--host 0.0.0.0 --allow-host box.lan`` (a copy of the run, with reviewer tokens for flood-ana
   and flood-ben), then both reviewing at once with their own tokens, and whom the log names.

Prints one line per figure. Needs psutil (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]


def build_run(base: Path) -> Path:
    """A real detect run (demo model, two synthetic scenes of two dates), as the review tests build it."""
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect
    from sitewatch.imagery.synthetic.sentinel2 import make_scene

    run = base / "run"
    if (run / "candidates.gpkg").exists():
        return run
    scenes = base / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    paths = [scenes / "S2_20240105_coast.tif", scenes / "S2_20240220_coast.tif"]
    for p in paths:
        make_scene(p, seed=3, width=384, height=384, n_vessels=6, n_kilns=5)
    detect(paths, "demo", run, DetectSettings(workers=2))
    return run


class Server:
    """``sitewatch review RUN --port 0`` as a child process."""

    def __init__(self, python: str, cwd: Path, run: Path, extra: tuple[str, ...] = ()) -> None:
        code = "from sitewatch.cli import main; main()"
        self.proc = subprocess.Popen([python, "-c", code, "review", str(run), "--port", "0", "--reviewer", "bench",
                                      *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "http://" not in line:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"review_flood: the server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        m = re.search(r"http://([\d.]+|HOST):(\d+)/#token=(\S+)", line)
        if not m:
            raise SystemExit(f"review_flood: no link in {line!r}")
        self.host, self.port, self.token = m.group(1), int(m.group(2)), m.group(3)
        if self.host == "HOST":  # on a network address: reviewers' own tokens only
            self.host, self.token = "127.0.0.1", ""
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")

    def rss_mb(self) -> float:
        try:
            return self.ps.memory_info().rss / 2**20
        except psutil.Error:
            return float("nan")

    def threads(self) -> int:
        try:
            return self.ps.num_threads()
        except psutil.Error:
            return -1

    def get(self, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
        con = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            con.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            r = con.getresponse()
            return r.status, r.read()
        finally:
            con.close()

    def stop(self) -> str:
        self.proc.send_signal(2)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


class Probe(threading.Thread):
    """Times ``GET /api/summary`` every ``every`` seconds and samples the server's RSS every 50 ms."""

    def __init__(self, server: Server, every: float = 0.25, max_rss_mb: float = float("inf")) -> None:
        super().__init__(daemon=True)
        self.server, self.every, self.max_rss_mb = server, every, max_rss_mb
        self.killed = False
        self.latencies: list[float] = []
        self.failures = 0
        self.peak_rss = 0.0
        self.peak_threads = 0
        self.stop_event = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop_event.is_set():
            self.peak_rss = max(self.peak_rss, self.server.rss_mb())
            if self.peak_rss > self.max_rss_mb and not self.killed:  # protect the machine: stop the server
                self.killed = True
                self.server.proc.kill()
            self.peak_threads = max(self.peak_threads, self.server.threads())
            time.sleep(0.05)

    def run(self) -> None:
        self.cpu0, self.t0 = self.server.cpu_s(), time.monotonic()
        self._sampler.start()
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                status, _ = self.server.get("/api/summary", timeout=60)
                if status == 200:
                    self.latencies.append(time.monotonic() - t0)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            self.stop_event.wait(self.every)

    def finish(self) -> None:
        self.cpu = self.server.cpu_s() - self.cpu0
        self.wall = time.monotonic() - self.t0
        self.stop_event.set()
        self.join(120)
        self._sampler.join(5)

    def report(self, label: str) -> None:
        lat = sorted(self.latencies)
        med = statistics.median(lat) if lat else float("nan")
        worst = lat[-1] if lat else float("nan")
        print(f"{label}: peak_rss_mb {self.peak_rss:.0f}  peak_threads {self.peak_threads}  "
              f"server_cpu_s {self.cpu:.1f} of {self.wall:.1f} s  "
              f"summary_median_s {med:.3f}  summary_max_s {worst:.3f}  summary_ok {len(lat)}  summary_failed {self.failures}"
              + (f"  KILLED at rss > {self.max_rss_mb:.0f} MB" if self.killed else ""))


def _flood_worker(host: str, port: int, n: int, headers: int, header_bytes: int, seconds: float, out: Any,
                  nice: int) -> None:
    """One flooding process: ``n`` threads, each reconnecting and sending huge header lines."""
    import os

    os.nice(nice)  # the attacker is not what is measured: leave the server its share of the CPUs
    block = b"".join(b"X-Flood-%02d: " % i + b"a" * header_bytes + b"\r\n" for i in range(headers))
    start_line = b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    end = time.monotonic() + seconds
    stats = {"connections": 0, "answered": 0}
    lock = threading.Lock()

    def one() -> None:
        while time.monotonic() < end:
            try:
                with socket.create_connection((host, port), timeout=10) as s:
                    with lock:
                        stats["connections"] += 1
                    s.sendall(start_line)
                    view = memoryview(block)
                    while view and time.monotonic() < end:
                        sent = s.send(view[:262144])
                        view = view[sent:]
                    s.settimeout(2)
                    if s.recv(16).startswith(b"HTTP/1.1 4"):
                        with lock:
                            stats["answered"] += 1
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    out.put(stats)


def flood(server: Server, n: int, headers: int, header_bytes: int, seconds: float, procs: int = 4,
          nice: int = 10) -> None:
    """``n`` connections sending ``headers`` huge header lines each, reconnecting, for ``seconds``.

    The flooding threads run in ``procs`` other processes, so the timed request of :class:`Probe`
    does not wait for this process's GIL behind them.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=_flood_worker, args=(server.host, server.port, k, headers, header_bytes, seconds, out,
                                                               nice))
               for k in share if k]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(30)
    print(f"flood: {n} connections x {headers} headers x {header_bytes} bytes for {seconds:g} s: "
          f"{sum(r['connections'] for r in results)} connections opened, "
          f"{sum(r['answered'] for r in results)} answered 4xx")


def listen_drops() -> int:
    """The kernel's TcpExtListenDrops (machine-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenDrops", 0))
    return 0


def chips(server: Server, n: int) -> None:
    """``n`` chip requests released at once, each on its own connection."""
    status, body = server.get("/api/sites?limit=1000")
    ids = [s["id"] for s in json.loads(body)["sites"]]
    barrier = threading.Barrier(n)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        t0 = time.monotonic()
        try:
            status, body = server.get(f"/api/sites/{ids[i % len(ids)]}/chip.png?v={i}", timeout=120)
            kind = "completed" if status == 200 and body.startswith(b"\x89PNG") else \
                "refused" if status == 503 else f"failed ({status})"
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            kind = "refused"
        except OSError as exc:
            kind = f"failed ({type(exc).__name__})"
        with lock:
            results.append((kind, time.monotonic() - t0))

    drops0 = listen_drops()
    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.monotonic() - t0
    kinds: dict[str, int] = {}
    for k, _ in results:
        kinds[k] = kinds.get(k, 0) + 1
    lat = sorted(d for k, d in results if k == "completed")
    print(f"chips: {n} concurrent: completed {kinds.get('completed', 0)}  refused {kinds.get('refused', 0)}  "
          f"failed {sum(v for k, v in kinds.items() if k.startswith('failed'))} {sorted(k for k in kinds if k.startswith('failed'))}  "
          f"median_s {statistics.median(lat) if lat else float('nan'):.2f}  max_s {lat[-1] if lat else float('nan'):.2f}  "
          f"wall_s {wall:.1f}  kernel_listen_drops {listen_drops() - drops0}")


def slow(server: Server, n: int, seconds: float, every: float = 5.0) -> None:
    """``n`` connections each sending one header line every ``every`` seconds."""
    cut: list[float] = []
    held = [0]
    lock = threading.Lock()
    start = time.monotonic()

    def one(i: int) -> None:
        try:
            s = socket.create_connection((server.host, server.port), timeout=10)
        except OSError:
            return
        with s:
            try:
                s.sendall(b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                s.settimeout(every)
                k = 0
                while time.monotonic() - start < seconds:
                    try:
                        s.recv(1024)  # an answer (408) or the end: the server cut it off
                    except TimeoutError:  # nothing from the server: the next line
                        s.sendall(b"X-Slow-%d: 1\r\n" % k)
                        k += 1
                        continue
                    raise ConnectionResetError
                with lock:
                    held[0] += 1
            except OSError:
                with lock:
                    cut.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    print(f"slow: {n} clients, one header line every {every:g} s for {seconds:g} s: cut off {len(cut)} "
          f"(median after {statistics.median(cut) if cut else float('nan'):.1f} s), still held at the end {held[0]}")


def call(server: Server, method: str, path: str, host: str, token: str | None,
         body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request with the given ``Host`` header and bearer token (none: no login)."""
    con = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        con.putheader("Host", host)
        if token:
            con.putheader("Authorization", f"Bearer {token}")
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            con.putheader("Content-Type", "application/json")
            con.putheader("Content-Length", str(len(data)))
        con.endheaders(data)
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


def safety(python: str, cwd: Path, run: Path, reviews: int = 20) -> None:
    """A token-less call and a DNS-rebinding ``Host`` on loopback and on ``--host 0.0.0.0``; then two
    reviewers with their own tokens reviewing at once, and whom the log names for each decision."""
    import shutil
    import sqlite3
    import tempfile

    srv = Server(python, cwd, run)
    try:
        here = f"127.0.0.1:{srv.port}"
        print(f"safety, loopback: no token {call(srv, 'GET', '/api/summary', here, None)[0]}, "
              f"token but Host rebound.example {call(srv, 'GET', '/api/summary', f'rebound.example:{srv.port}', srv.token)[0]}, "
              f"token {call(srv, 'GET', '/api/summary', here, srv.token)[0]}")
    finally:
        srv.stop()
    tmp = Path(tempfile.mkdtemp(prefix="review-flood-"))
    copy = tmp / "run"
    shutil.copytree(run, copy)
    tokens = {}
    for name in ("flood-ana", "flood-ben"):
        out = subprocess.run([python, "-c", "from sitewatch.cli import main; main()", "reviewers", "add", name,
                              str(copy)], cwd=cwd, capture_output=True, text=True, check=True).stdout
        tokens[name] = re.search(r"token (sw_\S+)", out).group(1)  # type: ignore[union-attr]
    srv = Server(python, cwd, copy, ("--host", "0.0.0.0", "--allow-host", "box.lan"))  # noqa: S104
    try:
        ok = f"box.lan:{srv.port}"
        print(f"safety, --host 0.0.0.0: no token {call(srv, 'GET', '/api/summary', ok, None)[0]}, "
              f"ana's token but Host evil.example {call(srv, 'GET', '/api/summary', f'evil.example:{srv.port}', tokens['flood-ana'])[0]}, "
              f"ana's token {call(srv, 'GET', '/api/summary', ok, tokens['flood-ana'])[0]}")
        _, body = call(srv, "GET", "/api/sites?sort=id", ok, tokens["flood-ana"])
        ids = [x["id"] for x in json.loads(body)["sites"]]
        failures: list[int] = []

        def review(name: str) -> None:
            for i in range(reviews):
                status, _ = call(srv, "POST", f"/api/sites/{ids[i % len(ids)]}/review", ok, tokens[name],
                                 {"status": "confirmed" if name == "flood-ana" else "rejected", "note": f"{name} {i}"})
                if status != 200:
                    failures.append(status)

        workers = [threading.Thread(target=review, args=(n,)) for n in tokens]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        srv.stop()
    with sqlite3.connect(copy / "candidates.gpkg") as con:
        rows = con.execute("SELECT reviewer, note FROM reviews WHERE note LIKE 'flood-%'").fetchall()
    con.close()
    right = sum(reviewer == note.split()[0] for reviewer, note in rows)
    print(f"safety, two reviewers at once: {len(rows)} of {2 * reviews} decisions logged, {right} under the right "
          f"name, {len(failures)} refused")
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a run directory (default: build one in --base)")
    ap.add_argument("--base", type=Path, default=Path("/tmp/review-flood"))
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs the server")
    ap.add_argument("--cwd", type=Path, default=ROOT, help="the checkout the server runs from")
    ap.add_argument("--flood", type=int, default=200)
    ap.add_argument("--headers", type=int, default=97)
    ap.add_argument("--header-bytes", type=int, default=65_000)
    ap.add_argument("--flood-s", type=float, default=20.0)
    ap.add_argument("--flood-nice", type=int, default=10, help="niceness of the flooding processes (0: none)")
    ap.add_argument("--chips", type=int, default=200)
    ap.add_argument("--slow", type=int, default=300)
    ap.add_argument("--slow-s", type=float, default=30.0)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: flood,chips,slow,safety")
    ap.add_argument("--max-rss-mb", type=float, default=6000.0,
                    help="kill the server if its resident memory passes this during the flood (protects the machine)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    run = args.run or build_run(args.base)
    if "safety" not in skip:
        safety(args.python, args.cwd, run)
    server = Server(args.python, args.cwd, run)
    try:
        print(f"server: {args.python} in {args.cwd}, pid {server.proc.pid}, rss_mb {server.rss_mb():.0f}")
        idle = Probe(server)
        idle.start()
        time.sleep(3)
        idle.finish()
        idle.report("idle")
        if "flood" not in skip:
            probe = Probe(server, max_rss_mb=args.max_rss_mb)
            probe.start()
            flood(server, args.flood, args.headers, args.header_bytes, args.flood_s, nice=args.flood_nice)
            probe.finish()
            probe.report("during flood")
            print(f"after flood: rss_mb {server.rss_mb():.0f}")
            if probe.killed:
                return
        if "chips" not in skip:
            chips(server, args.chips)
        if "slow" not in skip:
            probe = Probe(server)
            probe.start()
            slow(server, args.slow, args.slow_s)
            probe.finish()
            probe.report("during slow clients")
    finally:
        err = server.stop()
        lines = [line for line in err.splitlines() if line.strip()]
        print(f"server stderr: {len(lines)} line(s){': ' + lines[-1][:200] if lines else ''}")


if __name__ == "__main__":
    main()
