"""The review page: ``sitewatch review DIR`` serves a run's candidate store to a browser.

An ASGI application (:class:`ReviewASGI`, on Starlette's request and response types) served by
uvicorn's h11 protocol, with stated limits (below). It serves one page
(:mod:`sitewatch.imagery.review.page`: inline HTML, CSS and JavaScript, no external URL) and a small
JSON API over :class:`~sitewatch.imagery.candidates.store.CandidateStore` (the routes: :data:`ROUTES`;
their OpenAPI 3.1 description: ``GET /api/openapi.json``, :func:`openapi_schema`):

=======  =================================  =============================================
GET      ``/``                              the review page
GET      ``/api/summary``                   counts by class and status, sample progress
GET      ``/api/sites``                     sites; filters, sort and paging as parameters
GET      ``/api/sites/{id}``                one site, its detections and its review log
POST     ``/api/sites/{id}/review``         record a decision ``{"status", "note"}`` as the logged-in reviewer
GET      ``/api/sites/{id}/chip.png``       an image chip cut from the source scene
GET      ``/api/scenes``                    the scenes: lon/lat corners, quick-look URLs
GET      ``/api/scenes/{name}/quicklook.png``  a scene's quick-look (looked up by name)
GET      ``/api/density``                   density and Gi* hotspot cells (GeoJSON), ``?cell=1000&status=all``
GET      ``/static/leaflet/...``            the vendored Leaflet (no login; only its listed files)
GET      ``/api/session``                   who the request is logged in as
POST     ``/api/session``                   log in ``{"token"}``: sets the session cookie
GET      ``/api/openapi.json``              the API's OpenAPI description (no login needed)
=======  =================================  =============================================

Limits (each answered with a JSON error and the connection closed, or the connection closed):

* request head (request line and headers): at most :data:`MAX_HEAD_BYTES` (32 KiB) in all, bounded
  while it arrives by h11's incomplete-event limit (431; 414 for a longer target);
  at most :data:`MAX_HEADERS` (64) header lines (431);
* a request's head must be complete :data:`HEAD_TIMEOUT_S` (10 s) after the connection opened or
  the previous answer ended (408, or closed if nothing came): a client sending one header line
  every few seconds holds a connection for 10 s, not forever; a POST's body must follow within
  :data:`BODY_TIMEOUT_S` (10 s) (408);
* at most :data:`MAX_CONNECTIONS` (512) connections open (one more gets 503 and is closed);
  listen backlog :data:`BACKLOG` (2048, capped by the kernel's ``net.core.somaxconn``);
* bodies: POST only, ``Content-Length`` at most :data:`MAX_BODY` (64 KiB; more is 413 before a
  byte is read), counted again as it streams in;
* store, chip and density work runs in :data:`WORKER_THREADS` (8) threads, never on the event loop.

Safety, for a server that holds reviewers' decisions and reads files:

* Every API call is authenticated (401 otherwise): by the ``HttpOnly``, ``SameSite=Strict``
  session cookie the page gets by posting the token of the link it was opened with, or by
  ``Authorization: Bearer TOKEN``. A token is the per-start secret in the link
  ``sitewatch review`` prints (loopback only; it logs in as whoever started the server) or a
  reviewer's own token (``sitewatch reviewers add NAME DIR``; the store keeps its SHA-256).
  The review log records the authenticated name, never one the client sends.
* It binds 127.0.0.1 unless told otherwise; whether it is loopback is decided from the
  address bound. On a loopback address it answers only requests whose ``Host`` is a
  loopback name (so a web page cannot reach it by DNS rebinding); on a network address it
  needs reviewer tokens (the per-start secret is off) and answers only the host names of
  ``--allow-host`` and the bound address.
* Nothing is served by joining a request path onto the filesystem: routes are matched on the
  raw path, each segment percent-decoded on its own; ids and scene names are looked up in the
  store (SQL parameters), and a quick-look's file comes from the store's record of that
  scene, resolved and checked to lie inside the run directory.
* State changes only by POST, with a JSON body (``Content-Type: application/json``, one
  ``Content-Length`` of at most :data:`MAX_BODY` bytes, no chunks), refused (403) when an
  ``Origin`` header names another origin or ``Sec-Fetch-Site`` says the request comes from
  another site. After a refused POST (or any request with a body no route reads) the
  connection is closed, so no unread bytes are taken for the next request.
* Every error is JSON ``{"error": "..."}`` with a 4xx code (500 for a bug, without detail;
  503 over the connection cap), malformed requests included; no traceback reaches the
  client or the terminal (uvicorn's own log is silenced).
* The page inserts every text with ``textContent`` and is served with a Content Security
  Policy that allows only its own nonce'd script, so a note holding ``<script>`` stays text.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import io
import ipaddress
import json
import math
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import Polygon, box

from sitewatch.imagery.candidates.density import density_for_map
from sitewatch.imagery.candidates.store import STATUSES, CandidateStore, Site, StoredDetection, check_reviewer
from sitewatch.imagery.errors import InputError, NotFoundError, OutputError, SitewatchError, UsageError
from sitewatch.imagery.review.page import render_page
from sitewatch.imagery.scenes.georef import from_lonlat, ground_distance_m, map_to_pixel, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.quicklook import rgb_bands
from sitewatch.imagery.scenes.scene import BandSource, Scene, SceneReader
from sitewatch.imagery.webmap import vendored

#: Address ``sitewatch review`` binds unless ``--host`` says otherwise.
DEFAULT_HOST = "127.0.0.1"
#: Port ``sitewatch review`` listens on unless ``--port`` says otherwise.
DEFAULT_PORT = 8765
#: Largest request body accepted, in bytes.
MAX_BODY = 64 * 1024
#: Longest note and reviewer name, in characters.
MAX_NOTE = 2000
MAX_REVIEWER = 100
#: Longest site id or scene name looked up; a longer one is not found (and not echoed back).
MAX_NAME = 500
#: An image chip is the footprint plus this much context: its side is this times the footprint's longer side ...
CHIP_CONTEXT = 3.0
#: ... but at least and at most this many scene pixels.
CHIP_MIN_PX = 96
CHIP_MAX_PX = 512
#: Chips are enlarged (nearest neighbour, whole factors) to at most this many pixels a side.
CHIP_OUT_PX = 512
#: Percentiles of the chip's stretch (one for the three channels).
CHIP_STRETCH = (1.0, 99.7)
#: Outline colour of a site's footprint on its chip.
CHIP_OUTLINE = (255, 214, 0)
#: Chips kept in memory (LRU).
CHIP_CACHE = 256
#: Score threshold assumed for a class no run's model names (uncertainty only).
DEFAULT_THRESHOLD = 0.5
#: Sort keys of ``GET /api/sites`` and their default order.
SORTS = {"score": "desc", "uncertainty": "desc", "class": "asc", "status": "asc", "id": "asc", "date": "asc"}
#: A connection the server ends is first drained of what the client still sends, for at most this
#: long and this many bytes: closing a socket with unread bytes makes the kernel reset the connection,
#: and the reset can discard the answer (a 413 for a body too long) before the client reads it.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024
#: ... or this many bytes after a request head too long or too slow (431, 408).
HEAD_LINGER_BYTES = 64 * 1024
#: Seconds a review page session lasts.
SESSION_S = 12 * 3600.0
#: Name of the session cookie.
SESSION_COOKIE = "sw_session"
#: Host names that are this machine (the ``Host`` header on a loopback-bound server).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_LIST_PARAMS = {"class", "status", "min_score", "max_score", "sample", "sort", "order", "limit", "offset"}
_MAX_LIMIT = 100_000


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Route:
    """One route of the API: its path, the methods it answers and the query parameters it takes.

    A segment of ``pattern`` in braces (``{id}``, ``{name}``) is an argument: one path
    segment, percent-decoded, which the handler looks up in the store (never on the disk).
    """

    name: str
    pattern: tuple[str, ...]
    methods: tuple[str, ...] = ("GET",)
    #: Query parameters the route takes (any other is a 400).
    params: frozenset[str] = frozenset()
    #: Those of ``params`` that name something in the store (a scene), like a path argument.
    lookups: frozenset[str] = frozenset()

    @property
    def arguments(self) -> tuple[str, ...]:
        """The argument segments of ``pattern``, such as ``("{id}",)``."""
        return tuple(seg for seg in self.pattern if seg.startswith("{"))

    def match(self, parts: Sequence[str]) -> list[str] | None:
        """The arguments of a request's path segments, or None if this route is not that path."""
        if len(parts) != len(self.pattern):
            return None
        args = []
        for seg, part in zip(self.pattern, parts, strict=True):
            if seg.startswith("{"):
                args.append(part)
            elif seg != part:
                return None
        return args


#: Every route of the server (the module docstring's table); :class:`ReviewASGI` answers each by its name.
ROUTES: tuple[Route, ...] = (
    Route("page", ("",)),
    Route("summary", ("api", "summary")),
    Route("sites", ("api", "sites"), params=frozenset(_LIST_PARAMS)),
    Route("site", ("api", "sites", "{id}")),
    Route("review", ("api", "sites", "{id}", "review"), methods=("POST",)),
    Route("chip", ("api", "sites", "{id}", "chip.png"), params=frozenset({"scene", "v"}),
          lookups=frozenset({"scene"})),
    Route("scenes", ("api", "scenes")),
    Route("session", ("api", "session"), methods=("GET", "POST")),
    Route("quicklook", ("api", "scenes", "{name}", "quicklook.png"), params=frozenset({"v"})),
    Route("density", ("api", "density"), params=frozenset({"cell", "status"})),
    Route("openapi", ("api", "openapi.json")),
    Route("leaflet", ("static", "leaflet", "{file}")),
    Route("leaflet_image", ("static", "leaflet", "images", "{image}")),
)


