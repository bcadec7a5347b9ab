"""The review server's JSON API, without a browser: routes, 4xx cases, path traversal, concurrency, the CLI.

Every request goes over a real socket to a real server (in a thread, or ``sitewatch review`` as
a child process); hostile requests are also sent as raw bytes, to say exactly what reaches the server.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from conftest import default_sigint, make_review_run
from PIL import Image

from sitewatch.imagery.candidates.store import STATUSES, CandidateStore
from sitewatch.imagery.review.server import (
    CHIP_MAX_PX,
    CHIP_MIN_PX,
    DEFAULT_HOST,
    MAX_BODY,
    MAX_NAME,
    ROUTES,
    ReviewServer,
    Route,
    make_server,
    uncertainty,
)

ROOT = Path(__file__).resolve().parents[1]
#: What a state-changing request that is refused must leave alone: (rows in reviews, every site's review columns).
StoreState = tuple[int, list[tuple[object, ...]]]
Address = ReviewServer | tuple[str, int]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("review-api"))


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[ReviewServer]:
    srv = make_server(run_dir, port=0, owner="ana")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _address(srv: Address) -> tuple[str, int]:
    if isinstance(srv, ReviewServer):
        host, port = srv.server_address[:2]
        return str(host), int(port)
    return srv


#: The per-start token of every server these tests start (by port), for their requests.
TOKENS: dict[int, str] = {}


def _auth(srv: Address) -> dict[str, str]:
    """The bearer header of a server's per-start token (as the page's session stands for it)."""
    if isinstance(srv, ReviewServer):
        TOKENS[int(srv.server_address[1])] = srv.secret
    token = TOKENS.get(_address(srv)[1])
    return {"Authorization": f"Bearer {token}"} if token else {}


def request(srv: Address, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, *, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One raw request (the path is sent exactly as given, no normalisation), logged in unless ``auth=False``."""
    headers = {**(_auth(srv) if auth else {}), **(headers or {})}
    host, port = _address(srv)
    con = http.client.HTTPConnection(host, port, timeout=20)
    try:
        con.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            con.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            con.putheader("Content-Length", str(len(body)))
        con.endheaders(body)
        r = con.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        con.close()


