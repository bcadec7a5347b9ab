"""The review server's stated limits, its OpenAPI description and its density layer, over real sockets.

Each limit of :mod:`sitewatch.imagery.review.server` (request head size, header count, the
deadlines for a request's head and a POST's body, the connection cap, the listen backlog) is
driven here by a client that breaks it, against a real server in a thread; tight limits
(:class:`~sitewatch.imagery.review.server.Limits`) keep the slow cases short.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import AddScene, make_review_run

from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.review.server import (
    BACKLOG,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ROUTES,
    Limits,
    ReviewServer,
    make_server,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("review-limits"))


@contextmanager
def serving(run_dir: Path, **kw: object) -> Iterator[ReviewServer]:
    """A review server in a thread, stopped at the end."""
    srv = make_server(run_dir, port=0, owner="ana", **kw)  # type: ignore[arg-type]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def head(srv: ReviewServer, path: str, extra: list[tuple[str, str]] = (), *, auth: bool = True) -> bytes:  # type: ignore[assignment]
    host, port = srv.server_address[:2]
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    if auth:
        lines.append(f"Authorization: Bearer {srv.secret}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def exchange(srv: ReviewServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(srv.server_address[:2], timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def get(srv: ReviewServer, path: str, *, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.server_address[:2]
    con = http.client.HTTPConnection(host, port, timeout=30)
    try:
        con.request("GET", path, headers={"Authorization": f"Bearer {srv.secret}"} if auth else {})
        r = con.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        con.close()


def assert_error(status: int, headers: dict[str, str], body: bytes, code: int) -> str:
    assert status == code, (status, body[:200])
    assert headers["content-type"] == "application/json; charset=utf-8", headers
    doc = json.loads(body)
    assert set(doc) == {"error"} and doc["error"].strip() and "\n" not in doc["error"], doc
    return doc["error"]


# --- the request head -----------------------------------------------------------------------------


def test_header_count_is_limited(run_dir: Path) -> None:
    with serving(run_dir) as srv:
        assert Limits().headers == MAX_HEADERS == 64
        few = [(f"X-{i}", "1") for i in range(MAX_HEADERS - 2)]  # with Host and Authorization: the limit exactly
        assert exchange(srv, head(srv, "/api/summary", few))[0] == 200
        many = [(f"X-{i}", "1") for i in range(100)]
        status, headers, body = exchange(srv, head(srv, "/api/summary", many))
        assert "header lines" in assert_error(status, headers, body, 431)
        assert headers["connection"] == "close"
        assert get(srv, "/api/summary")[0] == 200


@pytest.mark.parametrize("slowly", [False, True], ids=["at-once", "in-pieces"])
def test_head_size_is_limited(run_dir: Path, slowly: bool) -> None:
    """A head past MAX_HEAD_BYTES, sent at once or in pieces (h11 bounds it while it arrives): 431."""
    with serving(run_dir) as srv:
        assert Limits().head_bytes == MAX_HEAD_BYTES == 32 * 1024
        data = head(srv, "/api/summary", [("X-Big", "a" * 40_000)])
        if not slowly:
            assert_error(*exchange(srv, data), 431)
        else:
            with socket.create_connection(srv.server_address[:2], timeout=20) as sock:
                sent = 0
                try:
                    while sent < len(data):
                        sock.sendall(data[sent:sent + 4096])
                        sent += 4096
                        time.sleep(0.01)
                except OSError:
                    pass  # the server answered and stopped reading
                assert_error(*read_answer(sock), 431)
        # a long target alone
        assert_error(*exchange(srv, head(srv, "/api/sites?x=" + "a" * 40_000)), 414)
        assert get(srv, "/api/summary")[0] == 200


def test_a_slow_or_idle_client_is_cut_off_at_the_head_deadline(run_dir: Path) -> None:
    """One header line every 0.4 s never completes a head: 408 at the deadline, the connection
    closed; a connection that sends nothing is closed too; other clients are served meanwhile."""
    with serving(run_dir, limits=Limits(head_timeout_s=2.0)) as srv:
        address = srv.server_address[:2]
        idle = socket.create_connection(address, timeout=10)
        slow = socket.create_connection(address, timeout=10)
        start = time.monotonic()
        slow.sendall(b"GET /api/summary HTTP/1.1\r\n")
        closed_at = None
        answer = b""
        try:
            for i in range(40):
                slow.sendall(b"X-Slow-%d: 1\r\n" % i)
                time.sleep(0.4)
                if i == 2:
                    assert get(srv, "/api/summary")[0] == 200  # served during the slow head
        except OSError:
            closed_at = time.monotonic() - start
        slow.settimeout(5)
        try:
            while chunk := slow.recv(65536):
                answer += chunk
        except OSError:
            pass
        closed_at = closed_at or time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b'"error"' in answer
        assert closed_at < 6.0, closed_at
        idle.settimeout(6)
        t0 = time.monotonic()
        assert idle.recv(10) == b""  # closed by the server, nothing said
        assert time.monotonic() - start < 6.0
        assert t0 - start < 6.0
        idle.close()
        slow.close()


def test_a_slow_body_is_cut_off(run_dir: Path) -> None:
    with serving(run_dir, limits=Limits(body_timeout_s=1.0)) as srv:
        site = CandidateStore.in_run_dir(run_dir).sites()[0].site_id
        before = len(CandidateStore.in_run_dir(run_dir).reviews())
        host, port = srv.server_address[:2]
        data = (f"POST /api/sites/{quote(site, safe='')}/review HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {srv.secret}\r\nContent-Type: application/json\r\n"
                "Content-Length: 60\r\n\r\n").encode() + b'{"status": "con'
        with socket.create_connection((host, port), timeout=10) as sock:
            t0 = time.monotonic()
            sock.sendall(data)
            status, headers, body = read_answer(sock)
            assert "within 1 s" in assert_error(status, headers, body, 408)
            assert time.monotonic() - t0 < 4.0 and headers["connection"] == "close"
        assert len(CandidateStore.in_run_dir(run_dir).reviews()) == before


# --- connections ----------------------------------------------------------------------------------


def test_connections_are_capped(run_dir: Path) -> None:
    with serving(run_dir, limits=Limits(connections=4)) as srv:
        address = srv.server_address[:2]
        held = [socket.create_connection(address, timeout=10) for _ in range(4)]
        for s in held:
            s.sendall(b"GET /api/summary HTTP/1.1\r\n")  # a head begun, not finished
        time.sleep(0.5)
        with socket.create_connection(address, timeout=10) as extra:
            status, headers, body = read_answer(extra)
            assert "connections open" in assert_error(status, headers, body, 503)
            assert headers["retry-after"] == "1"
        for s in held:
            s.close()
        deadline = time.monotonic() + 5
        while get(srv, "/api/summary")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_the_backlog_holds_connections_until_they_are_served(run_dir: Path) -> None:
    """300 clients connect and send before the server accepts any: the listen backlog (2048)
    queues them all, and every one gets its answer once the server runs."""
    assert Limits().backlog == BACKLOG == 2048
    srv = make_server(run_dir, port=0, owner="ana")
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(srv.server_address[:2], timeout=30)
            s.sendall(head(srv, "/api/summary"))
            socks.append(s)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        statuses = [read_answer(s)[0] for s in socks]
        assert statuses == [200] * 300
    finally:
        for s in socks:
            s.close()
        srv.shutdown()
        srv.server_close()


def test_concurrent_chip_requests_all_complete(run_dir: Path) -> None:
    with serving(run_dir) as srv:
        ids = [s.site_id for s in CandidateStore.in_run_dir(run_dir).sites()]
        paths = [f"/api/sites/{quote(ids[i % len(ids)], safe='')}/chip.png?v={i}" for i in range(100)]
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda p: get(srv, p), paths))
        assert [a[0] for a in answers] == [200] * 100
        assert all(a[1]["content-type"] == "image/png" and a[2].startswith(b"\x89PNG") for a in answers)


def test_a_port_in_use_is_one_line(run_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-c", "from sitewatch.cli import main; main()", "review", str(run_dir),
                            "--port", str(port)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot listen there" in r.stderr and "Traceback" not in r.stderr


# --- the API's description ------------------------------------------------------------------------


def test_openapi_lists_every_route(run_dir: Path) -> None:
    with serving(run_dir) as srv:
        status, headers, body = get(srv, "/api/openapi.json", auth=False)  # documentation: no login
        assert status == 200 and headers["content-type"].startswith("application/json")
        doc = json.loads(body)
        assert doc["openapi"].startswith("3.1")
        for route in ROUTES:
            path = "/" + "/".join(route.pattern)
            assert path in doc["paths"], path
            for method in route.methods:
                op = doc["paths"][path][method.lower()]
                assert "200" in op["responses"] and op["responses"]["400"]["$ref"] == "#/components/responses/Error"
                query = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
                assert query == set(route.params), (route.name, query)
                in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert in_path == {a.strip("{}") for a in route.arguments}, route.name
        assert len([m for p in doc["paths"].values() for m in p]) == sum(len(r.methods) for r in ROUTES)
        error = doc["components"]["schemas"]["Error"]
        assert error["required"] == ["error"] and error["properties"]["error"]["type"] == "string"
        assert "/api/openapi.json" in (ROOT / "README.md").read_text()
        # the other API routes still need a login; the rebinding check applies to the schema too
        assert get(srv, "/api/density", auth=False)[0] == 401
        port = srv.server_address[1]
        assert_error(*exchange(srv, f"GET /api/openapi.json HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n".encode()), 403)


# --- the density layer ----------------------------------------------------------------------------


def test_density_is_geojson_in_lonlat(run_dir: Path) -> None:
    store = CandidateStore.in_run_dir(run_dir)
    sites = store.sites()
    with serving(run_dir) as srv:
        status, headers, body = get(srv, "/api/density")
        assert status == 200 and headers["content-type"].startswith("application/json")
        doc = json.loads(body)
        assert doc["type"] == "FeatureCollection" and doc["cell_m"] == 1000
        assert re.fullmatch(r"EPSG:\d+", doc["grid_crs"])
        assert doc["features"] and sum(f["properties"]["count"] for f in doc["features"]) == len(sites)
        lons = [s.lon for s in sites]
        lats = [s.lat for s in sites]
        for f in doc["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
            ring = f["geometry"]["coordinates"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            for lon, lat in ring:  # lon/lat near the sites, not metres
                assert min(lons) - 0.05 < lon < max(lons) + 0.05 and min(lats) - 0.05 < lat < max(lats) + 0.05
            p = f["properties"]
            assert isinstance(p["count"], int) and (p["count"] > 0 or p["hotspot"] is not None)
            assert p["gi_z"] is None or (isinstance(p["gi_z"], float | int) and math.isfinite(p["gi_z"]))
            assert p["gi_p"] is None or 0.0 <= p["gi_p"] <= 1.0
            assert p["hotspot"] in ("hot", "cold", None)
        assert doc["sites"] == len(sites) and doc["max_count"] == max(f["properties"]["count"] for f in doc["features"])
        # one feature per cell: no two polygons the same
        assert len({json.dumps(f["geometry"]) for f in doc["features"]}) == len(doc["features"])
        # the cell size is the grid's
        fine = json.loads(get(srv, "/api/density?cell=250")[2])
        assert fine["cell_m"] == 250 and sum(f["properties"]["count"] for f in fine["features"]) == len(sites)
        # confirmed only: none yet, then one
        assert json.loads(get(srv, "/api/density?status=confirmed")[2])["features"] == []
        store.review(sites[0].site_id, "confirmed", "ana")
        confirmed = json.loads(get(srv, "/api/density?status=confirmed")[2])
        assert [f["properties"]["count"] for f in confirmed["features"] if f["properties"]["count"]] == [1]
        assert json.loads(get(srv, "/api/density?cell=1km")[2])["cell_m"] == 1000
        for bad in ("cell=abc", "cell=0", "cell=-5", "cell=nan", "cell=1e12", "status=approved", "cell=1&cell=2",
                    "zoom=2"):
            assert_error(*get(srv, f"/api/density?{bad}"), 400)
        assert_error(*get(srv, "/api/density", auth=False), 401)


def test_density_of_an_empty_store(tmp_path: Path, add_scene: AddScene) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    CandidateStore.create(run / "candidates.gpkg")
    with serving(run) as srv:
        status, _, body = get(srv, "/api/density")
        assert status == 200
        assert json.loads(body) == {"type": "FeatureCollection", "cell_m": 1000.0, "grid_crs": None, "features": [],
                                    "status": "all", "sites": 0, "max_count": 0}


def test_density_of_distant_regions(tmp_path: Path, add_scene: AddScene) -> None:
    """Sites at two places 2,000 km apart: 1 km cells at both, each region with its own grid."""
    run = tmp_path / "far"
    run.mkdir()
    store = CandidateStore.create(run / "candidates.gpkg")
    lat, per_m = 24.70, 1 / (111_320 * math.cos(math.radians(24.70)))
    east = [("kiln", 90.40 + (10_150 + 220 * i) * per_m, lat + (10_200 + 250 * j) / 110_750, 0.8)
            for i in range(4) for j in range(3)]
    east += [("kiln", 90.40 + x * per_m, lat + y / 110_750, 0.6) for x, y in ((500, 500), (19_500, 19_500))]
    west = [("vessel", 70.40 + x * per_m, lat + y / 110_750, 0.9) for x, y in ((300, 300), (4_300, 2_300))]
    add_scene(store, "east", east, acquired="2024-01-05")
    add_scene(store, "west", west, acquired="2024-02-05")
    with serving(run) as srv:
        status, _, body = get(srv, "/api/density")
        assert status == 200, body[:200]
        doc = json.loads(body)
        assert doc["cell_m"] == 1000 and doc["grid_crs"] is None and doc["sites"] == 16
        assert [(r["name"], r["grid_crs"], r["sites"]) for r in doc["regions"]] == [
            ("r1", "EPSG:32642", 2), ("r2", "EPSG:32646", 14)]
        counts = {name: sum(f["properties"]["count"] for f in doc["features"] if f["properties"]["region"] == name)
                  for name in ("r1", "r2")}
        assert counts == {"r1": 2, "r2": 14}
        for f in doc["features"]:  # 1 km cells at both places
            (ring,) = f["geometry"]["coordinates"]
            lons, lats = [p[0] for p in ring], [p[1] for p in ring]
            assert 0.9 < (max(lons) - min(lons)) / (1000 * per_m) < 1.1 and 0.9 < (max(lats) - min(lats)) * 110_750 / 1000 < 1.1
        top = max(doc["features"], key=lambda f: f["properties"]["count"])
        assert top["properties"]["count"] == 12 and top["properties"]["hotspot"] == "hot"
        assert json.loads(get(srv, "/api/density?cell=5km")[2])["cell_m"] == 5000
