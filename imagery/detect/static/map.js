(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sw-data").textContent);
  var M = window.sitewatchMaps;
  var sel = document.getElementById("scene");
  var slider = document.getElementById("minscore");
  var shown = document.getElementById("minscore-v");
  var info = document.getElementById("info");
  var el = M.el;

  // --- the map: Web Mercator, no tiles; the quick-looks are the base ---------------------
  var map = M.map("map", {zoomControl: false, keyboard: false});
  [["sw-scenes", 250], ["sw-density", 350], ["sw-hotspots", 360]].forEach(function (p) {
    map.createPane(p[0]).style.zIndex = String(p[1]);
  });
  var scenes = L.layerGroup().addTo(map), detections = L.layerGroup().addTo(map);
  var control = L.control.layers(null, null, {collapsed: false, position: "topright"});
  var legend = new M.Legend();
  control.addOverlay(scenes, "Scenes (quick-looks)");
  control.addOverlay(detections, "Detections");
  window.sitewatchMap = map;  // for tests and the console

  function fmt(v, k) { return v === null ? "n/a" : v.toFixed(k); }
  // scene pixel (x, y) to [lat, lng] through the scene's corners (top-left, top-right, bottom-right, bottom-left)
  function toLatLng(s, x, y) {
    var u = x / s.scene_width, v = y / s.scene_height, c = s.corners;
    var w = [(1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v];
    var lon = 0, lat = 0;
    for (var k = 0; k < 4; k += 1) { lon += w[k] * c[k][0]; lat += w[k] * c[k][1]; }
    return [lat, lon];
  }
  var marks = [], selected = null;
  data.scenes.forEach(function (s, i) {
    if (s.quicklook) { scenes.addLayer(new M.CornerOverlay(s.quicklook, s.corners, {pane: "sw-scenes", className: "sw-quicklook"})); }
    var outline = L.polygon(s.corners.map(function (p) { return [p[1], p[0]]; }),
                            {color: "#8a929e", weight: 1, fill: false, className: "sw-scene"});
    outline.bindTooltip(el("span", null, s.name), {sticky: true});
    scenes.addLayer(outline);
    s.dets.forEach(function (d) {
      if (d[4] === null || d[5] === null || d[6] === null || d[7] === null) { return; }
      var ring = [toLatLng(s, d[4], d[5]), toLatLng(s, d[6], d[5]), toLatLng(s, d[6], d[7]), toLatLng(s, d[4], d[7])];
      var poly = L.polygon(ring, {color: data.colours[d[0]], weight: 2, fillOpacity: 0, className: "sw-det c" + d[0]});
      poly.bindTooltip(el("span", null, data.classes[d[0]] + " " + fmt(d[1], 3)));
      poly.on("click", function () {
        if (selected) { selected.getElement().classList.remove("sel"); }
        selected = poly;
        poly.getElement().classList.add("sel");
        show(s, d);
      });
      marks.push({poly: poly, d: d, scene: i});
      detections.addLayer(poly);
    });
  });
  // the sites by review status: those with a decision shown at first, the unreviewed ones on request
  var sites = {};
  data.statuses.forEach(function (st) {
    sites[st] = L.layerGroup();
    if (st !== "unreviewed") { sites[st].addTo(map); }
    control.addOverlay(sites[st], "Sites: " + st);  // names from sitewatch's list of statuses
  });
  data.sites.forEach(function (x) {  // [id, class, status, lon, lat, max_score, bbox]
    var group = sites[x[2]], colour = M.STATUS_COLOURS[x[2]] || "#fff";
    if (!group) { return; }
    if (x[6]) {
      group.addLayer(L.rectangle([[x[6][1], x[6][0]], [x[6][3], x[6][2]]],
                                 {color: colour, weight: 1.5, fill: false, interactive: false, className: "sw-site-box"}));
    }
    var dot = L.circleMarker([x[4], x[3]], {radius: 5, color: "#000", weight: 1.5, fillColor: colour, fillOpacity: 1,
                                            className: "sw-site sw-" + x[2]});
    dot.bindTooltip(el("span", null, x[0] + " \u00b7 " + x[1] + " \u00b7 " + fmt(x[5], 2) + " \u00b7 " + x[2]));
    dot.on("click", function () {
      rows([["Site", x[0]], ["Class", x[1]], ["Status", x[2]], ["Max score", fmt(x[5], 3)], ["Lon", fmt(x[3], 6)],
            ["Lat", fmt(x[4], 6)]]);
    });
    group.addLayer(dot);
  });
  var density = null;
  if (data.density) {
    density = M.densityLayers(data.density, {density: "sw-density", hotspots: "sw-hotspots"});
    control.addOverlay(density.density, "Density (sites per cell)");
    control.addOverlay(density.hotspots, "Hotspots (Gi*)");
  }
  control.addTo(map);
  legend.addTo(map);
  function updateLegend() {
    var on = density && (map.hasLayer(density.density) || map.hasLayer(density.hotspots));
    var shown = data.statuses.filter(function (st) { return map.hasLayer(sites[st]) && sites[st].getLayers().length; });
    legend.update({classes: data.classes.map(function (c, k) { return [c, data.colours[k]]; }),
                   statuses: shown.length ? shown : null, density: on ? density : null,
                   note: density ? null : "no density layer: no sites"});
  }
  map.on("overlayadd overlayremove", updateLegend);
  updateLegend();

  // --- what is shown: the score filter, the legend's counts, the selected detection -------
  function filter() {
    var t = parseFloat(slider.value);
    shown.textContent = t.toFixed(2);
    var total = data.classes.map(function () { return 0; }), vis = total.slice();
    marks.forEach(function (m) {
      var ok = (m.d[1] === null ? 0 : m.d[1]) >= t;
      if (ok && !detections.hasLayer(m.poly)) { detections.addLayer(m.poly); }
      if (!ok && detections.hasLayer(m.poly)) { detections.removeLayer(m.poly); }
      total[m.d[0]] += 1;
      if (ok) { vis[m.d[0]] += 1; }
    });
    document.querySelectorAll("#legend .n").forEach(function (n) {
      var c = +n.getAttribute("data-c");
      n.textContent = vis[c] + " / " + total[c];
    });
  }
  function rows(list) {
    info.textContent = "";
    list.forEach(function (row) {
      info.appendChild(el("dt", null, row[0]));
      info.appendChild(el("dd", null, row[1]));
    });
  }
  function show(s, d) {
    rows([
      ["Scene", s.name], ["Class", data.classes[d[0]]], ["Score", fmt(d[1], 3)],
      ["Lon", fmt(d[2], 6)], ["Lat", fmt(d[3], 6)],
      ["Box (px)", d.slice(4).map(function (v) { return fmt(v, 1); }).join(", ")]
    ]);
  }
  function sceneBounds(s) { return L.latLngBounds(s.corners.map(function (p) { return [p[1], p[0]]; })); }
  function dataBounds() {  // the scenes and the detections: what "fit" frames
    var b = L.latLngBounds([]);
    data.scenes.forEach(function (s) { b.extend(sceneBounds(s)); });
    marks.forEach(function (m) { if (m.d[2] !== null && m.d[3] !== null) { b.extend([m.d[3], m.d[2]]); } });
    data.sites.forEach(function (x) { b.extend([x[4], x[3]]); });
    return b;
  }
  function fit() {
    var i = sel.value === "" ? -1 : +sel.value, s = data.scenes[i];
    var b = s ? sceneBounds(s) : dataBounds();
    if (b.isValid()) { map.fitBounds(b, {padding: [12, 12], maxZoom: 18, animate: false}); }
    else { map.setView([20, 0], 2); }
    if (s) {
      var b2 = s.bounds.map(function (v) { return fmt(v, 5); });
      rows([["Scene", s.name], ["Detections", String(s.dets.length)], ["W, S", b2[0] + ", " + b2[1]],
            ["E, N", b2[2] + ", " + b2[3]], ["", "Click a box for details."]]);
    }
  }
  window.sitewatchCandidates = {dataBounds: dataBounds, fit: fit};
  sel.addEventListener("change", fit);
  slider.addEventListener("input", filter);
  function zoomBy(d) { map.setZoom(map.getZoom() + d, {animate: false}); }  // a key during an animation is kept
  document.getElementById("zin").addEventListener("click", function () { zoomBy(1); });
  document.getElementById("zout").addEventListener("click", function () { zoomBy(-1); });
  document.getElementById("zreset").addEventListener("click", function () { sel.value = ""; fit(); });
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "SELECT" || (t.tagName === "INPUT" && t.type !== "range")) || e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (e.key === "+" || e.key === "=") { zoomBy(1); }
    else if (e.key === "-") { zoomBy(-1); }
    else if (e.key === "f") { sel.value = ""; fit(); }
  });
  fit();
  filter();
  document.body.dataset.ready = "1";
})();