def exchange(srv: Address, data: bytes, *, half_close: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is on a new connection and read the one answer.

    ``half_close`` ends the sending side at once, so a server waiting for more (a body shorter
    than its Content-Length) sees the end of the stream instead of waiting for its timeout.
    """
    with socket.create_connection(_address(srv), timeout=20) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        r = http.client.HTTPResponse(sock)
        r.begin()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def raw_request(srv: Address, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """The bytes of a request with a ``Host`` of the server first, its token, then ``headers`` (repeats allowed)."""
    host, port = _address(srv)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in _auth(srv).items()),
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def store_state(run_dir: Path) -> StoreState:
    """The row count of the reviews table and every site's review columns, read from the file."""
    with CandidateStore.in_run_dir(run_dir).read() as con:
        n_reviews = con.execute("SELECT count(*) FROM reviews").fetchone()[0]
        sites = con.execute("SELECT site_id, status, reviewer, reviewed_at, note FROM sites ORDER BY site_id").fetchall()
    return n_reviews, [tuple(row) for row in sites]


def assert_serving(srv: Address) -> None:
    """The server still answers the next request."""
    status, headers, body = request(srv, "GET", "/api/summary")
    assert status == 200 and headers["content-type"].startswith("application/json"), (status, body[:200])


def get_json(srv: ReviewServer, path: str) -> object:
    status, headers, body = request(srv, "GET", path)
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


def post_review(srv: ReviewServer, site_id: str, doc: object, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, dict[str, object]]:
    body = raw if raw is not None else json.dumps(doc).encode()
    status, h, out = request(srv, "POST", f"/api/sites/{quote(site_id, safe='')}/review", body,
                             {"Content-Type": "application/json", **(headers or {})})
    assert h["content-type"].startswith("application/json")
    return status, json.loads(out)


def assert_error(status: int, headers: dict[str, str], body: bytes, lo: int = 400, hi: int = 499) -> str:
    """A refusal: a status from ``lo`` to ``hi``, a JSON body ``{"error": one line}``, no traceback."""
    assert lo <= status <= hi, (status, body[:200])
    assert headers["content-type"] == "application/json; charset=utf-8", headers
    assert headers["x-content-type-options"] == "nosniff"
    doc = json.loads(body)
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"].strip(), doc
    assert "\n" not in doc["error"] and "Traceback" not in doc["error"] and len(doc["error"]) < 1000, doc
    return doc["error"]


# --- routes ---------------------------------------------------------------------------------------


def test_page_is_self_contained(server: ReviewServer) -> None:
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    text = body.decode()
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'<>]*", text)) - {"http://www.w3.org/2000/svg"}
    assert not urls, urls  # no external tiles, scripts or fonts
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text


def test_summary_sites_and_detail(server: ReviewServer, run_dir: Path) -> None:
    store = CandidateStore.in_run_dir(run_dir)
    summary = get_json(server, "/api/summary")
    assert summary["sites"] == len(store.sites()) > 5
    assert set(summary["classes"]) == {"kiln", "vessel"} and summary["statuses"] == list(STATUSES)
    assert summary["thresholds"] == {"kiln": 0.3, "vessel": 0.3}

    listing = get_json(server, "/api/sites")
    assert listing["total"] == summary["sites"] == len(listing["sites"])
    for s in listing["sites"]:
        assert s["id"] and s["status"] in STATUSES
        assert s["uncertainty"] == uncertainty(s["max_score"], 0.3)
    scores = [s["max_score"] for s in listing["sites"]]
    assert scores == sorted(scores, reverse=True)  # default: score, high first

    kiln = next(s for s in listing["sites"] if s["class"] == "kiln" and s["n_detections"] == 2)
    detail = get_json(server, f"/api/sites/{kiln['id']}")
    assert detail["id"] == kiln["id"] and detail["status"] == "unreviewed"
    assert len(detail["detections"]) == 2 and {d["scene"] for d in detail["detections"]} == set(kiln["scenes"])
    assert detail["reviews"] == [] and len(detail["footprint"]) >= 4
    assert [c["acquired"] for c in detail["chip_scenes"]] == ["2024-01-05", "2024-02-20"]


def test_chip_and_quicklooks(server: ReviewServer, run_dir: Path) -> None:
    site = get_json(server, "/api/sites?class=vessel&limit=1")["sites"][0]
    status, headers, body = request(server, "GET", f"/api/sites/{site['id']}/chip.png")
    assert status == 200 and headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.mode == "RGB" and image.width == image.height
    assert CHIP_MIN_PX <= image.width <= 4 * CHIP_MAX_PX
    rgb = np.asarray(image)
    assert (rgb == (255, 214, 0)).all(axis=2).any()  # the footprint outline
    assert rgb.std() > 5  # imagery, not a blank

    other = next(c["name"] for c in get_json(server, f"/api/sites/{site['id']}")["chip_scenes"] if not c["default"])
    status, _, _ = request(server, "GET", f"/api/sites/{site['id']}/chip.png?scene={quote(other)}")
    assert status == 200
    assert_error(*request(server, "GET", f"/api/sites/{site['id']}/chip.png?scene=nope"))
    assert_error(*request(server, "GET", f"/api/sites/{site['id']}/chip.png?zoom=2"))

    scenes = get_json(server, "/api/scenes")["scenes"]
    assert [s["acquired"] for s in scenes] == ["2024-01-05", "2024-02-20"]
    for s in scenes:
        assert len(s["corners"]) == 4 and s["bounds"][0] < s["bounds"][2]
        status, headers, body = request(server, "GET", s["quicklook"])
        assert status == 200 and headers["content-type"] == "image/png"
        assert body == (run_dir / "quicklooks" / f"{s['name']}.png").read_bytes()


def test_filters_sort_and_paging(server: ReviewServer) -> None:
    every = get_json(server, "/api/sites")["sites"]
    kilns = get_json(server, "/api/sites?class=kiln")["sites"]
    assert kilns and {s["class"] for s in kilns} == {"kiln"}
    assert len(kilns) == sum(s["class"] == "kiln" for s in every)
    band = get_json(server, "/api/sites?min_score=0.5&max_score=0.95")["sites"]
    assert band and all(0.5 <= s["max_score"] <= 0.95 for s in band)
    assert len(band) == sum(0.5 <= s["max_score"] <= 0.95 for s in every)
    for key in ("score", "uncertainty", "class", "status", "id"):
        for order in ("asc", "desc"):
            got = get_json(server, f"/api/sites?sort={key}&order={order}")["sites"]
            field = {"score": "max_score", "id": "id"}.get(key, key)
            values = [STATUSES.index(s[field]) if key == "status" else s[field] for s in got]
            assert values == sorted(values, reverse=order == "desc"), (key, order)
    page = get_json(server, "/api/sites?sort=id&limit=3&offset=2")
    assert [s["id"] for s in page["sites"]] == sorted(s["id"] for s in every)[2:5] and page["total"] == len(every)
    for bad in ("status=bogus", "sort=colour", "order=up", "min_score=abc", "max_score=nan", "limit=-1",
                "sample=maybe", "clas=kiln", "limit=1&limit=2"):
        assert_error(*request(server, "GET", f"/api/sites?{bad}"))


def test_sample_mode_needs_a_sample(run_dir: Path, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from sitewatch.imagery.errors import InputError

    shutil.copy(run_dir / "candidates.gpkg", tmp_path / "candidates.gpkg")
    with sqlite3.connect(tmp_path / "candidates.gpkg") as con:
        con.execute("DELETE FROM sample")
    with pytest.raises(InputError, match="sitewatch estimate"):
        make_server(tmp_path, port=0, sample=True)


def test_sample_filter(run_dir: Path, server: ReviewServer) -> None:
    from sitewatch.imagery.candidates.estimate import draw_sample

    store = CandidateStore.in_run_dir(run_dir)
    draw_sample(store, 3, seed=1, redraw=True)
    sample = {m.site_id for m in store.sample()}
    got = get_json(server, "/api/sites?sample=1")["sites"]
    assert {s["id"] for s in got} == sample and all(s["in_sample"] for s in got)
    assert get_json(server, "/api/summary")["sample"]["sites"] == len(sample)


# --- reviews --------------------------------------------------------------------------------------


def test_review_is_stored(server: ReviewServer, run_dir: Path) -> None:
    site = get_json(server, "/api/sites?sort=id")["sites"][0]
    note = '<script>alert(1)</script><img src=x onerror="alert(2)"> chimney'
    status, doc = post_review(server, site["id"], {"status": "confirmed", "note": note, "reviewer": "ana"})
    assert status == 200, doc
    assert doc["site"]["id"] == site["id"] and doc["site"]["status"] == "confirmed"
    assert doc["review"]["note"] == note and doc["review"]["reviewer"] == "ana"
    store = CandidateStore.in_run_dir(run_dir)
    assert store.site(site["id"]).status == "confirmed"
    assert store.reviews(site["id"])[-1].note == note
    detail = get_json(server, f"/api/sites/{site['id']}")
    assert detail["status"] == "confirmed" and detail["reviews"][-1]["note"] == note
    assert get_json(server, "/api/sites?status=confirmed&status=rejected")["total"] >= 1


def _same_origin(srv: Address) -> dict[str, str]:
    host, port = _address(srv)
    return {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"}


def test_review_rejects_bad_fields(server: ReviewServer, run_dir: Path) -> None:
    """JSON that is not a decision: 400 with a JSON error, nothing recorded, and the server serves the next request."""
    site_id = get_json(server, "/api/sites?sort=id")["sites"][1]["id"]
    before = store_state(run_dir)
    docs: list[object] = [
        [1, 2], "confirmed", 5, None, True, {},                                # not an object
        {"status": "maybe", "reviewer": "ana"}, {"status": 1, "reviewer": "ana"},
        {"status": None, "reviewer": "ana"}, {"status": ["confirmed"], "reviewer": "ana"},
        {"status": "confirmed", "reviewer": "ben"},                            # not who is logged in
        {"status": "confirmed", "reviewer": "  "}, {"status": "confirmed", "reviewer": 5},
        {"status": "confirmed", "reviewer": ["ana"]}, {"status": "confirmed", "reviewer": {"name": "ana"}},
        {"status": "confirmed", "reviewer": "a" * 101}, {"status": "confirmed", "reviewer": "a\nb"},
        {"status": "confirmed", "reviewer": "ana", "note": "x" * 2001},
        {"status": "confirmed", "reviewer": "ana", "note": 5}, {"status": "confirmed", "reviewer": "ana", "note": ["x"]},
        {"status": "confirmed", "reviewer": "ana", "note": "a\x00b"},
        {"status": "confirmed", "reviewer": "ana", "note": "\ud800"},        # a lone surrogate: valid JSON, not text
        {"status": "confirmed", "reviewer": "\udfff"},
        {"status": "confirmed", "reviewer": "ana", "extra": 1},
    ]
    raws = [b'{"status": NaN, "reviewer": "ana"}', b'{"status": 1e999, "reviewer": "ana"}',
            b'{"status": ' + b"9" * 5000 + b', "reviewer": "ana"}']          # past Python's int-digits limit
    for doc, raw in [(d, None) for d in docs] + [(None, r) for r in raws]:
        status, headers, body = request(server, "POST", f"/api/sites/{site_id}/review",
                                        raw if raw is not None else json.dumps(doc).encode(),
                                        {"Content-Type": "application/json"})
        assert_error(status, headers, body, 400, 400)
        assert_serving(server)
    assert store_state(run_dir) == before

    status, out = post_review(server, "kiln-999999", {"status": "rejected", "reviewer": "ana"})
    assert status == 404 and set(out) == {"error"}
    assert store_state(run_dir) == before


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def test_oversized_and_malformed_bodies(server: ReviewServer, run_dir: Path) -> None:
    """Bodies too long, of a length other than declared, not JSON, not UTF-8, chunked...: a 4xx JSON
    error, the store unchanged, and the server serves the next request."""
    site_id = get_json(server, "/api/sites?sort=id")["sites"][2]["id"]
    path = f"/api/sites/{site_id}/review"
    good = json.dumps({"status": "rejected", "note": "", "reviewer": "ana"}).encode()
    bad = json.dumps({"status": "maybe", "reviewer": "ana"}).encode()
    json_type = ("Content-Type", "application/json")

    def post(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        return raw_request(server, "POST", path, headers, body)

    def length(n: int | str) -> tuple[str, str]:
        return ("Content-Length", str(n))

    cases: dict[str, tuple[int, bytes]] = {
        "declared over the limit, nothing sent": (413, post([json_type, length(MAX_BODY + 1)])),
        "declared 10^30 bytes": (413, post([json_type, length("9" * 30)])),
        "sent over the limit": (413, post([json_type, length(MAX_BODY + 2)], b"{" + b" " * MAX_BODY + b"}")),
        "shorter than declared": (400, post([json_type, length(len(good) + 10)], good)),
        "longer than declared": (400, post([json_type, length(len(good) - 1)], good)),  # the declared part is not JSON
        # a refused body, then a good request on the same connection: the connection ends, the second is not run
        "refused, then pipelined": (400, post([json_type, length(len(bad))], bad)
                                    + post([json_type, length(len(good))], good)),
        "no Content-Length": (411, post([json_type], good)),
        "chunked": (411, post([json_type, ("Transfer-Encoding", "chunked")], _chunked(good))),
        "chunked and a length": (411, post([json_type, ("Transfer-Encoding", "chunked"), length(len(good))],
                                          _chunked(good))),
        "two lengths": (400, post([json_type, length(len(good)), length(len(good) + 5)], good)),
        "negative length": (400, post([json_type, length(-1)], good)),
        "length 1e3": (400, post([json_type, length("1e3")], good)),
        "length a digit int() refuses (\u00b2)": (400, post([json_type, length("\u00b2")], good)),
        "empty": (400, post([json_type, length(0)])),
        "not JSON": (400, post([json_type, length(9)], b"{not json")),
        "invalid UTF-8": (400, post([json_type, length(4)], b"\xff\xfe{}")),
        "UTF-8 with a BOM": (400, post([json_type, length(len(good) + 3)], b"\xef\xbb\xbf" + good)),
        "UTF-16": (400, post([json_type, length(len(good.decode().encode("utf-16")))], good.decode().encode("utf-16"))),
        "nested too deep": (400, post([json_type, length(60000)], b"[" * 60000)),
        "form encoded": (415, post([("Content-Type", "application/x-www-form-urlencoded"), length(29)],
                                   b"status=confirmed&reviewer=ana")),
        "plain text": (415, post([("Content-Type", "text/plain"), length(len(good))], good)),
        "no Content-Type": (415, post([length(len(good))], good)),
    }
    before = store_state(run_dir)
    for name, (code, data) in cases.items():
        status, headers, body = exchange(server, data)
        assert status == code, (name, status, body[:200])
        assert_error(status, headers, body, code, code)
        assert headers.get("connection") == "close", name  # the rest of what was sent is never read as a request
        assert_serving(server)
        assert store_state(run_dir) == before, name

    # the same request, well formed, is recorded: the cases above were refused for their one fault
    status, headers, body = exchange(server, post([json_type, length(len(good))], good))
    assert status == 200, body
    n_reviews, sites = store_state(run_dir)
    assert n_reviews == before[0] + 1 and dict((s[0], s[1]) for s in sites)[site_id] == "rejected"


# --- path traversal: every route, every argument ------------------------------------------------


@pytest.fixture(scope="module")
def valid_args(run_dir: Path) -> dict[str, str]:
    """A name that exists for each kind of route argument (a route with a new kind needs one here)."""
    store = CandidateStore.in_run_dir(run_dir)
    return {"{id}": store.sites()[0].site_id, "{name}": store.scenes()[0].name, "scene": store.scenes()[0].name,
            "{file}": "leaflet.js", "{image}": "layers.png"}


@pytest.fixture(scope="module")
def secret(run_dir: Path) -> Path:
    """A PNG beside the run directory (outside it) that no request may read."""
    path = run_dir.parent / "secret.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nSECRET-" + os.urandom(8).hex().encode())
    return path


def _target(segments: list[str], query: str = "") -> str:
    return "/" + "/".join(s for s in segments if s) + (f"?{query}" if query else "")


def _tricks(valid: str, secret: Path) -> list[str]:
    """Hostile values for a name, as they go into a URL (percent-encoded or raw)."""
    absolute = str(secret)
    return [
        "..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e",                       # dot segments, plain and encoded
        "..%2f..%2fsecret.png", "..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",  # encoded slashes
        "%2e%2e%2f%2e%2e%2fcandidates.gpkg", "..%252f..%252fsecret.png",  # and encoded twice
        "../../secret.png", "../run.json",                                  # raw slashes
        "..%5c..%5csecret.png", "..\\..\\secret.png",                      # backslashes
        "%c0%ae%c0%ae%c0%afsecret.png", "%ff%fe",                           # overlong and invalid UTF-8
        quote(absolute, safe=""), absolute, "file:" + quote(absolute, safe=""),  # absolute paths
        "quicklooks%2f" + quote(valid, safe="") + ".png", "run.json", "candidates.gpkg",  # files of the run by path
        "%00", "..%00", "secret.png%00.png", quote(valid, safe="") + "%00",  # NUL bytes
        quote(valid, safe="") + "%2f..%2f..%2fsecret.png", quote(valid, safe="") + "%5c..",
        "x" * (MAX_NAME + 1), "y" * 70_000,                                  # overlong: past MAX_NAME, past the request line
    ]


def _hostile_targets(route: Route, valid_args: dict[str, str], secret: Path) -> list[str]:
    """The route's path with a trick in each argument in turn, in an extra segment, and in each lookup parameter."""
    for seg in route.arguments:
        assert seg in valid_args, f"route {route.name!r}: give valid_args a value for {seg}"
    for param in route.lookups:
        assert param in valid_args, f"route {route.name!r}: give valid_args a value for ?{param}="
    filled = [quote(valid_args[seg], safe="") if seg in valid_args else seg for seg in route.pattern]
    targets = []
    for i, seg in enumerate(route.pattern):
        if seg in route.arguments:
            targets += [_target([*filled[:i], t, *filled[i + 1:]]) for t in _tricks(valid_args[seg], secret)]
    targets += [_target([*filled, t]) for t in _tricks("x", secret)]
    for param in sorted(route.lookups):
        targets += [_target(filled, f"{param}={t}") for t in _tricks(valid_args[param], secret)]
    return targets


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_no_route_serves_a_file_by_name(route: Route, server: ReviewServer, run_dir: Path, valid_args: dict[str, str],
                                        secret: Path) -> None:
    """Every route of the route table, with ``..``, encoded slashes, backslashes, absolute paths, NUL
    bytes and overlong names in each name it takes: a JSON 400/404/414, no file's bytes, nothing changed."""
    method = route.methods[0]
    post = method == "POST"
    headers = {"Content-Type": "application/json", **_same_origin(server)} if post else {}
    filled = [quote(valid_args[seg], safe="") if seg in valid_args else seg for seg in route.pattern]
    # with valid names the route answers (so the refusals below are about the names, not a mistyped path)
    status, h, body = request(server, method, _target(filled), b"{}" if post else None, headers)
    if post:
        assert "status" in assert_error(status, h, body, 400, 400)  # reached the body: the site was found
    else:
        assert status == 200, (route.name, body[:200])

    before = store_state(run_dir)
    forbidden = [secret.read_bytes(), b"SQLite format 3", b'"sitewatch_run"', b"root:x:0:0"]
    decision = json.dumps({"status": "unsure", "note": "", "reviewer": "traversal"}).encode() if post else None
    targets = _hostile_targets(route, valid_args, secret)
    assert len(targets) >= 30
    for target in targets:
        status, h, body = request(server, method, target, decision, headers)
        assert_error(status, h, body)
        assert status in (400, 404, 414), (route.name, target[:120], status, body[:200])
        for data in forbidden:
            assert data not in body, (route.name, target[:120])
    assert store_state(run_dir) == before
    assert_serving(server)


def test_paths_outside_the_routes_serve_nothing(server: ReviewServer, secret: Path) -> None:
    targets = [
        "/quicklooks/../../run.json", "/quicklooks/..%2F..%2Frun.json", "/quicklooks/S2_20240105_coast.png",
        "/../run.json", "/api/../run.json", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/run.json",
        "/candidates.gpkg", "/map.html", "/etc/passwd", "/index.html", "/favicon.ico", "/static/app.js",
        "/static/..%2f..%2fsecret.png", "/api", "/api/", "/api/sites/", "/api/scenes/", "/%00", "/..%5c..%5csecret.png",
        "/" + quote(str(secret), safe=""), str(secret), "/api/sites/x/chip.png/..", "/api/sites/x/review/../chip.png",
        "/api/scenes/S2_20240105_coast/..%2F..%2Frun.json",
    ]
    for target in targets:
        status, headers, body = request(server, "GET", target)
        assert_error(status, headers, body)
        assert status in (400, 404), (target, status)
        assert b"SECRET-" not in body and b"sitewatch_run" not in body and b"SQLite" not in body, target


def test_quicklook_is_only_a_png_inside_the_run_dir(run_dir: Path, tmp_path: Path, secret: Path) -> None:
    """A store that names a quick-look outside the run directory (by ``..``, an absolute path or a
    symlink), or a file that is not a PNG, serves nothing: the scene has no quick-look."""
    import shutil
    import sqlite3

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "quicklooks" / "link.png").symlink_to(secret)
    name, own = sqlite3.connect(copy / "candidates.gpkg").execute("SELECT scene, quicklook FROM scenes").fetchone()
    srv = make_server(copy, port=0, owner="ana")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for recorded in ("../secret.png", str(secret), "quicklooks/../../secret.png", "quicklooks/link.png",
                         "run.json", "candidates.gpkg", "quicklooks", "", None):
            with sqlite3.connect(copy / "candidates.gpkg") as con:
                con.execute("UPDATE scenes SET quicklook = ? WHERE scene = ?", (recorded, name))
            con.close()
            status, headers, body = request(srv, "GET", f"/api/scenes/{quote(name, safe='')}/quicklook.png")
            assert status == 404, (recorded, status)
            assert_error(status, headers, body)
            assert b"SECRET-" not in body and b"SQLite" not in body
            scene = next(s for s in get_json(srv, "/api/scenes")["scenes"] if s["name"] == name)
            assert scene["quicklook"] is None, recorded
        with sqlite3.connect(copy / "candidates.gpkg") as con:
            con.execute("UPDATE scenes SET quicklook = ? WHERE scene = ?", (own, name))
        con.close()
        status, headers, body = request(srv, "GET", f"/api/scenes/{quote(name, safe='')}/quicklook.png")
        assert status == 200 and body == (copy / own).read_bytes()
    finally:
        srv.shutdown()
        srv.server_close()


# --- where requests may come from ---------------------------------------------------------------


def test_default_bind_is_loopback(run_dir: Path) -> None:
    from sitewatch.cli import cli

    assert DEFAULT_HOST == "127.0.0.1"
    host_option = next(p for p in cli.commands["review"].params if p.name == "host")
    assert host_option.default == DEFAULT_HOST
    srv = make_server(run_dir, port=0, owner="ana")
    try:
        assert srv.socket.getsockname()[0] == "127.0.0.1" and srv.loopback_only
        assert srv.url == f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.server_close()


def test_state_changes_only_by_same_origin_post(server: ReviewServer, run_dir: Path) -> None:
    site_id = get_json(server, "/api/sites?sort=id")["sites"][3]["id"]
    host, port = _address(server)
    path = f"/api/sites/{site_id}/review"
    good = json.dumps({"status": "confirmed", "note": "same origin", "reviewer": "ana"}).encode()
    json_type = {"Content-Type": "application/json"}
    before = store_state(run_dir)

    # another method on the state-changing route, or POST on a route that only reads: 405, nothing changes
    for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, body = request(server, method, path, good, {**json_type, **_same_origin(server)})
        assert status == 405 and headers["allow"] == "POST", (method, status)
        if method != "HEAD":
            assert "POST" in assert_error(status, headers, body, 405, 405)
    for method, target in (("PUT", f"/api/sites/{site_id}"), ("DELETE", f"/api/sites/{site_id}"),
                           ("PATCH", f"/api/sites/{site_id}"), ("POST", f"/api/sites/{site_id}"), ("POST", "/api/sites"),
                           ("POST", "/api/summary"), ("POST", "/"), ("DELETE", "/api/sites")):
        status, headers, body = request(server, method, target, good, {**json_type, **_same_origin(server)})
        assert_error(status, headers, body, 405, 405)
        assert headers["allow"] == "GET", (method, target)
    assert store_state(run_dir) == before

    # a POST another web site makes the browser send: 403, nothing changes
    cross = [
        {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
        {"Origin": f"https://127.0.0.1:{port}"}, {"Origin": f"http://localhost:{port}"},  # Host says 127.0.0.1
        {"Origin": f"http://127.0.0.1:{port}.evil.example"},
        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},                # no Origin
        {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "cross-site"},
    ]
    for headers_in in cross:
        status, headers, body = request(server, "POST", path, good, {**json_type, **headers_in})
        assert "cross-origin" in assert_error(status, headers, body, 403, 403), headers_in
    for repeated in ([("Origin", f"http://{host}:{port}"), ("Origin", "http://evil.example")],
                     [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site")]):
        data = raw_request(server, "POST", path, [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(good))), *repeated], good)
        assert_error(*exchange(server, data), 403, 403)
    assert store_state(run_dir) == before
    assert_serving(server)

    # the page's own origin works, by IP or by name; so does a tool that sends no Origin (curl)
    reviews = before[0]
    for headers_in in (_same_origin(server), {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}",
                                              "Sec-Fetch-Site": "same-origin"}, {}):
        status, headers, body = request(server, "POST", path, good, {**json_type, **headers_in})
        assert status == 200, (headers_in, body)
        assert json.loads(body)["site"]["status"] == "confirmed"
        reviews += 1
        assert store_state(run_dir)[0] == reviews


def test_host_must_be_this_machine(server: ReviewServer, run_dir: Path) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends ``Host: evil.example``."""
    host, port = _address(server)
    site_id = get_json(server, "/api/sites?sort=id")["sites"][0]["id"]
    good = json.dumps({"status": "rejected", "reviewer": "ana"}).encode()
    before = store_state(run_dir)
    for name in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"localhost.evil.example:{port}",
                 f"evil.example:{port}@127.0.0.1", "127.1", "0.0.0.0", f"[::ffff:10.0.0.1]:{port}", "*"):
        for method, target, body, extra in (("GET", "/", None, {}), ("GET", "/api/sites", None, {}),
                                            ("POST", f"/api/sites/{site_id}/review", good,
                                             {"Content-Type": "application/json", "Origin": f"http://{name}"})):
            status, headers, out = request(server, method, target, body, {"Host": name, **extra})
            assert "not a name of this server" in assert_error(status, headers, out, 403, 403), (name, target)
            assert headers["content-type"].startswith("application/json")  # never the page
    data = raw_request(server, "GET", "/api/sites", [("Host", "evil.example")])  # a second Host after ours
    assert_error(*exchange(server, data), 400, 400)
    assert store_state(run_dir) == before
    # this machine's names, with any port (an ssh tunnel's): the documented http://127.0.0.1:PORT/ works
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}",
                 "localhost:9000", f"127.0.0.2:{port}"):
        status, _, out = request(server, "GET", "/api/summary", headers={"Host": name})
        assert status == 200, (name, out)


#: Requests the HTTP parser (h11) or the server itself refuses before any route: each still gets a JSON error.
MALFORMED = (
    b"GARBAGE\r\n\r\n", b"GET /api/sites HTTP/9.9\r\n\r\n", b"GET /api/sites HTTP/1.1 extra\r\n\r\n",
    b"GET " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n",                          # request line too long
    b"GET /api/sites HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",     # header line too long
    b"GET /api/sites HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",  # too many headers
    b"GET /\r\n",                                                            # HTTP/0.9
    b"GET http://evil.example/api/sites HTTP/1.1\r\nHost: evil.example\r\n\r\n",  # absolute form
    b"FOO /api/sites HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",                 # unknown method
    b"GET /api/sites?limit=%C2%B2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",    # a digit int() refuses
    b"GET /api/sites?limit=" + b"9" * 5000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /api/sites?" + b"&".join(b"class=%d" % i for i in range(200)) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
)


def test_malformed_requests_get_json_errors(server: ReviewServer) -> None:
    for raw in MALFORMED:
        status, headers, body = exchange(server, raw)
        assert 400 <= status <= 505, (raw[:60], status)
        assert_error(status, headers, body, status, status)
        assert_serving(server)


def test_a_bug_is_a_500_and_one_log_line(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    """A failure inside the app (here: one injected into a real server's app) answers 500 without
    detail and logs one line; nothing reaches stderr, the server goes on."""
    lines: list[str] = []
    srv = make_server(run_dir, port=0, log=lines.append, owner="ana")

    def broken() -> dict[str, object]:
        raise RuntimeError("the summary broke\nin two lines")

    monkeypatch.setattr(srv.app, "summary", broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, headers, body = request(srv, "GET", "/api/summary")
        assert "internal error" in assert_error(status, headers, body, 500, 500)
        assert b"RuntimeError" not in body and b"broke" not in body
        assert request(srv, "GET", "/api/sites")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "GET '/api/summary'" in lines[0] and "RuntimeError: the summary broke in two lines" in lines[0]
    assert capfd.readouterr().err == ""


def test_concurrent_reviews_lose_nothing(server: ReviewServer, run_dir: Path) -> None:
    """Eight reviewers, each with their own token, review at once: every decision is kept, under
    the name of the token that made it (whatever name a body might claim)."""
    store = CandidateStore.in_run_dir(run_dir)
    ids = [s.site_id for s in store.sites()][:4]
    before = len(store.reviews())
    threads, per_thread = 8, 6
    failures: list[object] = []
    tokens = {k: store.add_reviewer(f"r{k}") for k in range(threads)}

    def work(k: int) -> None:
        for j in range(per_thread):
            status, out = post_review(server, ids[(k + j) % len(ids)],
                                      {"status": STATUSES[(k + j) % 4], "note": f"t{k} n{j}"},
                                      {"Authorization": f"Bearer {tokens[k]}"})
            if status != 200:
                failures.append(out)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
    log = store.reviews()
    assert len(log) == before + threads * per_thread
    assert {r.note for r in log[before:]} == {f"t{k} n{j}" for k in range(threads) for j in range(per_thread)}
    assert all(r.reviewer == f"r{r.note[1]}" for r in log[before:])  # note "t3 n1" was made with r3's token


# --- the command ----------------------------------------------------------------------------------


def _sitewatch(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sitewatch.cli import main; main()", *args]


def test_cli_without_store_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(_sitewatch("review", str(tmp_path)), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 3, r
    assert len(r.stderr.strip().splitlines()) == 1 and "candidates.gpkg" in r.stderr and "Traceback" not in r.stderr


def test_cli_records_one_decision(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sitewatch.cli import main

    site_id = CandidateStore.in_run_dir(run_dir).sites()[-1].site_id
    main(["review", str(run_dir), "--site", site_id, "--status", "unsure", "--reviewer", "cli", "--note", "from the shell"])
    last = CandidateStore.in_run_dir(run_dir).reviews(site_id)[-1]
    assert (last.status, last.reviewer, last.note) == ("unsure", "cli", "from the shell")
    with pytest.raises(SystemExit) as exc:
        main(["review", str(run_dir), "--site", site_id])
    assert exc.value.code == 2 and "--status" in capsys.readouterr().err


@contextmanager
def _review_server(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``sitewatch review ARGS`` as a child process, killed at the end if still running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_sitewatch("review", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, preexec_fn=default_sigint)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _url_port(proc: subprocess.Popen[str]) -> tuple[str, int]:
    """The host and port of the URL ``sitewatch review`` prints once it listens."""
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "http://" not in line:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
    m = re.search(r"http://([\d.]+):(\d+)/(?:#token=(\S+))?", line)
    assert m, line
    if m.group(3):
        TOKENS[int(m.group(2))] = m.group(3)
    return m.group(1), int(m.group(2))


def _listening(port: int) -> set[str]:
    """The addresses a socket listens on at ``port``, from Linux's /proc/net/tcp (IPv4)."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_cli_serves_until_ctrl_c(run_dir: Path) -> None:
    with _review_server(str(run_dir), "--port", "0") as proc:
        host, port = _url_port(proc)
        assert host == "127.0.0.1"  # the default: loopback only
        if Path("/proc/net/tcp").exists():
            assert _listening(port) == {"127.0.0.1"}
        assert request(("127.0.0.1", port), "GET", "/api/summary")[0] == 200  # with the printed link's token
        assert request(("127.0.0.1", port), "GET", "/api/summary", auth=False)[0] == 401
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "warning" not in err  # no warning on loopback


def test_cli_server_refuses_without_traceback(run_dir: Path) -> None:
    """Hostile and broken requests to ``sitewatch review``: each gets a one-line JSON error, the
    store is unchanged, and the server's terminal shows no traceback, in fact nothing but its stop line."""
    before = store_state(run_dir)
    site_id = CandidateStore.in_run_dir(run_dir).sites()[0].site_id
    review = f"/api/sites/{site_id}/review"
    good = json.dumps({"status": "confirmed", "reviewer": "ana"}).encode()
    surrogate = b'{"status": "confirmed", "reviewer": "\\ud800x"}'  # JSON for a string that is not text
    with _review_server(str(run_dir), "--port", "0") as proc:
        address = _url_port(proc)
        for target in ("/api/sites/..%2F..%2Frun.json", "/api/scenes/..%2f..%2fcandidates.gpkg/quicklook.png",
                       "/api/sites/%00/chip.png", "/api/sites/%ff", "/" + "z" * 70_000, "/api/sites?limit=%C2%B2"):
            assert_error(*request(address, "GET", target))
        for data in (
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", str(MAX_BODY + 1))]),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", "\u00b2")], good),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", "99")], good),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
                        _chunked(good)),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", "4")], b"\xff\xfe{}"),
            raw_request(address, "POST", review, [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(surrogate)))], surrogate),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", str(len(good))),
                                                  ("Origin", "http://evil.example")], good),
            raw_request(address, "POST", review, [("Content-Type", "application/json"), ("Content-Length", str(len(good))),
                                                  ("Sec-Fetch-Site", "cross-site")], good),
            raw_request(address, "GET", review, []),
            b"GET /api/sites HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            *MALFORMED,
        ):
            status, headers, body = exchange(address, data)
            assert 400 <= status <= 505, (data[:80], status)
            assert_error(status, headers, body, status, status)
        # connections that end early: nothing sent, and a body cut off by a reset
        socket.create_connection(address, timeout=10).close()
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(raw_request(address, "POST", review, [("Content-Type", "application/json"),
                                                               ("Content-Length", "100")], b'{"status"'))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        assert_serving(address)
        assert store_state(run_dir) == before
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in out and "Traceback" not in err
    assert err.splitlines() == ["sitewatch review: stopped; every decision is saved"], err


