"""The web pages are files: templates in each stage's ``static/`` folder, filled in one pass."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sitewatch.imagery.detect.mapview import render_map_html
from sitewatch.imagery.review.page import render_page
from sitewatch.imagery.webpage import fill, json_for_script, static_text

ROOT = Path(__file__).resolve().parents[1]


def test_the_review_page_is_its_files_with_the_slots_filled() -> None:
    page = render_page("n0nce", {"statuses": ["unreviewed"], "title": "</script><script>alert(1)</script>"})
    assert static_text("sitewatch.imagery.review", "review.js") in page
    assert static_text("sitewatch.imagery.review", "review.css") in page
    assert page.count('nonce="n0nce"') == 5  # its style, Leaflet's CSS and script, the shared map layers, its script
    assert "{{" not in page
    assert "<script>alert(1)" not in page  # data goes in as JSON, escaped for a script element


def test_the_map_is_its_files_with_the_slots_filled() -> None:
    page = render_map_html([], "A {{title}} & <b>", "demo")
    assert static_text("sitewatch.imagery.detect", "map.js") in page
    assert '<script src="/static/leaflet/leaflet.js"' in render_page("n", {"statuses": []})  # served, not fetched
    assert "A {{title}} &amp; &lt;b&gt;" in page  # a value is never scanned for slots
    assert re.search(r"\{\{\w+\}\}", page.replace("A {{title}}", "")) is None


def test_fill_replaces_every_slot_once_and_refuses_a_missing_one() -> None:
    assert fill("{{a}}-{{b}}", {"a": "{{b}}", "b": "x"}) == "{{b}}-x"
    with pytest.raises(KeyError):
        fill("{{a}}", {})
    assert json_for_script({"s": "</script>&"}) == '{"s":"\\u003c/script\\u003e\\u0026"}'


def test_eslint_passes_on_the_pages_scripts() -> None:
    eslint = ROOT / "node_modules" / ".bin" / "eslint"
    if not eslint.exists() or shutil.which("node") is None:
        pytest.skip("ESLint is not installed: run `npm ci` in the repository (.ci/run does)")
    r = subprocess.run([str(eslint), "imagery"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_vendored_leaflet_is_the_version_recorded_with_its_licence() -> None:
    import json

    from sitewatch.imagery.webmap import LEAFLET_LICENSE, LEAFLET_VERSION, VENDORED, leaflet_css, leaflet_js, vendored

    assert leaflet_js().startswith(f"/* @preserve\n * Leaflet {LEAFLET_VERSION},")
    assert json.loads((ROOT / "package.json").read_text())["dependencies"]["leaflet"] == LEAFLET_VERSION
    licence = (vendored("LICENSE") or (b"", ""))[0].decode()
    assert LEAFLET_LICENSE == "BSD-2-Clause" and licence.startswith("BSD 2-Clause License")
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"Leaflet\s+\*\*" + re.escape(LEAFLET_VERSION) + r"\*\* \(BSD-2-Clause", readme)  # recorded
    assert all(vendored(name) for name in VENDORED) and vendored("../__init__.py") is None
    assert "url(images/" not in leaflet_css() and "url(data:image/png;base64," in leaflet_css()
    # the copy is the npm package's, where node_modules has it
    dist = ROOT / "node_modules" / "leaflet" / "dist"
    if dist.is_dir():
        for name in ("leaflet.js", "leaflet.css", "images/layers.png"):
            assert (dist / name).read_bytes() == vendored(name)[0], name  # type: ignore[index]
