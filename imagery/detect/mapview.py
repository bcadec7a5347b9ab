r"""The offline candidate map: one self-contained ``map.html`` for a run.

Analysts open the map on machines without internet, so the page carries everything
itself: quick-looks as base64 PNGs, detections as SVG rectangles, a few lines of inline
CSS and JavaScript (from ``static/map.html`` and ``static/map.js``). It references no URL at all. Text is escaped for HTML, and the data
block is JSON with ``<``, ``>`` and ``&`` written as ``\u`` escapes, so a scene called
``</script>`` stays text.
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

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.quicklook import png_bytes
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


def render_map_html(layers: Sequence[MapLayer], title: str, model: str) -> str:
    """Render the self-contained candidate map.

    Args:
        layers: Scenes to show, in selector order.
        title: Page title.
        model: Model name or checkpoint shown in the header.

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
    }
    css_classes = "\n".join(f".c{i}{{stroke:{colour}}}" for i, colour in enumerate(colours))
    swatches = "\n".join(f".s{i}{{background:{colour}}}" for i, colour in enumerate(colours))
    options = "".join(
        f'<option value="{i}">{html.escape(layer.scene)} ({len(layer.classes)})</option>'
        for i, layer in enumerate(layers)
    )
    first = Counter(layers[0].classes) if layers else Counter()
    legend = "".join(
        f'<li><span class="sw s{i}"></span>{html.escape(c)} '
        f'<span class="n" data-c="{i}">{first[c]} / {first[c]}</span></li>'
        for i, c in enumerate(classes)
    )
    scenes = "\n".join(_scene_svg(i, layer, cls_index) for i, layer in enumerate(layers))
    if not layers:
        scenes = '<p class="empty">No scenes to show.</p>'
    return fill(static_text(__package__, "map.html"), dict(
        title=html.escape(title),
        model=html.escape(model),
        css_classes=css_classes,
        swatches=swatches,
        options=options,
        legend=legend,
        scenes=scenes,
        data=json_for_script(payload),
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
    return {
        "name": layer.scene,
        "width": w,
        "height": h,
        "scale": layer.scale,
        "bounds": [_finite(v) for v in layer.bounds_lonlat],
        "dets": dets,
    }


def _png_base64(layer: MapLayer) -> str:
    return base64.b64encode(layer.png or png_bytes(layer.image)).decode("ascii")


def _scene_svg(i: int, layer: MapLayer, cls_index: dict[str, int]) -> str:
    """Draw the quick-look and one rectangle per detection, in quick-look pixel units."""
    h, w = layer.image.shape[:2]
    q = np.nan_to_num(layer.boxes / layer.scale)
    rects = "".join(
        f'<rect class="det c{cls_index[c]}" data-i="{k}" data-s="{s:.4f}" x="{x0:.2f}" y="{y0:.2f}" '
        f'width="{max(x1 - x0, 0.0):.2f}" height="{max(y1 - y0, 0.0):.2f}">'
        f"<title>{html.escape(c)} {s:.3f}</title></rect>"
        for k, (c, s, (x0, y0, x1, y1)) in enumerate(zip(layer.classes, np.nan_to_num(layer.scores), q, strict=True))
    )
    hidden = "" if i == 0 else " hidden"
    return (
        f'<svg class="scene" id="scene-{i}" data-scene="{i}" viewBox="0 0 {w} {h}"{hidden} '
        f'role="img" aria-label="{html.escape(layer.scene)}">'
        f'<image href="data:image/png;base64,{_png_base64(layer)}" x="0" y="0" width="{w}" height="{h}"/>'
        f"<g>{rects}</g></svg>"
    )
