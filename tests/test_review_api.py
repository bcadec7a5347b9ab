"""The review server's JSON API, without a browser: routes, 4xx cases, path traversal, concurrency, the CLI."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
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

from imagery.review import CHIP_MAX_PX, CHIP_MIN_PX, MAX_BODY, ReviewServer, make_server, uncertainty
from imagery.store import STATUSES, CandidateStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("review-api"))


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[ReviewServer]:
    srv = make_server(run_dir, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv: ReviewServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw request (the path is sent exactly as given, no normalisation)."""
    host, port = srv.server_address[:2]
    con = http.client.HTTPConnection(str(host), port, timeout=20)
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
    assert lo <= status <= hi, (status, body[:200])
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert set(doc) == {"error"} and doc["error"], doc
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

    from imagery.errors import InputError

    shutil.copy(run_dir / "candidates.gpkg", tmp_path / "candidates.gpkg")
    with sqlite3.connect(tmp_path / "candidates.gpkg") as con:
        con.execute("DELETE FROM sample")
    with pytest.raises(InputError, match="sitewatch estimate"):
        make_server(tmp_path, port=0, sample=True)


def test_sample_filter(run_dir: Path, server: ReviewServer) -> None:
    from imagery.estimate import draw_sample

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


def test_review_rejects_bad_requests(server: ReviewServer, run_dir: Path) -> None:
    site_id = get_json(server, "/api/sites?sort=id")["sites"][1]["id"]
    good = {"status": "rejected", "note": "", "reviewer": "ana"}
    before = len(CandidateStore.in_run_dir(run_dir).reviews())
    cases: list[tuple[int, dict[str, object] | None, bytes | None, dict[str, str]]] = [
        (400, {"status": "maybe", "reviewer": "ana"}, None, {}),
        (400, {"status": "confirmed"}, None, {}),                                  # no reviewer
        (400, {"status": "confirmed", "reviewer": "  "}, None, {}),
        (400, {"status": "confirmed", "reviewer": "a" * 101}, None, {}),
        (400, {"status": "confirmed", "reviewer": "a\nb"}, None, {}),
        (400, {"status": "confirmed", "reviewer": "ana", "note": "x" * 2001}, None, {}),
        (400, {"status": "confirmed", "reviewer": "ana", "note": 5}, None, {}),
        (400, {"status": "confirmed", "reviewer": "ana", "extra": 1}, None, {}),
        (400, None, b"[1, 2]", {}),
        (400, None, b"{not json", {}),
        (400, None, b"\xff\xfe", {}),
        (400, None, b"[" * 60000, {}),                                              # too deep for the parser
        (413, None, b"{" + b" " * MAX_BODY + b"}", {}),
        (415, None, json.dumps(good).encode(), {"Content-Type": "text/plain"}),
        (415, None, json.dumps(good).encode(), {"Content-Type": "application/x-www-form-urlencoded"}),
        (403, good, None, {"Origin": "http://evil.example"}),
        (403, good, None, {"Origin": "null"}),
        (403, good, None, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for code, doc, raw, headers in cases:
        status, out = post_review(server, site_id, doc, headers, raw)
        assert status == code, (code, doc, raw and raw[:40], headers, out)
        assert set(out) == {"error"}
    assert len(CandidateStore.in_run_dir(run_dir).reviews()) == before  # nothing was recorded

    status, out = post_review(server, "kiln-999999", good)
    assert status == 404 and "error" in out
    status, out = post_review(server, "../../etc/passwd", good)
    assert status == 404
    # the page's own origin is fine
    host, port = server.server_address[:2]
    status, out = post_review(server, site_id, good, {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"})
    assert status == 200, out
    # state changes only by POST
    assert request(server, "GET", f"/api/sites/{site_id}/review")[0] == 405
    for method in ("PUT", "DELETE", "PATCH"):
        status, headers, body = request(server, method, f"/api/sites/{site_id}", b"{}", {"Content-Type": "application/json"})
        assert_error(status, headers, body, 405, 405)
    assert request(server, "POST", "/api/sites", b"{}", {"Content-Type": "application/json"})[0] == 405
    # a Host that is not this machine (DNS rebinding) is refused on a loopback-bound server
    assert_error(*request(server, "GET", "/api/sites", headers={"Host": "evil.example:8765"}))


def test_path_traversal_never_serves_files(server: ReviewServer) -> None:
    targets = [
        "/api/sites/..%2F..%2Fetc%2Fpasswd", "/api/sites/..%2F..%2Fetc%2Fpasswd/chip.png",
        "/api/sites/%2e%2e%2f%2e%2e%2frun.json", "/api/sites/..%252F..%252Frun.json",
        "/quicklooks/../../run.json", "/quicklooks/..%2F..%2Frun.json", "/quicklooks/S2_20240105_coast.png",
        "/api/scenes/..%2Frun.json/quicklook.png", "/api/scenes/..%2F..%2F..%2Fetc%2Fpasswd/quicklook.png",
        "/api/scenes/%2e%2e/quicklook.png", "/api/scenes/..%5c..%5crun.json/quicklook.png",
        "/api/scenes/%2Fetc%2Fpasswd/quicklook.png", "/api/scenes/..%00/quicklook.png",
        "/../run.json", "/api/../run.json", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/run.json",
        "/candidates.gpkg", "/map.html", "/etc/passwd", "/api/sites/%ff%fe", "/api/sites/a%00b",
        "/api/scenes/S2_20240105_coast/..%2F..%2Frun.json",
    ]
    for target in targets:
        status, headers, body = request(server, "GET", target)
        assert_error(status, headers, body)
        assert b"root:" not in body and b"sitewatch_run" not in body and b"SQLite" not in body, target


def test_malformed_requests_get_json_errors(server: ReviewServer) -> None:
    host, port = server.server_address[:2]
    for raw in (b"GARBAGE\r\n\r\n", b"GET /api/sites HTTP/9.9\r\n\r\n", b"GET " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((str(host), port), timeout=10) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        code = int(head.split()[1])
        assert 400 <= code <= 505 and b"application/json" in head, head
        assert "error" in json.loads(body)


def test_concurrent_reviews_lose_nothing(server: ReviewServer, run_dir: Path) -> None:
    store = CandidateStore.in_run_dir(run_dir)
    ids = [s.site_id for s in store.sites()][:4]
    before = len(store.reviews())
    threads, per_thread = 8, 6
    failures: list[object] = []

    def work(k: int) -> None:
        for j in range(per_thread):
            status, out = post_review(server, ids[(k + j) % len(ids)],
                                      {"status": STATUSES[(k + j) % 4], "note": f"t{k} n{j}", "reviewer": f"r{k}"})
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


def test_cli_serves_until_ctrl_c(run_dir: Path) -> None:
    with _review_server(str(run_dir), "--port", "0") as proc:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        con = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=10)
        con.request("GET", "/api/summary")
        assert con.getresponse().status == 200
        con.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out


def test_cli_warns_off_loopback(run_dir: Path) -> None:
    with _review_server(str(run_dir), "--host", "0.0.0.0", "--port", "0") as proc:  # noqa: S104
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "http://" not in line:
            line = proc.stdout.readline() if proc.stdout else ""
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert "warning" in err and "0.0.0.0" in err
