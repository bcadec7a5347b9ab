r"""The review page of ``sitewatch review``: one HTML document with inline CSS and JavaScript,
filled from ``static/review.html``, ``review.css`` and ``review.js``.

It references no external URL (no tiles, scripts or fonts): the map is Leaflet, vendored in
:mod:`sitewatch.imagery.webmap` and served by the review server itself at ``/static/leaflet/``,
with the server's ``/api/scenes`` quick-looks, ``/api/sites`` and ``/api/density`` as layers. Every piece of data is inserted with
``textContent`` or ``setAttribute`` (never ``innerHTML``), and the server sends a Content
Security Policy that lets only this page's nonce'd ``<script>`` and ``<style>`` run, so a
note holding ``<script>`` or ``<img onerror>`` is shown as text and never executed.

Layout: a sortable, filterable list on the left, the map in the centre, the selected site's
chip, facts, decision buttons, note and review log on the right. Keys: ``y`` confirm, ``n``
reject, ``u`` unsure, arrows (or ``j``/``k``) next/previous, ``?`` help.
"""

from __future__ import annotations

from typing import Any

from sitewatch.imagery.webmap import maplayers_css, maplayers_js
from sitewatch.imagery.webpage import fill, json_for_script, static_text


def render_page(nonce: str, config: dict[str, Any]) -> str:
    """The page with its script and style nonce and the server's config (JSON, safe inside ``<script>``)."""
    return fill(static_text(__package__, "review.html"), {
        "nonce": nonce,
        "css": static_text(__package__, "review.css"),
        "mapcss": maplayers_css(),
        "maplayers": maplayers_js(),
        "script": static_text(__package__, "review.js"),
        "config": json_for_script(config),
    })
