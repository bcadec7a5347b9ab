(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("sw-config").textContent);
  var STATUSES = cfg.statuses;
  var DEFAULT_ORDER = {score: "desc", uncertainty: "desc", "class": "asc", status: "asc", id: "asc"};
  var ROW_PX = 24, HEAD_PX = 28;  // as in the CSS of #list
  var PAGE = 500;  // sites fetched at a time; more as the reviewer scrolls or steps near the end
  var state = {
    sites: [], byId: new Map(), sel: -1, total: 0, listReviewed: 0, more: null, sort: "score", order: "desc", summary: null, scenes: [],
    pending: 0, failed: 0, detail: null, chipScene: null, token: 0, listToken: 0, queue: Promise.resolve()
  };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function fmt(v, k) { return (v === null || v === undefined) ? "\u2013" : Number(v).toFixed(k); }
  function enc(s) { return encodeURIComponent(s); }
  function message(text, bad) {
    var m = $("message");
    m.textContent = text || "";
    m.classList.toggle("bad", !!bad);
  }

  function api(path, opts) {
    return fetch(path, opts).then(function (r) {
      return r.text().then(function (text) {
        var body;
        try { body = text ? JSON.parse(text) : null; } catch { body = null; }
        if (!r.ok) { throw new Error((body && body.error) || (r.status + " " + r.statusText)); }
        return body;
      });
    });
  }

  // --- who reviews: the server says, from the token this page was opened with ---------
  var reviewer = $("reviewer");
  function login() {
    var m = /[#&]token=([^&]+)/.exec(location.hash);
    var ask = m ? api("/api/session", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: decodeURIComponent(m[1])})
    }) : api("/api/session");
    if (m) { history.replaceState(null, "", location.pathname + location.search); }  // the token leaves the address bar
    return ask.then(function (r) { reviewer.textContent = r.reviewer; return r; });
  }

  // --- summary and progress ------------------------------------------------------------
  function loadSummary() {
    return api("/api/summary").then(function (s) { state.summary = s; progress(); return s; });
  }
  function progress() {
    var n = state.total, r = state.listReviewed;
    $("progress-text").textContent = r + " / " + n + " reviewed";
    $("bar-fill").style.width = (n ? (100 * r / n) : 0) + "%";
    var s = state.summary, more = [];
    if (s) {
      if (s.sample.sites) { more.push("sample " + s.sample.reviewed + " / " + s.sample.sites); }
      if (s.sites !== n) { more.push("run " + s.reviewed + " / " + s.sites); }
    }
    $("progress-more").textContent = more.length ? "(" + more.join(", ") + ")" : "";
  }
  function saveState() {
    var e = $("save-state");
    e.classList.toggle("bad", state.failed > 0);
    if (state.pending > 0) { e.textContent = "saving " + state.pending + "\u2026"; }
    else if (state.failed > 0) { e.textContent = state.failed + " not saved"; }
    else { e.textContent = "all decisions saved"; }
  }

  // --- filters and list ----------------------------------------------------------------
  function query() {
    var p = new URLSearchParams();
    if ($("f-class").value) { p.set("class", $("f-class").value); }
    var on = STATUSES.filter(function (s) { return $("f-st-" + s).checked; });
    if (on.length && on.length < STATUSES.length) { on.forEach(function (s) { p.append("status", s); }); }
    var lo = $("f-min").value, hi = $("f-max").value;
    if (lo !== "" && isFinite(+lo)) { p.set("min_score", lo); }
    if (hi !== "" && isFinite(+hi)) { p.set("max_score", hi); }
    if ($("f-sample").checked) { p.set("sample", "1"); }
    p.set("sort", state.sort);
    p.set("order", state.order);
    return p.toString();
  }
  function loadSites() {
    var keep = state.sel >= 0 ? state.sites[state.sel].id : null;
    var token = ++state.listToken;
    document.body.dataset.loading = "1";
    state.more = null;
    return api("/api/sites?" + query() + "&limit=" + PAGE).then(function (data) {
      if (token !== state.listToken) { return; }  // a newer query is on its way
      document.body.dataset.loading = "0";
      state.sites = data.sites;
      state.total = data.total;
      state.listReviewed = data.reviewed;
      state.byId = new Map();
      state.sites.forEach(function (s, i) { state.byId.set(s.id, i); });
      state.sel = -1;
      renderList();
      renderSites();
      progress();
      $("list-foot").textContent = data.total + " site" + (data.total === 1 ? "" : "s") + " in this list";
      var i = (keep !== null && state.byId.has(keep)) ? state.byId.get(keep) : nextUnreviewed(-1);
      if (i < 0 && state.sites.length) { i = 0; }
      if (i >= 0) { select(i, {pan: false}); } else { clearSite(); }
    }).catch(function (err) {
      if (token === state.listToken) { document.body.dataset.loading = "0"; }
      message("Could not load the sites: " + err.message, true);
    });
  }
  function loadMore() {  // the next page of the list, once; resolves when it is in
    if (state.sites.length >= state.total) { return Promise.resolve(); }
    if (state.more) { return state.more; }
    var token = state.listToken, from = state.sites.length;
    state.more = api("/api/sites?" + query() + "&limit=" + PAGE + "&offset=" + from).then(function (data) {
      if (token !== state.listToken) { return; }
      data.sites.forEach(function (s) {
        if (!state.byId.has(s.id)) { state.byId.set(s.id, state.sites.length); state.sites.push(s); }
      });
      state.total = data.total;
      renderRows(from);
      renderSites();
      $("nav-pos").textContent = state.sel >= 0 ? (state.sel + 1) + " of " + state.total : "";
    }).catch(function (err) {
      message("Could not load more sites: " + err.message, true);
    }).then(function () { if (token === state.listToken) { state.more = null; } });
    return state.more;
  }
  $("list-wrap").addEventListener("scroll", function () {
    var w = $("list-wrap");
    if (w.scrollTop + w.clientHeight > w.scrollHeight - 40 * ROW_PX) { loadMore(); }
  });
  function renderList() {
    $("list").tBodies[0].textContent = "";
    renderRows(0);
  }
  function renderRows(from) {
    var tbody = $("list").tBodies[0];
    state.sites.slice(from).forEach(function (s, k) {
      var i = from + k, tr = el("tr");
      tr.dataset.i = String(i);
      tr.dataset.id = s.id;
      tr.appendChild(el("td", "id", s.id));
      tr.appendChild(el("td", "cls", s["class"]));
      tr.appendChild(el("td", "num", fmt(s.max_score, 2)));
      tr.appendChild(el("td", "num", fmt(s.uncertainty, 2)));
      var st = el("td", "status");
      st.appendChild(el("span", "dot st-" + s.status));
      st.appendChild(document.createTextNode(s.status));
      tr.appendChild(st);
      tbody.appendChild(tr);
    });
    if (!state.sites.length && from === 0) {
      var tr = el("tr"), td = el("td", "empty", "No sites match these filters.");
      td.colSpan = 5;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    document.querySelectorAll("#list th").forEach(function (th) {
      var on = th.dataset.sort === state.sort;
      th.querySelector(".arrow").textContent = on ? (state.order === "asc" ? " \u25b2" : " \u25bc") : "";
      th.setAttribute("aria-sort", on ? (state.order === "asc" ? "ascending" : "descending") : "none");
    });
  }
  function updateRow(i) {
    var s = state.sites[i], tr = $("list").tBodies[0].rows[i];
    if (!tr) { return; }
    var td = tr.cells[4];
    td.textContent = "";
    td.appendChild(el("span", "dot st-" + s.status));
    td.appendChild(document.createTextNode(s.status));
    styleSite(i);
  }
  document.querySelectorAll("#list th").forEach(function (th) {
    th.addEventListener("click", function () {
      var k = th.dataset.sort;
      if (state.sort === k) { state.order = state.order === "asc" ? "desc" : "asc"; }
      else { state.sort = k; state.order = DEFAULT_ORDER[k] || "asc"; }
      loadSites();
    });
  });
  $("list").tBodies[0].addEventListener("click", function (e) {
    var tr = e.target.closest("tr");
    if (tr && tr.dataset.i !== undefined) { select(+tr.dataset.i, {pan: true}); }
  });
  ["f-class", "f-sample"].forEach(function (id) {
    $(id).addEventListener("change", function (e) { e.target.blur(); loadSites(); });
  });
  ["f-min", "f-max"].forEach(function (id) {
    $(id).addEventListener("change", function () { loadSites(); });
    $(id).addEventListener("keydown", function (e) { if (e.key === "Enter") { e.target.blur(); } });
  });

  // --- selection -----------------------------------------------------------------------
  function nextUnreviewed(i) {
    var n = state.sites.length;
    for (var k = 1; k <= n; k += 1) {
      var j = (i + k + n) % n;
      if (state.sites[j].status === "unreviewed" && j !== i) { return j; }
    }
    return -1;
  }
  function chipUrl(s, scene) {
    return "/api/sites/" + enc(s.id) + "/chip.png?v=" + s.n_detections + (scene ? "&scene=" + enc(scene) : "");
  }
  function clearSite() {
    $("site-id").textContent = "No site selected";
    $("site-class").textContent = "";
    $("site-status").textContent = "";
    $("chip").removeAttribute("src");
    $("facts").textContent = "";
    $("log").textContent = "";
    $("dets").textContent = "";
    $("chip-scenes").textContent = "";
    $("nav-pos").textContent = "";
  }
  function select(i, opts) {
    if (i < 0 || i >= state.sites.length) { return; }
    var old = state.sel;
    state.sel = i;
    var rows = $("list").tBodies[0].rows;
    if (old >= 0 && rows[old]) { rows[old].classList.remove("sel"); updateRow(old); }
    if (rows[i]) { rows[i].classList.add("sel"); scrollToRow(i); }
    var s = state.sites[i];
    updateRow(i);
    showSite(s);
    $("note").value = s.note || "";
    state.chipScene = null;
    setChip(s, null);
    drawFootprint(null);
    if (!opts || opts.pan !== false) { ensureVisible(s); }
    $("nav-pos").textContent = (i + 1) + " of " + state.total;
    if (i >= state.sites.length - 50) { loadMore(); }
    loadDetail(s);
    var j = nextUnreviewed(i);
    if (j >= 0) { (new Image()).src = chipUrl(state.sites[j], null); }  // prefetch the next chip
  }
  function scrollToRow(i) {  // after the next layout (rows have a fixed height), so keys never wait for one
    state.scrollRow = i;
    if (state.scrollPending) { return; }
    state.scrollPending = true;
    requestAnimationFrame(function () {
      state.scrollPending = false;
      var wrap = $("list-wrap"), top = HEAD_PX + state.scrollRow * ROW_PX, view = wrap.clientHeight || 600;
      if (top - HEAD_PX < wrap.scrollTop) { wrap.scrollTop = top - HEAD_PX; }
      else if (top + ROW_PX > wrap.scrollTop + view) { wrap.scrollTop = top + ROW_PX - view; }
    });
  }
  function showSite(s) {
    $("site-id").textContent = s.id;
    $("site-class").textContent = s["class"];
    var b = $("site-status");
    b.textContent = s.status;
    b.className = "badge " + s.status;
    var f = $("facts");
    f.textContent = "";
    var rows = [
      ["Class", s["class"]],
      ["Max score", fmt(s.max_score, 3) + "  (threshold " + fmt(s.threshold, 2) + ")"],
      ["Mean score", fmt(s.mean_score, 3)],
      ["Uncertainty", fmt(s.uncertainty, 2)],
      ["First seen", s.first_seen || "\u2013"],
      ["Last seen", s.last_seen || "\u2013"],
      ["Scenes", s.scenes.join(", ")],
      ["Detections", String(s.n_detections)],
      ["Lon, lat", fmt(s.lon, 6) + ", " + fmt(s.lat, 6)],
      ["In sample", s.in_sample ? "yes" : "no"]
    ];
    if (s.reviewer) { rows.push(["Last review", s.status + " by " + s.reviewer + " at " + (s.reviewed_at || "")]); }
    rows.forEach(function (r) { f.appendChild(el("dt", null, r[0])); f.appendChild(el("dd", null, r[1])); });
  }
  function loadDetail(s) {
    var token = ++state.token;
    return api("/api/sites/" + enc(s.id)).then(function (d) {
      if (token !== state.token) { return; }
      state.detail = d;
      renderDetail(d);
    }).catch(function (err) { if (token === state.token) { message("Could not load " + s.id + ": " + err.message, true); } });
  }
  function renderDetail(d) {
    drawFootprint(d);
    var log = $("log");
    log.textContent = "";
    if (!d.reviews.length) { log.appendChild(el("li", "when", "Not reviewed yet.")); }
    d.reviews.slice().reverse().forEach(function (r) {
      var li = el("li");
      var head = el("div", "when");
      head.appendChild(el("span", "dot st-" + r.status));
      head.appendChild(document.createTextNode(r.status + " \u00b7 " + r.reviewer + " \u00b7 " + r.time));
      li.appendChild(head);
      if (r.note) { li.appendChild(el("div", "text", r.note)); }
      log.appendChild(li);
    });
    var t = $("dets");
    t.textContent = "";
    var hr = el("tr");
    ["Scene", "Date", "Score"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    t.appendChild(hr);
    d.detections.forEach(function (x) {
      var tr = el("tr");
      tr.appendChild(el("td", null, x.scene));
      tr.appendChild(el("td", null, x.acquired || "\u2013"));
      tr.appendChild(el("td", null, fmt(x.score, 3)));
      t.appendChild(tr);
    });
    var box = $("chip-scenes");
    box.textContent = "";
    if (d.chip_scenes.length > 1) {
      d.chip_scenes.forEach(function (c) {
        var b = el("button", c.detected ? "" : "nodet", (c.acquired || c.name));
        b.title = c.name + (c.detected ? " (detected here)" : " (not detected here)");
        if ((state.chipScene === null && c["default"]) || state.chipScene === c.name) { b.classList.add("on"); }
        b.addEventListener("click", function () {
          state.chipScene = c.name;
          setChip(state.sites[state.sel], c.name);
          box.querySelectorAll("button").forEach(function (o) { o.classList.toggle("on", o === b); });
          b.blur();
        });
        box.appendChild(b);
      });
    }
  }
  function setChip(s, scene) {
    var img = $("chip"), boxEl = $("chip-box");
    $("chip-msg").textContent = "";
    boxEl.classList.add("loading");
    img.alt = "image chip of " + s.id;
    img.src = chipUrl(s, scene);
  }
  $("chip").addEventListener("load", function () { $("chip-box").classList.remove("loading"); });
  $("chip").addEventListener("error", function () {
    $("chip-box").classList.remove("loading");
    if ($("chip").getAttribute("src")) { $("chip-msg").textContent = "No image chip: the scene's files are not available."; }
  });

  // --- decisions -----------------------------------------------------------------------
  function decide(status) {
    if (state.sel < 0) { return; }
    var name = reviewer.textContent;
    var i = state.sel, s = state.sites[i];
    var before = {status: s.status, note: s.note, reviewer: s.reviewer, reviewed_at: s.reviewed_at};
    var note = $("note").value;
    s.status = status; s.note = note; s.reviewer = name;
    var counted = (before.status === "unreviewed") - (status === "unreviewed");  // change to the list's reviewed count
    state.listReviewed += counted;
    updateRow(i);
    progress();
    state.pending += 1;
    saveState();
    var body = JSON.stringify({status: status, note: note});
    state.queue = state.queue.then(function () {
      return api("/api/sites/" + enc(s.id) + "/review", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: body
      });
    }).then(function (res) {
      Object.assign(s, res.site);
      state.pending -= 1;
      saveState();
      var j = state.byId.get(s.id);
      if (j !== undefined && state.sites[j] === s) {
        updateRow(j);
        if (j === state.sel) { showSite(s); loadDetail(s); }
      }
      if (state.pending === 0) {  // refresh the run's counts once the queue is empty (and a density by status)
        loadSummary();
        if ($("d-status").value !== "all" && state.density) { loadDensity(DENSITY_CELLS); }
      }
    }).catch(function (err) {
      Object.assign(s, before);
      state.listReviewed -= counted;
      state.pending -= 1;
      state.failed += 1;
      saveState();
      var j = state.byId.get(s.id);
      if (j !== undefined && state.sites[j] === s) { updateRow(j); }
      progress();
      message("NOT SAVED: " + s.id + " " + status + ": " + err.message, true);
    });
    message(s.id + ": " + status);
    var next = nextUnreviewed(i);
    if (next >= 0) { select(next, {pan: true}); }
    else if (state.sites.length < state.total) {  // the rest of the list is not loaded yet
      loadMore().then(function () { var j = nextUnreviewed(i); if (j >= 0 && state.sel === i) { select(j, {pan: true}); } });
    }
    else { showSite(s); message("Every site in this list has a decision. " + s.id + ": " + status); }
  }
  $("b-confirm").addEventListener("click", function () { decide("confirmed"); });
  $("b-reject").addEventListener("click", function () { decide("rejected"); });
  $("b-unsure").addEventListener("click", function () { decide("unsure"); });
  $("b-prev").addEventListener("click", function () { move(-1); });
  $("b-next").addEventListener("click", function () { move(1); });
  function move(d) {
    if (!state.sites.length) { return; }
    var i = state.sel < 0 ? 0 : Math.min(Math.max(state.sel + d, 0), state.sites.length - 1);
    select(i, {pan: true});
  }
  $("note").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); e.target.blur(); }
  });

  // --- keyboard ------------------------------------------------------------------------
  function typing(t) {
    if (!t || !t.tagName) { return false; }
    if (t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable) { return true; }
    return t.tagName === "INPUT" && ["checkbox", "radio", "button"].indexOf(t.type) < 0;
  }
  document.addEventListener("keydown", function (e) {
    if (typing(e.target)) { if (e.key === "Escape") { e.target.blur(); } return; }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var handled = true;
    switch (e.key) {
      case "y": case "Y": decide("confirmed"); break;
      case "n": case "N": decide("rejected"); break;
      case "u": case "U": decide("unsure"); break;
      case "ArrowDown": case "ArrowRight": case "j": move(1); break;
      case "ArrowUp": case "ArrowLeft": case "k": move(-1); break;
      case "+": case "=": zoomBy(1); break;
      case "-": zoomBy(-1); break;
      case "f": fit(); break;
      case "?": $("help").hidden = !$("help").hidden; break;
      case "Escape": $("help").hidden = true; break;
      default: handled = false;
    }
    if (handled) { e.preventDefault(); }
  });
  $("help-btn").addEventListener("click", function (e) { $("help").hidden = false; e.target.blur(); });
  $("help").addEventListener("click", function () { $("help").hidden = true; });

  // --- map: Leaflet (vendored, served by this server), Web Mercator without tiles ------
  var M = window.sitewatchMaps;
  var lmap = M.map("map", {zoomControl: false, keyboard: false});
  [["sw-scenes", 250], ["sw-density", 350], ["sw-hotspots", 360]].forEach(function (p) {
    lmap.createPane(p[0]).style.zIndex = String(p[1]);  // quick-looks under density under sites
  });
  var layers = {scenes: L.layerGroup(), detections: L.layerGroup(), selection: L.layerGroup(), status: {},
                density: null, hotspots: null};
  var marks = [];  // per site of the list: its dot, its box and the status group it is in
  var control = L.control.layers(null, null, {collapsed: false, position: "topright"});
  var legend = new M.Legend();
  layers.scenes.addTo(lmap);
  control.addOverlay(layers.scenes, "Scenes (quick-looks)");
  STATUSES.forEach(function (st) {
    layers.status[st] = L.layerGroup().addTo(lmap);
    control.addOverlay(layers.status[st], '<span class="dot st-' + st + '"></span>Sites: ' + st);  // names from the server's list
  });
  layers.detections.addTo(lmap);
  control.addOverlay(layers.detections, "Detections of the selected site");
  layers.selection.addTo(lmap);
  control.addTo(lmap);
  legend.addTo(lmap);
  window.sitewatchMap = lmap;  // for tests and the console: the Leaflet map
  window.sitewatchReview = {layers: layers, dataBounds: dataBounds, siteBounds: function (i) { return siteBounds(state.sites[i]); }};

  function hasPlace(s) { return s.lon !== null && s.lat !== null && s.lon !== undefined && s.lat !== undefined; }
  function siteText(s) {
    return s.id + " \u00b7 " + s["class"] + " \u00b7 " + fmt(s.max_score, 2) + " \u00b7 " + s.status;
  }
  function siteStyle(s, sel) {
    return {radius: sel ? 8 : 5, color: sel ? "#fff" : "#000", weight: sel ? 3 : 1.5, opacity: 1,
            fillColor: M.STATUS_COLOURS[s.status] || "#fff", fillOpacity: 1, className: "sw-site"};
  }
  function renderScenes() {
    layers.scenes.clearLayers();
    state.scenes.forEach(function (s) {
      if (s.quicklook) {
        layers.scenes.addLayer(new M.CornerOverlay(s.quicklook, s.corners, {pane: "sw-scenes", className: "sw-quicklook"}));
      }
      var poly = L.polygon(s.corners.map(function (p) { return [p[1], p[0]]; }),
                           {color: "#58606b", weight: 1, fill: false, className: "sw-scene"});
      poly.bindTooltip(el("span", null, s.name + (s.acquired ? " (" + s.acquired + ")" : "")), {sticky: true});
      layers.scenes.addLayer(poly);
    });
  }
  function renderSites() {
    STATUSES.forEach(function (st) { layers.status[st].clearLayers(); });
    marks = state.sites.map(function (s, i) {
      if (!hasPlace(s)) { return null; }
      var m = {status: s.status, tip: el("span", null, siteText(s)), box: null,
               dot: L.circleMarker([s.lat, s.lon], Object.assign({bubblingMouseEvents: false}, siteStyle(s, i === state.sel)))};
      if (s.bbox) {
        m.box = L.rectangle([[s.bbox[1], s.bbox[0]], [s.bbox[3], s.bbox[2]]],
                            {color: M.STATUS_COLOURS[s.status] || "#fff", weight: 1.5, fill: false, interactive: false,
                             className: "sw-site-box"});
      }
      m.dot.bindTooltip(m.tip);
      m.dot.on("click", function () { select(i, {pan: false}); });
      groupOf(m).forEach(function (x) { layers.status[m.status].addLayer(x); });
      return m;
    });
  }
  function groupOf(m) { return m.box ? [m.box, m.dot] : [m.dot]; }
  function styleSite(i) {
    var m = marks[i], s = state.sites[i];
    if (!m || !s) { return; }
    if (m.status !== s.status && layers.status[s.status]) {
      groupOf(m).forEach(function (x) { layers.status[m.status].removeLayer(x); layers.status[s.status].addLayer(x); });
      m.status = s.status;
    }
    m.dot.setStyle(siteStyle(s, i === state.sel));
    if (m.box) { m.box.setStyle({color: M.STATUS_COLOURS[s.status] || "#fff"}); }
    if (i === state.sel && lmap.hasLayer(m.dot)) { m.dot.bringToFront(); }
    m.tip.textContent = siteText(s);
  }
  function drawFootprint(d) {  // the selected site's footprint and its detections (null: none yet)
    layers.selection.clearLayers();
    layers.detections.clearLayers();
    if (!d) { return; }
    if (d.footprint) {
      layers.selection.addLayer(L.polygon(d.footprint.map(function (p) { return [p[1], p[0]]; }),
                                          {color: "#ffd600", weight: 2, fill: false, interactive: false,
                                           className: "sw-footprint"}));
    }
    d.detections.forEach(function (x) {
      if (!hasPlace(x)) { return; }
      var c = L.circleMarker([x.lat, x.lon], {radius: 3, color: "#00e5ff", weight: 2, fill: false, className: "sw-detection"});
      c.bindTooltip(el("span", null, x.scene + " \u00b7 " + (x.acquired || "\u2013") + " \u00b7 " + fmt(x.score, 3)));
      layers.detections.addLayer(c);
    });
  }
  function siteBounds(s) {
    return s.bbox ? L.latLngBounds([s.bbox[1], s.bbox[0]], [s.bbox[3], s.bbox[2]]) : L.latLngBounds([s.lat, s.lon], [s.lat, s.lon]);
  }
  function dataBounds() {  // the scenes and the sites of the list: what "fit" frames
    var b = L.latLngBounds([]);
    state.scenes.forEach(function (s) { s.corners.forEach(function (p) { b.extend([p[1], p[0]]); }); });
    state.sites.forEach(function (s) { if (hasPlace(s)) { b.extend([s.lat, s.lon]); } });
    return b;
  }
  function fit() {
    var b = dataBounds();
    if (!b.isValid()) { if (!lmap._loaded) { lmap.setView([20, 0], 2); } return; }  // nothing to show yet
    lmap.fitBounds(b, {padding: [12, 12], maxZoom: 17, animate: false});
  }
  function ensureVisible(s) {  // centre the site, its box at most a third of the view, ~1 km around it at least
    if (!hasPlace(s)) { return; }
    var b = siteBounds(s), c = b.getCenter(), cos = Math.max(Math.cos(c.lat * Math.PI / 180), 0.05);
    var dy = Math.max((b.getNorth() - b.getSouth()) * 1.5, 0.0045);
    var dx = Math.max((b.getEast() - b.getWest()) * 1.5, 0.0045 / cos);
    lmap.fitBounds([[c.lat - dy, c.lng - dx], [c.lat + dy, c.lng + dx]], {maxZoom: 17, animate: false});
  }
  function updateLegend() {
    var d = state.density, on = d && (lmap.hasLayer(d.density) || lmap.hasLayer(d.hotspots));
    legend.update({density: on ? d : null,  // the status colours are in the layer control
                   note: state.densityNote || "wheel: zoom at the cursor \u00b7 drag: pan \u00b7 click a site"});
  }
  lmap.on("overlayadd overlayremove", updateLegend);
  var DENSITY_CELLS = [1000, 5000, 25000, 100000];  // metres: the next when the sites span too many cells
  function loadDensity(cells) {  // (again) for the sites of the status chosen; layers that were on stay on
    var status = $("d-status").value || "all", token = state.densityToken = (state.densityToken || 0) + 1;
    document.body.dataset.density = "loading";
    return api("/api/density?cell=" + cells[0] + "&status=" + enc(status)).then(function (fc) {
      if (token !== state.densityToken) { return; }
      var old = state.density, on = [false, false];
      if (old) {
        on = [lmap.hasLayer(old.density), lmap.hasLayer(old.hotspots)];
        [old.density, old.hotspots].forEach(function (l) { control.removeLayer(l); lmap.removeLayer(l); });
      }
      var d = M.densityLayers(fc, {density: "sw-density", hotspots: "sw-hotspots"});
      state.density = d;
      layers.density = d.density;
      layers.hotspots = d.hotspots;
      control.addOverlay(d.density, "Density (sites per cell)");
      control.addOverlay(d.hotspots, "Hotspots (Gi*)");
      if (on[0]) { d.density.addTo(lmap); }
      if (on[1]) { d.hotspots.addTo(lmap); }
      state.densityNote = fc.sites ? null : "No " + status + " sites to count in the density.";
      updateLegend();
      document.body.dataset.density = "1";
    }).catch(function (err) {
      if (token !== state.densityToken) { return; }
      if (cells.length > 1 && /cells/.test(err.message)) { return loadDensity(cells.slice(1)); }
      state.densityNote = "No density layer: " + err.message;
      updateLegend();
      document.body.dataset.density = "0";
    });
  }
  function zoomBy(d) {  // at once, not animated: a key pressed during an animation would be lost
    lmap.setZoom(lmap.getZoom() + d, {animate: false});
  }
  $("z-in").addEventListener("click", function (e) { zoomBy(1); e.target.blur(); });
  $("z-out").addEventListener("click", function (e) { zoomBy(-1); e.target.blur(); });
  $("z-fit").addEventListener("click", function (e) { fit(); e.target.blur(); });

  // --- start ---------------------------------------------------------------------------
  $("run").textContent = cfg.run;
  document.title = "Review \u00b7 " + cfg.run + " \u00b7 sitewatch";
  STATUSES.forEach(function (s) {
    var lab = el("label"), box = el("input");
    box.type = "checkbox"; box.id = "f-st-" + s; box.checked = true;
    lab.appendChild(box);
    lab.appendChild(el("span", "dot st-" + s));
    lab.appendChild(document.createTextNode(s));
    $("f-status").appendChild(lab);
  });
  updateLegend();
  STATUSES.forEach(function (s) { $("d-status").appendChild(el("option", null, "density of " + s + " sites")).value = s; });
  $("d-status").addEventListener("change", function (e) { e.target.blur(); loadDensity(DENSITY_CELLS); });
  // the status checkboxes exist only now: wire them up
  STATUSES.forEach(function (s) {
    $("f-st-" + s).addEventListener("change", function (e) { e.target.blur(); loadSites(); });
  });
  saveState();
  login().catch(function (err) {
    throw new Error(err.message + ". Open the page with the URL that sitewatch review printed, or the one your " +
                    "coordinator gave you (it ends in #token=...)");
  }).then(function () { return Promise.all([loadSummary(), api("/api/scenes")]); }).then(function (res) {
    var summary = res[0];
    state.scenes = res[1].scenes;
    summary.classes.forEach(function (c) { $("f-class").appendChild(el("option", null, c)); });
    $("f-sample").disabled = !summary.sample.sites;
    $("f-sample").checked = !!cfg.sample && summary.sample.sites > 0;
    $("f-sample-n").textContent = summary.sample.sites ? "(" + summary.sample.sites + ")" : "(none drawn)";
    return loadSites().then(function () {
      renderScenes();
      fit();
      if (state.sel >= 0) { if (state.detail) { drawFootprint(state.detail); } updateRow(state.sel); }
      document.body.dataset.ready = "1";
      loadDensity(DENSITY_CELLS);
    });
  }).catch(function (err) { message("Could not start: " + err.message, true); });
})();