def test_cli_off_loopback_needs_tokens_and_named_hosts(run_dir: Path, tmp_path: Path) -> None:
    """``--host 0.0.0.0``: refused without reviewer tokens, and without --allow-host; then only a
    reviewer's own token opens the API (not the per-start one), only under an allowed host name
    (a rebinding page's name gets 403), and the terminal says exactly what is exposed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    copy = CandidateStore.in_run_dir(run)
    for name, _, revoked in copy.reviewers():  # other tests' reviewers
        if revoked is None:
            copy.revoke_reviewer(name)
    for args, needle in (((), "reviewers add"), (("--allow-host", "box.lan"), "reviewers add")):
        r = subprocess.run(_sitewatch("review", str(run), "--host", "0.0.0.0", "--port", "0", *args),  # noqa: S104
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    token = CandidateStore.in_run_dir(run).add_reviewer("ana")
    r = subprocess.run(_sitewatch("review", str(run), "--host", "0.0.0.0", "--port", "0"),  # noqa: S104
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--allow-host" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with _review_server(str(run), "--host", "0.0.0.0", "--port", "0", "--allow-host", "box.lan") as proc:  # noqa: S104
        port = 0
        while not port:
            line = proc.stdout.readline() if proc.stdout else ""
            m = re.search(r"http://HOST:(\d+)/", line)
            port = int(m.group(1)) if m else 0
        address = ("127.0.0.1", port)
        ok = {"Host": f"box.lan:{port}"}
        # no token, a wrong one: 401; the per-start token does not exist off loopback
        assert request(address, "GET", "/api/summary", headers=ok, auth=False)[0] == 401
        assert request(address, "GET", "/api/summary", headers={**ok, "Authorization": "Bearer sw_nope"}, auth=False)[0] == 401
        mine = {**ok, "Authorization": f"Bearer {token}"}
        assert request(address, "GET", "/api/summary", headers=mine, auth=False)[0] == 200
        # DNS rebinding: the attacker's name for this machine is not an allowed host
        status, headers, body = request(address, "GET", "/api/summary", headers={**mine, "Host": f"evil.example:{port}"},
                                        auth=False)
        assert "not a name of this server" in assert_error(status, headers, body, 403, 403)
        site_id = CandidateStore.in_run_dir(run).sites()[0].site_id
        before = store_state(run)
        status, headers, body = request(address, "POST", f"/api/sites/{site_id}/review",
                                        json.dumps({"status": "rejected"}).encode(),
                                        {**mine, "Content-Type": "application/json", "Origin": "http://evil.example"},
                                        auth=False)
        assert_error(status, headers, body, 403, 403)
        assert store_state(run) == before
        status, _, out = request(address, "POST", f"/api/sites/{site_id}/review", json.dumps({"status": "rejected"}).encode(),
                                 {**mine, "Content-Type": "application/json"}, auth=False)
        assert status == 200 and json.loads(out)["review"]["reviewer"] == "ana"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    exposed = [line for line in err.splitlines() if "reachable from other machines" in line]
    assert len(exposed) == 1 and "(ana)" in exposed[0] and "box.lan" in exposed[0], err
    assert "Traceback" not in err


# --- who is reviewing -------------------------------------------------------------------------------


def test_the_api_needs_a_login_and_the_session_names_the_reviewer(run_dir: Path, tmp_path: Path) -> None:
    """Token-less calls get 401 (the page itself is served); the per-start token or a reviewer's
    token opens a session (an HttpOnly, SameSite=Strict cookie); a revoked token ends its sessions."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    srv = make_server(run, port=0, owner="ana")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        for path in ("/api/summary", "/api/sites", "/api/scenes", "/api/session", "/api/sites/kiln-000001/chip.png"):
            status, headers, body = request(srv, "GET", path, auth=False)
            assert "log in" in assert_error(status, headers, body, 401, 401), path
        assert request(srv, "GET", "/", auth=False)[0] == 200
        for token in ("", "nope", "sw_" + "x" * 32, srv.secret + "x"):
            status, headers, body = request(srv, "POST", "/api/session", json.dumps({"token": token}).encode(),
                                            {"Content-Type": "application/json"}, auth=False)
            assert_error(status, headers, body, 401, 401)
        status, headers, body = request(srv, "POST", "/api/session", json.dumps({"token": srv.secret}).encode(),
                                        {"Content-Type": "application/json"}, auth=False)
        assert status == 200 and json.loads(body) == {"reviewer": "ana"}
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = {"Cookie": cookie.split(";")[0]}
        assert json.loads(request(srv, "GET", "/api/session", headers=session, auth=False)[2]) == {"reviewer": "ana"}
        store = CandidateStore.in_run_dir(run)
        ben = store.add_reviewer("ben")
        status, headers, _ = request(srv, "POST", "/api/session", json.dumps({"token": ben}).encode(),
                                     {"Content-Type": "application/json"}, auth=False)
        ben_session = {"Cookie": headers["set-cookie"].split(";")[0]}
        site_id = store.sites()[0].site_id
        status, _, out = request(srv, "POST", f"/api/sites/{site_id}/review", json.dumps({"status": "unsure"}).encode(),
                                 {**ben_session, "Content-Type": "application/json"}, auth=False)
        assert status == 200 and json.loads(out)["review"]["reviewer"] == "ben" == store.site(site_id).reviewer
        store.revoke_reviewer("ben")
        assert request(srv, "GET", "/api/summary", headers=ben_session, auth=False)[0] == 401
        assert request(srv, "GET", "/api/summary", headers={"Authorization": f"Bearer {ben}"}, auth=False)[0] == 401
        assert request(srv, "GET", "/api/summary", headers=session, auth=False)[0] == 200  # ana's session goes on
    finally:
        srv.shutdown()
        srv.server_close()


