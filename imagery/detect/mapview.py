r"""The offline candidate map: one self-contained ``map.html`` for a run.

Analysts open the map on machines without internet, so the page carries everything
itself: quick-looks as base64 PNGs, detections as SVG rectangles, a few lines of inline
CSS and JavaScript. It references no URL at all. Text is escaped for HTML, and the data
block is JSON with ``<``, ``>`` and ``&`` written as ``\u`` escapes, so a scene called
``</script>`` stays text.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.quicklook import png_bytes

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
    return _PAGE.format(
        title=html.escape(title),
        model=html.escape(model),
        css_classes=css_classes,
        swatches=swatches,
        options=options,
        legend=legend,
        scenes=scenes,
        data=_json_for_script(payload),
        script=_SCRIPT,
    )


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


def _json_for_script(payload: object) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can form."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sw-data").textContent);
  var sel = document.getElementById("scene");
  var slider = document.getElementById("minscore");
  var shown = document.getElementById("minscore-v");
  var info = document.getElementById("info");
  var views = [];
  var cur = 0;
  data.scenes.forEach(function (s, i) {
    views.push({x: 0, y: 0, w: s.width, h: s.height});
  });
  function svg() { return document.getElementById("scene-" + cur); }
  function apply() {
    var v = views[cur], el = svg();
    if (el) { el.setAttribute("viewBox", [v.x, v.y, v.w, v.h].join(" ")); }
  }
  function filter() {
    var t = parseFloat(slider.value), s = data.scenes[cur], el = svg();
    shown.textContent = t.toFixed(2);
    if (!el) { return; }
    var total = data.classes.map(function () { return 0; });
    var vis = total.slice();
    el.querySelectorAll("rect.det").forEach(function (r) {
      var d = s.dets[+r.getAttribute("data-i")];
      var ok = (d[1] === null ? 0 : d[1]) >= t;
      r.style.display = ok ? "" : "none";
      total[d[0]] += 1;
      if (ok) { vis[d[0]] += 1; }
    });
    document.querySelectorAll("#legend .n").forEach(function (n) {
      var c = +n.getAttribute("data-c");
      n.textContent = vis[c] + " / " + total[c];
    });
  }
  function fmt(v, k) { return v === null ? "n/a" : v.toFixed(k); }
  function show(s, d) {
    rows([
      ["Scene", s.name], ["Class", data.classes[d[0]]], ["Score", fmt(d[1], 3)],
      ["Lon", fmt(d[2], 6)], ["Lat", fmt(d[3], 6)],
      ["Box (px)", d.slice(4).map(function (v) { return fmt(v, 1); }).join(", ")]
    ]);
  }
  function rows(list) {
    info.textContent = "";
    list.forEach(function (row) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = row[0];
      dd.textContent = row[1];
      info.appendChild(dt);
      info.appendChild(dd);
    });
  }
  function sceneInfo() {
    var s = data.scenes[cur];
    if (!s) { return; }
    var b = s.bounds.map(function (v) { return fmt(v, 5); });
    rows([
      ["Scene", s.name], ["Detections", String(s.dets.length)],
      ["W, S", b[0] + ", " + b[1]], ["E, N", b[2] + ", " + b[3]], ["", "Click a box for details."]
    ]);
  }
  function select(i) {
    document.querySelectorAll("svg.scene").forEach(function (el) {
      el.toggleAttribute("hidden", +el.getAttribute("data-scene") !== i);
    });
    cur = i;
    apply();
    filter();
    sceneInfo();
  }
  function zoom(f, cx, cy) {
    var v = views[cur], s = data.scenes[cur];
    if (!s) { return; }
    if (cx === undefined) { cx = v.x + v.w / 2; cy = v.y + v.h / 2; }
    var w = Math.min(Math.max(v.w * f, s.width / 64), s.width * 4);
    var r = w / v.w;
    v.x = cx - (cx - v.x) * r; v.y = cy - (cy - v.y) * r; v.w = w; v.h = v.h * r;
    apply();
  }
  function toSvg(el, e) {
    var p = el.createSVGPoint();
    p.x = e.clientX; p.y = e.clientY;
    return p.matrixTransform(el.getScreenCTM().inverse());
  }
  var drag = null;
  document.querySelectorAll("svg.scene").forEach(function (el) {
    el.addEventListener("wheel", function (e) {
      e.preventDefault();
      var p = toSvg(el, e);
      zoom(e.deltaY < 0 ? 0.8 : 1.25, p.x, p.y);
    }, {passive: false});
    el.addEventListener("pointerdown", function (e) {
      drag = {x: e.clientX, y: e.clientY, moved: false, k: 1 / el.getScreenCTM().a};
    });
    el.addEventListener("pointermove", function (e) {
      if (!drag || !(e.buttons & 1)) { return; }
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) { return; }
      if (!drag.moved) { el.setPointerCapture(e.pointerId); el.classList.add("panning"); }
      drag.moved = true;
      var v = views[cur];
      v.x -= dx * drag.k; v.y -= dy * drag.k;
      drag.x = e.clientX; drag.y = e.clientY;
      apply();
    });
    el.addEventListener("pointerup", function () { el.classList.remove("panning"); });
    el.addEventListener("click", function (e) {
      var moved = drag && drag.moved;
      drag = null;
      if (moved) { return; }
      var r = e.target.closest("rect.det");
      if (!r) { return; }
      document.querySelectorAll("rect.det.sel").forEach(function (o) { o.classList.remove("sel"); });
      r.classList.add("sel");
      show(data.scenes[cur], data.scenes[cur].dets[+r.getAttribute("data-i")]);
    });
  });
  sel.addEventListener("change", function () { select(+sel.value); });
  slider.addEventListener("input", filter);
  document.getElementById("zin").addEventListener("click", function () { zoom(0.5); });
  document.getElementById("zout").addEventListener("click", function () { zoom(2); });
  document.getElementById("zreset").addEventListener("click", function () {
    var s = data.scenes[cur];
    if (s) { views[cur] = {x: 0, y: 0, w: s.width, h: s.height}; apply(); }
  });
  select(0);
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
* {{ box-sizing: border-box; }}
body {{ margin: 0; font: 14px system-ui, sans-serif; background: #1b1e23; color: #e8e8e8;
  display: flex; flex-direction: column; height: 100vh; }}
header {{ padding: 6px 12px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap;
  background: #262a31; }}
header h1 {{ font-size: 16px; margin: 0; }}
header .model {{ color: #aab; }}
main {{ flex: 1; display: flex; min-height: 0; }}
#view {{ flex: 1; position: relative; overflow: hidden; background: #000; }}
svg.scene {{ width: 100%; height: 100%; display: block; cursor: grab; touch-action: none; }}
svg.scene[hidden] {{ display: none; }}
svg.scene.panning {{ cursor: grabbing; }}
svg.scene image {{ image-rendering: pixelated; }}
rect.det {{ fill: transparent; stroke-width: 2; vector-effect: non-scaling-stroke;
  pointer-events: all; cursor: pointer; }}
rect.det:hover, rect.det.sel {{ stroke-width: 4; stroke: #fff; }}
{css_classes}
aside {{ width: 260px; padding: 10px 12px; background: #262a31; overflow: auto; }}
aside h2 {{ font-size: 13px; text-transform: uppercase; color: #aab; margin: 12px 0 4px; }}
#legend {{ list-style: none; padding: 0; margin: 0; }}
#legend li {{ margin: 3px 0; }}
.sw {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; border-radius: 2px;
  vertical-align: -1px; }}
{swatches}
.n {{ color: #aab; float: right; }}
#info {{ margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 2px 8px;
  overflow-wrap: anywhere; }}
#info dt {{ color: #aab; }}
#info dd {{ margin: 0; }}
button {{ min-width: 28px; }}
.empty {{ padding: 20px; }}
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<span class="model">model: {model}</span>
<label>Scene <select id="scene">{options}</select></label>
<label>Min score <input id="minscore" type="range" min="0" max="1" step="0.01" value="0">
<span id="minscore-v">0.00</span></label>
<span><button id="zin" title="Zoom in">+</button><button id="zout" title="Zoom out">&minus;</button>
<button id="zreset" title="Fit scene">Fit</button></span>
</header>
<main>
<div id="view">
{scenes}
</div>
<aside>
<h2>Legend</h2>
<ul id="legend">{legend}</ul>
<h2>Detection</h2>
<dl id="info">Click a box for details.</dl>
</aside>
</main>
<script type="application/json" id="sw-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
