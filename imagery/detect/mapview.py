r"""The offline candidate map: one self-contained ``map.html`` for a run.

Analysts open the map on machines without internet, often from ``file://`` with no server, so
the page carries everything itself: the vendored Leaflet (:mod:`sitewatch.imagery.webmap`)
inline, its CSS with its images as ``data:`` URLs, the quick-looks as base64 PNGs placed by
their scenes' corners, detections as boxes in lon/lat, the run's site density and Gi*
hotspots as GeoJSON, and the page's own CSS and JavaScript (``static/map.html``,
``static/map.js``). Inline rather than a ``leaflet/`` folder beside it: ``map.html`` stays one
file that can be mailed or copied alone and still works, and its Content Security Policy
(``default-src 'none'``; images only ``data:``) lets it fetch nothing at all. Text is escaped
for HTML, and the data block is JSON with ``<``, ``>`` and ``&`` written as ``\u`` escapes,
so a scene called ``</script>`` stays text; tooltips get text nodes, never HTML.
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sitewatch.imagery.candidates.store import STATUSES
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.quicklook import png_bytes
from sitewatch.imagery.webmap import leaflet_css, leaflet_js, maplayers_css, maplayers_js
from sitewatch.imagery.webpage import fill, json_for_script, static_text

#: Colours of the known classes; others take the next colour of :data:`PALETTE`.
CLASS_COLOURS = {"vessel": "#00e5ff", "kiln": "#ff6d00"}

#: Colours for classes not in :data:`CLASS_COLOURS`, in order of first appearance.
PALETTE = ("#ffd600", "#76ff03", "#e040fb", "#ff1744", "#2979ff", "#ffffff", "#a1887f", "#64ffda")

@dataclass(frozen=True, eq=False)
class MapLayer:
    """One scene on the map: its quick-look and its detections.

    Attributes:
        scene: Scene name shown in the selector.
        image: Quick-look RGB, ``(h, w, 3)`` uint8.
        scale: Scene pixels per quick-look pixel.
        boxes: ``(n, 4)`` detection boxes ``x0, y0, x1, y1`` in scene pixel coordinates.
        classes: Class name per detection.
        scores: ``(n,)`` scores.
        lonlat: ``(n, 2)`` box centres as longitude, latitude.
        bounds_lonlat: Scene ``(west, south, east, north)``.
        png: ``image`` already encoded as PNG (it is encoded here when empty).
        corners_lonlat: the scene's corners ``(lon, lat)``: top-left, top-right, bottom-right,
            bottom-left (pixel grid order); default the corners of ``bounds_lonlat``.
        scene_size: the scene's ``(width, height)`` in pixels; default the image's size times ``scale``.
    """

    scene: str
    image: np.ndarray
    scale: float
    boxes: np.ndarray
    classes: tuple[str, ...]
    scores: np.ndarray
    lonlat: np.ndarray
    bounds_lonlat: tuple[float, float, float, float]
    png: bytes = b""
    corners_lonlat: tuple[tuple[float, float], ...] | None = None
    scene_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise UsageError(
                f"map layer {self.scene!r}: image must be a non-empty (h, w, 3) uint8 array, "
                f"got shape {image.shape} and dtype {image.dtype}; build it with quicklook_rgb"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise UsageError(f"map layer {self.scene!r}: scale must be a positive number, got {self.scale!r}")
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        lonlat = np.asarray(self.lonlat, dtype=np.float64).reshape(-1, 2)
        classes = tuple(str(c) for c in self.classes)
        if not (len(classes) == len(scores) == len(lonlat) == n):
            raise UsageError(
                f"map layer {self.scene!r}: {n} boxes but {len(classes)} classes, {len(scores)} scores "
                f"and {len(lonlat)} lon/lat centres; pass one of each per detection"
            )
        if len(self.bounds_lonlat) != 4:
            raise UsageError(f"map layer {self.scene!r}: bounds_lonlat must be (west, south, east, north)")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "lonlat", lonlat)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "bounds_lonlat", tuple(float(v) for v in self.bounds_lonlat))
        if self.corners_lonlat is not None:
            corners = np.asarray(self.corners_lonlat, dtype=np.float64)
            if corners.shape != (4, 2) or not np.isfinite(corners).all():
                raise UsageError(f"map layer {self.scene!r}: corners_lonlat must be four finite (lon, lat) pairs")
            object.__setattr__(self, "corners_lonlat", tuple((float(x), float(y)) for x, y in corners))
        if self.scene_size is not None and not (len(self.scene_size) == 2 and min(self.scene_size) > 0):
            raise UsageError(f"map layer {self.scene!r}: scene_size must be (width, height) in pixels")

    @property
    def corners(self) -> list[list[float]]:
        """The corners as ``[lon, lat]`` lists (from ``bounds_lonlat`` when not given)."""
        if self.corners_lonlat is not None:
            return [[round(x, 7), round(y, 7)] for x, y in self.corners_lonlat]
        w, s, e, n = self.bounds_lonlat
        return [[w, n], [e, n], [e, s], [w, s]]


def render_map_html(layers: Sequence[MapLayer], title: str, model: str,
                    density: dict[str, Any] | None = None, sites: Sequence[Any] = ()) -> str:
    """Render the self-contained candidate map.

    Args:
        layers: Scenes to show, in selector order.
        title: Page title.
        model: Model name or checkpoint shown in the header.
        density: the run's density and hotspot cells
            (:func:`~sitewatch.imagery.candidates.density.density_geojson`), or None.
        sites: the run directory's sites (:class:`~sitewatch.imagery.candidates.store.Site`), shown
            by review status.

    Returns:
        The HTML document; it references no external resource.
    """
    classes = _class_order(layers)
    colours = _class_colours(classes)
    cls_index = {c: i for i, c in enumerate(classes)}
    payload = {
        "title": title,
        "model": model,
        "classes": classes,
        "colours": colours,
        "scenes": [_scene_payload(layer, cls_index) for layer in layers],
        "density": density if density and density.get("features") else None,
        "statuses": list(STATUSES),
        "sites": [_site_payload(s) for s in sites if _finite(s.lon) is not None and _finite(s.lat) is not None],
    }
    swatches = "\n".join(f".s{i}{{background:{colour}}}" for i, colour in enumerate(colours))
    options = "".join(
        f'<option value="{i}">{html.escape(layer.scene)} ({len(layer.classes)})</option>'
        for i, layer in enumerate(layers)
    )
    counts = Counter(c for layer in layers for c in layer.classes)
    legend = "".join(
        f'<li><span class="sw s{i}"></span>{html.escape(c)} '
        f'<span class="n" data-c="{i}">{counts[c]} / {counts[c]}</span></li>'
        for i, c in enumerate(classes)
    )
    return fill(static_text(__package__, "map.html"), dict(
        title=html.escape(title),
        model=html.escape(model),
        leaflet_css=leaflet_css(),
        mapcss=maplayers_css(),
        swatches=swatches,
        options=options,
        legend=legend,
        empty="" if layers else '<p class="empty">No scenes to show.</p>',
        data=json_for_script(payload),
        leaflet_js=leaflet_js(),
        maplayers=maplayers_js(),
        script=static_text(__package__, "map.js"),
    ))


def _class_order(layers: Sequence[MapLayer]) -> list[str]:
    """Known classes first, then others in order of first appearance."""
    seen = dict.fromkeys(c for layer in layers for c in layer.classes)
    return [c for c in CLASS_COLOURS if c in seen] + [c for c in seen if c not in CLASS_COLOURS]


def _class_colours(classes: Sequence[str]) -> list[str]:
    out, k = [], 0
    for c in classes:
        if c in CLASS_COLOURS:
            out.append(CLASS_COLOURS[c])
        else:
            out.append(PALETTE[k % len(PALETTE)])
            k += 1
    return out


def _finite(v: float) -> float | None:
    """JSON has no NaN: missing values become null."""
    return float(v) if math.isfinite(v) else None


def _scene_payload(layer: MapLayer, cls_index: dict[str, int]) -> dict[str, Any]:
    """Collect what the page script needs for one scene: one row per detection."""
    h, w = layer.image.shape[:2]
    dets = [
        [
            cls_index[c],
            _finite(round(float(s), 4)),
            _finite(round(float(ll[0]), 7)),
            _finite(round(float(ll[1]), 7)),
            *(_finite(round(float(v), 2)) for v in box),
        ]
        for c, s, ll, box in zip(layer.classes, layer.scores, layer.lonlat, layer.boxes, strict=True)
    ]
    sw, sh = layer.scene_size or (w * layer.scale, h * layer.scale)
    return {
        "name": layer.scene,
        "width": w,
        "height": h,
        "scale": layer.scale,
        "scene_width": sw,
        "scene_height": sh,
        "bounds": [_finite(v) for v in layer.bounds_lonlat],
        "corners": layer.corners,
        "quicklook": f"data:image/png;base64,{_png_base64(layer)}",
        "dets": dets,
    }


def _site_payload(site: Any) -> list[Any]:
    """``[id, class, status, lon, lat, max_score, bbox or None]`` of a site."""
    bbox = None if site.footprint is None else [round(float(v), 7) for v in site.footprint.bounds]
    return [site.site_id, site.cls, site.status, round(float(site.lon), 7), round(float(site.lat), 7),
            _finite(round(float(site.max_score), 4)), bbox]


def _png_base64(layer: MapLayer) -> str:
    return base64.b64encode(layer.png or png_bytes(layer.image)).decode("ascii")