def test_loopback_is_decided_from_the_bound_address(run_dir: Path) -> None:
    """``--host 127.1`` binds 127.0.0.1: loopback, so the Host check and the per-start token hold."""
    srv = make_server(run_dir, "127.1", 0, owner="ana")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert srv.loopback_only
        port = srv.server_address[1]
        status, headers, body = request(srv, "GET", "/api/summary", headers={"Host": f"rebound.example:{port}"})
        assert_error(status, headers, body, 403, 403)
        assert request(srv, "GET", "/api/summary")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_reviewers_cli_issues_lists_and_revokes_tokens(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    out = subprocess.run(_sitewatch("reviewers", "add", "Car  la", str(run)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    token = re.search(r"token (sw_\S+)", out.stdout).group(1)  # type: ignore[union-attr]
    store = CandidateStore.in_run_dir(run)
    assert store.reviewer_for_token(token) == "Car la"
    with sqlite3.connect(run / "candidates.gpkg") as con:  # only the hash is kept
        assert token not in json.dumps(con.execute("SELECT * FROM reviewers").fetchall())
    again = subprocess.run(_sitewatch("reviewers", "add", "Car la", str(run)), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already has a token" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bidi = subprocess.run(_sitewatch("reviewers", "add", "ana\u202e", str(run)), capture_output=True, text=True, timeout=60)
    assert bidi.returncode == 2 and "U+202E" in bidi.stderr
    listed = subprocess.run(_sitewatch("reviewers", "list", str(run)), capture_output=True, text=True, timeout=60)
    assert "Car la  issued" in listed.stdout
    gone = subprocess.run(_sitewatch("reviewers", "revoke", "Car la", str(run)), capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0 and store.reviewer_for_token(token) is None


# --- the web map: the vendored Leaflet and the density layer ----------------------------------------


def test_the_vendored_leaflet_is_served_without_a_login_and_nothing_else_under_static(server: ReviewServer) -> None:
    from sitewatch.imagery.webmap import VENDORED, vendored

    for name, ctype in VENDORED.items():
        status, headers, body = request(server, "GET", f"/static/leaflet/{name}", auth=False)
        assert status == 200 and headers["content-type"] == ctype, name
        assert body == vendored(name)[0]  # type: ignore[index]
        assert headers["x-content-type-options"] == "nosniff"
    for target in ("/static/leaflet/leaflet.js.map", "/static/leaflet/leaflet-src.js", "/static/leaflet/images/x.png",
                   "/static/leaflet/images/leaflet.js", "/static/leaflet/%2e%2e%2f__init__.py",
                   "/static/leaflet/..%2F..%2Fwebmap%2F__init__.py", "/static/leaflet/images/..%2Fleaflet.js",
                   "/static/leaflet/", "/static/leaflet/LICENSE/x", "/static/maplayers.js"):
        status, headers, body = request(server, "GET", target, auth=False)
        assert_error(status, headers, body, 404, 404)


def test_density_is_lon_lat_cells_with_counts_and_hotspots(server: ReviewServer, run_dir: Path) -> None:
    status, headers, body = request(server, "GET", "/api/density", auth=False)
    assert "log in" in assert_error(status, headers, body, 401, 401)
    status, _, body = request(server, "GET", "/api/density?cell=1000&status=all")
    assert status == 200, body[:200]
    fc = json.loads(body)
    sites = CandidateStore.in_run_dir(run_dir).sites()
    assert fc["type"] == "FeatureCollection" and fc["cell_m"] == 1000 and fc["grid_crs"].startswith("EPSG:326")
    assert sum(f["properties"]["count"] for f in fc["features"]) == len(sites) == fc["sites"]
    for f in fc["features"]:
        p = f["properties"]
        assert set(p) == {"count", "gi_z", "gi_p", "hotspot", "region"} and p["hotspot"] in ("hot", "cold", None)
        ring = f["geometry"]["coordinates"][0]
        assert len(ring) == 5 and all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)
    status, _, body = request(server, "GET", "/api/density?cell=5km&status=confirmed,unsure")
    assert status == 200 and json.loads(body)["cell_m"] == 5000
    for bad in ("cell=abc", "cell=-5", "cell=1", "status=maybe", "cell=1000&cell=2000", "zoom=3"):
        status, headers, body = request(server, "GET", f"/api/density?{bad}")
        assert_error(status, headers, body, 400, 400)
