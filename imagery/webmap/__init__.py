"""The web map of the review page and of ``map.html``: Leaflet, vendored, and the layers both pages share.

Leaflet (:data:`LEAFLET_VERSION`, BSD-2-Clause, from the npm registry's ``leaflet`` package;
``static/leaflet/LICENSE`` beside it) ships inside the package, so nothing is fetched when a
page opens: the review server serves ``static/leaflet/`` at ``/static/leaflet/``
(:func:`vendored`), and ``map.html``, which opens from ``file://``, carries it inline
(:func:`leaflet_js`, and :func:`leaflet_css` with its images as ``data:`` URLs).

``static/maplayers.js`` is the shared part of both pages' scripts (``window.sitewatchMaps``):
quick-looks placed by their four corners, the density and hotspot layers of
:func:`sitewatch.imagery.candidates.density.density_geojson` with their legend. The maps use
Web Mercator (``L.CRS.EPSG3857``) with no tile layer: the quick-looks are the base.

To update Leaflet: ``npm install leaflet@X --save-exact``, copy ``node_modules/leaflet/dist/``
``leaflet.js``, ``leaflet.css`` and ``images/`` and ``node_modules/leaflet/LICENSE`` into
``static/leaflet/``, and change :data:`LEAFLET_VERSION` (a test compares it with the file).
"""

from __future__ import annotations

import base64
import functools
import re
from importlib import resources

#: The vendored Leaflet's version (``static/leaflet/leaflet.js``) and licence.
LEAFLET_VERSION = "1.9.4"
LEAFLET_LICENSE = "BSD-2-Clause"

#: The files of ``static/leaflet/`` a server may send, by their path there, with their content type.
VENDORED: dict[str, str] = {
    "leaflet.js": "text/javascript; charset=utf-8",
    "leaflet.css": "text/css; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
    "images/layers.png": "image/png",
    "images/layers-2x.png": "image/png",
    "images/marker-icon.png": "image/png",
    "images/marker-icon-2x.png": "image/png",
    "images/marker-shadow.png": "image/png",
}


def vendored(name: str) -> tuple[bytes, str] | None:
    """``(bytes, content type)`` of ``static/leaflet/NAME`` if it is one of :data:`VENDORED`, else None.

    Only the names listed are looked up: a request path is never joined onto the filesystem.
    """
    ctype = VENDORED.get(name)
    if ctype is None:
        return None
    return _read(name), ctype


@functools.cache
def _read(name: str) -> bytes:  # only names of VENDORED: the cache stays that small
    return _leaflet_dir().joinpath(*name.split("/")).read_bytes()


def _leaflet_dir():  # noqa: ANN202 - an importlib.resources Traversable
    return resources.files(__package__).joinpath("static", "leaflet")


def leaflet_js() -> str:
    """The text of the vendored ``leaflet.js``."""
    data = vendored("leaflet.js")
    assert data is not None
    return data[0].decode("utf-8")


@functools.cache
def leaflet_css() -> str:
    """The vendored ``leaflet.css`` with its ``url(images/...)`` as ``data:`` URLs (for a page with no
    folder beside it)."""
    data = vendored("leaflet.css")
    assert data is not None

    def inline(m: re.Match[str]) -> str:
        image = vendored(f"images/{m.group(1)}")
        if image is None:
            return m.group(0)
        return f"url(data:image/png;base64,{base64.b64encode(image[0]).decode('ascii')})"

    return re.sub(r"url\(images/([\w.-]+\.png)\)", inline, data[0].decode("utf-8"))


@functools.cache
def maplayers_js() -> str:
    """The text of ``static/maplayers.js``, the layers both maps share."""
    return resources.files(__package__).joinpath("static", "maplayers.js").read_text(encoding="utf-8")


@functools.cache
def maplayers_css() -> str:
    """The text of ``static/maplayers.css``, the look both maps share."""
    return resources.files(__package__).joinpath("static", "maplayers.css").read_text(encoding="utf-8")
