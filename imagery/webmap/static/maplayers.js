// The layers the review page and map.html share, on the vendored Leaflet (window.L): quick-looks placed
// by their four corners, density cells coloured by count, Gi* hot and cold spots, and the legend.
// Every text goes in with textContent (a tooltip gets an element, never an HTML string).
(function () {
  "use strict";
  var L = window.L;
  // a sequential ramp (ColorBrewer YlOrRd, 5 classes): few sites light, many dark red
  var RAMP = ["#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026"];
  var HOT = "#ff2d55", COLD = "#2f80ff";
  var STATUS_COLOURS = {unreviewed: "#cfd3d8", confirmed: "#00e676", rejected: "#ff1744", unsure: "#ffc400"};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  // An image placed by its corners [[lon, lat] top-left, top-right, bottom-right, bottom-left]: an affine
  // map of the image onto the three first corners in layer pixels (a scene in a projected CRS is a
  // slightly turned quadrilateral in lon/lat; L.imageOverlay only knows north-up bounds).
  var CornerOverlay = L.ImageOverlay.extend({
    initialize: function (url, corners, options) {
      this._corners = corners.map(function (p) { return L.latLng(p[1], p[0]); });
      L.ImageOverlay.prototype.initialize.call(this, url, L.latLngBounds(this._corners), options);
      this.on("load", this._reset, this);
    },
    _place: function (toPoint) {
      var img = this._image;
      if (!img) { return; }
      var w = img.naturalWidth || 1, h = img.naturalHeight || 1;
      var p0 = toPoint(this._corners[0]), p1 = toPoint(this._corners[1]), p3 = toPoint(this._corners[3]);
      img.style.width = w + "px";
      img.style.height = h + "px";
      img.style.transformOrigin = "0 0";
      img.style.transform = "matrix(" + [(p1.x - p0.x) / w, (p1.y - p0.y) / w, (p3.x - p0.x) / h, (p3.y - p0.y) / h,
        p0.x, p0.y].join(",") + ")";
    },
    _reset: function () {
      var map = this._map;
      if (map) { this._place(function (ll) { return map.latLngToLayerPoint(ll); }); }
    },
    _animateZoom: function (e) {
      var map = this._map;
      this._place(function (ll) { return map._latLngToNewLayerPoint(ll, e.zoom, e.center); });
    }
  });

  // Class limits of the density ramp for counts 1..max: at most 5 classes, each [lo, hi].
  function breaks(max) {
    max = Math.max(1, max | 0);
    var cuts = [];
    for (var k = 1; k <= RAMP.length; k += 1) {
      var v = Math.max(1, Math.round(Math.pow(max, k / RAMP.length)));
      if (!cuts.length || v > cuts[cuts.length - 1]) { cuts.push(v); }
    }
    var out = [], lo = 1;
    cuts.forEach(function (hi) { out.push([lo, hi]); lo = hi + 1; });
    return out;
  }
  function rampColour(classes, count) {
    var n = classes.length;
    for (var i = 0; i < n; i += 1) {
      if (count <= classes[i][1]) { return RAMP[Math.round(i * (RAMP.length - 1) / Math.max(n - 1, 1))]; }
    }
    return RAMP[RAMP.length - 1];
  }
  function fmtNum(v, k) { return (v === null || v === undefined) ? "\u2013" : Number(v).toFixed(k); }
  function cellTip(p) {
    return el("span", null, p.count + " site" + (p.count === 1 ? "" : "s") + " \u00b7 Gi* z " + fmtNum(p.gi_z, 2) +
              ", p " + fmtNum(p.gi_p, 3) + (p.hotspot ? " \u00b7 " + p.hotspot + " spot" : ""));
  }

  // The density and hotspot layers of a GeoJSON FeatureCollection from density_geojson (lon/lat cells),
  // in the map panes panes.density and panes.hotspots (default: the overlay pane).
  function densityLayers(fc, panes) {
    var max = 0;
    fc.features.forEach(function (f) { max = Math.max(max, f.properties.count); });
    var classes = breaks(max);
    var density = L.geoJSON(fc, {
      pane: (panes && panes.density) || "overlayPane",
      filter: function (f) { return f.properties.count > 0; },
      style: function (f) {
        return {className: "sw-density", stroke: true, color: "#000", weight: 0.5, opacity: 0.4,
                fillColor: rampColour(classes, f.properties.count), fillOpacity: 0.65};
      },
      onEachFeature: function (f, layer) { layer.bindTooltip(cellTip(f.properties), {sticky: true}); }
    });
    var hotspots = L.geoJSON(fc, {
      pane: (panes && panes.hotspots) || "overlayPane",
      filter: function (f) { return f.properties.hotspot === "hot" || f.properties.hotspot === "cold"; },
      style: function (f) {
        var c = f.properties.hotspot === "hot" ? HOT : COLD;
        return {className: "sw-hotspot sw-" + f.properties.hotspot, color: c, weight: 3, opacity: 1,
                fillColor: c, fillOpacity: 0.15};
      },
      onEachFeature: function (f, layer) { layer.bindTooltip(cellTip(f.properties), {sticky: true}); }
    });
    return {density: density, hotspots: hotspots, classes: classes, max: max, cell: fc.cell_m, status: fc.status};
  }

  function swatch(colour, outline) {
    var s = el("span", "sw-swatch");
    if (outline) { s.style.border = "2px solid " + colour; s.style.background = "transparent"; }
    else { s.style.background = colour; }
    return s;
  }
  function row(box, colour, text, outline) {
    var r = el("div", "sw-legend-row");
    r.appendChild(swatch(colour, outline));
    r.appendChild(document.createTextNode(text));
    box.appendChild(r);
  }

  // The legend: a Leaflet control whose sections are redrawn by update({statuses, classes, density}).
  var Legend = L.Control.extend({
    options: {position: "bottomright"},
    onAdd: function () {
      this._box = el("div", "sw-legend leaflet-bar");
      L.DomEvent.disableClickPropagation(this._box);
      L.DomEvent.disableScrollPropagation(this._box);
      this.update(this.options.content || {});
      return this._box;
    },
    update: function (c) {
      var box = this._box;
      if (!box) { this.options.content = c; return; }
      box.textContent = "";
      if (c.statuses) {
        box.appendChild(el("div", "sw-legend-head", "Sites by status"));
        c.statuses.forEach(function (s) { row(box, STATUS_COLOURS[s] || "#fff", s); });
      }
      if (c.classes) {
        box.appendChild(el("div", "sw-legend-head", "Detections by class"));
        c.classes.forEach(function (k) { row(box, k[1], k[0], true); });
      }
      if (c.density) {
        var d = c.density;
        box.appendChild(el("div", "sw-legend-head sw-legend-density",
                           "Density: " + (d.status && d.status !== "all" ? d.status + " " : "") + "sites per " +
                           (d.cell >= 1000 ? (d.cell / 1000) + " km" : d.cell + " m") + " cell"));
        if (!d.classes.length || !d.max) { box.appendChild(el("div", "sw-legend-row", "no sites")); }
        d.classes.forEach(function (k) { row(box, rampColour(d.classes, k[1]), k[0] === k[1] ? String(k[0]) : k[0] + "\u2013" + k[1]); });
        box.appendChild(el("div", "sw-legend-head", "Hotspots (Gi*, 95%)"));
        row(box, HOT, "hot: more sites than around", true);
        row(box, COLD, "cold: fewer sites than around", true);
      }
      if (c.note) { box.appendChild(el("div", "sw-legend-note", c.note)); }
    }
  });

  window.sitewatchMaps = {
    CornerOverlay: CornerOverlay,
    densityLayers: densityLayers,
    breaks: breaks,
    Legend: Legend,
    STATUS_COLOURS: STATUS_COLOURS,
    el: el,
    // a plain map: Web Mercator without tiles, a scale bar, Leaflet named without a link
    map: function (id, options) {
      var m = L.map(id, Object.assign({crs: L.CRS.EPSG3857, attributionControl: false, zoomSnap: 0.25,
                                       zoomDelta: 1, wheelPxPerZoomLevel: 90, minZoom: 1, maxZoom: 21}, options || {}));
      L.control.scale({imperial: false, position: "bottomleft"}).addTo(m);
      L.control.attribution({prefix: "Leaflet " + L.version, position: "bottomleft"}).addTo(m);
      return m;
    }
  };
})();
