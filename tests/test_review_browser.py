"""The review page in a real headless Chromium (Playwright driving the system's /usr/bin/chromium).

From a real detect run: the page loads offline with no console errors, keyboard reviews are
saved to the store and survive a restart, notes holding HTML stay text, filters and sorting
work, chips load, and all of it under the page's own Content Security Policy. Markup in
any text of the store (notes, reviewer, class and scene names, the run's name) is shown as
text and never runs. Saves the README's screenshot, docs/review.png.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from chromium import launch, playwright_or_skip
from conftest import AddScene, make_review_run

from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.review.server import ReviewServer, make_server

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "review.png"

sync_api = playwright_or_skip()
expect = sync_api.expect


class Served:
    """A review server running in a thread."""

    def __init__(self, run_dir: Path, **kw: Any) -> None:
        kw.setdefault("owner", "ana")
        self.server: ReviewServer = make_server(run_dir, port=0, **kw)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        #: The link ``sitewatch review`` prints: the page with this start's token, which logs the page in.
        self.url = self.server.login_url
        self.base = self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Page:
    """A browser page that records console messages, page errors and every request.

    Playwright's ``wait_for_function`` evaluates strings, which the page's Content Security Policy
    forbids: by default the CSP is bypassed, which also makes the markup tests stricter (markup
    must stay text even without the CSP's help). ``csp=True`` keeps it; then wait with selectors
    and ``expect`` only.
    """

    def __init__(self, browser: Any, url: str, *, csp: bool = False) -> None:
        self.page = browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=not csp)
        self.console: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.response = self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=15_000)

    def selected(self) -> str:
        return self.page.inner_text("#site-id")

    def rows(self) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all("#list tbody tr[data-id]", """rows => rows.map(r => ({
            id: r.dataset.id, cls: r.cells[1].textContent, score: r.cells[2].textContent,
            status: r.cells[4].textContent}))""")

    def wait_saved(self) -> None:
        self.page.wait_for_function("document.getElementById('save-state').textContent === 'all decisions saved'",
                                    timeout=10_000)

    def wait_list(self) -> None:
        """Wait for the list's latest query to be shown (the page sets data-loading while one is on its way)."""
        self.page.wait_for_function("document.body.dataset.loading === '0'", timeout=10_000)

    def chip_width(self) -> int:
        """The selected site's chip's natural width, once it has loaded (0 if it failed)."""
        self.page.wait_for_function("() => { const i = document.getElementById('chip'); return i.complete && "
                                    "!document.getElementById('chip-box').classList.contains('loading'); }",
                                    timeout=10_000)
        return int(self.page.eval_on_selector("#chip", "img => img.naturalWidth"))

    def errors(self) -> list[tuple[str, str]]:
        return [m for m in self.console if m[0] in ("error", "pageerror")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("review-browser"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch(sync_api) as b:
        yield b


@pytest.fixture
def served(run_dir: Path) -> Iterator[Served]:
    s = Served(run_dir)
    yield s
    s.stop()


def test_review_with_keys_and_restart(browser: Any, run_dir: Path) -> None:
    store = CandidateStore.in_run_dir(run_dir)
    total = len(store.sites())
    first = Served(run_dir)
    try:
        p = Page(browser, first.url)
        assert len(p.rows()) == total > 5
        assert p.chip_width() > 0
        assert p.page.inner_text("#progress-text") == f"0 / {total} reviewed"

        assert p.page.inner_text("#reviewer") == "ana"  # who the link logs in as
        assert "#token" not in p.page.url  # the token leaves the address bar
        decided: dict[str, str] = {}
        for key, status in (("y", "confirmed"), ("n", "rejected"), ("u", "unsure"), ("y", "confirmed")):
            site = p.selected()
            p.page.keyboard.press(key)
            p.page.wait_for_function("s => document.getElementById('site-id').textContent !== s", arg=site)
            decided[site] = status  # and the page moved on to the next unreviewed site
        p.wait_saved()
        assert p.page.inner_text("#progress-text") == f"4 / {total} reviewed"
        for site_id, status in decided.items():
            s = store.site(site_id)
            assert (s.status, s.reviewer) == (status, "ana")
        # arrows: next and previous
        here = p.selected()
        p.page.keyboard.press("ArrowDown")
        assert p.selected() != here
        p.page.keyboard.press("ArrowUp")
        assert p.selected() == here

        # A note holding markup is text, never executed.
        evil = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2"><b>bold</b>'
        target = p.selected()
        p.page.fill("#note", evil)
        p.page.keyboard.press("Enter")  # leaves the note field
        p.page.keyboard.press("u")
        p.wait_saved()
        assert store.reviews(target)[-1].note == evil
        decided[target] = "unsure"
        assert not p.errors(), p.errors()
        p.page.close()
    finally:
        first.stop()

    # A new server on the same directory shows every decision.
    second = Served(run_dir)
    try:
        p = Page(browser, second.url)
        statuses = {r["id"]: r["status"] for r in p.rows()}
        for site_id, status in decided.items():
            assert statuses[site_id] == status
        p.page.click(f"#list tbody tr[data-id='{target}']")
        p.page.wait_for_function("t => document.getElementById('site-id').textContent === t", arg=target)
        p.page.wait_for_selector("#log li .text")
        assert p.page.inner_text("#log li .text") == evil
        assert p.page.evaluate("typeof window.__pwned") == "undefined"
        assert p.page.evaluate("document.querySelectorAll('#right img:not(#chip), #right b, #right script').length") == 0
        assert p.page.input_value("#note") == evil
        assert p.chip_width() > 0

        # the README's screenshot: a real run with reviewed sites, a kiln seen on both dates selected
        w, south, e, n = store.scenes()[0].bounds_lonlat
        kiln = max((s for s in store.sites(cls="kiln", status="unreviewed") if s.n_detections == 2),
                   key=lambda s: min(s.lon - w, e - s.lon, s.lat - south, n - s.lat)).site_id  # far from the edges
        p.page.click(f"#list tbody tr[data-id='{kiln}']")
        p.page.wait_for_function("() => { const i = document.getElementById('chip'); "
                                 "return i.complete && i.naturalWidth > 0 && "
                                 "!document.getElementById('chip-box').classList.contains('loading'); }")
        p.wait_list()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        p.page.screenshot(path=str(SCREENSHOT))
        assert not p.errors(), p.errors()
        origin = second.base.rstrip("/")
        outside = [u for u in p.requests if not (u.startswith(origin + "/") or u.startswith("data:"))]
        assert not outside, outside
    finally:
        second.stop()


def test_filters_and_sorting(browser: Any, served: Served, run_dir: Path) -> None:
    store = CandidateStore.in_run_dir(run_dir)
    p = Page(browser, served.url)
    # sort by score: click toggles high-first (the default) and low-first
    scores = [float(r["score"]) for r in p.rows()]
    assert scores == sorted(scores, reverse=True)
    p.page.click("#list th[data-sort='score']")
    p.wait_list()
    scores = [float(r["score"]) for r in p.rows()]
    assert scores == sorted(scores)
    p.page.click("#list th[data-sort='class']")
    p.wait_list()
    classes = [r["cls"] for r in p.rows()]
    assert classes == sorted(classes)

    p.page.select_option("#f-class", "kiln")
    p.wait_list()
    rows = p.rows()
    assert rows and {r["cls"] for r in rows} == {"kiln"} and len(rows) == len(store.sites(cls="kiln"))
    p.page.select_option("#f-class", "")
    p.page.fill("#f-min", "0.9")
    p.page.keyboard.press("Enter")
    p.wait_list()
    rows = p.rows()
    assert rows and all(float(r["score"]) >= 0.9 for r in rows)
    assert len(rows) == len(store.sites(min_score=0.9))
    p.page.fill("#f-min", "")
    p.page.keyboard.press("Enter")
    for s in ("unreviewed", "rejected", "unsure"):
        p.page.uncheck(f"#f-st-{s}")
    p.wait_list()
    rows = p.rows()
    assert {r["status"] for r in rows} <= {"confirmed"} and len(rows) == len(store.sites(status="confirmed"))
    assert not p.errors(), p.errors()


def test_sample_mode(browser: Any, run_dir: Path) -> None:
    from sitewatch.imagery.candidates.estimate import draw_sample

    store = CandidateStore.in_run_dir(run_dir)
    draw_sample(store, 2, seed=7, redraw=True)
    sample = {m.site_id for m in store.sample()}
    s = Served(run_dir, sample=True)
    try:
        p = Page(browser, s.url)
        assert p.page.is_checked("#f-sample")
        assert {r["id"] for r in p.rows()} == sample
        assert p.chip_width() > 0
        assert not p.errors(), p.errors()
    finally:
        s.stop()


# --- markup and the Content Security Policy ------------------------------------------------------

NOTE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
REVIEWER = '<b onmouseover="window.__pwned=3">ana</b>'
CLASS = '<img src=x onerror="window.__pwned=4">'
SCENE = '<svg onload="window.__pwned=5"></svg><script>window.__pwned=6</script>'
RUN = "run <img src=x onerror=window.__pwned=7>"


def _post_review(url: str, site_id: str, doc: dict[str, str]) -> None:
    """Record a decision through the JSON API, from the page's own origin, with the link's token."""
    u = urlsplit(url)
    token = u.fragment.removeprefix("token=")
    con = http.client.HTTPConnection(u.hostname or "", u.port, timeout=20)
    try:
        con.request("POST", f"/api/sites/{quote(site_id, safe='')}/review", json.dumps(doc).encode(),
                    {"Content-Type": "application/json", "Origin": f"http://{u.netloc}",
                     "Authorization": f"Bearer {token}"})
        r = con.getresponse()
        body = r.read()
        assert r.status == 200, body
    finally:
        con.close()


def _csp_messages(p: Page) -> list[tuple[str, str]]:
    return [m for m in p.console if "Content Security Policy" in m[1]]


@pytest.mark.parametrize("csp", [True, False], ids=["csp", "csp-bypassed"])
def test_markup_in_the_store_is_text(browser: Any, tmp_path: Path, add_scene: AddScene, csp: bool) -> None:
    """A note, a reviewer, a class, a scene and a run directory named with markup: all shown as text,
    none of it runs (with the page's CSP, and without it: the page itself inserts text as text)."""
    run = tmp_path / RUN
    run.mkdir()
    store = CandidateStore.create(run / "candidates.gpkg")
    add_scene(store, SCENE, [(CLASS, 88.40, 22.60, 0.9), ("kiln", 88.42, 22.60, 0.4)], acquired="2024-01-05")
    site_id = next(s.site_id for s in store.sites(cls=CLASS))
    s = Served(run, owner=REVIEWER)  # the reviewer's name, as the server knows it, holds markup
    try:
        _post_review(s.url, site_id, {"status": "unsure", "note": NOTE})
        p = Page(browser, s.url, csp=csp)
        policy = p.response.headers["content-security-policy"]
        assert "script-src 'nonce-" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy

        p.page.locator("#list tbody tr", has_text="__pwned=4").click()
        expect(p.page.locator("#site-id")).to_have_text(site_id)
        expect(p.page.locator("#log li .text")).to_have_text(NOTE)
        # the chip cannot be cut (no scene files): once its error is shown, the page's image loads are over
        expect(p.page.locator("#chip-msg")).to_have_text(re.compile("No image chip"))
        p.page.hover("#log li .when")

        assert p.page.evaluate("typeof window.__pwned") == "undefined"
        assert p.page.text_content("#log li .text") == NOTE
        assert REVIEWER in (p.page.text_content("#log li .when") or "")
        assert p.page.input_value("#note") == NOTE
        assert p.page.text_content("#site-class") == CLASS
        assert CLASS in p.page.eval_on_selector_all("#f-class option", "os => os.map(o => o.textContent)")
        assert CLASS in [r["cls"] for r in p.rows()]
        assert p.page.text_content("#dets td") == SCENE
        facts = p.page.text_content("#facts") or ""
        assert SCENE in facts and REVIEWER in facts
        # the scene's name in its outline's tooltip on the map: text too
        p.page.evaluate("() => sitewatchReview.layers.scenes.eachLayer(l => { if (l.getTooltip()) { l.openTooltip(); } })")
        assert (p.page.text_content(".leaflet-tooltip") or "").startswith(SCENE)
        assert p.page.text_content("#run") == RUN and RUN in p.page.title()
        # nothing of the markup became an element
        assert p.page.evaluate("document.querySelectorAll('[onerror], [onload], [onmouseover], b').length") == 0
        # the config, Leaflet, the map layers and the page's
        assert p.page.evaluate("document.querySelectorAll('script').length") == 4
        # the chip (and the map's quick-looks, none here: the scene has no files)
        assert p.page.evaluate("document.querySelectorAll('img:not(.leaflet-image-layer)').length") == 1
        assert p.page.evaluate("document.querySelectorAll('svg').length") >= 1  # the map's vector layers...
        assert p.page.evaluate("document.querySelectorAll('svg:not(#map svg)').length") == 0  # ...and no other
        assert not [m for m in p.console if m[0] == "pageerror"], p.console
        assert not _csp_messages(p), p.console  # the CSP had nothing to block
        p.page.close()
    finally:
        s.stop()


def test_page_works_under_its_csp(browser: Any, served: Served, run_dir: Path) -> None:
    """The real page with its Content Security Policy enforced: it loads, draws the quick-looks and
    the chip, saves a decision, logs nothing; and a script without the nonce is blocked."""
    p = Page(browser, served.url, csp=True)
    policy = p.response.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", policy)
    assert nonce and p.page.get_attribute("script[nonce]", "nonce") in ("", nonce.group(1))  # hidden from the DOM
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    expect(p.page.locator("#chip-box")).not_to_have_class(re.compile("loading"))
    assert p.page.eval_on_selector("#chip", "img => img.naturalWidth") > 0
    # both quick-looks on the map, loaded from this server under the policy, and Leaflet's files too
    expect(p.page.locator("#map img.leaflet-image-layer")).to_have_count(2)
    p.page.wait_for_selector("body[data-density='1']")
    widths = p.page.eval_on_selector_all("#map img.leaflet-image-layer", "ims => ims.map(i => i.complete && i.naturalWidth)")
    assert len(widths) == 2 and all(widths), widths
    assert p.page.eval_on_selector(".leaflet-container", "e => getComputedStyle(e).position") == "relative"  # leaflet.css
    assert not _csp_messages(p), p.console  # Leaflet and the layers run under the policy: nothing blocked

    site = p.selected()
    expect(p.page.locator("#reviewer")).to_have_text("ana")  # logged in by the link's token, under the CSP
    p.page.keyboard.press("n")
    expect(p.page.locator("#site-id")).not_to_have_text(site)
    expect(p.page.locator("#save-state")).to_have_text("all decisions saved")
    assert CandidateStore.in_run_dir(run_dir).site(site).reviewer == "ana"
    assert not p.errors(), p.errors()

    # the policy is enforced: a script element without the nonce does not run
    p.page.evaluate("""() => { const s = document.createElement('script');
                               s.textContent = 'window.__injected = 1'; document.body.appendChild(s); }""")
    assert p.page.evaluate("typeof window.__injected") == "undefined"
    assert _csp_messages(p), p.console
    p.page.close()


def test_a_long_list_loads_page_by_page_as_the_reviewer_goes(browser: Any, tmp_path: Path, add_scene: AddScene) -> None:
    """1,200 sites: the page fetches 500, then the next 500 when the list is scrolled to its end
    or the selection comes near it; the counts are the whole list's from the start."""
    run = tmp_path / "long"
    run.mkdir()
    store = CandidateStore.create(run / "candidates.gpkg")
    add_scene(store, "s1", [("kiln", 88.0 + 0.002 * (i % 40), 22.0 + 0.002 * (i // 40), 0.2 + 0.7 * ((i * 37) % 1200) / 1200)
                            for i in range(1200)])
    served = Served(run)
    try:
        p = Page(browser, served.url)
        p.wait_list()
        assert len(p.rows()) == 500
        assert p.page.inner_text("#progress-text") == "0 / 1200 reviewed"
        assert p.page.inner_text("#list-foot").startswith("1200 sites")
        p.page.eval_on_selector("#list-wrap", "w => { w.scrollTop = w.scrollHeight; }")
        p.page.wait_for_function("document.querySelectorAll('#list tbody tr[data-id]').length === 1000", timeout=10_000)
        rows = p.rows()
        assert len({r["id"] for r in rows}) == 1000  # no site twice
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)  # the pages continue the sort
        # stepping with the keys near the end of what is loaded brings the rest
        p.page.click("#list tbody tr[data-i='990']")
        p.page.keyboard.press("j")
        p.page.wait_for_function("document.querySelectorAll('#list tbody tr[data-id]').length === 1200", timeout=10_000)
        assert p.page.inner_text("#nav-pos") == "992 of 1200"
        # (these made-up sites have no scene pixels, so their chips are 404s; no script error)
        assert not [m for m in p.errors() if m[0] == "pageerror"]
    finally:
        served.stop()


def test_the_page_logs_in_by_the_token_in_its_link(browser: Any, served: Served, run_dir: Path) -> None:
    """Without a token the page shows no site and says how to log in; a reviewer's own link logs
    them in under their name (the token is then gone from the address bar)."""
    page = browser.new_page(viewport={"width": 1200, "height": 800}, bypass_csp=True)
    page.goto(served.base)
    expect(page.locator("#message")).to_have_text(re.compile("log in.*#token="))
    assert page.eval_on_selector_all("#list tbody tr[data-id]", "rows => rows.length") == 0
    page.close()
    token = CandidateStore.in_run_dir(run_dir).add_reviewer("dina")
    p = Page(browser, f"{served.base}#token={token}")
    expect(p.page.locator("#reviewer")).to_have_text("dina")
    assert "#token" not in p.page.url and len(p.rows()) > 0
    assert not p.errors(), p.errors()


# --- the map: Leaflet, vendored; fit, selection, keys, wheel, layers, density ------------------------

PORTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen2ships"
DENSITY_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "review-density.png"

# JavaScript run in the page (the tests bypass the CSP to evaluate it; test_page_works_under_its_csp runs
# the page under it): the map's view and the data's extent, in container pixels.
VIEW = """() => {
  const m = window.sitewatchMap, b = m.getBounds(), d = window.sitewatchReview.dataBounds(), s = m.getSize();
  const px = ll => m.latLngToContainerPoint(ll);
  return {zoom: m.getZoom(), w: s.x, h: s.y,
          map: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()],
          data: [d.getWest(), d.getSouth(), d.getEast(), d.getNorth()],
          dataPx: [px(d.getNorthWest()).x, px(d.getNorthWest()).y, px(d.getSouthEast()).x, px(d.getSouthEast()).y]};
}"""
SITE_VIEW = """i => {
  const m = window.sitewatchMap, b = window.sitewatchReview.siteBounds(i), s = m.getSize();
  const c = m.latLngToContainerPoint(b.getCenter()), nw = m.latLngToContainerPoint(b.getNorthWest()),
        se = m.latLngToContainerPoint(b.getSouthEast());
  return {cx: c.x, cy: c.y, w: s.x, h: s.y, box: [nw.x, nw.y, se.x, se.y], inside: m.getBounds().contains(b),
          zoom: m.getZoom()};
}"""


def _leaves_localhost(page: Any) -> list[str]:
    """Abort (and list) every request of ``page`` to anything but this machine: the map must need none."""
    blocked: list[str] = []

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname or ""
        if r.request.url.startswith("data:") or host in ("127.0.0.1", "localhost", "::1"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return blocked


def _frames(v: dict[str, Any]) -> None:
    """The map shows all the data, and the data fill most of it (fit frames the data, not the globe)."""
    w, s, e, n = v["map"]
    dw, ds, de, dn = v["data"]
    assert w <= dw and s <= ds and e >= de and n >= dn, v
    x0, y0, x1, y1 = v["dataPx"]
    assert (x1 - x0) >= 0.5 * v["w"] or (y1 - y0) >= 0.5 * v["h"], v
    assert v["zoom"] >= 10, v  # a few km of scenes: nowhere near the whole globe


def test_fit_frames_the_data_and_a_selected_site_is_centred(browser: Any, served: Served, run_dir: Path) -> None:
    p = Page(browser, served.url)
    blocked = _leaves_localhost(p.page)
    _frames(p.page.evaluate(VIEW))  # the page opens fitted to the data

    # a site from the end of the list, then the next one by key: each centred, its box in view
    sites = p.rows()
    for how in ("click", "j"):
        if how == "click":
            i = len(sites) - 3
            p.page.click(f"#list tbody tr[data-i='{i}']")
        else:
            i += 1
            p.page.keyboard.press("j")
        p.page.wait_for_function("t => document.getElementById('site-id').textContent === t", arg=sites[i]["id"])
        v = p.page.evaluate(SITE_VIEW, i)
        assert v["inside"], v
        assert abs(v["cx"] - v["w"] / 2) <= 2 and abs(v["cy"] - v["h"] / 2) <= 2, v  # centred
        x0, y0, x1, y1 = v["box"]
        assert 0 <= x0 < x1 <= v["w"] and 0 <= y0 < y1 <= v["h"] and x1 - x0 >= 4 and y1 - y0 >= 4, v  # its box shows
        assert v["zoom"] >= 14, v

    # each quick-look lies on its scene's corners (placed by an affine map of its pixels, not by bounds)
    placed = p.page.evaluate("""() => {
      const m = window.sitewatchMap, box = m.getContainer().getBoundingClientRect(), out = [];
      window.sitewatchReview.layers.scenes.eachLayer(l => {
        if (!l._corners) { return; }
        const pts = l._corners.map(c => m.latLngToContainerPoint(c)), r = l.getElement().getBoundingClientRect();
        out.push({want: [Math.min(...pts.map(q => q.x)), Math.min(...pts.map(q => q.y)),
                         Math.max(...pts.map(q => q.x)), Math.max(...pts.map(q => q.y))],
                  got: [r.left - box.left, r.top - box.top, r.right - box.left, r.bottom - box.top]});
      });
      return out;
    }""")
    assert len(placed) == 2
    for q in placed:
        assert all(abs(a - b) <= 1.5 for a, b in zip(q["want"], q["got"], strict=True)), q

    # keys: + and - zoom by one step, f fits the data again (and so does the Fit button)
    z = p.page.evaluate("sitewatchMap.getZoom()")
    p.page.keyboard.press("-")
    assert p.page.evaluate("sitewatchMap.getZoom()") == z - 1
    p.page.keyboard.press("+")
    p.page.keyboard.press("+")
    assert p.page.evaluate("sitewatchMap.getZoom()") == z + 1  # two quick presses: two steps
    p.page.keyboard.press("f")
    _frames(p.page.evaluate(VIEW))
    z = p.page.evaluate("sitewatchMap.getZoom()")
    p.page.click("#z-in")
    assert p.page.evaluate("sitewatchMap.getZoom()") == z + 1
    p.page.click("#z-fit")
    _frames(p.page.evaluate(VIEW))

    # the scroll wheel zooms in at the cursor: the place under it stays under it
    box = p.page.locator("#map").bounding_box()
    assert box is not None
    at = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    local = [at[0] - box["x"], at[1] - box["y"]]
    before = p.page.evaluate("pt => { const ll = sitewatchMap.containerPointToLatLng(pt); return [ll.lat, ll.lng, "
                             "sitewatchMap.getZoom()]; }", local)
    p.page.mouse.move(*at)
    p.page.mouse.wheel(0, -240)
    p.page.wait_for_function("z => sitewatchMap.getZoom() > z && !sitewatchMap._animatingZoom", arg=before[2])
    p.page.wait_for_timeout(400)  # the end of the zoom animation
    after = p.page.evaluate("ll => { const pt = sitewatchMap.latLngToContainerPoint(ll); return [pt.x, pt.y]; }",
                            before[:2])
    assert abs(after[0] - local[0]) <= 3 and abs(after[1] - local[1]) <= 3, (local, after)

    # a scale bar, and a toggle per layer
    assert re.fullmatch(r"\d+ k?m", p.page.inner_text(".leaflet-control-scale-line").strip())
    labels = [t.strip() for t in p.page.eval_on_selector_all(".leaflet-control-layers-overlays label",
                                                             "ls => ls.map(l => l.textContent)")]
    assert labels[:6] == ["Scenes (quick-looks)", "Sites: unreviewed", "Sites: confirmed", "Sites: rejected",
                          "Sites: unsure", "Detections of the selected site"], labels
    p.page.wait_for_selector("body[data-density='1']")
    assert "Density (sites per cell)" in p.page.inner_text(".leaflet-control-layers-overlays")
    assert "Hotspots (Gi*)" in p.page.inner_text(".leaflet-control-layers-overlays")
    # the selected site's detections and footprint are drawn; hiding the scenes hides the quick-looks
    p.page.keyboard.press("f")
    p.page.wait_for_selector("path.sw-detection")
    assert p.page.locator("path.sw-footprint").count() == 1
    n_sites = p.page.locator("path.sw-site").count()
    assert n_sites == len(sites)
    p.page.locator(".leaflet-control-layers label", has_text="Sites: unreviewed").locator("input").uncheck()
    assert p.page.locator("path.sw-site").count() < n_sites
    p.page.locator(".leaflet-control-layers label", has_text="Scenes").locator("input").uncheck()
    assert p.page.locator("#map img.leaflet-image-layer").count() == 0
    assert not p.errors(), p.errors()
    assert not blocked, blocked
    origin = served.base.rstrip("/")
    assert all(u.startswith(origin + "/") or u.startswith("data:") for u in p.requests), p.requests


def _ports_run(base: Path) -> Path | None:
    """A real detect run over a port of ../shared/data/sen2ships with the shipped vessels model, if there."""
    from sitewatch.imagery.models.registry import shipped_models

    if not (PORTS / "busan").is_dir() or "vessels-s2" not in shipped_models():
        return None
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect

    run = base / "busan"
    detect([PORTS / "busan"], "vessels-s2", run, DetectSettings(workers=2))
    return run


def test_the_density_layer_toggles_with_its_legend_and_the_readme_screenshot(
        browser: Any, run_dir: Path, tmp_path: Path) -> None:
    """The density and hotspot layers from /api/density: off at first, on and off from the layer control,
    one cell per feature coloured by count, the legend's density part shown with them. Saves the
    README's screenshot, docs/review-density.png (a real port when ../shared/data is there)."""
    from sitewatch.imagery.candidates.density import density_for_map

    run = _ports_run(tmp_path) or run_dir
    store = CandidateStore.in_run_dir(run)
    fc = density_for_map(store, "1000", "all")
    s = Served(run)
    try:
        p = Page(browser, s.url)
        blocked = _leaves_localhost(p.page)
        p.page.wait_for_selector("body[data-density='1']", timeout=30_000)
        assert p.page.locator("path.sw-density").count() == 0
        assert "Density" not in p.page.inner_text(".sw-legend")
        density = p.page.locator(".leaflet-control-layers label", has_text="Density").locator("input")
        hotspots = p.page.locator(".leaflet-control-layers label", has_text="Hotspots").locator("input")
        density.check()
        cells = [f for f in fc["features"] if f["properties"]["count"] > 0]
        assert cells and p.page.locator("path.sw-density").count() == len(cells)
        legend = p.page.inner_text(".sw-legend")
        assert "Density: sites per 1 km cell" in legend and "Hotspots (Gi*, 95%)" in legend
        fills = set(p.page.eval_on_selector_all("path.sw-density", "ps => ps.map(x => x.getAttribute('fill'))"))
        classes = p.page.evaluate("m => sitewatchMaps.breaks(m)", fc["max_count"])  # [lo, hi] of each colour
        assert classes[0][0] == 1 and classes[-1][1] == fc["max_count"] and 1 <= len(classes) <= 5
        hit = {next(k for k, (lo, hi) in enumerate(classes) if lo <= f["properties"]["count"] <= hi) for f in cells}
        assert len(fills) == len(hit)  # one colour per class of the ramp that some cell falls in
        density.uncheck()
        assert p.page.locator("path.sw-density").count() == 0
        assert "Density" not in p.page.inner_text(".sw-legend")
        hotspots.check()
        spots = [f for f in fc["features"] if f["properties"]["hotspot"]]
        assert p.page.locator("path.sw-hotspot").count() == len(spots)
        assert p.page.locator("path.sw-hot").count() == sum(f["properties"]["hotspot"] == "hot" for f in spots)
        density.check()
        # the density of the confirmed sites only (none yet): no cells, and the legend says why
        p.page.select_option("#d-status", "confirmed")
        p.page.wait_for_selector("body[data-density='1']")
        assert density.is_checked() and p.page.locator("path.sw-density").count() == 0
        assert "No confirmed sites to count" in p.page.inner_text(".sw-legend")
        assert "Density: confirmed sites per 1 km cell" in p.page.inner_text(".sw-legend")
        p.page.select_option("#d-status", "all")
        p.page.wait_for_selector("body[data-density='1']")
        assert p.page.locator("path.sw-density").count() == len(cells)
        p.page.keyboard.press("f")
        p.page.wait_for_function("() => { const i = document.getElementById('chip'); return i.complete && "
                                 "!document.getElementById('chip-box').classList.contains('loading'); }")
        widths = p.page.eval_on_selector_all("#map img.leaflet-image-layer", "ims => ims.map(i => i.complete && i.naturalWidth)")
        assert widths and all(widths), widths
        DENSITY_SCREENSHOT.parent.mkdir(exist_ok=True)
        p.page.screenshot(path=str(DENSITY_SCREENSHOT))
        assert not p.errors(), p.errors()
        assert not blocked, blocked
    finally:
        s.stop()