# --- the application: plain functions of the store, no HTTP ---------------------------------


@dataclass(frozen=True)
class SceneRecord:
    """Where a scene's pixels are and how they sit on the earth, from the run's record (``run.json``)."""

    name: str
    width: int
    height: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    bands: tuple[BandSource, ...]

    def scene(self, run_dir: Path) -> Scene:
        """The scene to read (band files found as recorded, see :func:`_find_file`).

        Raises:
            InputError: a band file is no longer where the run found it.
        """
        bands = []
        for b in self.bands:
            path = _find_file(Path(b.path), run_dir)
            if path is None:
                raise InputError(f"scene {self.name}", f"its image file {Path(b.path).name} is gone (moved or "
                                                       "deleted?); put it back where sitewatch detect read it")
            bands.append(BandSource(str(path), b.index, b.name))
        return Scene(self.name, self.name, tuple(bands), self.width, self.height, self.crs, self.transform,
                     "float32", None)

    def corners_lonlat(self) -> list[list[float]]:
        """Lon/lat of the corners: top-left, top-right, bottom-right, bottom-left (pixel grid order)."""
        cols = np.array([0.0, self.width, self.width, 0.0])
        rows = np.array([0.0, 0.0, self.height, self.height])
        x, y = pixel_to_map(Affine(*self.transform), cols, rows)
        lon, lat = to_lonlat(self.crs, x, y)
        return [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]


def _find_file(recorded: Path, run_dir: Path) -> Path | None:
    """A scene file the store names: as recorded, else (a relative path, recorded as given to
    ``detect`` in another working directory) under the run directory or one of its parents."""
    if recorded.is_file():
        return recorded
    if recorded.is_absolute():
        return None
    for base in [run_dir.resolve(), *run_dir.resolve().parents][:6]:
        if (base / recorded).is_file():
            return base / recorded
    return None


def scene_records(store: CandidateStore, con: Any = None) -> dict[str, SceneRecord]:
    """Scene name -> its record, from the ``inputs`` of every run in the store (later runs win)."""
    out: dict[str, SceneRecord] = {}
    for run in store.runs(con=con):
        for item in run.record.get("inputs", []):
            try:
                # the absolute path when the run recorded it (scenes named relative to another directory)
                bands = tuple(BandSource(str(b["resolved"]) if Path(str(b.get("resolved", ""))).is_file() else str(b["file"]),
                                         int(b["index"]), str(b["name"])) for b in item["bands"])
                transform = tuple(float(v) for v in item["transform"])[:6]
                out[str(item["name"])] = SceneRecord(str(item["name"]), int(item["width"]), int(item["height"]),
                                                     str(item["crs"]), transform, bands)  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError):
                continue  # a record without pixel details: no chips for that scene
    return out


def thresholds(store: CandidateStore, con: Any = None) -> dict[str, float]:
    """Class -> score threshold of the model of the latest run that detects the class."""
    out: dict[str, float] = {}
    for run in store.runs(con=con):
        spec = run.record.get("model", {}).get("spec", {})
        t = spec.get("score_threshold")
        if isinstance(t, int | float) and math.isfinite(t):
            for cls in spec.get("classes", []):
                out[str(cls)] = float(t)
    return out


def uncertainty(score: float, threshold: float) -> float:
    """How close ``score`` is to ``threshold``: 1 at the threshold, 0 at 0 or 1 (whichever is farther).

    ``1 - |score - threshold| / max(threshold, 1 - threshold)``, clipped to 0..1.
    """
    span = max(threshold, 1.0 - threshold, 1e-9)
    return round(min(1.0, max(0.0, 1.0 - abs(score - threshold) / span)), 4)


