"""``map.html`` of a real detect run in headless Chromium, opened from ``file://`` with no server:
Leaflet (inline) draws the quick-looks, the detections and the density and hotspot layers, fits the
data, and the page fetches nothing (its own Content Security Policy enforced)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium import launch, playwright_or_skip
from conftest import make_review_run

sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_review_run(tmp_path_factory.mktemp("map-browser"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch(sync_api) as b:
        yield b


def _data(run_dir: Path) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="sw-data">(.*?)</script>', (run_dir / "map.html").read_text(), re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def test_map_html_opens_from_a_file_with_its_layers(browser: Any, run_dir: Path) -> None:
    data = _data(run_dir)
    dets = json.loads((run_dir / "detections.geojson").read_text())["features"]
    cells = [f for f in data["density"]["features"] if f["properties"]["count"] > 0]
    assert dets and cells and sum(f["properties"]["count"] for f in cells) == data["density"]["sites"]
    page = browser.new_page(viewport={"width": 1300, "height": 800})  # the page's own CSP is kept
    console: list[tuple[str, str]] = []
    requests: list[str] = []
    page.on("console", lambda m: console.append((m.type, m.text)))
    page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
    page.on("request", lambda r: requests.append(r.url))
    url = (run_dir / "map.html").as_uri()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)

    # the quick-looks (data: URLs), one box per detection, a scale bar and a toggle per layer
    sync_api.expect(page.locator("#map img.leaflet-image-layer")).to_have_count(len(data["scenes"]))
    page.wait_for_function("() => Array.from(document.querySelectorAll('#map img.leaflet-image-layer'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("path.sw-det").count() == len(dets)
    assert re.fullmatch(r"\d+ k?m", page.inner_text(".leaflet-control-scale-line").strip())
    labels = [t.strip() for t in page.eval_on_selector_all(".leaflet-control-layers-overlays label",
                                                           "ls => ls.map(l => l.textContent)")]
    assert labels == ["Scenes (quick-looks)", "Detections", "Sites: unreviewed", "Sites: confirmed", "Sites: rejected",
                      "Sites: unsure", "Density (sites per cell)", "Hotspots (Gi*)"]

    # fitted to the data: every detection in view, and the scenes fill most of the map
    view = page.evaluate("""() => {
      const m = window.sitewatchMap, b = m.getBounds(), d = window.sitewatchCandidates.dataBounds(), s = m.getSize();
      const a = m.latLngToContainerPoint(d.getNorthWest()), z = m.latLngToContainerPoint(d.getSouthEast());
      return {contains: b.contains(d), w: s.x, h: s.y, dw: z.x - a.x, dh: z.y - a.y, zoom: m.getZoom()};
    }""")
    assert view["contains"] and (view["dw"] >= 0.5 * view["w"] or view["dh"] >= 0.5 * view["h"]) and view["zoom"] >= 10, view
    inside = page.evaluate("ds => ds.every(d => sitewatchMap.getBounds().contains([d[1], d[0]]))",
                           [[f["properties"]["lon"], f["properties"]["lat"]] for f in dets])
    assert inside

    # the sites by status: the unreviewed ones (all of them in a new run) on request, coloured by status
    from sitewatch.imagery.candidates.store import CandidateStore

    n_sites = len(CandidateStore.in_run_dir(run_dir).sites())
    assert len(data["sites"]) == n_sites and {x[2] for x in data["sites"]} == {"unreviewed"}
    assert page.locator("path.sw-site").count() == 0
    page.locator(".leaflet-control-layers label", has_text="Sites: unreviewed").locator("input").check()
    assert page.locator("path.sw-site.sw-unreviewed").count() == n_sites
    assert "unreviewed" in page.inner_text(".sw-legend")
    page.locator("path.sw-site").first.click(force=True)
    assert re.search(r"Site\s+\S+-\d+", page.inner_text("#info"))  # click a site for its facts
    page.locator(".leaflet-control-layers label", has_text="Sites: unreviewed").locator("input").uncheck()

    # density and hotspots: off at first, one cell per feature when on, with their legend
    assert page.locator("path.sw-density").count() == 0 and "Density" not in page.inner_text(".sw-legend")
    page.locator(".leaflet-control-layers label", has_text="Density").locator("input").check()
    assert page.locator("path.sw-density").count() == len(cells)
    assert "Density: sites per 1 km cell" in page.inner_text(".sw-legend")
    page.locator(".leaflet-control-layers label", has_text="Hotspots").locator("input").check()
    assert page.locator("path.sw-hotspot").count() == sum(bool(f["properties"]["hotspot"])
                                                          for f in data["density"]["features"])
    page.locator(".leaflet-control-layers label", has_text="Density").locator("input").uncheck()
    assert page.locator("path.sw-density").count() == 0

    # a detection's box: click it for its details; the score filter hides the weak ones
    page.locator("path.sw-det").first.click(force=True)
    assert "Score" in page.inner_text("#info")
    page.eval_on_selector("#minscore", "s => { s.value = '0.9'; s.dispatchEvent(new Event('input')); }")
    strong = sum(f["properties"]["score"] >= 0.9 for f in dets)
    assert page.locator("path.sw-det").count() == strong < len(dets)
    page.keyboard.press("+")
    page.keyboard.press("f")
    assert page.evaluate("window.sitewatchMap.getBounds().contains(window.sitewatchCandidates.dataBounds())")

    assert not [m for m in console if m[0] in ("error", "pageerror") or "Content Security Policy" in m[1]], console
    assert all(u == url or u.startswith("data:") for u in requests), requests  # nothing fetched, not even a file
    page.close()
