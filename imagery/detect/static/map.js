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
