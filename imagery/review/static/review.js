(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("sw-config").textContent);
  var STATUSES = cfg.statuses;
  var DEFAULT_ORDER = {score: "desc", uncertainty: "desc", "class": "asc", status: "asc", id: "asc"};
  var SVGNS = "http://www.w3.org/2000/svg";
  var ROW_PX = 24, HEAD_PX = 28;  // as in the CSS of #list
  var K = 111320;  // metres per degree of latitude: map units are about metres
  var PAGE = 500;  // sites fetched at a time; more as the reviewer scrolls or steps near the end
  var state = {
    sites: [], byId: new Map(), sel: -1, total: 0, listReviewed: 0, more: null, sort: "score", order: "desc", summary: null, scenes: [],
    pending: 0, failed: 0, detail: null, chipScene: null, token: 0, listToken: 0, queue: Promise.resolve()
  };
  var map = {view: {x: 0, y: 0, w: 1000, h: 1000}, lon0: 0, lat0: 0, cos: 1, drag: null, u: 1};

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
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
    var c = $("map-sites").querySelector('circle[data-i="' + i + '"]');
    if (c) { c.setAttribute("class", "site " + s.status + (i === state.sel ? " sel" : "")); c.setAttribute("r", radius(c)); }
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
    drawFootprint(d.footprint);
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
      if (state.pending === 0) { loadSummary(); }  // refresh the run's counts once the queue is empty
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
      case "+": case "=": zoom(0.5); break;
      case "-": zoom(2); break;
      case "f": fit(); break;
      case "?": $("help").hidden = !$("help").hidden; break;
      case "Escape": $("help").hidden = true; break;
      default: handled = false;
    }
    if (handled) { e.preventDefault(); }
  });
  $("help-btn").addEventListener("click", function (e) { $("help").hidden = false; e.target.blur(); });
  $("help").addEventListener("click", function () { $("help").hidden = true; });

  // --- map -----------------------------------------------------------------------------
  var svg = $("map");
  function project(lon, lat) { return [(lon - map.lon0) * map.cos * K, -(lat - map.lat0) * K]; }
  function unitsPerPixel() {  // the map's size is measured on resize only: measuring forces a layout
    if (!map.size) { var r = svg.getBoundingClientRect(); map.size = {w: r.width, h: r.height}; }
    if (!map.size.w || !map.size.h) { return 1; }
    return Math.max(map.view.w / map.size.w, map.view.h / map.size.h);
  }
  function radius(c) { return String((c.classList.contains("sel") ? 8 : 5) * map.u); }
  function applyView(force) {
    var v = map.view;
    svg.setAttribute("viewBox", [v.x, v.y, v.w, v.h].join(" "));
    var u = unitsPerPixel();
    if (u === map.u && !force) { return; }  // same zoom: the markers keep their size
    map.u = u;
    $("map-sites").querySelectorAll("circle").forEach(function (c) { c.setAttribute("r", radius(c)); });
  }
  function setOrigin() {
    var lons = [], lats = [];
    state.scenes.forEach(function (s) { lons.push(s.bounds[0], s.bounds[2]); lats.push(s.bounds[1], s.bounds[3]); });
    if (!lons.length) { state.sites.forEach(function (s) { lons.push(s.lon); lats.push(s.lat); }); }
    if (!lons.length) { return; }
    map.lon0 = (Math.min.apply(null, lons) + Math.max.apply(null, lons)) / 2;
    map.lat0 = (Math.min.apply(null, lats) + Math.max.apply(null, lats)) / 2;
    map.cos = Math.cos(map.lat0 * Math.PI / 180);
  }
  function renderScenes() {
    var g = $("map-scenes");
    g.textContent = "";
    state.scenes.forEach(function (s) {
      var c = s.corners.map(function (p) { return project(p[0], p[1]); });  // TL, TR, BR, BL
      if (s.quicklook) {
        var m = [c[1][0] - c[0][0], c[1][1] - c[0][1], c[3][0] - c[0][0], c[3][1] - c[0][1], c[0][0], c[0][1]];
        var img = svgEl("image", {href: s.quicklook, x: 0, y: 0, width: 1, height: 1, preserveAspectRatio: "none",
                                  transform: "matrix(" + m.join(" ") + ")"});
        g.appendChild(img);
      }
      var poly = svgEl("polygon", {"class": "outline", points: c.map(function (p) { return p.join(","); }).join(" ")});
      var title = svgEl("title");
      title.textContent = s.name + (s.acquired ? " (" + s.acquired + ")" : "");
      poly.appendChild(title);
      g.appendChild(poly);
    });
  }
  function renderSites() {
    var g = $("map-sites");
    g.textContent = "";
    state.sites.forEach(function (s, i) {
      var p = project(s.lon, s.lat);
      var c = svgEl("circle", {cx: p[0], cy: p[1], r: 1, "class": "site " + s.status, "data-i": i});
      var t = svgEl("title");
      t.textContent = s.id + " \u00b7 " + s["class"] + " \u00b7 " + fmt(s.max_score, 2) + " \u00b7 " + s.status;
      c.appendChild(t);
      g.appendChild(c);
    });
    applyView(true);
  }
  function drawFootprint(ring) {
    var g = $("map-foot");
    g.textContent = "";
    if (!ring) { return; }
    var pts = ring.map(function (p) { return project(p[0], p[1]).join(","); }).join(" ");
    g.appendChild(svgEl("polygon", {"class": "foot", points: pts}));
  }
  function fit() {
    var xs = [], ys = [];
    state.scenes.forEach(function (s) { s.corners.forEach(function (p) { var q = project(p[0], p[1]); xs.push(q[0]); ys.push(q[1]); }); });
    state.sites.forEach(function (s) { var q = project(s.lon, s.lat); xs.push(q[0]); ys.push(q[1]); });
    if (!xs.length) { return; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var w = Math.max(x1 - x0, 200), h = Math.max(y1 - y0, 200);
    map.view = {x: (x0 + x1) / 2 - w * 0.53, y: (y0 + y1) / 2 - h * 0.53, w: w * 1.06, h: h * 1.06};
    applyView();
  }
  function zoom(f, cx, cy) {
    var v = map.view;
    if (cx === undefined) { cx = v.x + v.w / 2; cy = v.y + v.h / 2; }
    var w = Math.min(Math.max(v.w * f, 50), 5e7);
    var r = w / v.w;
    map.view = {x: cx - (cx - v.x) * r, y: cy - (cy - v.y) * r, w: w, h: v.h * r};
    applyView();
  }
  function ensureVisible(s) {
    var p = project(s.lon, s.lat), v = map.view;
    if (p[0] < v.x || p[0] > v.x + v.w || p[1] < v.y || p[1] > v.y + v.h) {  // off the map: centre it
      map.view = {x: p[0] - v.w / 2, y: p[1] - v.h / 2, w: v.w, h: v.h};
    }
    applyView();
  }
  function toMap(e) {
    var pt = svg.createSVGPoint();
    pt.x = e.clientX; pt.y = e.clientY;
    return pt.matrixTransform(svg.getScreenCTM().inverse());
  }
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var p = toMap(e);
    zoom(e.deltaY < 0 ? 0.8 : 1.25, p.x, p.y);
  }, {passive: false});
  svg.addEventListener("pointerdown", function (e) {
    map.drag = {x: e.clientX, y: e.clientY, moved: false};
  });
  svg.addEventListener("pointermove", function (e) {
    var d = map.drag;
    if (!d || !(e.buttons & 1)) { return; }
    var dx = e.clientX - d.x, dy = e.clientY - d.y;
    if (!d.moved && Math.abs(dx) + Math.abs(dy) < 4) { return; }
    if (!d.moved) { svg.setPointerCapture(e.pointerId); svg.classList.add("panning"); }
    d.moved = true;
    var u = unitsPerPixel();
    map.view.x -= dx * u; map.view.y -= dy * u;
    d.x = e.clientX; d.y = e.clientY;
    applyView();
  });
  svg.addEventListener("pointerup", function () { svg.classList.remove("panning"); });
  svg.addEventListener("click", function (e) {
    var moved = map.drag && map.drag.moved;
    map.drag = null;
    if (moved) { return; }
    var c = e.target.closest("circle.site");
    if (c) { select(+c.getAttribute("data-i"), {pan: false}); }
  });
  $("z-in").addEventListener("click", function (e) { zoom(0.5); e.target.blur(); });
  $("z-out").addEventListener("click", function (e) { zoom(2); e.target.blur(); });
  $("z-fit").addEventListener("click", function (e) { fit(); e.target.blur(); });
  window.addEventListener("resize", function () { map.size = null; applyView(true); });

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
  var legend = $("legend");
  STATUSES.forEach(function (s) {
    var sp = el("span");
    sp.appendChild(el("span", "dot st-" + s));
    sp.appendChild(document.createTextNode(s));
    legend.appendChild(sp);
  });
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
      setOrigin();
      renderScenes();
      renderSites();
      fit();
      if (state.sel >= 0) { if (state.detail) { drawFootprint(state.detail.footprint); } updateRow(state.sel); }
      document.body.dataset.ready = "1";
    });
  }).catch(function (err) { message("Could not start: " + err.message, true); });
})();