def _num(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


class ReviewApp:
    """The review server's logic over one run directory's store; every method returns plain data.

    Errors are :class:`HTTPError` (with a 4xx status) or :class:`~sitewatch.imagery.errors.SitewatchError`.
    """

    def __init__(self, run_dir: str | Path, *, sample: bool = False) -> None:
        """Open the store of ``run_dir``.

        Raises:
            InputError: no run directory, or no candidate store in it, or (``sample``) no sample drawn.
        """
        self.run_dir = Path(run_dir)
        self.store = CandidateStore.in_run_dir(self.run_dir)
        self.root = self.run_dir.resolve()
        self.sample_mode = sample
        if sample and not self.store.sample():
            raise InputError(self.run_dir, "has no review sample; draw one with sitewatch estimate "
                                           f"{self.run_dir} --sample N, or review without --sample")
        self._chips: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    # --- JSON shapes ----------------------------------------------------------------------

    def site_json(self, site: Site, limits: Mapping[str, float], sample_ids: set[str]) -> dict[str, Any]:
        """A site as the API gives it: ``id``, ``status``, class, scores, dates, uncertainty..."""
        threshold = limits.get(site.cls, DEFAULT_THRESHOLD)
        bbox = None if site.footprint is None else [_num(v, 7) for v in site.footprint.bounds]
        return {
            "id": site.site_id, "status": site.status, "class": site.cls,
            "max_score": _num(site.max_score, 4), "mean_score": _num(site.mean_score, 4),
            "uncertainty": uncertainty(site.max_score, threshold), "threshold": threshold,
            "n_detections": site.n_detections, "scenes": list(site.scenes), "date": site.date,
            "first_seen": site.first_seen, "last_seen": site.last_seen,
            "lon": _num(site.lon, 7), "lat": _num(site.lat, 7), "bbox": bbox,
            "reviewer": site.reviewer, "reviewed_at": site.reviewed_at, "note": site.note,
            "in_sample": site.site_id in sample_ids,
        }

    @staticmethod
    def detection_json(d: StoredDetection) -> dict[str, Any]:
        """A detection as the API gives it."""
        return {
            "id": d.det_id, "scene": d.scene, "acquired": d.acquired, "class": d.cls, "score": _num(d.score, 4),
            "lon": _num(d.lon, 7), "lat": _num(d.lat, 7),
            "box_px": None if d.box_px is None else [_num(v, 2) for v in d.box_px],
            "run_id": d.run_id, "model": d.model, "model_version": d.model_version, "detected_at": d.detected_at,
        }

    # --- routes ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Sites by class and status, reviews done, thresholds and the sample's progress."""
        with self.store.read() as con:
            counts = self.store.counts(con=con)
            sample_sites = self.store.sites(in_sample=True, con=con)
            n_reviews = con.execute("SELECT count(*) FROM reviews").fetchone()[0]
        by_status = {s: sum(c.get(s, 0) for c in counts.values()) for s in STATUSES}
        n_sites = sum(by_status.values())
        sample_by_class: dict[str, dict[str, int]] = {}
        for s in sample_sites:
            row = sample_by_class.setdefault(s.cls, {"sites": 0, "reviewed": 0})
            row["sites"] += 1
            row["reviewed"] += s.status != "unreviewed"
        return {
            "run": self.run_dir.name,
            "sites": n_sites,
            "reviewed": n_sites - by_status["unreviewed"],
            "by_status": by_status,
            "by_class": counts,
            "classes": sorted(counts),
            "statuses": list(STATUSES),
            "thresholds": thresholds(self.store),
            "reviews": n_reviews,
            "sample": {
                "sites": len(sample_sites),
                "reviewed": sum(s.status != "unreviewed" for s in sample_sites),
                "by_class": sample_by_class,
            },
            "sample_mode": self.sample_mode,
        }

    def list_sites(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """``GET /api/sites``: sites matching the filters, sorted, one page of them.

        Parameters: ``class`` and ``status`` (repeatable), ``min_score``/``max_score`` (on the
        site's max score), ``sample=1`` (only the current review sample), ``sort`` (one of
        :data:`SORTS`), ``order`` (``asc``/``desc``), ``limit`` and ``offset``.
        """
        unknown = sorted(set(query) - _LIST_PARAMS)
        if unknown:
            raise HTTPError(400, f"unknown parameter {unknown[0]!r}; use {', '.join(sorted(_LIST_PARAMS))}")
        statuses = list(query.get("status", []))
        for s in statuses:
            if s not in STATUSES:
                raise HTTPError(400, f"status {s!r}: use one of {', '.join(STATUSES)}")
        classes = list(query.get("class", []))
        min_score = _float_param(query, "min_score")
        max_score = _float_param(query, "max_score")
        sample = _one(query, "sample", "0")
        if sample not in ("0", "1", "true", "false"):
            raise HTTPError(400, f"sample {sample!r}: use 1 or 0")
        sort = _one(query, "sort", "score")
        if sort not in SORTS:
            raise HTTPError(400, f"sort {sort!r}: use one of {', '.join(SORTS)}")
        order = _one(query, "order", SORTS[sort])
        if order not in ("asc", "desc"):
            raise HTTPError(400, f"order {order!r}: use asc or desc")
        limit = _int_param(query, "limit", None, 0, _MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, 10**9) or 0

        # filters, sort, counts and the page itself run in SQL: a page of 50 reads 50 rows
        with self.store.read() as con:
            limits = thresholds(self.store, con)
            sites, total, reviewed = self.store.page(
                sort=sort, descending=order == "desc", limit=limit, offset=offset, thresholds=limits,
                default_threshold=DEFAULT_THRESHOLD, status=statuses or None, cls=classes or None,
                min_score=min_score, max_score=max_score, in_sample=sample in ("1", "true"), con=con)
            sample_ids = self.store.sampled([s.site_id for s in sites], con=con)
        page = [self.site_json(s, limits, sample_ids) for s in sites]
        return {
            "total": total,
            "reviewed": reviewed,
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "order": order,
            "sites": page,
        }

    def site_detail(self, site_id: str) -> dict[str, Any]:
        """``GET /api/sites/{id}``: the site, its footprint, detections, review log and chip scenes."""
        with self.store.read() as con:
            site = self.require_site(site_id, con)
            dets = self.store.detections(site_id=site_id, con=con)
            reviews = self.store.reviews(site_id, con=con)
            sample_ids = {m.site_id for m in self.store.sample(con=con)}
            scenes = self.store.scenes(con=con)
        out = self.site_json(site, thresholds(self.store), sample_ids)
        out["footprint"] = (None if site.footprint is None
                            else [[_num(x, 7), _num(y, 7)] for x, y in site.footprint.exterior.coords])
        out["detections"] = [self.detection_json(d) for d in dets]
        out["reviews"] = [_review_json(r) for r in reviews]
        seen = {d.scene for d in dets}
        default = _chip_scene(dets)
        out["chip_scenes"] = [
            {"name": s.name, "acquired": s.acquired, "detected": s.name in seen, "default": s.name == default}
            for s in sorted(scenes, key=lambda s: (s.acquired or "", s.name))
            if s.name in seen or _covers(s.bounds_lonlat, site.lon, site.lat)
        ]
        return out

    def post_review(self, site_id: str, body: object, reviewer: str | None = None) -> dict[str, Any]:
        """``POST /api/sites/{id}/review``: validate the body and record the decision.

        ``reviewer`` is the authenticated reviewer (the server passes it): the log records
        that name, and a body's ``reviewer``, if given, must be the same person. Without it
        (a caller of this class in Python) the body must name the reviewer.

        Raises:
            HTTPError: 404 unknown site, 400 a bad body.
        """
        self.require_site(site_id)
        if not isinstance(body, dict):
            raise HTTPError(400, 'body: send a JSON object {"status": ..., "note": ..., "reviewer": ...}')
        unknown = sorted(set(body) - {"status", "note", "reviewer"})
        if unknown:
            raise HTTPError(400, f"body: unknown field {unknown[0]!r}; send status, note and reviewer")
        status = body.get("status")
        if not isinstance(status, str) or status not in STATUSES:
            raise HTTPError(400, f"status {status!r}: use one of {', '.join(STATUSES)}")
        note = body.get("note", "")
        if note is None:
            note = ""
        if not isinstance(note, str):
            raise HTTPError(400, "note: must be a string")
        if len(note) > MAX_NOTE:
            raise HTTPError(400, f"note: {len(note)} characters; at most {MAX_NOTE}")
        said = body.get("reviewer")
        if reviewer is not None:
            if said is not None and (not isinstance(said, str) or " ".join(said.split()) != reviewer):
                raise HTTPError(400, f"reviewer: you are logged in as {reviewer}; the log records that name "
                                     "(leave reviewer out of the body)")
            said = reviewer
        reviewer = said
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise HTTPError(400, "reviewer: give the reviewer's name (a non-empty string)")
        if len(reviewer) > MAX_REVIEWER:
            raise HTTPError(400, f"reviewer: {len(reviewer)} characters; at most {MAX_REVIEWER}")
        if any(ord(c) < 32 or ord(c) == 127 for c in reviewer):
            raise HTTPError(400, "reviewer: must not hold control characters (newlines, tabs...)")
        if "\x00" in note:
            raise HTTPError(400, "note: must not hold NUL characters")
        for field, text in (("note", note), ("reviewer", reviewer)):
            if not _is_unicode(text):
                raise HTTPError(400, f"{field}: must be Unicode text (a lone surrogate such as \\ud800 is not)")
        review = self.store.review(site_id, status, reviewer.strip(), note)
        with self.store.read() as con:
            site = self.require_site(site_id, con)
            sample_ids = {m.site_id for m in self.store.sample(con=con)}
        return {"site": self.site_json(site, thresholds(self.store), sample_ids), "review": _review_json(review)}

    def scenes(self) -> dict[str, Any]:
        """``GET /api/scenes``: each scene's date, size, lon/lat bounds and corners, quick-look URL."""
        records = scene_records(self.store)
        out = []
        for s in self.store.scenes():
            rec = records.get(s.name)
            corners = None
            if rec is not None:
                with contextlib.suppress(Exception):  # a CRS pyproj cannot use: place by bounds instead
                    corners = rec.corners_lonlat()
            w, south, e, n = s.bounds_lonlat
            out.append({
                "name": s.name, "acquired": s.acquired, "width": s.width, "height": s.height,
                "bounds": [_num(v, 7) for v in s.bounds_lonlat],
                "corners": corners or [[w, n], [e, n], [e, south], [w, south]],
                "quicklook": None if self._quicklook_path(s.quicklook) is None
                else f"/api/scenes/{_quote(s.name)}/quicklook.png",
                "detections": s.detections,
            })
        return {"scenes": out}

    def quicklook(self, name: str) -> bytes:
        """``GET /api/scenes/{name}/quicklook.png``: the quick-look the store records for scene ``name``.

        Raises:
            HTTPError: 404 no such scene, or it has no quick-look inside the run directory.
        """
        if not name or len(name) > MAX_NAME:
            raise HTTPError(404, "no such scene in this run")
        for s in self.store.scenes():
            if s.name == name:
                path = self._quicklook_path(s.quicklook)
                if path is None:
                    raise HTTPError(404, f"scene {name!r} has no quick-look")
                return path.read_bytes()
        raise HTTPError(404, f"scene {name!r}: no such scene in this run")

    def chip(self, site_id: str, scene_name: str | None = None) -> bytes:
        """``GET /api/sites/{id}/chip.png``: a PNG cut from a scene at full resolution around the site.

        The window is the footprint's bounding box grown to :data:`CHIP_CONTEXT` times its
        longer side (:data:`CHIP_MIN_PX` to :data:`CHIP_MAX_PX` scene pixels, square, centred),
        in natural colour (B04, B03, B02, else the first three bands) stretched on the chip,
        enlarged by a whole factor, with the footprint outlined just outside it and a scale bar.
        The scene is ``scene_name``, else the scene of the site's best detection.

        Raises:
            HTTPError: 404 unknown site or scene, or a scene that does not cover the site.
            InputError: the scene's files are gone.
        """
        with self.store.read() as con:
            site = self.require_site(site_id, con)
            dets = self.store.detections(site_id=site_id, con=con)
            stored = {s.name: s for s in self.store.scenes(con=con)}
        name = scene_name if scene_name is not None else _chip_scene(dets)
        if name is not None and len(name) > MAX_NAME:
            raise HTTPError(404, "no such scene in this run")
        if name is None or name not in stored:
            raise HTTPError(404, f"scene {name!r}: no such scene in this run")
        if name not in {d.scene for d in dets} and not _covers(stored[name].bounds_lonlat, site.lon, site.lat):
            raise HTTPError(404, f"scene {name!r} does not cover site {site_id!r}")
        key = (site_id, name, site.n_detections, site.footprint.wkb if site.footprint is not None else None)
        with self._lock:
            if key in self._chips:
                self._chips.move_to_end(key)
                return self._chips[key]
        record = scene_records(self.store).get(name)
        if record is None:
            raise HTTPError(404, f"scene {name!r}: the run's record does not say where its pixels are")
        png = render_chip(record, record.scene(self.run_dir), site, [d for d in dets if d.scene == name])
        with self._lock:
            self._chips[key] = png
            while len(self._chips) > CHIP_CACHE:
                self._chips.popitem(last=False)
        return png

    def density(self, cell: str = "1000", status: str = "all") -> dict[str, Any]:
        """``GET /api/density``: sites per grid cell and their Gi* hotspots, as a lon/lat GeoJSON FeatureCollection.

        :func:`~sitewatch.imagery.candidates.density.density_for_map` (all classes together,
        one grid per region of sites more than 50 km apart, each feature's ``region`` naming
        it; ``cell`` in metres or ``1km``; ``status`` ``all`` or statuses joined by commas).
        No site: no features.

        Raises:
            UsageError: a bad ``cell`` or ``status``, or grids of too many cells (400).
        """
        return density_for_map(self.store, cell, status)

    # --- helpers --------------------------------------------------------------------------

    def require_site(self, site_id: str, con: Any = None) -> Site:
        """The site ``site_id``; :class:`HTTPError` 404 if there is none."""
        if not site_id or len(site_id) > MAX_NAME:
            raise HTTPError(404, "no such site in this run")
        try:
            return self.store.site(site_id, con=con)
        except NotFoundError:
            raise HTTPError(404, f"site {site_id!r}: no such site in this run") from None

    def _quicklook_path(self, rel: str | None) -> Path | None:
        """The quick-look file the store names, if it is a PNG inside the run directory."""
        if not rel:
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or path.suffix.lower() != ".png" or not path.is_file():
            return None
        return path


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be stored (UTF-8): JSON's ``\\ud800`` escapes decode to lone surrogates, which cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _whole_number(text: str, digits: int) -> int | None:
    """``text`` as a whole number of at most ``digits`` ASCII digits, else None (``str.isdigit``
    also accepts ``²`` and other digits that ``int`` refuses)."""
    text = text.strip()
    if not text or len(text) > digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _review_json(r: Any) -> dict[str, Any]:
    return {"review_id": r.review_id, "site_id": r.site_id, "status": r.status, "reviewer": r.reviewer,
            "note": r.note, "time": r.time}


def _chip_scene(dets: Sequence[StoredDetection]) -> str | None:
    """The scene of the best detection (the latest scene among equal scores)."""
    if not dets:
        return None
    return max(dets, key=lambda d: (d.score, d.acquired or "")).scene


def _covers(bounds: tuple[float, float, float, float], lon: float, lat: float) -> bool:
    w, s, e, n = bounds
    return w <= lon <= e and s <= lat <= n


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _one(query: Mapping[str, Sequence[str]], name: str, default: str) -> str:
    values = query.get(name, [])
    if len(values) > 1:
        raise HTTPError(400, f"{name}: give it once")
    return values[0] if values else default


def _float_param(query: Mapping[str, Sequence[str]], name: str) -> float | None:
    text = _one(query, name, "")
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"{name} {text[:40]!r}: give a number such as 0.5") from None
    if not math.isfinite(value):
        raise HTTPError(400, f"{name} {text[:40]!r}: give a finite number")
    return value


def _int_param(query: Mapping[str, Sequence[str]], name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = _one(query, name, "")
    if text == "":
        return default
    value = _whole_number(text, len(str(hi)))
    if value is None or not lo <= value <= hi:
        raise HTTPError(400, f"{name} {text[:40]!r}: give a whole number from {lo} to {hi}")
    return value


# --- chips ------------------------------------------------------------------------------------


def chip_window(bounds_px: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """``(col0, row0, side)`` of the square chip around a footprint's pixel bounds."""
    x0, y0, x1, y1 = bounds_px
    side = int(math.ceil(CHIP_CONTEXT * max(x1 - x0, y1 - y0, 1.0)))
    side = min(max(side, CHIP_MIN_PX), CHIP_MAX_PX)
    col0 = int(math.floor((x0 + x1) / 2 - side / 2))
    row0 = int(math.floor((y0 + y1) / 2 - side / 2))
    return col0, row0, side


def chip_rgb(data: np.ndarray, band_names: Sequence[str], valid: np.ndarray) -> np.ndarray:
    """Natural colour of a chip: B04, B03, B02 if all are there, else the first three bands (or the first as grey).

    One stretch for all three channels (so colours stay natural and flat water does not turn
    into coloured noise): from the :data:`CHIP_STRETCH` low to high percentile of the chip's
    valid pixels. Pixels without data are black.
    """
    rgb = data[rgb_bands(band_names)].astype(np.float32)
    out = np.zeros((*rgb.shape[1:], 3), dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(rgb[:, valid], CHIP_STRETCH)
    scaled = (np.moveaxis(rgb, 0, -1) - lo) / max(float(hi - lo), 1e-6)
    out[:] = np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    out[~valid] = 0
    return out


def render_chip(record: SceneRecord, scene: Scene, site: Site, dets: Sequence[StoredDetection]) -> bytes:
    """Cut, stretch and annotate a site's chip from ``scene`` (see :meth:`ReviewApp.chip`)."""
    affine = Affine(*record.transform)
    outline: Polygon | None = None
    if site.footprint is not None:
        lon, lat = np.asarray(site.footprint.exterior.coords).T
        x, y = from_lonlat(record.crs, lon, lat)
        cols, rows = map_to_pixel(affine, x, y)
        if np.isfinite(cols).all() and np.isfinite(rows).all():
            outline = Polygon(np.column_stack([cols, rows]))
    if outline is None or outline.is_empty or not outline.is_valid:
        boxes = [d.box_px for d in dets if d.box_px is not None]
        if not boxes:
            x, y = from_lonlat(record.crs, np.array([site.lon]), np.array([site.lat]))
            c, r = map_to_pixel(affine, x, y)
            boxes = [(float(c[0]) - 2, float(r[0]) - 2, float(c[0]) + 2, float(r[0]) + 2)]
        arr = np.asarray(boxes, dtype=float)
        outline = box(arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())
    col0, row0, side = chip_window(outline.bounds)

    data = np.zeros((len(scene.bands), side, side), dtype=np.float32)
    valid = np.zeros((side, side), dtype=bool)
    c0, r0 = max(col0, 0), max(row0, 0)
    c1, r1 = min(col0 + side, scene.width), min(row0 + side, scene.height)
    if c1 > c0 and r1 > r0:
        with SceneReader(scene) as reader:
            part, ok = reader.read(c0, r0, c1 - c0, r1 - r0)
        data[:, r0 - row0:r1 - row0, c0 - col0:c1 - col0] = part
        valid[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = ok
    rgb = chip_rgb(data, [b.name for b in scene.bands], valid)

    k = max(1, CHIP_OUT_PX // side)
    image = Image.fromarray(rgb, mode="RGB").resize((side * k, side * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    ring = outline.buffer(1.0, join_style="mitre").exterior.coords  # just outside the object's pixels
    points = [((px - col0) * k, (py - row0) * k) for px, py in ring]
    draw.line(points, fill=(0, 0, 0), width=4, joint="curve")
    draw.line(points, fill=CHIP_OUTLINE, width=2, joint="curve")
    _scale_bar(draw, record, col0, row0, side, k)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _scale_bar(draw: ImageDraw.ImageDraw, record: SceneRecord, col0: int, row0: int, side: int, k: int) -> None:
    """A bar of a round number of metres, about a quarter of the chip wide, bottom left."""
    try:
        x, y = pixel_to_map(Affine(*record.transform), np.array([col0, col0 + side]), np.array([row0, row0]))
        lon, lat = to_lonlat(record.crs, x, y)
        metres = float(ground_distance_m(lon[:1], lat[:1], lon[1:], lat[1:])[0])
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot use: no scale bar
        return
    if not math.isfinite(metres) or metres <= 0:
        return
    per_px = metres / (side * k)
    nice = [v * 10**e for e in range(0, 6) for v in (1, 2, 5)]
    length = max([v for v in nice if v / per_px <= side * k / 4] or [nice[0]])
    bar = length / per_px
    x0, y0 = 10, side * k - 14
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar + 1, y0 + 5], fill=(0, 0, 0))
    draw.rectangle([x0, y0, x0 + bar, y0 + 4], fill=(255, 255, 255))
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    font = ImageFont.load_default()
    draw.text((x0 + 1, y0 - 13), label, fill=(0, 0, 0), font=font)
    draw.text((x0, y0 - 14), label, fill=(255, 255, 255), font=font)


# --- HTTP -------------------------------------------------------------------------------------

#: Most bytes of a request head: the request line and every header line (h11's incomplete-event
#: limit while it arrives, then checked again on the whole head): past it, 431 (414 for the target).
MAX_HEAD_BYTES = 32 * 1024
#: Most header lines in a request: more, 431.
MAX_HEADERS = 64
#: A request's head must be complete this many seconds after the connection opened or the last
#: answer on it ended; else the connection is closed (408 if part of a head had arrived). This is
#: also how long an idle keep-alive connection is kept.
HEAD_TIMEOUT_S = 10.0
#: A POST's body must arrive within this many seconds of its head (408 otherwise).
BODY_TIMEOUT_S = 10.0
#: Most connections open at once; one more is answered 503 and closed.
MAX_CONNECTIONS = 512
#: The listening socket's backlog (connections the kernel queues until they are accepted; Linux
#: caps it at net.core.somaxconn).
BACKLOG = 2048
#: Threads that run the store, chip and density work, so the event loop never blocks on them.
WORKER_THREADS = 8
#: On Ctrl-C, answers in progress get this many seconds to finish.
SHUTDOWN_S = 5.0


@dataclass(frozen=True)
class Limits:
    """What one server allows (defaults: this module's constants, the documented limits)."""

    #: Most bytes of a request head (request line and header lines): :data:`MAX_HEAD_BYTES`.
    head_bytes: int = MAX_HEAD_BYTES
    #: Most header lines: :data:`MAX_HEADERS`.
    headers: int = MAX_HEADERS
    #: Seconds for a request head to arrive: :data:`HEAD_TIMEOUT_S`.
    head_timeout_s: float = HEAD_TIMEOUT_S
    #: Seconds for a POST body to arrive: :data:`BODY_TIMEOUT_S`.
    body_timeout_s: float = BODY_TIMEOUT_S
    #: Most open connections: :data:`MAX_CONNECTIONS`.
    connections: int = MAX_CONNECTIONS
    #: Listen backlog: :data:`BACKLOG`.
    backlog: int = BACKLOG
    #: Worker threads for blocking work: :data:`WORKER_THREADS`.
    threads: int = WORKER_THREADS


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ReviewServer:
    """The review server: a bound socket, the :class:`ReviewApp` in ``app``, served by uvicorn.

    :meth:`serve_forever` runs the ASGI application (:class:`ReviewASGI`, on Starlette's
    request and response types) under uvicorn's h11 protocol with this module's limits
    (:data:`MAX_HEAD_BYTES`, :data:`MAX_HEADERS`, :data:`HEAD_TIMEOUT_S`, :data:`BODY_TIMEOUT_S`,
    :data:`MAX_CONNECTIONS`, :data:`BACKLOG`, :data:`MAX_BODY`, :data:`WORKER_THREADS`) until
    :meth:`shutdown` (from another thread) or Ctrl-C / SIGTERM (in the main thread).

    Every API call is authenticated: by the session cookie the page gets from
    ``POST /api/session``, or by ``Authorization: Bearer TOKEN``. A token is the server's
    per-start :attr:`secret` (loopback only: whoever started the server, recorded as
    :attr:`owner`) or a reviewer's own token (``sitewatch reviewers add``).
    """

    def __init__(self, sock: socket.socket, app: ReviewApp, *, log: Callable[[str], None] | None = None,
                 owner: str = "reviewer", allow_hosts: Sequence[str] = (), limits: Limits = Limits()) -> None:
        """Serve ``app`` on ``sock`` (bound, listening) once :meth:`serve_forever` runs."""
        self.socket = sock
        self.limits = limits
        self.app = app
        self.log = log
        self.address_family = sock.family
        #: The bound address, ``(host, port)``.
        self.server_address: tuple[str, int] = tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        #: Decided from the address bound (``127.1`` and ``localhost`` are loopback too).
        self.loopback_only = is_loopback(str(self.server_address[0]))
        #: Per-start secret: the token in the URL ``sitewatch review`` prints (loopback only).
        self.secret = secrets.token_urlsafe(24)
        self.owner = owner
        #: Host names a request may name when bound to a network address.
        self.allow_hosts = {h.strip("[]").lower() for h in allow_hosts}
        #: session id -> (reviewer, expiry, opened by a reviewer token rather than the per-start secret)
        self._sessions: dict[str, tuple[str, float, bool]] = {}
        self._session_lock = threading.Lock()
        self._uvicorn: Any = None
        self._state_lock = threading.Lock()
        self._stop_asked = False
        self._serving = False
        self._done = threading.Event()
        self._done.set()

    # --- who is logged in ------------------------------------------------------------------

    @property
    def login_url(self) -> str:
        """The page's URL with the per-start token (in the fragment: never sent to a server or a log)."""
        return f"{self.url}#token={self.secret}"

    def reviewer_for(self, token: str) -> str | None:
        """Who ``token`` authenticates: the owner for the per-start secret (loopback), a reviewer for theirs."""
        if not isinstance(token, str) or len(token) > 200:
            return None
        if self.loopback_only and hmac.compare_digest(token.encode(), self.secret.encode()):
            return self.owner
        return self.app.store.reviewer_for_token(token)

    def new_session(self, reviewer: str, *, by_token: bool) -> str:
        """A session id for ``reviewer``, valid for :data:`SESSION_S` seconds (``by_token``: a reviewer's own token)."""
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._session_lock:
            for k in [k for k, (_, exp, _t) in self._sessions.items() if exp < now]:
                del self._sessions[k]
            self._sessions[sid] = (reviewer, now + SESSION_S, by_token)
        return sid

    def session_reviewer(self, sid: str) -> str | None:
        """The reviewer of a live session, else ``None``."""
        with self._session_lock:
            entry = self._sessions.get(sid)
        if entry is None or entry[1] < time.monotonic():
            return None
        # a revoked reviewer token ends its sessions too
        if entry[2]:
            live = {name for name, _, revoked in self.app.store.reviewers() if revoked is None}
            if entry[0] not in live:
                return None
        return entry[0]

    @property
    def url(self) -> str:
        """The page's URL (``http://127.0.0.1:8765/``)."""
        host, port = self.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1" if self.address_family == socket.AF_INET else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    # --- running ----------------------------------------------------------------------------

    def uvicorn_config(self) -> Any:
        """The ``uvicorn.Config`` :meth:`serve_forever` runs: h11 with this module's limits, no logging."""
        import uvicorn

        lim = self.limits
        config = uvicorn.Config(
            ReviewASGI(self), http=_protocol_class(), ws="none", lifespan="off", loop="asyncio",
            interface="asgi3", log_config=None, access_log=False, proxy_headers=False, server_header=False,
            h11_max_incomplete_event_size=lim.head_bytes, limit_concurrency=lim.connections + 1,
            timeout_keep_alive=max(1, math.ceil(lim.head_timeout_s)), backlog=lim.backlog,
            timeout_graceful_shutdown=int(SHUTDOWN_S))
        config.review_limits = lim  # type: ignore[attr-defined] - read by the connection protocol
        return config

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown`, or (in the main thread) Ctrl-C or SIGTERM.

        In the main thread a signal ends the server gracefully and is then raised again, so
        Ctrl-C still ends in ``KeyboardInterrupt`` for the caller.
        """
        import uvicorn

        _quiet_logs()
        server = uvicorn.Server(self.uvicorn_config())
        with self._state_lock:
            if self._stop_asked:
                return
            self._uvicorn = server
            self._serving = True
            self._done.clear()
        try:
            server.run(sockets=[self.socket])
        finally:
            with self._state_lock:
                self._serving = False
                self._uvicorn = None
            self._done.set()

    def shutdown(self, timeout: float = SHUTDOWN_S + 5.0) -> None:
        """Stop :meth:`serve_forever` (called from another thread) and wait for it to return."""
        with self._state_lock:
            self._stop_asked = True
            if self._uvicorn is not None:
                self._uvicorn.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        """Close the listening socket (serving closes it itself when it ends)."""
        with self._state_lock:
            if not self._serving:
                self.socket.close()

    def __enter__(self) -> ReviewServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_close()


def _quiet_logs() -> None:
    """uvicorn's and asyncio's loggers write nothing (no traceback reaches the terminal); the
    server's own one-line log is ``make_server(log=...)``."""
    import logging

    for name in ("uvicorn", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def make_server(run_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, sample: bool = False,
                log: Callable[[str], None] | None = None, owner: str | None = None,
                allow_hosts: Sequence[str] = (), limits: Limits = Limits()) -> ReviewServer:
    """A review server for ``run_dir``, bound and ready for ``serve_forever()`` (``port=0``: any free port).

    Args:
        run_dir: a run directory holding ``candidates.gpkg``.
        host: address to bind; loopback unless the reviewers are on other machines.
        port: TCP port; 0 picks a free one (see ``server.url``).
        sample: the page opens on the review sample of ``sitewatch estimate``.
        log: called with one line per server-side failure (never a traceback).
        owner: who the per-start token logs in as (loopback only); default the OS account.
        allow_hosts: host names reviewers use to reach a server on a network address (the
            ``Host`` header must name one of them, or the bound address itself).
        limits: what the server allows (default: the documented limits).

    Raises:
        InputError: no store in ``run_dir`` (or ``sample`` and no sample drawn).
        UsageError: the address cannot be bound (port in use, unknown host); a network
            address without reviewer tokens, or on every interface without ``allow_hosts``.
    """
    app = ReviewApp(run_dir, sample=sample)
    who = check_reviewer(owner or _os_user())
    sock = _listen(host, port, limits.backlog)
    server = ReviewServer(sock, app, log=log, owner=who, allow_hosts=allow_hosts, limits=limits)
    if not server.loopback_only:
        bound = str(server.server_address[0])
        problem = None
        if not any(revoked is None for _, _, revoked in app.store.reviewers()):
            problem = (f"--host {host}: other machines could reach the reviews, and no reviewer has a token; "
                       f"issue one each first: sitewatch reviewers add NAME {run_dir}")
        elif bound in ("0.0.0.0", "::") and not server.allow_hosts:  # noqa: S104 - naming the wildcard
            problem = (f"--host {host}: listening on every interface; name the host names reviewers will "
                       "open (--allow-host review.example.org --allow-host 10.0.0.5)")
        if problem:
            server.server_close()
            raise UsageError(problem)
        if bound not in ("0.0.0.0", "::"):  # noqa: S104
            server.allow_hosts.add(bound.lower())
    return server


def _listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening with ``backlog``.

    Raises:
        UsageError: the address cannot be bound (one line, no traceback).
    """
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, socket.AF_INET6 if ":" in name else socket.AF_UNSPEC,
                                   socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({getattr(exc, 'strerror', None) or exc}); "
                         "pick another --port, or check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                         "pick another --port, or check --host") from None
    return sock


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def serve(run_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, sample: bool = False,
          on_ready: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Serve the review page of ``run_dir`` until interrupted (``KeyboardInterrupt`` propagates).

    ``on_ready`` is called with the page's URL once the server listens.
    """
    server = make_server(run_dir, host, port, sample=sample, log=log)
    with server:
        if on_ready is not None:
            on_ready(server.login_url)
        server.serve_forever()


# --- the ASGI application ---------------------------------------------------------------------

#: Headers of every answer.
_COMMON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                   ("Cross-Origin-Resource-Policy", "same-origin"), ("X-Frame-Options", "DENY"))


@dataclass
class _Reply:
    """An answer: status, content type, body, extra headers, and whether the connection ends after it."""

    status: int
    ctype: str
    body: bytes
    headers: dict[str, str]
    close: bool = False


class _Request:
    """What the application reads of one request (its head, decoded once)."""

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.method: str = scope["method"]
        self.version: str = scope.get("http_version", "1.1")
        raw_path = bytes(scope.get("raw_path") or scope["path"].encode("utf-8"))
        query = bytes(scope.get("query_string", b""))
        #: The request target as sent (percent-encoded), ``path?query``.
        self.target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        self.head_bytes = len(raw_path) + len(query) + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        self.header_list: list[tuple[str, str]] = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                                                   for k, v in scope["headers"]]
        self.close = False

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        name = name.lower()
        return [v for k, v in self.header_list if k == name]

    def get(self, name: str, default: str = "") -> str:
        """The first value of header ``name``, else ``default``."""
        values = self.get_all(name)
        return values[0] if values else default


class ReviewASGI:
    """The review server's ASGI application: routing, Host/Origin checks, authentication, limits.

    Routes are matched on the request's raw path (``scope["raw_path"]``), each segment
    percent-decoded on its own, so an encoded ``/`` (``%2F``) stays inside its segment and
    never reaches another route or the filesystem. Store, chip and density work runs in a
    pool of :data:`WORKER_THREADS` threads (anyio's ``to_thread`` with its own limiter).
    Answers are Starlette ``Response`` objects.
    """

    def __init__(self, server: ReviewServer) -> None:
        self.server = server
        self._limiter: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        """Answer one HTTP request (other scope types are not served)."""
        from starlette.responses import Response

        if scope["type"] != "http":
            return
        req = _Request(scope)
        try:
            reply = await self._dispatch(req, receive)
        except HTTPError as exc:
            close = req.close or req.method == "POST" or exc.status in (408, 413, 431)  # the body may be unread
            reply = _json_reply(exc.status, {"error": exc.message}, exc.headers, close=close)
        except (NotFoundError, InputError) as exc:
            reply = _json_reply(404, {"error": str(exc)})
        except OutputError as exc:
            reply = _json_reply(503, {"error": str(exc)}, {"Retry-After": "1"})
        except (UsageError, SitewatchError) as exc:
            reply = _json_reply(400, {"error": str(exc)})
        except _DisconnectedError:
            return
        except Exception as exc:  # noqa: BLE001 - a bug: answer 500 without detail, log one line
            if self.server.log is not None:
                detail = " ".join(str(exc).split())[:300]  # one line, whatever the exception says
                self.server.log(f"internal error on {req.method} {req.target[:200]!r}: {type(exc).__name__}: {detail}")
            reply = _json_reply(500, {"error": "internal error; the server's terminal names it"}, close=True)
        headers = {**dict(_COMMON_HEADERS), **reply.headers}
        if reply.close or req.close:
            headers["Connection"] = "close"
        response = Response(reply.body, status_code=reply.status, headers=headers, media_type=reply.ctype)
        await response(scope, receive, send)

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker pool (blocking work off the event loop)."""
        import anyio

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.server.limits.threads)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _dispatch(self, req: _Request, receive: Callable[[], Any]) -> _Reply:
        app = self.server.app
        lim = self.server.limits
        method = req.method
        if req.version not in ("1.0", "1.1"):
            req.close = True
            raise HTTPError(505, "send an HTTP/1.0 or HTTP/1.1 request")
        if len(req.header_list) > lim.headers:
            raise HTTPError(431, f"{len(req.header_list)} header lines; at most {lim.headers}")
        if len(req.target) > lim.head_bytes:
            req.close = True
            raise HTTPError(414, f"request target of {len(req.target)} bytes; at most {lim.head_bytes}")
        if req.head_bytes > lim.head_bytes:
            raise HTTPError(431, f"request head of {req.head_bytes} bytes; at most {lim.head_bytes}")
        if method != "POST" and (req.get("Content-Length").strip() not in ("", "0") or req.get_all("Transfer-Encoding")):
            req.close = True  # a body no route reads: end the connection after the answer
        self._check_host(req)
        parts, query = _parse_target(req.target)
        if method == "POST":
            _check_origin(req)
        route, args = _route(parts)
        if method not in route.methods:
            allowed = ", ".join(route.methods)
            raise HTTPError(405, f"{method} is not allowed here; use {allowed}", {"Allow": allowed})
        _no_params(query, route.params)
        if route.name == "page":
            return self._page()
        if route.name in ("leaflet", "leaflet_image"):  # a vendored file by its listed name, never a path: no login
            found = vendored(args[0] if route.name == "leaflet" else f"images/{args[0]}")
            if found is None:
                raise HTTPError(404, "no such file of Leaflet")
            return _Reply(200, found[1], found[0], {"Cache-Control": "public, max-age=86400"})
        if route.name == "openapi":  # the API's description: no data, no login
            return _json_reply(200, openapi_schema())
        if route.name == "session" and method == "POST":
            body = await _read_json(req, receive, lim.body_timeout_s)
            return await self._thread(self._login, body)
        reviewer = await self._thread(self._authenticate, req)
        if route.name == "session":
            return _json_reply(200, {"reviewer": reviewer})
        if route.name == "summary":
            return _json_reply(200, await self._thread(app.summary))
        if route.name == "sites":
            return _json_reply(200, await self._thread(app.list_sites, query))
        if route.name == "site":
            return _json_reply(200, await self._thread(app.site_detail, args[0]))
        if route.name == "review":
            await self._thread(app.require_site, args[0])  # 404 before reading a body for a site that does not exist
            body = await _read_json(req, receive, lim.body_timeout_s)
            return _json_reply(200, await self._thread(app.post_review, args[0], body, reviewer))
        if route.name == "chip":
            scene = _one(query, "scene", "") or None
            png = await self._thread(app.chip, args[0], scene)
            return _Reply(200, "image/png", png, {"Cache-Control": "private, max-age=3600"})
        if route.name == "scenes":
            return _json_reply(200, await self._thread(app.scenes))
        if route.name == "quicklook":
            png = await self._thread(app.quicklook, args[0])
            return _Reply(200, "image/png", png, {"Cache-Control": "private, max-age=3600"})
        if route.name == "density":
            return _json_reply(200, await self._thread(app.density, _one(query, "cell", "1000"),
                                                       _one(query, "status", "all")))
        raise NotImplementedError(f"route {route.name!r} has no handler")  # a route added to ROUTES only: a bug (500)

    def _check_host(self, req: _Request) -> None:
        """Answer only to the host names this server is reached by (no DNS rebinding).

        On a loopback address: loopback names only. On a network address: the names of
        ``--allow-host`` and the bound address. The port is not checked: a page reached
        through a tunnel (``ssh -L 9000:127.0.0.1:8765``) names the tunnel's port, and a
        rebinding attack needs a host name, not a port.
        """
        hosts = req.get_all("Host")
        if len(hosts) > 1:
            raise HTTPError(400, "send one Host header")
        host = hosts[0] if hosts else ""
        if not host:  # an HTTP/1.0 tool without a Host header: no web page can send that
            return
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.startswith("[") and "]" in host:
            name = host[1:host.index("]")]
        ok = is_loopback(name) if self.server.loopback_only else name.lower() in self.server.allow_hosts
        if not ok:
            raise HTTPError(403, f"Host {host[:100]!r} is not a name of this server; open the page at the URL "
                                 "sitewatch review printed")

    def _authenticate(self, req: _Request) -> str:
        """The reviewer of the request's session cookie or bearer token; 401 without one."""
        from starlette.requests import cookie_parser

        auth = req.get("Authorization")
        if auth[:7].lower() == "bearer ":
            name = self.server.reviewer_for(auth[7:].strip())
            if name is not None:
                return name
            raise HTTPError(401, "the token is not valid (revoked, or from an earlier start of the server)",
                            {"WWW-Authenticate": "Bearer"})
        sid = cookie_parser(req.get("Cookie")).get(SESSION_COOKIE)
        if sid:
            name = self.server.session_reviewer(sid)
            if name is not None:
                return name
        raise HTTPError(401, "log in: open the URL sitewatch review printed, or use your reviewer token",
                        {"WWW-Authenticate": "Bearer"})

    def _login(self, body: object) -> _Reply:
        """``POST /api/session {"token"}``: log in (sets the session cookie)."""
        token = body.get("token") if isinstance(body, dict) else None
        name = self.server.reviewer_for(token) if isinstance(token, str) else None
        if name is None:
            raise HTTPError(401, "the token is not valid (revoked, or from an earlier start of the server)")
        by_token = not hmac.compare_digest(str(token).encode(), self.server.secret.encode())
        sid = self.server.new_session(name, by_token=by_token)
        cookie = f"{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"
        return _json_reply(200, {"reviewer": name}, {"Set-Cookie": cookie})

    def _page(self) -> _Reply:
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        app = self.server.app
        config = {"sample": app.sample_mode, "run": app.run_dir.name,
                  "statuses": list(STATUSES), "max_note": MAX_NOTE, "max_reviewer": MAX_REVIEWER}
        page = render_page(nonce, config).encode("utf-8")
        return _Reply(200, "text/html; charset=utf-8", page, {"Content-Security-Policy": csp, "Cache-Control": "no-store"})


class _DisconnectedError(Exception):
    """The client went away before its request was read."""


def _json_reply(status: int, doc: object, headers: Mapping[str, str] | None = None, *, close: bool = False) -> _Reply:
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return _Reply(status, "application/json; charset=utf-8", body, {"Cache-Control": "no-store", **(headers or {})},
                  close)


def _parse_target(target: str) -> tuple[list[str], dict[str, list[str]]]:
    """Path segments (each percent-decoded on its own, so ``%2F`` stays inside its segment) and the query."""
    if not target.startswith("/"):
        raise HTTPError(400, "request target must be a path starting with /")
    split = urlsplit(target)
    try:
        parts = [unquote(p, errors="strict") for p in split.path.split("/")[1:]]
        query = parse_qs(split.query, keep_blank_values=True, max_num_fields=100, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "request target is not valid UTF-8 or has too many parameters") from None
    if any(p in (".", "..") or "\x00" in p for p in parts):
        raise HTTPError(404, "no such page")
    return parts, query


def _check_origin(req: _Request) -> None:
    """Refuse a state change from another origin (cross-site request forgery)."""
    for site in req.get_all("Sec-Fetch-Site"):
        if site not in ("same-origin", "none"):
            raise HTTPError(403, f"cross-origin request refused (Sec-Fetch-Site: {site[:40]!r})")
    for origin in req.get_all("Origin"):
        if origin != f"http://{req.get('Host')}":
            raise HTTPError(403, f"cross-origin request refused (Origin {origin[:100]!r} is not this server)")


async def _read_json(req: _Request, receive: Callable[[], Any], timeout_s: float = BODY_TIMEOUT_S) -> object:
    """The request's JSON body: one ``Content-Length`` of at most :data:`MAX_BODY` bytes, no chunks,
    counted as it streams in and complete within ``timeout_s`` seconds."""
    import anyio

    ctype = req.get("Content-Type")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise HTTPError(415, "send the body as Content-Type: application/json")
    if req.get_all("Transfer-Encoding"):
        raise HTTPError(411, "send a Content-Length, not a chunked body")
    lengths = req.get_all("Content-Length")
    if not lengths:
        raise HTTPError(411, "send a Content-Length")
    if len(lengths) > 1:
        raise HTTPError(400, "send one Content-Length")
    text = lengths[0].strip().lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()):
        raise HTTPError(400, "Content-Length must be a whole number")
    length = _whole_number(text, len(str(MAX_BODY)))
    if length is None or length > MAX_BODY:
        raise HTTPError(413, f"body of {text[:20]} bytes; at most {MAX_BODY}")
    chunks: list[bytes] = []
    got = 0
    try:
        with anyio.fail_after(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _DisconnectedError
                chunk = message.get("body", b"")
                got += len(chunk)
                if got > length:
                    raise HTTPError(400, "body longer than its Content-Length")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise HTTPError(408, f"body not complete within {timeout_s:g} s") from None
    if got != length:
        raise HTTPError(400, "body shorter than its Content-Length")
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HTTPError(400, "body is not valid JSON (UTF-8)") from None


def _route(parts: list[str]) -> tuple[Route, list[str]]:
    """The route of a request's path segments (see :data:`ROUTES`) and its arguments.

    Raises:
        HTTPError: 404 for any other path.
    """
    for route in ROUTES:
        args = route.match(parts)
        if args is not None:
            return route, args
    raise HTTPError(404, "no such page; the API is under /api (see the README)")


def _no_params(query: Mapping[str, Sequence[str]], allowed: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        hint = f"use {', '.join(sorted(allowed))}" if allowed else "this route takes none"
        raise HTTPError(400, f"unknown parameter {unknown[0]!r}; {hint}")


# --- the connection: uvicorn's h11 protocol with a head deadline, a connection cap, JSON errors ------


def _raw_json_response(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[bytes, bytes]]:
    """Headers of a JSON error written below the application (malformed requests, limits)."""
    return [(b"content-type", b"application/json; charset=utf-8"), (b"cache-control", b"no-store"),
            *((k.lower().encode(), v.encode()) for k, v in _COMMON_HEADERS),
            *((k.lower().encode(), v.encode()) for k, v in extra), (b"connection", b"close")]


class _LingeringTransport:
    """A transport whose ``close`` first half-closes and drains what the client still sends.

    Closing a socket with unread bytes makes the kernel reset the connection, and the reset can
    discard the answer (a 413 for a body too long) before the client reads it; so the server
    sends FIN, reads and drops at most :data:`LINGER_BYTES` for at most :data:`LINGER_S`
    seconds, then closes.
    """

    def __init__(self, transport: Any, loop: Any) -> None:
        self._t = transport
        self._loop = loop
        self.lingering = False
        self.peer_eof = False
        self._drained = 0
        self._timer: Any = None
        #: Bytes to drain at most; smaller for a client that sends a flood of header bytes.
        self.budget = LINGER_BYTES

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def is_closing(self) -> bool:
        return self.lingering or self._t.is_closing()

    def close(self) -> None:
        if self.lingering or self._t.is_closing():
            return
        self.lingering = True
        if self.peer_eof or not self._t.can_write_eof():
            self._t.close()
            return
        try:
            self._t.write_eof()
            self._t.resume_reading()
        except (OSError, RuntimeError):
            self._t.close()
            return
        self._timer = self._loop.call_later(LINGER_S, self.finish)

    def drained(self, n: int) -> None:
        """``n`` more bytes read and dropped while lingering."""
        self._drained += n
        if self._drained > self.budget:
            self.finish()

    def finish(self) -> None:
        """Close now; drop what the client has not read of the answer (a client that does not read
        would otherwise hold the connection for as long as it keeps the TCP window shut)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            unsent = self._t.get_write_buffer_size()
        except (AttributeError, RuntimeError):
            unsent = 0
        if unsent:
            self._t.abort()
        else:
            self._t.close()


def _make_protocol_class() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReviewProtocol(H11Protocol):  # type: ignore[misc]
        """uvicorn's h11 protocol plus: a deadline for each request head (:data:`HEAD_TIMEOUT_S`), a
        cap on open connections (:data:`MAX_CONNECTIONS`), JSON errors for malformed requests, a
        lingering close, and an answer to a request whose client half-closed its side."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self.limits: Limits = getattr(self.config, "review_limits", Limits())
            self._refused = len(self.connections) >= self.limits.connections
            self._head_timer: Any = None
            self._head = b""
            if self._refused:
                body = json.dumps({"error": f"the server has {self.limits.connections} connections open; "
                                            "try again"}).encode()
                head = [b"HTTP/1.1 503 Service Unavailable"] + [k + b": " + v for k, v in _raw_json_response(
                    503, "", [("Retry-After", "1"), ("Content-Length", str(len(body)))])]
                transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
                transport.close()
                return
            # read in pieces of twice the head limit (asyncio's default is 256 KiB), so a flood of header
            # bytes costs a copy of 64 KiB, not 256 KiB, before its 431
            with contextlib.suppress(AttributeError, TypeError):
                transport.max_size = max(2 * self.limits.head_bytes, 16 * 1024)
            super().connection_made(_LingeringTransport(transport, self.loop))
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._cancel_head_timer()
            if isinstance(self.transport, _LingeringTransport) and self.transport._timer is not None:
                self.transport._timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:
                self.transport.drained(len(data))
                return
            if self.conn.their_state is h11.IDLE and len(self._head) <= self.limits.head_bytes:
                self._head += data[:self.limits.head_bytes + 1 - len(self._head)]  # to say why h11 refused a head
            try:
                super().data_received(data)
            except Exception:  # noqa: BLE001 - e.g. a request target that is not ASCII
                if self.cycle is not None and self.cycle.response_started:
                    self.transport.close()
                else:
                    self._error(400, "malformed HTTP request")

        def eof_received(self) -> bool:  # type: ignore[override]
            if self.transport.lingering:
                return False
            self.transport.peer_eof = True
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # answer what was asked, then close
                if cycle.more_body:  # the body ends here, short of its Content-Length
                    cycle.more_body = False
                    cycle.message_event.set()
                return True
            if self.conn.trailing_data[0]:  # part of a request, and no more will come
                self._error(400, "incomplete request (the connection ended before the end of its head)")
                return True
            return False

        def send_400_response(self, msg: str) -> None:
            """h11 refused the request head: 414 or 431 (too long), 413 (a Content-Length past
            h11's 20 digits), else 400; as JSON."""
            limit = self.limits.head_bytes
            if len(self.conn.trailing_data[0]) > limit or len(self._head) > limit:
                if b"\n" not in self._head:  # the request line alone is past the limit
                    self._error(414, f"request target over {limit} bytes")
                else:
                    self._error(431, f"request head over {limit} bytes")
                return
            for line in self._head.split(b"\r\n\r\n", 1)[0].split(b"\n")[1:]:
                name, _, value = line.partition(b":")
                value = value.strip()
                if name.strip().lower() == b"content-length" and value.isdigit() and int(value) > MAX_BODY:
                    self._error(413, f"body of {value[:20].decode()} bytes; at most {MAX_BODY}")
                    return
            self._error(400, "malformed HTTP request (request line or headers)")

        def shutdown(self) -> None:
            """The server stops (Ctrl-C): end this connection, whatever state h11 is in."""
            try:
                super().shutdown()
            except h11.LocalProtocolError:
                self.transport.close()

        def timeout_keep_alive_handler(self) -> None:
            try:
                super().timeout_keep_alive_handler()
            except h11.LocalProtocolError:
                self.transport.close()

        def on_response_complete(self) -> None:
            self._head = b""
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def _error(self, status: int, message: str) -> None:
            """Answer ``{"error": message}`` with ``status`` below the application and close."""
            self._cancel_head_timer()
            if self.transport.is_closing():
                return
            body = json.dumps({"error": message}).encode()
            headers = [*_raw_json_response(status, message), (b"content-length", str(len(body)).encode())]
            try:
                out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                                  reason=HTTPStatus(status).phrase.encode()))
                out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError:  # h11 cannot frame an answer now: write it by hand
                out = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
                       + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body)
            self.transport.write(out)
            if status in (408, 414, 431):  # a client that floods or stalls: drain little before closing
                self.transport.budget = HEAD_LINGER_BYTES
            self.transport.close()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.conn.their_state is not h11.IDLE or (self.cycle is not None and not self.cycle.response_complete):
                return  # a request is being answered; the deadline starts again after its answer
            if self.conn.trailing_data[0]:
                self._error(408, f"request head not complete within {self.limits.head_timeout_s:g} s")
            else:
                self.transport.close()

    return ReviewProtocol


@functools.cache
def _protocol_class() -> type:
    """The connection protocol :meth:`ReviewServer.serve_forever` runs (built on first use, so
    only a server that serves imports uvicorn)."""
    return _make_protocol_class()


# --- the API's description ----------------------------------------------------------------------

_ERROR = {"$ref": "#/components/responses/Error"}
_SITE_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": MAX_NAME},
            "description": "a site id of the store (one path segment, percent-encoded)"}
_VERSION = {"name": "v", "in": "query", "schema": {"type": "string"},
            "description": "ignored: lets the page tell its caches a new image apart"}


def _json_ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _png_ok(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def _operations() -> dict[str, dict[str, Any]]:
    """Route name -> its OpenAPI operation(s) by method (see :data:`ROUTES`)."""
    list_params = [
        {"name": "class", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}, "explode": True,
         "description": "only sites of this class (repeat for several)"},
        {"name": "status", "in": "query", "explode": True,
         "schema": {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
         "description": "only sites with this review status (repeat for several)"},
        {"name": "min_score", "in": "query", "schema": {"type": "number"}, "description": "site max score at least"},
        {"name": "max_score", "in": "query", "schema": {"type": "number"}, "description": "site max score at most"},
        {"name": "sample", "in": "query", "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
         "description": "1: only the review sample of sitewatch estimate"},
        {"name": "sort", "in": "query", "schema": {"type": "string", "enum": list(SORTS), "default": "score"}},
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]},
         "description": "default: desc for score and uncertainty, else asc"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": _MAX_LIMIT}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
    ]
    review_body = {"type": "object", "required": ["status"], "additionalProperties": False, "properties": {
        "status": {"type": "string", "enum": list(STATUSES)},
        "note": {"type": "string", "maxLength": MAX_NOTE},
        "reviewer": {"type": "string", "maxLength": MAX_REVIEWER,
                     "description": "optional; if given, must be the logged-in reviewer (the log records that name)"}}}
    density_schema = {"type": "object", "required": ["type", "features", "cell_m", "grid_crs"], "properties": {
        "type": {"const": "FeatureCollection"},
        "cell_m": {"type": "number"},
        "grid_crs": {"type": ["string", "null"],
                     "description": "the grids' CRS (metres), or null where the regions' grids differ"},
        "regions": {"type": "array", "description": "the regions of sites, west to east (absent when no site)",
                    "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "grid_crs": {"type": "string"}, "sites": {"type": "integer"},
                        "cells": {"type": "integer"}, "shape": {"type": "array", "items": {"type": "integer"}},
                        "bounds": {"type": "array", "items": {"type": "number"},
                                   "description": "west, south, east, north of the region's grid (degrees)"}}}},
        "features": {"type": "array", "items": {"type": "object", "properties": {
            "type": {"const": "Feature"},
            "geometry": {"type": "object", "description": "a Polygon in lon/lat (EPSG:4326)"},
            "properties": {"type": "object", "properties": {
                "count": {"type": "integer"}, "gi_z": {"type": ["number", "null"]}, "gi_p": {"type": ["number", "null"]},
                "hotspot": {"enum": ["hot", "cold", None]},
                "region": {"type": "string", "description": "the region whose grid the cell is of (r1, r2, ...)"},
                "classes": {"type": "object", "additionalProperties": {"type": "integer"},
                            "description": "sites of each class in the cell"}}}}}}}}
    return {
        "page": {"get": {"summary": "The review page (HTML, inline script under a nonce CSP)", "security": [],
                         "responses": {"200": {"description": "the page", "content": {"text/html": {}}}}}},
        "summary": {"get": {"summary": "Counts by class and status, thresholds, the sample's progress",
                            "responses": {"200": _json_ok("the summary")}}},
        "sites": {"get": {"summary": "Sites, filtered, sorted and paged", "parameters": list_params,
                          "responses": {"200": _json_ok("one page of sites", {"type": "object", "properties": {
                              "total": {"type": "integer"}, "reviewed": {"type": "integer"},
                              "offset": {"type": "integer"}, "limit": {"type": ["integer", "null"]},
                              "sort": {"type": "string"}, "order": {"type": "string"},
                              "sites": {"type": "array", "items": {"type": "object"}}}})}}},
        "site": {"get": {"summary": "One site: footprint, detections, review log, chip scenes", "parameters": [_SITE_ID],
                         "responses": {"200": _json_ok("the site")}}},
        "review": {"post": {"summary": "Record a decision (same origin only; JSON body with a Content-Length)",
                            "parameters": [_SITE_ID],
                            "requestBody": {"required": True, "content": {"application/json": {"schema": review_body}}},
                            "responses": {"200": _json_ok("the site after the decision, and the review logged")}}},
        "chip": {"get": {"summary": "An image chip of the site cut from a scene at full resolution",
                         "parameters": [_SITE_ID, {"name": "scene", "in": "query", "schema": {"type": "string"},
                                                   "description": "the scene (default: that of the best detection)"},
                                        _VERSION],
                         "responses": {"200": _png_ok("the chip")}}},
        "scenes": {"get": {"summary": "The scenes: dates, lon/lat corners, quick-look URLs",
                           "responses": {"200": _json_ok("the scenes")}}},
        "quicklook": {"get": {"summary": "A scene's quick-look PNG, looked up by scene name",
                              "parameters": [{"name": "name", "in": "path", "required": True,
                                              "schema": {"type": "string", "maxLength": MAX_NAME}}, _VERSION],
                              "responses": {"200": _png_ok("the quick-look")}}},
        "density": {"get": {"summary": "Sites per grid cell and Getis-Ord Gi* hotspots, as GeoJSON in lon/lat",
                            "parameters": [
                                {"name": "cell", "in": "query",
                                 "description": "cell side: metres (1000) or with a unit (500m, 1km); 10 m to 1000 km",
                                 "schema": {"type": "string", "default": "1000"}},
                                {"name": "status", "in": "query",
                                 "description": "all sites, or review statuses joined by commas (confirmed,unsure)",
                                 "schema": {"type": "string", "default": "all"}}],
                            "responses": {"200": {"description": "one feature per cell with a site or a hot/cold spot",
                                                  "content": {"application/geo+json": {"schema": density_schema},
                                                              "application/json": {"schema": density_schema}}}}}},
        "session": {
            "get": {"summary": "Who the request is logged in as",
                    "responses": {"200": _json_ok("the reviewer", {"type": "object", "properties": {
                        "reviewer": {"type": "string"}}})}},
            "post": {"summary": "Log in with a token: sets the session cookie (HttpOnly, SameSite=Strict, 12 h)",
                     "security": [],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                     "responses": {"200": _json_ok("logged in", {"type": "object", "properties": {
                         "reviewer": {"type": "string"}}})}}},
        "openapi": {"get": {"summary": "This description", "security": [],
                            "responses": {"200": _json_ok("OpenAPI 3.1")}}},
        "leaflet": {"get": {"summary": "A file of the vendored Leaflet 1.9.4 (only its listed files)", "security": [],
                            "parameters": [{"name": "file", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
                            "responses": {"200": {"description": "the file"}}}},
        "leaflet_image": {"get": {"summary": "An image of the vendored Leaflet", "security": [],
                                  "parameters": [{"name": "image", "in": "path", "required": True,
                                                  "schema": {"type": "string"}}],
                                  "responses": {"200": {"description": "the image", "content": {"image/png": {}}}}}},
    }


def _openapi_path(route: Route) -> str:
    return "/" + "/".join(route.pattern)


def openapi_schema() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description, served at ``GET /api/openapi.json``: every route of
    :data:`ROUTES`, its parameters and body, its answers, and the error shape ``{"error"}``."""
    ops = _operations()
    paths: dict[str, Any] = {}
    errors = {code: _ERROR for code in ("400", "401", "403", "404", "405", "408", "411", "413", "414", "415", "431",
                                        "500", "503")}
    for route in ROUTES:
        item = paths.setdefault(_openapi_path(route), {})
        for method in route.methods:
            op = dict(ops[route.name][method.lower()])
            op["operationId"] = f"{route.name}_{method.lower()}"
            op["responses"] = {**op["responses"], **errors}
            item[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "sitewatch review API", "version": "1",
                 "description": "The JSON API of `sitewatch review`. Every error is JSON {\"error\": \"...\"}. "
                                f"Limits: request head {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} header lines, head "
                                f"within {HEAD_TIMEOUT_S:g} s, body {MAX_BODY} bytes within {BODY_TIMEOUT_S:g} s, "
                                f"{MAX_CONNECTIONS} connections."},
        "paths": paths,
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the per-start token of the printed link (loopback) or a reviewer's token"},
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
            "schemas": {"Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                                  "properties": {"error": {"type": "string", "description": "one line"}}}},
            "responses": {"Error": {"description": "refused: a JSON error",
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }
