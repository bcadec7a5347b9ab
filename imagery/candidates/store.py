"""The candidate store: ``candidates.gpkg``, a GeoPackage of detections, sites and reviews.

One file per run directory that opens directly in QGIS (or any GDAL tool), written with
the standard library's ``sqlite3`` (see :mod:`sitewatch.imagery.candidates.gpkg`). Layers, all in EPSG:4326:

``detections`` (Polygon)
    one row per detection: ``det_id``, ``scene``, ``scene_source``, ``acquired`` (the
    scene's acquisition date or NULL), ``class``, ``score``, ``lon``/``lat`` (box centre),
    ``run_id``, ``model``, ``model_version``, ``site_id``, ``detected_at`` and the box in
    scene pixels (``px_x0``..``px_y1``, to draw on the scene's quick-look).
``sites`` (Point)
    one row per site (:mod:`sitewatch.imagery.candidates.sites`): ``site_id`` (``kiln-000012``), ``class``,
    ``date`` (vessels: the acquisition date; other classes NULL), ``first_seen``,
    ``last_seen``, ``scenes`` (JSON list), ``n_detections``, ``max_score``,
    ``mean_score``, ``lon``/``lat`` (the mean detection centre) and the current review:
    ``status``, ``reviewer``, ``reviewed_at``, ``note``.
``site_footprints`` (Polygon)
    the convex hull of each site's detection boxes, by ``site_id``.
``reviews`` (attributes)
    the append-only review log: ``review_id``, ``site_id``, ``status``, ``reviewer``,
    ``note``, ``time`` (UTC ISO 8601). Triggers refuse any UPDATE or DELETE.
``scenes``, ``runs``, ``sample``, ``sample_strata``, ``sitewatch`` (attributes)
    the scenes in the store (date, lon/lat bounds, quick-look), the runs that added them,
    the review sample of ``sitewatch estimate`` and the store's schema version.
``layer_styles`` (attributes)
    QGIS's style table: ``sites`` has a default style coloured by ``status``
    (:mod:`sitewatch.imagery.candidates.styles`), so the layer opens coloured in QGIS.

Every write is one ``BEGIN IMMEDIATE`` transaction under a busy timeout, so reviewers and a
``detect --append`` run writing at the same time wait for each other and lose nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import shapely
from shapely.geometry import Point, Polygon
from shapely.geometry.polygon import orient

from sitewatch.imagery.candidates.gpkg import (
    LAYER_STYLES,
    USER_VERSION,
    add_attributes_table,
    add_features_table,
    add_spatial_index,
    geometry_blob,
    gpkg_datetime,
    has_spatial_index,
    init_geopackage,
    is_geopackage,
    now_iso,
    read_geometry,
    touch,
)
from sitewatch.imagery.candidates.gpkg import connect as gpkg_connect
from sitewatch.imagery.candidates.sites import SitePoint, assign, site_distances
from sitewatch.imagery.candidates.styles import add_status_style
from sitewatch.imagery.errors import InputError, NotFoundError, OutputError, UsageError

#: File name of the store in a run directory.
STORE_NAME = "candidates.gpkg"
#: Review statuses; every site starts ``unreviewed``.
STATUSES = ("unreviewed", "confirmed", "rejected", "unsure")
#: Column constraint: the database itself refuses a status not in :data:`STATUSES` (e.g. typed in QGIS).
_STATUS_CHECK = "CHECK (status IN ('unreviewed', 'confirmed', 'rejected', 'unsure'))"
#: Sort keys of :meth:`CandidateStore.page` and their SQL (``uncertainty`` is built from the thresholds).
SORT_KEYS = {
    "score": "s.max_score",
    "uncertainty": "",
    "class": "s.class",
    "status": "CASE s.status WHEN 'unreviewed' THEN 0 WHEN 'confirmed' THEN 1 WHEN 'rejected' THEN 2 "
              "WHEN 'unsure' THEN 3 ELSE 4 END",
    "id": "s.site_id",
    "date": "coalesce(s.first_seen, s.date, '')",
}
#: Indexes on what the review list filters and sorts by (added to older stores when opened).
SITE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS sites_score ON sites(max_score, site_id)",
    "CREATE INDEX IF NOT EXISTS sites_status_score ON sites(status, max_score)",
    "CREATE INDEX IF NOT EXISTS sites_class_score ON sites(class, max_score)",
    "CREATE INDEX IF NOT EXISTS sample_site ON sample(site_id)",
)
#: Version of the store's tables (``sitewatch`` table).
SCHEMA_VERSION = 1
#: Seconds a writer waits for another writer (or a reader) before giving up.
BUSY_TIMEOUT_S = 60.0
#: Layers with a geometry (each has an R-tree spatial index).
GEOMETRY_LAYERS = ("detections", "sites", "site_footprints")
#: Layers (tables in ``gpkg_contents``) of a store.
LAYERS = ("detections", "sites", "site_footprints", "reviews", "scenes", "runs", "sample", "sample_strata", "sitewatch",
          "layer_styles")

_DETECTION_COLUMNS = (
    "det_id TEXT NOT NULL UNIQUE", "scene TEXT NOT NULL", "scene_source TEXT", "acquired DATE",
    "class TEXT NOT NULL", "score DOUBLE NOT NULL", "lon DOUBLE NOT NULL", "lat DOUBLE NOT NULL",
    "run_id TEXT NOT NULL", "model TEXT", "model_version TEXT", "site_id TEXT NOT NULL", "detected_at DATETIME",
    "px_x0 DOUBLE", "px_y0 DOUBLE", "px_x1 DOUBLE", "px_y1 DOUBLE",
)
_SITE_COLUMNS = (
    "site_id TEXT NOT NULL UNIQUE", "class TEXT NOT NULL", "date DATE", "first_seen DATE", "last_seen DATE",
    "scenes TEXT NOT NULL", "n_detections INTEGER NOT NULL", "max_score DOUBLE NOT NULL", "mean_score DOUBLE NOT NULL",
    "lon DOUBLE NOT NULL", "lat DOUBLE NOT NULL", f"status TEXT NOT NULL DEFAULT 'unreviewed' {_STATUS_CHECK}", "reviewer TEXT",
    "reviewed_at DATETIME", "note TEXT", "created_run TEXT",
)
_EXTRA_SCHEMA = (
    "CREATE INDEX detections_site ON detections(site_id)",
    "CREATE INDEX detections_scene ON detections(scene)",
    "CREATE INDEX sites_class_date ON sites(class, date)",
    "CREATE INDEX reviews_site ON reviews(site_id)",
    "CREATE INDEX sample_draw ON sample(draw_id)",
    "CREATE TRIGGER reviews_append_only_update BEFORE UPDATE ON reviews "
    "BEGIN SELECT RAISE(ABORT, 'reviews is an append-only log: add a new review instead'); END",
    "CREATE TRIGGER reviews_append_only_delete BEFORE DELETE ON reviews "
    "BEGIN SELECT RAISE(ABORT, 'reviews is an append-only log: add a new review instead'); END",
)
#: Triggers that keep the review log the only source of a site's review (added to older stores
#: when they are opened). ``INSERT OR REPLACE`` deletes the row it replaces without firing
#: DELETE triggers, so an INSERT trigger refuses an id that is taken; a review may not be
#: dated before the last one; and ``sites.status``, ``reviewer``, ``reviewed_at`` and ``note``
#: may only be set to the site's last review (which is what :meth:`CandidateStore.review` does).
AUDIT_TRIGGERS = {
    # (in a BEFORE INSERT trigger an id left to AUTOINCREMENT reads -1, which no row has)
    "reviews_no_replace":
        "CREATE TRIGGER reviews_no_replace BEFORE INSERT ON reviews "
        "WHEN EXISTS (SELECT 1 FROM reviews WHERE review_id = NEW.review_id) "
        "BEGIN SELECT RAISE(ABORT, 'reviews is an append-only log: a review id cannot be reused or replaced'); END",
    "reviews_at_the_end":
        "CREATE TRIGGER reviews_at_the_end AFTER INSERT ON reviews "
        "WHEN NEW.review_id <= 0 OR NEW.review_id < (SELECT max(review_id) FROM reviews) "
        "BEGIN SELECT RAISE(ABORT, 'reviews is an append-only log: a review goes after the last one'); END",
    "reviews_no_backdating":
        "CREATE TRIGGER reviews_no_backdating BEFORE INSERT ON reviews "
        "WHEN NEW.time < (SELECT max(time) FROM reviews) "
        "BEGIN SELECT RAISE(ABORT, 'reviews is an append-only log: a review cannot be dated before the last one'); END",
    "sites_status_follows_log":
        "CREATE TRIGGER sites_status_follows_log BEFORE UPDATE OF status, reviewer, reviewed_at, note ON sites "
        "WHEN NOT EXISTS (SELECT 1 FROM reviews r WHERE r.review_id = "
        "(SELECT max(review_id) FROM reviews WHERE site_id = NEW.site_id) AND r.status = NEW.status "
        "AND r.reviewer IS NEW.reviewer AND r.time IS NEW.reviewed_at AND coalesce(r.note, '') = coalesce(NEW.note, '')) "
        "AND NOT (NEW.status = 'unreviewed' AND NEW.reviewer IS NULL AND NEW.reviewed_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM reviews WHERE site_id = NEW.site_id)) "
        "BEGIN SELECT RAISE(ABORT, 'sites.status follows the review log: record a review "
        "(sitewatch review DIR --site ID --status S) instead of editing the site'); END",
    "sites_start_unreviewed":
        "CREATE TRIGGER sites_start_unreviewed BEFORE INSERT ON sites "
        "WHEN NEW.status IS NOT 'unreviewed' OR NEW.reviewer IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'a new site starts unreviewed: record a review to change it'); END",
}


@dataclass(frozen=True)
class Detection:
    """A detection to add: scene name, class, score, box centre and box ring (lon/lat)."""

    scene: str
    cls: str
    score: float
    lon: float
    lat: float
    #: Closed, counter-clockwise lon/lat ring of the box.
    ring: tuple[tuple[float, float], ...]
    #: The box in scene pixels ``x0, y0, x1, y1`` (columns, rows), where known.
    box_px: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class SceneInfo:
    """A scene in the store."""

    name: str
    source: str
    acquired: str | None
    width: int
    height: int
    #: ``(west, south, east, north)`` in degrees.
    bounds_lonlat: tuple[float, float, float, float]
    #: Quick-look PNG, relative to the run directory.
    quicklook: str | None = None
    #: Scene pixels per quick-look pixel.
    quicklook_scale: float | None = None
    #: Set when read from a store.
    run_id: str | None = None
    detections: int = 0


@dataclass(frozen=True)
class RunInfo:
    """A detection run that added scenes to the store."""

    started_at: str
    finished_at: str
    model: str
    model_version: str
    #: The run's own ``run.json`` record.
    record: dict[str, Any] = field(default_factory=dict)
    #: Set when read from a store.
    run_id: str | None = None
    site_distance: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AddedRun:
    """What :meth:`CandidateStore.add_detections` did."""

    run_id: str
    detections: int
    new_sites: tuple[str, ...]
    updated_sites: tuple[str, ...]
    site_distance: dict[str, float]


@dataclass(frozen=True)
class Site:
    """A site and its current review."""

    site_id: str
    cls: str
    date: str | None
    lon: float
    lat: float
    first_seen: str | None
    last_seen: str | None
    scenes: tuple[str, ...]
    n_detections: int
    max_score: float
    mean_score: float
    status: str
    reviewer: str | None
    reviewed_at: str | None
    note: str | None
    footprint: Polygon | None = None

    def properties(self) -> dict[str, Any]:
        """Plain-data properties (``class`` for the class), as exports and JSON APIs give them."""
        return {
            "site_id": self.site_id, "class": self.cls, "status": self.status, "date": self.date,
            "first_seen": self.first_seen, "last_seen": self.last_seen, "scenes": list(self.scenes),
            "n_detections": self.n_detections, "max_score": self.max_score, "mean_score": self.mean_score,
            "lon": self.lon, "lat": self.lat, "reviewer": self.reviewer, "reviewed_at": self.reviewed_at,
            "note": self.note,
        }


@dataclass(frozen=True)
class Review:
    """One entry of the review log."""

    review_id: int
    site_id: str
    status: str
    reviewer: str
    note: str
    time: str


@dataclass(frozen=True)
class StoredDetection:
    """A detection as stored."""

    det_id: str
    scene: str
    scene_source: str | None
    acquired: str | None
    cls: str
    score: float
    lon: float
    lat: float
    run_id: str
    model: str | None
    model_version: str | None
    site_id: str
    detected_at: str | None
    box_px: tuple[float, float, float, float] | None
    polygon: Polygon


@dataclass(frozen=True)
class SampleMember:
    """A site in the current review sample of its class (see :mod:`sitewatch.imagery.candidates.estimate`)."""

    draw_id: int
    site_id: str
    cls: str
    stratum: int
    drawn_at: str
    seed: int


def check_reviewer(name: object) -> str:
    """A reviewer's name as the log keeps it: NFC-normalised, trimmed, inner spaces collapsed.

    Refused (:class:`UsageError`): an empty name, or one holding control characters (newlines,
    tabs), format characters (bidi controls such as U+202E, zero-width spaces and joiners,
    U+FEFF) or line and paragraph separators: characters that make two names look alike, or a
    name look like another, in a log that is evidence.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError("reviewer: give the reviewer's name (--reviewer NAME)")
    text = unicodedata.normalize("NFC", name.strip())
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise UsageError(f"reviewer: {len(bad)} invisible or control character(s) such as U+{ord(bad[0]):04X} "
                         f"({unicodedata.name(bad[0], 'unnamed')}); type the name in plain letters")
    return " ".join(text.split())


def check_status(status: str, flag: str = "status") -> str:
    """``status`` if it is one of :data:`STATUSES`.

    Raises:
        UsageError: it is not.
    """
    if status not in STATUSES:
        raise UsageError(f"{flag} {status!r}: use one of {', '.join(STATUSES)}")
    return status


class CandidateStore:
    """A run directory's ``candidates.gpkg``: add runs, list sites, record reviews.

    Each method opens its own SQLite connection and closes it; pass ``con`` (from
    :meth:`write` or :meth:`read`) to run several calls in one transaction.

    Example::

        store = CandidateStore("runs/ports/candidates.gpkg")
        for site in store.sites(status="unreviewed", cls="kiln"):
            ...
        store.review("kiln-000012", "confirmed", reviewer="ana", note="chimney visible")
    """

    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT_S) -> None:
        """Open an existing store.

        Raises:
            InputError: the file is missing or is not a sitewatch candidate store.
        """
        self.path = Path(path)
        self.timeout = timeout
        if not self.path.is_file():
            raise InputError(self.path, "no such candidate store; run sitewatch detect --out DIR to make one")
        try:
            with contextlib.closing(self._connect()) as con:
                ok = is_geopackage(con) and {"detections", "sites", "reviews"} <= _tables(con)
        except sqlite3.DatabaseError as exc:
            raise InputError(self.path, f"cannot be read as a GeoPackage ({exc}); is it a candidate store?") from None
        if not ok:
            raise InputError(self.path, "is not a sitewatch candidate store (no detections, sites and reviews layers)")
        self._upgrade()

    def _upgrade(self) -> None:
        """Give a store made by an older sitewatch the review log's triggers, its hash chain column,
        the list's indexes, the R-tree indexes, the QGIS style of ``sites`` and the GeoPackage
        version of its triggers (a no-op when present).

        A store on a read-only medium is left as it is; its :meth:`check` still works.
        """
        with contextlib.closing(self._connect()) as con:
            have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            missing = [sql for name, sql in AUDIT_TRIGGERS.items() if name not in have]
            no_chain = "chain" not in {r[1] for r in con.execute("PRAGMA table_info(reviews)")}
            indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            missing += [sql for sql in SITE_INDEXES if sql.split()[5] not in indexes]
            no_rtree = [t for t in GEOMETRY_LAYERS if not has_spatial_index(con, t)]
            no_reviewers = "reviewers" not in _tables(con)
            no_style = not _has_style(con, "sites")
            old_version = con.execute("PRAGMA user_version").fetchone()[0] < USER_VERSION
            if not (missing or no_chain or no_rtree or no_reviewers or no_style or old_version):
                return
            try:
                con.execute("BEGIN IMMEDIATE")
                if no_chain:  # reviews recorded before are not chained; the chain starts at the next one
                    con.execute("ALTER TABLE reviews ADD COLUMN chain TEXT")
                for sql in missing:
                    con.execute(sql.replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS ", 1))
                for table in no_rtree:
                    add_spatial_index(con, table)
                if no_reviewers:
                    _add_reviewers_table(con)
                if no_style:
                    add_status_style(con, "sites")
                if old_version:  # GeoPackage 1.3 stores: their R-tree triggers are already 1.4's
                    con.execute(f"PRAGMA user_version = {USER_VERSION}")
                con.execute("COMMIT")
            except sqlite3.Error:
                if con.in_transaction:
                    con.execute("ROLLBACK")

    @classmethod
    def create(cls, path: str | Path, *, timeout: float = BUSY_TIMEOUT_S) -> CandidateStore:
        """Create an empty store at ``path`` (built under a temporary name, then renamed).

        Raises:
            OutputError: ``path`` exists or cannot be written.
        """
        path = Path(path)
        if path.exists():
            raise OutputError(f"{path}: already exists; a new candidate store needs a new file")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with contextlib.closing(gpkg_connect(tmp, isolation_level=None)) as con:
                init_geopackage(con)
                con.execute("BEGIN")
                _create_layers(con)
                con.execute("COMMIT")
            os.replace(tmp, path)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"{path}: cannot create the candidate store ({exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path, timeout=timeout)

    @classmethod
    def in_run_dir(cls, run_dir: str | Path) -> CandidateStore:
        """The store of run directory ``run_dir``.

        Raises:
            InputError: the directory is missing or holds no store.
        """
        d = Path(run_dir)
        if not d.is_dir():
            raise InputError(d, "no such run directory; give the --out DIR of a sitewatch detect run")
        if not (d / STORE_NAME).is_file():
            raise InputError(d, f"holds no {STORE_NAME}; run sitewatch detect --out {d} (or --append) to make one")
        return cls(d / STORE_NAME)

    # --- transactions -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return gpkg_connect(self.path, timeout=self.timeout, isolation_level=None)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one ``BEGIN IMMEDIATE`` transaction: committed on exit, rolled back on error.

        Raises:
            OutputError: another writer held the store longer than the busy timeout.
        """
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise OutputError(
                    f"{self.path}: locked by another writer (waited up to {self.timeout:g} s); try again"
                ) from None
            raise
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
            con.close()

    @contextlib.contextmanager
    def read(self, con: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A connection for consistent reads (one deferred transaction), or ``con`` itself if given."""
        if con is not None:
            yield con
            return
        own = self._connect()
        try:
            own.execute("BEGIN")
            yield own
        finally:
            if own.in_transaction:
                own.execute("ROLLBACK")
            own.close()

    # --- writing ------------------------------------------------------------------------

    def add_detections(
        self,
        run: RunInfo,
        scenes: Sequence[SceneInfo],
        detections: Sequence[Detection],
        *,
        site_distance: Mapping[str, float] | None = None,
        con: sqlite3.Connection | None = None,
    ) -> AddedRun:
        """Add scenes and their detections, grouping the detections into sites.

        Detections join the nearest site of their class (and date, for vessels) within
        the class's site distance, else start a new site; sites' points, footprints,
        dates and scores are updated; their reviews are never touched. Detections are
        grouped in the order given.

        Raises:
            InputError: a scene (by name or by source path) is already in the store.
            UsageError: a detection names a scene not in ``scenes``, or a bad site distance.
        """
        if con is None:
            with self.write() as own:
                return self.add_detections(run, scenes, detections, site_distance=site_distance, con=own)
        _check_new_scenes(con, self.path, scenes)
        acquired = {s.name: s.acquired for s in scenes}
        for d in detections:
            if d.scene not in acquired:
                raise UsageError(f"detection of scene {d.scene!r}: the scene is not among the scenes added")
        earlier = con.execute("SELECT site_distance FROM runs ORDER BY fid DESC LIMIT 1").fetchone()
        classes = sorted({d.cls for d in detections} | set(run.record.get("model", {}).get("spec", {}).get("classes", [])))
        distances = site_distances(classes, site_distance, json.loads(earlier[0]) if earlier else None)
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        run_id = f"run-{n_runs + 1:03d}"
        now = now_iso()

        # Existing sites of the classes involved, then the grouping.
        points: list[SitePoint] = []
        site_ids: list[str] = []
        involved = sorted({d.cls for d in detections})
        for sid, cls, date, lon, lat, n in con.execute(
            f"SELECT site_id, class, date, lon, lat, n_detections FROM sites WHERE class IN ({_marks(involved)}) "  # noqa: S608
            "ORDER BY fid", involved,
        ):
            points.append(SitePoint(cls, date, lon, lat, n))
            site_ids.append(sid)
        n_existing = len(points)
        which = assign(points, [(d.cls, acquired[d.scene], d.lon, d.lat) for d in detections], distances)
        next_number = _next_site_numbers(con, involved)
        for p in points[n_existing:]:
            site_ids.append(f"{p.cls}-{next_number[p.cls]:06d}")
            next_number[p.cls] += 1

        # Detections, then every site they touched, then the scenes and the run.
        next_fid = con.execute("SELECT coalesce(max(fid), 0) + 1 FROM detections").fetchone()[0]
        source = {s.name: s.source for s in scenes}
        rows = []
        for k, (d, i) in enumerate(zip(detections, which, strict=True)):
            fid = next_fid + k
            box = d.box_px or (None, None, None, None)
            rows.append((
                fid, geometry_blob(Polygon(d.ring)), f"det-{fid:07d}", d.scene, source[d.scene], acquired[d.scene],
                d.cls, float(d.score), d.lon, d.lat, run_id, run.model, run.model_version, site_ids[i],
                gpkg_datetime(run.finished_at), *box,
            ))
        columns = ", ".join(c.split()[0] for c in _DETECTION_COLUMNS)
        if rows:  # an empty executemany still prepares the statement
            con.executemany(f"INSERT INTO detections (fid, geom, {columns}) VALUES ({_marks(rows[0])})", rows)  # noqa: S608
        touched = sorted(set(which))
        for i in touched:
            _refresh_site(con, site_ids[i], points[i].cls, points[i].date, run_id, new=i >= n_existing)
        con.executemany(
            "INSERT INTO scenes (scene, source, acquired, run_id, width, height, west, south, east, north, "
            "quicklook, quicklook_scale, detections) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.name, s.source, s.acquired, run_id, s.width, s.height, *s.bounds_lonlat, s.quicklook,
              s.quicklook_scale, sum(d.scene == s.name for d in detections)) for s in scenes],
        )
        con.execute(
            "INSERT INTO runs (run_id, started_at, finished_at, model, model_version, site_distance, added_at, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, gpkg_datetime(run.started_at), gpkg_datetime(run.finished_at), run.model, run.model_version,
             json.dumps(distances), now,
             json.dumps({**run.record, "run_id": run_id})),
        )
        if detections:
            lons = [x for d in detections for x, _ in d.ring]
            lats = [y for d in detections for _, y in d.ring]
            bounds = (min(lons), min(lats), max(lons), max(lats))
            for table in ("detections", "sites", "site_footprints"):
                touch(con, table, bounds)
        for table in ("scenes", "runs"):
            touch(con, table)
        new = tuple(site_ids[i] for i in touched if i >= n_existing)
        updated = tuple(site_ids[i] for i in touched if i < n_existing)
        return AddedRun(run_id, len(detections), new, updated, distances)

    def check_new_scenes(self, scenes: Sequence[_NamedScene]) -> None:
        """Refuse scenes (anything with ``name`` and ``source``) already in the store, before any work.

        Raises:
            InputError: a scene of the same source path or the same name is in the store.
        """
        with self.read() as con:
            _check_new_scenes(con, self.path, scenes)

    def review(self, site_id: str, status: str, reviewer: str, note: str = "",
               con: sqlite3.Connection | None = None) -> Review:
        """Record a review decision: append it to the log and make it the site's current review.

        Raises:
            UsageError: a bad status or an empty reviewer.
            NotFoundError: no site ``site_id``.
        """
        check_status(status)
        reviewer = check_reviewer(reviewer)
        note = note or ""
        if con is None:
            with self.write() as own:
                return self.review(site_id, status, reviewer, note, con=own)
        if con.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,)).fetchone() is None:
            raise NotFoundError(f"site {site_id!r}: no such site in {self.path}; list them with sitewatch sites DIR")
        # never before the last review (a clock set back must not make the log run backwards)
        last = con.execute("SELECT max(time) FROM reviews").fetchone()[0]
        when = max(now_iso(), last or "")
        prev = con.execute("SELECT chain FROM reviews ORDER BY review_id DESC LIMIT 1").fetchone()
        chain = chain_hash(prev[0] if prev else None, site_id, status, reviewer.strip(), note, when)
        cur = con.execute("INSERT INTO reviews (site_id, status, reviewer, note, time, chain) VALUES (?, ?, ?, ?, ?, ?)",
                          (site_id, status, reviewer.strip(), note, when, chain))
        con.execute("UPDATE sites SET status = ?, reviewer = ?, reviewed_at = ?, note = ? WHERE site_id = ?",
                    (status, reviewer.strip(), when, note, site_id))
        touch(con, "reviews")
        touch(con, "sites")
        return Review(int(cur.lastrowid or 0), site_id, status, reviewer.strip(), note, when)

    def check(self, con: sqlite3.Connection | None = None) -> list[str]:
        """Problems with the review log: each site whose status differs from its last review, by name.

        Returns one line per problem (empty: the store's statuses and log agree). The
        store's triggers refuse such edits; this finds those made where the triggers were
        dropped or missing (an older sitewatch, a tool that rewrote the file).
        """
        with self.read(con) as c:
            rows = c.execute(
                "SELECT s.site_id, s.status, s.reviewer, s.reviewed_at, coalesce(s.note, ''), "
                "r.status, r.reviewer, r.time, coalesce(r.note, '') FROM sites s LEFT JOIN reviews r ON r.review_id = "
                "(SELECT max(review_id) FROM reviews WHERE site_id = s.site_id) ORDER BY s.site_id").fetchall()
            orphans = c.execute("SELECT DISTINCT site_id FROM reviews WHERE site_id NOT IN (SELECT site_id FROM sites) "
                                "ORDER BY site_id").fetchall()
        problems = []
        for site_id, status, reviewer, at, note, r_status, r_reviewer, r_time, r_note in rows:
            if r_status is None:
                if status != "unreviewed" or reviewer is not None:
                    problems.append(f"site {site_id}: status {status!r} but no review in the log")
            elif (status, reviewer, at, note) != (r_status, r_reviewer, r_time, r_note):
                said = f"{r_status!r} by {r_reviewer} at {r_time}"
                if status != r_status:
                    problems.append(f"site {site_id}: status {status!r} but its last review says {said}")
                else:
                    problems.append(f"site {site_id}: its review ({status!r} by {reviewer} at {at}) is not its last "
                                    f"review in the log ({said})")
        problems += [f"reviews of site {r[0]}: no such site" for r in orphans]
        problems += self._check_chain(con)
        return problems

    def _check_chain(self, con: sqlite3.Connection | None = None) -> list[str]:
        """Reviews whose chain hash is not that of their content and the review before them."""
        with self.read(con) as c:
            rows = c.execute("SELECT review_id, site_id, status, reviewer, coalesce(note, ''), time, chain "
                             "FROM reviews ORDER BY review_id").fetchall()
        prev: str | None = None
        for review_id, site_id, status, reviewer, note, when, chain in rows:
            if chain is None and prev is None:  # recorded before the store had a chain
                continue
            if chain != chain_hash(prev, site_id, status, reviewer, note, when):
                return [f"review {review_id} (site {site_id}): its chain hash does not follow from the reviews "
                        "before it: the log was rewritten"]
            prev = chain
        return []

    def chain_head(self) -> str | None:
        """The chain hash of the last review (``None`` before any): note it down (a ticket, an e-mail)
        to detect later a log rewritten by someone with the file (:meth:`check` then fails, or the head differs)."""
        with self.read() as c:
            row = c.execute("SELECT chain FROM reviews ORDER BY review_id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def require_consistent(self) -> None:
        """:meth:`check`, raising when it finds anything.

        Raises:
            InputError: the statuses and the review log disagree (names the sites).
        """
        problems = self.check()
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise InputError(self.path, f"site statuses and the review log disagree ({shown}): the file was edited "
                                        "outside sitewatch; see sitewatch sites DIR --check, and re-review those sites "
                                        "(sitewatch review) to restore them")

    # --- reviewers ----------------------------------------------------------------------

    def add_reviewer(self, name: str) -> str:
        """Issue reviewer ``name`` a personal token for the review page; returns the token.

        The store keeps only the token's SHA-256: show the token to its owner once.

        Raises:
            UsageError: a bad name (see :func:`check_reviewer`), or ``name`` already has a token.
        """
        name = check_reviewer(name)
        token = "sw_" + secrets.token_urlsafe(24)
        with self.write() as con:
            row = con.execute("SELECT revoked_at FROM reviewers WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise UsageError(f"reviewer {name!r} already has a token; revoke it first "
                                 f"(sitewatch reviewers revoke {name} DIR) to issue a new one")
            con.execute("DELETE FROM reviewers WHERE name = ?", (name,))
            con.execute("INSERT INTO reviewers (name, token_sha256, created_at) VALUES (?, ?, ?)",
                        (name, token_hash(token), now_iso()))
        return token

    def revoke_reviewer(self, name: str) -> None:
        """Revoke ``name``'s token (their reviews stay in the log).

        Raises:
            NotFoundError: no reviewer of that name holds a token.
        """
        with self.write() as con:
            cur = con.execute("UPDATE reviewers SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                              (now_iso(), name))
            if cur.rowcount == 0:
                raise NotFoundError(f"reviewer {name!r}: holds no token in {self.path}; "
                                    "list them with sitewatch reviewers list DIR")

    def reviewers(self) -> list[tuple[str, str, str | None]]:
        """``(name, created_at, revoked_at)`` of every reviewer issued a token, by name."""
        with self.read() as con:
            return [tuple(r) for r in con.execute(  # type: ignore[misc]
                "SELECT name, created_at, revoked_at FROM reviewers ORDER BY name")]

    def reviewer_for_token(self, token: str) -> str | None:
        """The reviewer whose live token ``token`` is, else ``None``."""
        if not isinstance(token, str) or not token.startswith("sw_") or len(token) > 200:
            return None
        with self.read() as con:
            row = con.execute("SELECT name FROM reviewers WHERE token_sha256 = ? AND revoked_at IS NULL",
                              (token_hash(token),)).fetchone()
        return row[0] if row else None

    # --- reading ------------------------------------------------------------------------

    def sites(
        self,
        *,
        status: str | Sequence[str] | None = None,
        cls: str | Sequence[str] | None = None,
        date: str | None = None,
        in_sample: bool = False,
        min_score: float | None = None,
        max_score: float | None = None,
        bbox: tuple[float, float, float, float] | None = None,
        site_ids: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        con: sqlite3.Connection | None = None,
    ) -> list[Site]:
        """Sites matching every filter given, in the order they were created.

        Args:
            status: one status or several (:data:`STATUSES`).
            cls: one class or several.
            date: the site's date (vessel sites).
            in_sample: only sites in the current review sample of their class.
            min_score: ``max_score`` at least this.
            max_score: ``max_score`` at most this.
            bbox: ``(west, south, east, north)``: the site's point inside it.
            site_ids: only these sites.
            limit, offset: a page of the result.

        Raises:
            UsageError: a bad status.
        """
        where, args = _site_filter(status=status, cls=cls, date=date, in_sample=in_sample, min_score=min_score,
                                   max_score=max_score, bbox=bbox, site_ids=site_ids)
        # Only fixed SQL fragments are joined here; every value is a bound parameter.
        sql = (f"SELECT {_SITE_SELECT}, f.geom FROM sites s LEFT JOIN site_footprints f ON f.site_id = s.site_id "  # noqa: S608
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY s.fid")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [int(limit), int(offset)]
        with self.read(con) as c:
            return [_site(row) for row in c.execute(sql, args)]

    def page(
        self,
        *,
        sort: str = "score",
        descending: bool = True,
        limit: int | None = None,
        offset: int = 0,
        thresholds: Mapping[str, float] | None = None,
        default_threshold: float = 0.5,
        con: sqlite3.Connection | None = None,
        **filters: Any,
    ) -> tuple[list[Site], int, int]:
        """One page of the sites matching ``filters`` (those of :meth:`sites`, and ``max_score``), sorted in SQL.

        Filtering, sorting, counting and paging all run in SQLite (on indexed columns), so a
        page of 50 out of 100,000 sites reads 50 rows, not 100,000.

        Args:
            sort: one of :data:`SORT_KEYS`; ties are broken by site id, ascending.
            descending: the sort order.
            limit, offset: the page (``limit=None``: to the end).
            thresholds: class -> score threshold, for ``sort="uncertainty"`` (how close a site's
                score is to its class's threshold: 1 at it, 0 at 0 or 1); other classes use
                ``default_threshold``.

        Returns:
            The page's sites, how many match, and how many of those are reviewed.

        Raises:
            UsageError: a bad status or sort key.
        """
        if sort not in SORT_KEYS:
            raise UsageError(f"sort {sort!r}: use one of {', '.join(SORT_KEYS)}")
        where, args = _site_filter(**filters)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        key_args: list[Any] = []
        if sort == "uncertainty":
            cases = " ".join("WHEN ? THEN ?" for _ in (thresholds or {}))
            for k, v in (thresholds or {}).items():
                key_args += [k, float(v)]
            t = f"(CASE s.class {cases} ELSE ? END)" if cases else "(?)"
            key_args.append(float(default_threshold))
            key = f"round(max(0.0, min(1.0, 1.0 - abs(s.max_score - {t}) / max({t}, 1.0 - {t}, 1e-9))), 4)"
            key_args = key_args * 3  # the threshold appears three times
        else:
            key = SORT_KEYS[sort]
        # the page's ids first (sites only), then those rows with their footprints
        sql = f"SELECT s.site_id FROM sites s {cond} ORDER BY {key} {'DESC' if descending else 'ASC'}, s.site_id ASC"  # noqa: S608
        page_args = [*key_args]
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            page_args += [-1 if limit is None else int(limit), int(offset)]
        with self.read(con) as c:
            total, reviewed = c.execute(f"SELECT count(*), coalesce(sum(s.status != 'unreviewed'), 0) FROM sites s {cond}",  # noqa: S608
                                        args).fetchone()
            ids = [r[0] for r in c.execute(sql, [*args, *page_args])]
            by_id = {site.site_id: site for site in self.sites(site_ids=ids, con=c)} if ids else {}
        return [by_id[i] for i in ids], int(total), int(reviewed)

    def site(self, site_id: str, con: sqlite3.Connection | None = None) -> Site:
        """One site.

        Raises:
            NotFoundError: no site ``site_id``.
        """
        found = self.sites(site_ids=[site_id], con=con)
        if not found:
            raise NotFoundError(f"site {site_id!r}: no such site in {self.path}; list them with sitewatch sites DIR")
        return found[0]

    def reviews(self, site_id: str | None = None, con: sqlite3.Connection | None = None) -> list[Review]:
        """The review log (of one site, or all), oldest first."""
        sql = "SELECT review_id, site_id, status, reviewer, coalesce(note, ''), time FROM reviews"
        args: list[Any] = []
        if site_id is not None:
            sql += " WHERE site_id = ?"
            args.append(site_id)
        with self.read(con) as c:
            return [Review(*row) for row in c.execute(sql + " ORDER BY review_id", args)]

    def detections(self, site_id: str | None = None, scene: str | None = None,
                   con: sqlite3.Connection | None = None) -> list[StoredDetection]:
        """Detections (of one site and/or scene, or all), in the order they were added."""
        where, args = [], []
        if site_id is not None:
            where.append("site_id = ?")
            args.append(site_id)
        if scene is not None:
            where.append("scene = ?")
            args.append(scene)
        sql = ("SELECT det_id, scene, scene_source, acquired, class, score, lon, lat, run_id, model, model_version, "  # noqa: S608
               "site_id, detected_at, px_x0, px_y0, px_x1, px_y1, geom FROM detections "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY fid")
        out = []
        with self.read(con) as c:
            for row in c.execute(sql, args):
                box = None if row[13] is None else (row[13], row[14], row[15], row[16])
                out.append(StoredDetection(*row[:13], box_px=box, polygon=read_geometry(row[17])))  # type: ignore[arg-type]
        return out

    def scenes(self, con: sqlite3.Connection | None = None) -> list[SceneInfo]:
        """Scenes in the store, in the order they were added."""
        sql = ("SELECT scene, source, acquired, width, height, west, south, east, north, quicklook, quicklook_scale, "
               "run_id, detections FROM scenes ORDER BY fid")
        with self.read(con) as c:
            return [SceneInfo(r[0], r[1], r[2], r[3], r[4], (r[5], r[6], r[7], r[8]), r[9], r[10], r[11], r[12])
                    for r in c.execute(sql)]

    def runs(self, con: sqlite3.Connection | None = None) -> list[RunInfo]:
        """Runs that added to the store, oldest first."""
        sql = "SELECT started_at, finished_at, model, model_version, record, run_id, site_distance FROM runs ORDER BY fid"
        with self.read(con) as c:
            return [RunInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6])) for r in c.execute(sql)]

    def sample(self, cls: str | None = None, con: sqlite3.Connection | None = None) -> list[SampleMember]:
        """The current review sample (the latest draw of each class), by class and stratum."""
        sql = f"SELECT draw_id, site_id, class, stratum, drawn_at, seed FROM sample WHERE {_CURRENT_DRAW}"  # noqa: S608
        args: list[Any] = []
        if cls is not None:
            sql += " AND class = ?"
            args.append(cls)
        with self.read(con) as c:
            return [SampleMember(*r) for r in c.execute(sql + " ORDER BY class, stratum, fid", args)]

    def sampled(self, site_ids: Sequence[str], con: sqlite3.Connection | None = None) -> set[str]:
        """Those of ``site_ids`` that are in the current review sample."""
        if not site_ids:
            return set()
        sql = f"SELECT site_id FROM sample WHERE {_CURRENT_DRAW} AND site_id IN ({_marks(site_ids)})"  # noqa: S608
        with self.read(con) as c:
            return {r[0] for r in c.execute(sql, list(site_ids))}

    def counts(self, con: sqlite3.Connection | None = None) -> dict[str, dict[str, int]]:
        """Sites per class and status, and detections per class."""
        out: dict[str, dict[str, int]] = {}
        with self.read(con) as c:
            for cls, status, n in c.execute("SELECT class, status, count(*) FROM sites GROUP BY class, status"):
                out.setdefault(cls, {s: 0 for s in STATUSES})[status] = n
            for cls, n in c.execute("SELECT class, count(*) FROM detections GROUP BY class"):
                out.setdefault(cls, {s: 0 for s in STATUSES})["detections"] = n
        for v in out.values():
            v["sites"] = sum(v[s] for s in STATUSES)
            v.setdefault("detections", 0)
        return out


def review_count(path: str | Path) -> int:
    """Reviews in the store at ``path`` (0 when there is no readable store)."""
    if not Path(path).is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as con:
            return int(con.execute("SELECT count(*) FROM reviews").fetchone()[0])
    except sqlite3.Error:
        return 0


# --- internals ------------------------------------------------------------------------------

#: The sample rows of the latest draw of each class.
_CURRENT_DRAW = "draw_id = (SELECT max(d.draw_id) FROM sample_strata d WHERE d.class = sample.class)"

_SITE_SELECT = ("s.site_id, s.class, s.date, s.lon, s.lat, s.first_seen, s.last_seen, s.scenes, s.n_detections, "
                "s.max_score, s.mean_score, s.status, s.reviewer, s.reviewed_at, s.note")


def _site(row: Sequence[Any]) -> Site:
    return Site(*row[:7], tuple(json.loads(row[7])), *row[8:15], footprint=read_geometry(row[15]))  # type: ignore[arg-type]


def _marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one placeholder per value."""
    return ", ".join("?" * len(values))


def chain_hash(prev: str | None, site_id: str, status: str, reviewer: str, note: str, time: str) -> str:
    """SHA-256 (hex) of the previous review's chain hash and this review's content."""
    doc = json.dumps([prev or "", site_id, status, reviewer, note or "", time], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def _site_filter(
    *,
    status: str | Sequence[str] | None = None,
    cls: str | Sequence[str] | None = None,
    date: str | None = None,
    in_sample: bool = False,
    min_score: float | None = None,
    max_score: float | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    site_ids: Sequence[str] | None = None,
) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``sites s`` (fixed fragments) and their bound values, for the filters given.

    Raises:
        UsageError: a bad status.
    """
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        for s in statuses:
            check_status(s)
        where.append(f"s.status IN ({_marks(statuses)})")
        args += statuses
    if cls is not None:
        classes = [cls] if isinstance(cls, str) else list(cls)
        where.append(f"s.class IN ({_marks(classes)})")
        args += classes
    if date is not None:
        where.append("s.date = ?")
        args.append(date)
    if in_sample:
        where.append(f"s.site_id IN (SELECT site_id FROM sample WHERE {_CURRENT_DRAW})")  # noqa: S608
    if min_score is not None:
        where.append("s.max_score >= ?")
        args.append(min_score)
    if bbox is not None:
        where.append("s.lon BETWEEN ? AND ? AND s.lat BETWEEN ? AND ?")
        args += [bbox[0], bbox[2], bbox[1], bbox[3]]
    if site_ids is not None:
        where.append(f"s.site_id IN ({_marks(site_ids)})")
        args += list(site_ids)
    if max_score is not None:
        where.append("s.max_score <= ?")
        args.append(max_score)
    return where, args


def _add_reviewers_table(con: sqlite3.Connection) -> None:
    add_attributes_table(con, "reviewers", ("name TEXT NOT NULL UNIQUE", "token_sha256 TEXT NOT NULL UNIQUE",
                                            "created_at DATETIME NOT NULL", "revoked_at DATETIME"),
                         "reviewers of the review page and the SHA-256 of their tokens")


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a reviewer token: what the store keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _has_style(con: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` has a default QGIS style in ``layer_styles``."""
    if LAYER_STYLES not in _tables(con):
        return False
    return con.execute(f"SELECT 1 FROM {LAYER_STYLES} WHERE f_table_name = ? AND useAsDefault = 1",  # noqa: S608
                       (table,)).fetchone() is not None


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _create_layers(con: sqlite3.Connection) -> None:
    add_features_table(con, "detections", "POLYGON", _DETECTION_COLUMNS, "sitewatch detections (boxes)")
    add_features_table(con, "sites", "POINT", _SITE_COLUMNS, "sitewatch sites (mean detection centre) and current review")
    add_features_table(con, "site_footprints", "POLYGON", ("site_id TEXT NOT NULL UNIQUE", "class TEXT NOT NULL"),
                       "sitewatch site footprints (hull of the detection boxes)")
    add_attributes_table(con, "reviews", ("site_id TEXT NOT NULL", f"status TEXT NOT NULL {_STATUS_CHECK}", "reviewer TEXT NOT NULL",
                                          "note TEXT", "time DATETIME NOT NULL", "chain TEXT"),
                         "append-only review log", pk="review_id")
    add_attributes_table(con, "scenes", (
        "scene TEXT NOT NULL UNIQUE", "source TEXT NOT NULL", "acquired DATE", "run_id TEXT NOT NULL",
        "width INTEGER", "height INTEGER", "west DOUBLE", "south DOUBLE", "east DOUBLE", "north DOUBLE",
        "quicklook TEXT", "quicklook_scale DOUBLE", "detections INTEGER"), "scenes in the store")
    add_attributes_table(con, "runs", (
        "run_id TEXT NOT NULL UNIQUE", "started_at DATETIME", "finished_at DATETIME", "model TEXT",
        "model_version TEXT", "site_distance TEXT", "added_at DATETIME", "record TEXT"), "detection runs")
    add_attributes_table(con, "sample", ("draw_id INTEGER NOT NULL", "site_id TEXT NOT NULL", "class TEXT NOT NULL",
                                         "stratum INTEGER NOT NULL", "drawn_at DATETIME NOT NULL",
                                         "seed INTEGER NOT NULL"), "review sample of sitewatch estimate")
    add_attributes_table(con, "sample_strata", (
        "draw_id INTEGER NOT NULL", "class TEXT NOT NULL", "stratum INTEGER NOT NULL", "score_min DOUBLE",
        "score_max DOUBLE", "n_sites INTEGER NOT NULL", "n_sample INTEGER NOT NULL", "frame_max_fid INTEGER NOT NULL",
        "drawn_at DATETIME NOT NULL", "seed INTEGER NOT NULL"), "strata of each sample draw")
    add_attributes_table(con, "sitewatch", ("key TEXT NOT NULL UNIQUE", "value TEXT"), "sitewatch store metadata")
    _add_reviewers_table(con)
    add_status_style(con, "sites")
    con.executemany("INSERT INTO sitewatch (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created_at", now_iso())])
    for statement in (*_EXTRA_SCHEMA, *AUDIT_TRIGGERS.values(), *SITE_INDEXES):
        con.execute(statement)


class _NamedScene(Protocol):
    name: str
    source: str


def _check_new_scenes(con: sqlite3.Connection, path: Path, scenes: Sequence[_NamedScene]) -> None:
    """Refuse scenes already in the store: same name, or same source file or directory."""
    rows = con.execute("SELECT scene, source, run_id FROM scenes").fetchall()
    by_name = {r[0]: r for r in rows}
    by_source = {_resolved(r[1]): r for r in rows}
    names: set[str] = set()
    for s in scenes:
        old = by_source.get(_resolved(s.source)) or by_name.get(s.name)
        if old is not None:
            how = "is" if _resolved(old[1]) == _resolved(s.source) else f"has the name of {old[1]}, which is"
            raise InputError(s.source, f"{how} already in the candidate store {path} ({old[2]}); leave it out, "
                                       "or rename it if it is another scene")
        if s.name in names:
            raise InputError(s.source, f"another scene of this run is also called {s.name!r}; rename one")
        names.add(s.name)


def _resolved(source: str) -> str:
    return str(Path(source).resolve())


def _next_site_numbers(con: sqlite3.Connection, classes: Sequence[str]) -> dict[str, int]:
    out = {}
    for cls in classes:
        top = 0
        for (sid,) in con.execute("SELECT site_id FROM sites WHERE class = ?", (cls,)):
            tail = sid.rsplit("-", 1)[-1]
            if tail.isdigit():
                top = max(top, int(tail))
        out[cls] = top + 1
    return out


def _refresh_site(con: sqlite3.Connection, site_id: str, cls: str, date: str | None, run_id: str, *, new: bool) -> None:
    """Recompute a site's point, footprint, dates, scenes and scores from its detections."""
    rows = con.execute("SELECT geom, score, lon, lat, acquired, scene FROM detections WHERE site_id = ? ORDER BY fid",
                       (site_id,)).fetchall()
    boxes = [read_geometry(r[0]) for r in rows]
    hull = shapely.union_all(boxes).convex_hull
    if hull.geom_type != "Polygon":  # degenerate boxes: fall back to the bounding box
        hull = shapely.box(*hull.bounds).buffer(1e-7)
    hull = orient(hull, 1.0)
    scores = [r[1] for r in rows]
    lon = round(sum(r[2] for r in rows) / len(rows), 7)
    lat = round(sum(r[3] for r in rows) / len(rows), 7)
    dates = sorted(r[4] for r in rows if r[4])
    scenes = list(dict.fromkeys(r[5] for r in rows))
    values = (geometry_blob(Point(lon, lat)), date, dates[0] if dates else None, dates[-1] if dates else None,
              json.dumps(scenes), len(rows), round(max(scores), 6), round(sum(scores) / len(scores), 6), lon, lat)
    if new:
        con.execute(
            "INSERT INTO sites (geom, date, first_seen, last_seen, scenes, n_detections, max_score, mean_score, lon, lat, "
            "site_id, class, status, created_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'unreviewed', ?)",
            (*values, site_id, cls, run_id),
        )
        con.execute("INSERT INTO site_footprints (geom, site_id, class) VALUES (?, ?, ?)",
                    (geometry_blob(hull), site_id, cls))
    else:
        con.execute(
            "UPDATE sites SET geom = ?, date = ?, first_seen = ?, last_seen = ?, scenes = ?, n_detections = ?, "
            "max_score = ?, mean_score = ?, lon = ?, lat = ? WHERE site_id = ?",
            (*values, site_id),
        )
        con.execute("UPDATE site_footprints SET geom = ? WHERE site_id = ?", (geometry_blob(hull), site_id))
