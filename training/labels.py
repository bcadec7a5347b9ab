"""Training and evaluation labels: GeoJSON, COCO JSON and sitewatch review exports.

Labels become boxes in each scene's pixel grid. Every label that cannot be used is
reported as a :class:`LabelProblem` (never silently dropped); :func:`read_labels` stops
with a :class:`LabelError` naming them unless told to skip them.
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from shapely.errors import ShapelyError
from shapely.geometry import shape as shapely_shape
from shapely.validation import explain_validity

from sitewatch.imagery.errors import InputError, UsageError
from sitewatch.imagery.scenes.georef import ground_distance_m, map_to_pixel, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import Scene
from sitewatch.training.coco import parse_coco


@dataclass(frozen=True)
class LabelOptions:
    """How label files are read."""

    #: Class names of the model, in index order.
    classes: tuple[str, ...]
    #: Feature property that holds the class name.
    class_property: str = "class"
    #: Side in metres of the box given to a Point label.
    point_box_m: float = 50.0
    #: CRS of the label coordinates when the file declares none ("EPSG:32643"); ``None``
    #: means RFC 7946 longitude/latitude (WGS84). Also overrides a declared CRS.
    crs: str | None = None
    #: Report problems but go on without the bad labels (default: stop).
    skip_problems: bool = False
    #: Label class name -> model class name (``("ship", "vessel")``), for files that name
    #: classes their own way.
    class_map: tuple[tuple[str, str], ...] = ()
    #: COCO ``file_name`` -> scene source path, for images whose names do not match a scene.
    coco_bind: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SceneLabels:
    """The labels of one scene, in the scene's pixel coordinates."""

    scene: Scene
    #: ``(n, 4)`` float boxes ``x0, y0, x1, y1`` (columns, rows).
    boxes: np.ndarray
    #: ``(n,)`` int64 class index into :attr:`LabelOptions.classes`.
    labels: np.ndarray
    #: ``(m, 2)`` float ``col, row`` of known non-objects (rejected review candidates).
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


@dataclass(frozen=True)
class LabelProblem:
    """One label that cannot be used, and why."""

    #: ``outside``, ``null-geometry``, ``invalid-geometry``, ``unknown-class``,
    #: ``missing-class``, ``crs-mismatch``, ``swapped-coordinates``, ``out-of-range``,
    #: ``unmatched-image``, ``size-mismatch``, ``unsupported-geometry`` or ``invalid-status``.
    kind: str
    #: The label file.
    source: str
    #: Which label: ``feature 12`` / ``feature id=k-7`` / ``annotation 31`` / ``image x.tif``.
    item: str
    detail: str = ""


class LabelError(InputError):
    """Labels have problems and the run was not told to skip them."""


@dataclass
class LabelSet:
    """Labels of every scene (in the order the scenes were given) and the problems found."""

    scenes: list[SceneLabels]
    problems: list[LabelProblem]
    #: Labels read, used as positives per class, used as negatives, and left unused
    #: (reviewed ``unsure``/``unreviewed``).
    counts: dict[str, int] = field(default_factory=dict)


#: CRS of GeoJSON coordinates when neither the file nor the options name one (RFC 7946).
LONLAT = "OGC:CRS84"

#: Review statuses of sitewatch review exports, and what each makes of a feature.
REVIEW_STATUSES = {
    "confirmed": "positive",
    "rejected": "negative",
    "unreviewed": "unused",
    "unsure": "unused",
}

_SKIP_HINT = "fix them, or pass --skip-bad-labels to go on without them"

#: What to do about lon/lat given as lat, lon.
_SWAPPED = "coordinates look like lat, lon; GeoJSON is lon, lat: swap the two numbers of each position"

#: Lon/lat coordinates beyond this magnitude are taken for projected metres (UTM eastings
#: are 160 000 to 840 000, northings up to 10 000 000), smaller ones for a plain range error.
_PROJECTED_ABOVE = 1000.0


def _crs_mismatch_hint(scenes_crs: str | None = None) -> str:
    """What to do about projected coordinates in a file that declares no CRS.

    ``scenes_crs`` (``EPSG:32633``), the scenes' CRS when they share one, is the example.
    """
    example = scenes_crs or "EPSG:32643"
    return (
        "they look like projected metres, not lon/lat: declare their CRS in the file "
        f'("crs": {{"type": "name", "properties": {{"name": "{example}"}}}}) or pass --labels-crs {example} '
        "(config labels.crs)" + (f"; the scenes are in {scenes_crs}" if scenes_crs else "")
    )

# kind -> (one label, several labels, show each problem's detail, hint for the whole group)
_KIND_TEXT: dict[str, tuple[str, str, bool, str]] = {
    "outside": ("label outside every image", "labels outside every image", False, ""),
    "null-geometry": ("label with no geometry", "labels with no geometry", False, ""),
    "invalid-geometry": ("invalid geometry", "invalid geometries", True, ""),
    "unsupported-geometry": (
        "label of an unsupported geometry type",
        "labels of unsupported geometry types",
        True,
        "use Polygon or Point",
    ),
    "unknown-class": ("label of an unknown class", "labels of unknown classes", True, ""),
    "missing-class": ("label with no class", "labels with no class", True, ""),
    "crs-mismatch": (
        "label whose coordinates are not lon/lat",
        "labels whose coordinates are not lon/lat",
        False,
        _crs_mismatch_hint(),
    ),
    "swapped-coordinates": (
        "label with swapped coordinates",
        "labels with swapped coordinates",
        False,
        _SWAPPED,
    ),
    "out-of-range": (
        "label with coordinates outside the lon/lat range",
        "labels with coordinates outside the lon/lat range",
        True,
        "longitude must be within -180..180 and latitude within -90..90 (declare the file's CRS if they are "
        "not lon/lat)",
    ),
    "unmatched-image": (
        "label on a COCO image that matches no scene",
        "labels on COCO images that match no scene",
        True,
        "name images after their scenes or bind them with --coco-image NAME=SCENE",
    ),
    "size-mismatch": (
        "label on a COCO image whose size differs from its scene",
        "labels on COCO images whose size differs from their scene",
        True,
        "",
    ),
    "invalid-status": (
        "label with an unknown review status",
        "labels with unknown review statuses",
        True,
        f"use {', '.join(REVIEW_STATUSES)}",
    ),
}


def read_labels(paths: Sequence[str | Path], scenes: Sequence[Scene], options: LabelOptions) -> LabelSet:
    """Read GeoJSON, COCO JSON and review-export label files into per-scene pixel boxes.

    Each file's type is found from its content. GeoJSON coordinates are lon/lat (RFC 7946)
    unless the file has a legacy ``crs`` member; ``options.crs`` overrides both. Polygons
    become the pixel bounding box of their vertices, points a square of
    ``options.point_box_m`` metres. A GeoJSON label goes to every scene whose pixel bounds
    hold its box centre, clipped to that scene. COCO images are bound to scenes by
    ``options.coco_bind`` or by file name. Review exports (property ``status``) give
    positives (``confirmed``), hard negatives at their centre (``rejected``) and unused
    labels (``unsure``, ``unreviewed``).

    Args:
        paths: Label files, read in order.
        scenes: The scenes the labels belong to.
        options: Classes and reading options.

    Returns:
        One :class:`SceneLabels` per scene, in the order of ``scenes`` (empty where a
        scene has no labels), the problems found (only when ``options.skip_problems``) and
        counts: ``features``, ``positives``, ``negatives``, ``unused``, ``problems`` and
        ``class:<name>`` per class. A label on several scenes counts once.

    Raises:
        UsageError: ``options`` has no classes, a bad ``point_box_m`` or a ``crs`` pyproj
            does not understand or cannot take to lon/lat.
        LabelError: A file is missing, not JSON, neither GeoJSON nor COCO, an empty
            FeatureCollection, or (unless ``options.skip_problems``) a GeoJSON file whose
            every label lies outside every scene (the message gives both extents); or some
            labels have problems and ``options.skip_problems`` is false (the message
            summarises them on one line).
    """
    _check_options(options)
    acc = _Accumulator(scenes, options.classes)
    for file_index, path in enumerate(paths):
        doc = _load_json(path)
        if _is_coco(doc):
            _read_coco_file(path, file_index, doc, scenes, options, acc)
        else:
            features = _geojson_features(path, doc)
            crs = _label_crs(path, doc, options)
            _read_geojson(path, file_index, features, crs, scenes, options, acc)
    result = acc.result()
    if result.problems and not options.skip_problems:
        hints = {"crs-mismatch": _crs_mismatch_hint(_scenes_epsg(scenes))}
        if acc.outside_lonlat:
            verb = "covers" if len(scenes) == 1 else "cover"
            hints["outside"] = f"the {_count(len(scenes), 'scene')} {verb} {_scenes_extent(scenes)}"
        unknown = [m.group(1) for p in result.problems
                   if p.kind == "unknown-class" and (m := re.match(r"class '([^']*)'", p.detail))]
        if unknown:
            # a class named otherwise (ship for vessel): mapping it keeps the labels, skipping drops them
            hints["unknown-class"] = (f"map label classes to the model's with --class-map {unknown[0]}={options.classes[0]} "
                                      "(config labels.class_map)")
        summary = problem_summary(result.problems, hints=hints)
        raise LabelError(result.problems[0].source, f"{summary}; {_SKIP_HINT}")
    return result


def problem_summary(
    problems: Sequence[LabelProblem], limit: int = 3, hints: dict[str, str] | None = None
) -> str:
    """One line summing up ``problems`` by kind, with counts and up to ``limit`` examples each.

    For example ``2 labels outside every image (feature 4, feature 9); 1 invalid geometry
    (feature 12: Self-intersection[5 5])``. Examples name the file too when the problems
    come from more than one file. ``hints`` replaces the what-to-do text of some kinds
    (``{"outside": "the 2 scenes cover lon ..."}``).
    """
    if not problems:
        return "no label problems"
    several_files = len({p.source for p in problems}) > 1
    groups: dict[str, list[LabelProblem]] = {}
    for problem in problems:
        groups.setdefault(problem.kind, []).append(problem)
    parts = []
    for kind, group in groups.items():
        one, many, show_detail, hint = _KIND_TEXT.get(kind, (f"{kind} problem", f"{kind} problems", True, ""))
        hint = (hints or {}).get(kind, hint)
        examples: list[str] = []
        for p in group:
            text = f"{Path(p.source).name} {p.item}" if several_files else p.item
            if show_detail and p.detail:
                text += f": {p.detail}"
            if text not in examples:
                examples.append(text)
        shown = ", ".join(examples[:limit])
        if len(examples) > limit:
            shown += f", and {len(examples) - limit} more"
        part = f"{len(group)} {one if len(group) == 1 else many} ({shown})"
        parts.append(f"{part}: {hint}" if hint else part)
    return "; ".join(parts)


class _BadLabelError(Exception):
    """A label cannot be used: ``kind`` and ``detail`` of its :class:`LabelProblem`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class _Candidate:
    """A parsed GeoJSON label waiting to be placed on the scenes."""

    ordinal: int
    item: str
    #: ``positive`` or ``negative``.
    role: str
    #: Class index for positives, -1 for negatives.
    class_index: int
    #: Points get a box of ``point_box_m`` metres; polygons the box of their vertices.
    is_point: bool
    #: Vertices in the label CRS (x is longitude for lon/lat).
    xs: np.ndarray
    ys: np.ndarray


class _Accumulator:
    """Boxes, negatives, problems and counts gathered over all label files."""

    def __init__(self, scenes: Sequence[Scene], classes: Sequence[str]) -> None:
        self.scenes = list(scenes)
        self.classes = tuple(classes)
        self.boxes: list[list[list[float]]] = [[] for _ in self.scenes]
        self.labels: list[list[int]] = [[] for _ in self.scenes]
        self.negatives: list[list[list[float]]] = [[] for _ in self.scenes]
        self.problems: list[tuple[int, int, LabelProblem]] = []
        self.counts: dict[str, int] = {"features": 0, "positives": 0, "negatives": 0, "unused": 0, "problems": 0}
        #: Some GeoJSON label fell outside every scene (the error then gives the scenes' extent).
        self.outside_lonlat = False
        for name in self.classes:
            self.counts[f"class:{name}"] = 0

    def problem(self, file_index: int, ordinal: int, problem: LabelProblem) -> None:
        """Record a problem; ``file_index`` and ``ordinal`` keep the report in file order."""
        self.problems.append((file_index, ordinal, problem))

    def positive(self, class_index: int, boxes: Sequence[tuple[int, Sequence[float]]]) -> None:
        """Record one positive label as ``(scene index, box)`` pairs (one per scene it is on)."""
        self.counts["positives"] += 1
        self.counts[f"class:{self.classes[class_index]}"] += 1
        for scene_index, box in boxes:
            scene = self.scenes[scene_index]
            x0, y0, x1, y1 = (float(v) for v in box)
            clipped = [
                min(max(x0, 0.0), scene.width),
                min(max(y0, 0.0), scene.height),
                min(max(x1, 0.0), scene.width),
                min(max(y1, 0.0), scene.height),
            ]
            self.boxes[scene_index].append(clipped)
            self.labels[scene_index].append(class_index)

    def negative(self, centres: Sequence[tuple[int, Sequence[float]]]) -> None:
        """Record one hard negative as ``(scene index, (col, row))`` pairs."""
        self.counts["negatives"] += 1
        for scene_index, (col, row) in centres:
            self.negatives[scene_index].append([float(col), float(row)])

    def result(self) -> LabelSet:
        """The :class:`LabelSet` of everything recorded."""
        problems = [p for _, _, p in sorted(self.problems, key=lambda t: (t[0], t[1]))]
        self.counts["problems"] = len(problems)
        scenes = [
            SceneLabels(
                scene=scene,
                boxes=np.array(self.boxes[i], dtype=float).reshape(-1, 4),
                labels=np.array(self.labels[i], dtype=np.int64).reshape(-1),
                negatives=np.array(self.negatives[i], dtype=float).reshape(-1, 2),
            )
            for i, scene in enumerate(self.scenes)
        ]
        return LabelSet(scenes=scenes, problems=problems, counts=dict(self.counts))


def _check_options(options: LabelOptions) -> None:
    if not options.classes:
        raise UsageError("labels need the model's class names (LabelOptions.classes is empty)")
    if not (options.point_box_m > 0 and math.isfinite(options.point_box_m)):
        raise UsageError(f"labels.point_box_m must be a positive number of metres, got {options.point_box_m!r}")
    if options.crs is not None:
        why = _unusable_crs(options.crs)
        if why:
            raise UsageError(f"labels.crs / --labels-crs {_quote(options.crs)}: {why}; use e.g. 'EPSG:32643'")


@lru_cache(maxsize=64)
def _unusable_crs(name: str) -> str:
    """Why ``name`` cannot be the CRS of label coordinates, or ``""`` when it can."""
    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        return "not a CRS pyproj understands"
    if not (crs.is_geographic or crs.is_projected):
        return f"a {crs.type_name}, not a geographic or projected CRS"
    try:
        Transformer.from_crs(crs, CRS.from_user_input(LONLAT), always_xy=True)
    except ProjError:
        return "pyproj cannot transform it to lon/lat"
    return ""


def _short(value: Any, limit: int = 60) -> str:
    """``value`` (a file's id, class or type) as one short line for a message.

    Whitespace (newlines too) becomes single spaces and long text is cut; JSON arrays and
    objects are named, not printed (they can be huge or nested too deep to print).
    """
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(value: Any) -> str:
    """Like :func:`_short`, but text is quoted (``'ship'``) so it reads as a value from the file."""
    return _short(repr(value)) if isinstance(value, str) else _short(value)


def _load_json(path: str | Path) -> Any:
    """Parse a label file as JSON, or raise :class:`LabelError` saying why it cannot be."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise LabelError(path, "no such label file; check the path") from None
    except OSError as exc:
        raise LabelError(path, f"cannot be read ({exc.strerror or exc}); check the path and permissions") from None
    advice = "labels must be GeoJSON or COCO JSON files"
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise LabelError(path, f"not JSON (not UTF-8 text); {advice}") from None
    except json.JSONDecodeError as exc:
        raise LabelError(path, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {advice}") from None
    except RecursionError:
        raise LabelError(path, f"JSON nested too deeply to read; {advice}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise LabelError(path, f"JSON that cannot be read ({_short(exc, 100)}); {advice}") from None


def _is_coco(doc: Any) -> bool:
    return isinstance(doc, dict) and "images" in doc and "annotations" in doc


def _geojson_features(path: str | Path, doc: Any) -> list[Any]:
    """The features of a GeoJSON FeatureCollection or single Feature."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise LabelError(path, "GeoJSON FeatureCollection has no 'features' list; export the labels again")
        if not features:
            raise LabelError(path, "GeoJSON FeatureCollection has no features; label some objects or leave the file out")
        return features
    if kind == "Feature":
        return [doc]
    if isinstance(doc, dict):
        found = f"an object of type {_quote(kind)}" if isinstance(kind, str) else "an object with no 'type'"
    else:
        found = f"a JSON {type(doc).__name__}"
    raise LabelError(
        path,
        f"JSON but neither GeoJSON (a FeatureCollection or Feature) nor COCO (with 'images' and "
        f"'annotations'): it is {found}; export the labels as GeoJSON or COCO JSON",
    )


def _label_crs(path: str | Path, doc: dict[str, Any], options: LabelOptions) -> str:
    """The CRS of a GeoJSON file's coordinates: ``options.crs``, its legacy ``crs`` member, or lon/lat."""
    if options.crs is not None:
        return options.crs
    legacy = doc.get("crs")
    if legacy is None:
        return LONLAT
    name = None
    if isinstance(legacy, dict) and legacy.get("type") == "name" and isinstance(legacy.get("properties"), dict):
        name = legacy["properties"].get("name")
    if not isinstance(name, str):
        raise LabelError(
            path,
            "has a 'crs' member sitewatch cannot read; use "
            '{"type": "name", "properties": {"name": "EPSG:32643"}}, or remove it and set labels.crs / --labels-crs',
        )
    why = _unusable_crs(name)
    if why == "not a CRS pyproj understands":
        why = "which pyproj does not understand"
    if why:
        raise LabelError(
            path,
            f"declares CRS {_quote(name)}, {why}; fix it (e.g. 'EPSG:32643') or set labels.crs / --labels-crs",
        )
    return name


@lru_cache(maxsize=64)
def _is_geographic(crs: str) -> bool:
    return bool(CRS.from_user_input(crs).is_geographic)


@lru_cache(maxsize=64)
def _transformer(src: str, dst_wkt: str) -> Transformer:
    """Label CRS -> scene CRS, x/y (lon/lat) order on both sides."""
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst_wkt), always_xy=True)


def _feature_item(feature: Any, ordinal: int) -> str:
    """``feature id=k-7`` when the feature has an id, else ``feature N`` (1-based position)."""
    fid = feature.get("id") if isinstance(feature, dict) else None
    if isinstance(fid, str | int | float) and not isinstance(fid, bool) and str(fid).strip():
        return f"feature id={_short(fid, 40)}"
    return f"feature {ordinal}"


def _read_geojson(
    path: str | Path,
    file_index: int,
    features: list[Any],
    crs: str,
    scenes: Sequence[Scene],
    options: LabelOptions,
    acc: _Accumulator,
) -> None:
    """Parse every feature of one GeoJSON file, then place the good ones on the scenes.

    Raises:
        LabelError: every feature parsed but lies outside every scene, and
            ``options.skip_problems`` is false: the file does not belong to these scenes
            (the message gives the labels' and the scenes' extents).
    """
    geographic = _is_geographic(crs)
    candidates = []
    bad_features = 0
    for ordinal, feature in enumerate(features, start=1):
        acc.counts["features"] += 1
        item = _feature_item(feature, ordinal)
        try:
            candidate = _parse_feature(feature, ordinal, item, geographic, options)
        except _BadLabelError as bad:
            acc.problem(file_index, ordinal, LabelProblem(bad.kind, str(path), item, bad.detail))
            bad_features += 1
            continue
        if candidate is None:
            acc.counts["unused"] += 1
        else:
            candidates.append(candidate)
    outside = _place(path, file_index, candidates, crs, geographic, scenes, options, acc)
    if candidates and outside == len(candidates) and not bad_features and not options.skip_problems:
        raise LabelError(path, _off_every_scene(candidates, crs, scenes))


def _count(n: int, noun: str) -> str:
    """``1 label``, ``3 labels``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _span(xs: np.ndarray, ys: np.ndarray) -> str:
    """``lon 15.00000..15.00880, lat 43.33160..43.33750`` of lon/lat arrays."""
    return f"lon {xs.min():.5f}..{xs.max():.5f}, lat {ys.min():.5f}..{ys.max():.5f}"


def _scenes_extent(scenes: Sequence[Scene]) -> str:
    """The lon/lat box of all ``scenes`` (their corners), for messages."""
    if not scenes:
        return "nothing (no scenes)"
    lons, lats = [], []
    for scene in scenes:
        cols = np.array([0.0, scene.width, 0.0, scene.width])
        rows = np.array([0.0, 0.0, scene.height, scene.height])
        with np.errstate(invalid="ignore", over="ignore"):
            lon, lat = to_lonlat(scene.crs_wkt, *pixel_to_map(scene.affine, cols, rows))
        lons.append(lon)
        lats.append(lat)
    return _span(np.concatenate(lons), np.concatenate(lats))


def _scenes_epsg(scenes: Sequence[Scene]) -> str | None:
    """``EPSG:32633`` when every scene is in that one projected CRS, else ``None``."""
    codes = set()
    for scene in scenes:
        crs = CRS.from_user_input(scene.crs_wkt)
        code = crs.to_epsg() if crs.is_projected else None
        codes.add(f"EPSG:{code}" if code else None)
    return codes.pop() if len(codes) == 1 else None


def _off_every_scene(candidates: Sequence[_Candidate], crs: str, scenes: Sequence[Scene]) -> str:
    """The message of a GeoJSON file none of whose labels is on any scene."""
    xs = np.concatenate([c.xs for c in candidates])
    ys = np.concatenate([c.ys for c in candidates])
    with np.errstate(invalid="ignore", over="ignore"):
        lon, lat = _transformer(crs, LONLAT).transform(xs, ys)
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    if np.isfinite(lon).all() and np.isfinite(lat).all():
        labels = _span(lon, lat)
    else:
        labels = f"x {xs.min():.7g}..{xs.max():.7g}, y {ys.min():.7g}..{ys.max():.7g} in {_quote(crs)}"
    n, k = len(candidates), len(scenes)
    which = "its label lies" if n == 1 else f"all {n} of its labels lie"
    return (
        f"{which} outside every image: the {'label spans' if n == 1 else 'labels span'} {labels}, "
        f"the {_count(k, 'scene')} {'covers' if k == 1 else 'cover'} {_scenes_extent(scenes)}; check that the file "
        "belongs to these images and that its coordinates are lon/lat (or its CRS is declared), or leave it out"
    )


def _parse_feature(
    feature: Any, ordinal: int, item: str, geographic: bool, options: LabelOptions
) -> _Candidate | None:
    """Check one feature; ``None`` for a review candidate left unused. Raises :class:`_BadLabelError`."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise _BadLabelError("invalid-geometry", "not a GeoJSON Feature object")
    props = feature.get("properties")
    props = props if isinstance(props, dict) else {}
    role = _review_role(props)
    if role == "unused":
        return None
    is_point, xs, ys = _vertices(feature.get("geometry"))
    if geographic:
        _check_lonlat(xs, ys)
    class_index = _class_index(props, options) if role == "positive" else -1
    return _Candidate(ordinal, item, role, class_index, is_point, xs, ys)


def _check_lonlat(xs: np.ndarray, ys: np.ndarray) -> None:
    """Raise :class:`_BadLabelError` unless every vertex ``(x, y)`` is a longitude and latitude.

    Vertices beyond the lon/lat range are read as swapped (every ``|x| <= 90`` while some
    ``|y| > 90``: lat, lon order), as projected metres (some value beyond
    ``_PROJECTED_ABOVE``), or else as plainly out of range.
    """
    ax, ay = np.abs(xs), np.abs(ys)
    if ax.max() <= 180 and ay.max() <= 90:
        return
    worst = int(np.argmax(np.maximum(ax - 180, ay - 90)))
    example = f"coordinates like {xs[worst]:.7g}, {ys[worst]:.7g}"
    if ax.max() <= 90 and ay.max() <= 180:
        raise _BadLabelError("swapped-coordinates", f"{example}: {_SWAPPED}")
    if max(ax.max(), ay.max()) > _PROJECTED_ABOVE:
        raise _BadLabelError("crs-mismatch", f"{example} are not lon/lat; they look like projected metres")
    raise _BadLabelError("out-of-range", example)


def _review_role(props: dict[str, Any]) -> str:
    """``positive``, ``negative`` or ``unused`` from a review export's ``status`` (none: positive)."""
    if "status" not in props:
        return "positive"
    status = props["status"]
    role = REVIEW_STATUSES.get(status.strip().lower()) if isinstance(status, str) else None
    if role is None:
        raise _BadLabelError("invalid-status", f"status {_quote(status)}")
    return role


def _class_index(props: dict[str, Any], options: LabelOptions) -> int:
    """Index into ``options.classes`` of a feature's class property (case-insensitive)."""
    name = props.get(options.class_property)
    if name is None or (isinstance(name, str) and not name.strip()):
        if len(options.classes) == 1:
            return 0
        raise _BadLabelError(
            "missing-class", f"no {options.class_property!r} property (classes: {', '.join(options.classes)})"
        )
    if not isinstance(name, str | int | float) or isinstance(name, bool):
        raise _BadLabelError(
            "unknown-class",
            f"{options.class_property!r} is {_short(name)}, not a class name (known: {', '.join(options.classes)})",
        )
    return _match_class(str(name), options.classes, options.class_map)


def _match_class(name: str, classes: Sequence[str], class_map: tuple[tuple[str, str], ...] = ()) -> int:
    wanted = name.strip().casefold()
    for source, target in class_map:
        if source.strip().casefold() == wanted:
            wanted = target.strip().casefold()
            break
    for index, known in enumerate(classes):
        if known.casefold() == wanted:
            return index
    raise _BadLabelError("unknown-class", f"class {_quote(name)} (known: {', '.join(classes)})")


def _position(value: Any, where: str) -> tuple[float, float]:
    """``(x, y)`` of a GeoJSON position (extra values such as height are ignored)."""
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2])
    ):
        raise _BadLabelError("invalid-geometry", f"{where} is not a position [x, y]")
    try:
        x, y = float(value[0]), float(value[1])
    except OverflowError:  # an integer too large for a float
        x = y = math.inf
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _BadLabelError("invalid-geometry", f"{where} is not finite (NaN, Infinity or too large a number)")
    return x, y


def _rings(polygon: Any, where: str) -> list[tuple[float, float]]:
    """All positions of a Polygon's coordinates, checking each ring is closed and has 4+ positions."""
    if not isinstance(polygon, list) or not polygon:
        raise _BadLabelError("invalid-geometry", f"{where or 'polygon '}has no rings")
    out: list[tuple[float, float]] = []
    for r, ring in enumerate(polygon, start=1):
        name = f"{where}ring {r}"
        if not isinstance(ring, list):
            raise _BadLabelError("invalid-geometry", f"{name} is not a list of positions")
        points = [_position(v, f"{name} position {k}") for k, v in enumerate(ring, start=1)]
        if len(points) < 4:
            raise _BadLabelError("invalid-geometry", f"{name} has {len(points)} positions; a ring needs at least 4")
        if points[0] != points[-1]:
            raise _BadLabelError("invalid-geometry", f"{name} is not closed (its first and last positions differ)")
        out.extend(points)
    return out


def _vertices(geometry: Any) -> tuple[bool, np.ndarray, np.ndarray]:
    """``(is_point, xs, ys)`` of a Point/MultiPoint/Polygon/MultiPolygon; raises :class:`_BadLabelError`."""
    if geometry is None:
        raise _BadLabelError("null-geometry", "feature has no geometry")
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        raise _BadLabelError("invalid-geometry", "geometry is not a GeoJSON geometry object")
    kind = geometry["type"]
    coords = geometry.get("coordinates")
    if kind == "Point":
        points = [_position(coords, "point")]
    elif kind == "MultiPoint":
        if not isinstance(coords, list) or not coords:
            raise _BadLabelError("invalid-geometry", "MultiPoint has no points")
        points = [_position(v, f"point {k}") for k, v in enumerate(coords, start=1)]
    elif kind == "Polygon":
        points = _rings(coords, "")
    elif kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise _BadLabelError("invalid-geometry", "MultiPolygon has no polygons")
        points = [p for k, poly in enumerate(coords, start=1) for p in _rings(poly, f"polygon {k} ")]
    else:
        raise _BadLabelError("unsupported-geometry", _short(kind))
    if kind in ("Polygon", "MultiPolygon"):
        try:
            # Shapely's numpy ufuncs warn about overflow on huge coordinates: nothing to print.
            with np.errstate(all="ignore"):
                geom = shapely_shape(geometry)
                valid = bool(geom.is_valid)
                reason = "" if valid else explain_validity(geom)
        except (ShapelyError, ValueError, TypeError) as exc:
            valid, reason = False, str(exc)
        if not valid:
            raise _BadLabelError("invalid-geometry", _short(reason, 100))
    xy = np.array(points, dtype=float).reshape(-1, 2)
    return kind in ("Point", "MultiPoint"), xy[:, 0], xy[:, 1]


def _pixel_boxes(
    candidates: Sequence[_Candidate], crs: str, scene: Scene, point_box_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes ``(n, 4)`` and box centres ``(n, 2)`` of ``candidates`` on ``scene``'s grid.

    Vertices that cannot be transformed give NaN, so such labels are on no scene.
    """
    sizes = np.array([len(c.xs) for c in candidates])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    xs = np.concatenate([c.xs for c in candidates])
    ys = np.concatenate([c.ys for c in candidates])
    with np.errstate(invalid="ignore", over="ignore"):
        mx, my = _transformer(crs, scene.crs_wkt).transform(xs, ys)
        cols, rows = map_to_pixel(scene.affine, np.asarray(mx, dtype=float), np.asarray(my, dtype=float))
    bad = ~(np.isfinite(cols) & np.isfinite(rows))
    cols[bad] = np.nan
    rows[bad] = np.nan
    # Box of the vertices alone: its centre decides which scenes a label is on.
    c0, c1 = np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts)
    r0, r1 = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
    centres = np.stack([(c0 + c1) / 2, (r0 + r1) / 2], axis=1)
    half_c = np.zeros_like(cols)
    half_r = np.zeros_like(rows)
    point = np.repeat([c.is_point for c in candidates], sizes)
    if point.any():
        half_c[point], half_r[point] = _half_box_px(scene, cols[point], rows[point], point_box_m)
    boxes = np.stack(
        [
            np.minimum.reduceat(cols - half_c, starts),
            np.minimum.reduceat(rows - half_r, starts),
            np.maximum.reduceat(cols + half_c, starts),
            np.maximum.reduceat(rows + half_r, starts),
        ],
        axis=1,
    )
    return boxes, centres


def _half_box_px(scene: Scene, cols: np.ndarray, rows: np.ndarray, side_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Half of ``side_m`` metres in pixel columns and rows at each ``(col, row)``.

    The ground size of a pixel is measured between its neighbours half a pixel either
    side, taken to lon/lat, so projected (Web Mercator too) and geographic grids work.
    """

    def metres_per_step(dc: float, dr: float) -> np.ndarray:
        xa, ya = pixel_to_map(scene.affine, cols - dc, rows - dr)
        xb, yb = pixel_to_map(scene.affine, cols + dc, rows + dr)
        lon_a, lat_a = to_lonlat(scene.crs_wkt, xa, ya)
        lon_b, lat_b = to_lonlat(scene.crs_wkt, xb, yb)
        return np.asarray(ground_distance_m(lon_a, lat_a, lon_b, lat_b), dtype=float)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        per_col = metres_per_step(0.5, 0.0)
        per_row = metres_per_step(0.0, 0.5)
        half_c = np.where(per_col > 0, side_m / 2 / per_col, np.nan)
        half_r = np.where(per_row > 0, side_m / 2 / per_row, np.nan)
    return half_c, half_r


def _locate(
    candidates: Sequence[_Candidate], crs: str, scenes: Sequence[Scene], point_box_m: float
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Which scenes hold each candidate's box centre ``(n, scenes)``, with boxes and centres per scene."""
    inside = np.zeros((len(candidates), len(scenes)), dtype=bool)
    boxes_per_scene, centres_per_scene = [], []
    for j, scene in enumerate(scenes):
        boxes, centres = _pixel_boxes(candidates, crs, scene, point_box_m)
        with np.errstate(invalid="ignore"):
            inside[:, j] = (
                (centres[:, 0] >= 0)
                & (centres[:, 0] < scene.width)
                & (centres[:, 1] >= 0)
                & (centres[:, 1] < scene.height)
                & np.isfinite(boxes).all(axis=1)
            )
        boxes_per_scene.append(boxes)
        centres_per_scene.append(centres)
    return inside, boxes_per_scene, centres_per_scene


def _place(
    path: str | Path,
    file_index: int,
    candidates: list[_Candidate],
    crs: str,
    geographic: bool,
    scenes: Sequence[Scene],
    options: LabelOptions,
    acc: _Accumulator,
) -> int:
    """Put each candidate on every scene that holds its box centre, or report why it is on none.

    Returns:
        How many candidates are on no scene (and do not look swapped either).
    """
    if not candidates:
        return 0
    inside, boxes, centres = _locate(candidates, crs, scenes, options.point_box_m)
    nowhere = np.flatnonzero(~inside.any(axis=1))
    swapped: set[int] = set()
    if geographic and len(nowhere) and scenes:
        # Valid lon/lat that lands nowhere: would lat,lon -> lon,lat land somewhere?
        flippable = [i for i in nowhere if np.abs(candidates[i].xs).max() <= 90]
        if flippable:
            flipped = [
                _Candidate(c.ordinal, c.item, c.role, c.class_index, c.is_point, c.ys, c.xs)
                for c in (candidates[i] for i in flippable)
            ]
            flipped_inside, _, _ = _locate(flipped, crs, scenes, options.point_box_m)
            swapped = {i for i, hit in zip(flippable, flipped_inside.any(axis=1), strict=True) if hit}
    outside = 0
    for i, cand in enumerate(candidates):
        on = np.flatnonzero(inside[i])
        if not len(on):
            if i in swapped:
                problem = LabelProblem("swapped-coordinates", str(path), cand.item, _SWAPPED)
            else:
                outside += 1
                acc.outside_lonlat = True
                cx = cand.xs.min() / 2 + cand.xs.max() / 2  # halves first: no overflow
                cy = cand.ys.min() / 2 + cand.ys.max() / 2
                problem = LabelProblem(
                    "outside", str(path), cand.item, f"centre {cx:.7g}, {cy:.7g} lies in none of the {len(scenes)} scenes"
                )
            acc.problem(file_index, cand.ordinal, problem)
        elif cand.role == "positive":
            acc.positive(cand.class_index, [(int(j), boxes[j][i]) for j in on])
        else:
            acc.negative([(int(j), centres[j][i]) for j in on])
    return outside


def _read_coco_file(
    path: str | Path, file_index: int, doc: Any, scenes: Sequence[Scene], options: LabelOptions, acc: _Accumulator
) -> None:
    """Read a COCO file (``doc``, its parsed JSON): bind its images to scenes and check every box."""
    try:
        images = parse_coco(path, doc)
    except InputError as exc:
        raise LabelError(path, f"{exc.reason}; export it again as COCO detection JSON") from None
    ordinal = 0
    for image in images:
        scene_index, why = _bind_image(image.file_name, scenes, options.coco_bind)
        image_problem = "unmatched-image" if scene_index is None else ""
        if scene_index is not None:
            scene = scenes[scene_index]
            if (image.width, image.height) != (scene.width, scene.height):
                image_problem = "size-mismatch"
                why = f"{image.width}x{image.height} in the COCO file, scene {scene.name} is {scene.width}x{scene.height}"
        for box, name, ann_id in zip(image.boxes, image.classes, image.annotation_ids, strict=True):
            ordinal += 1
            acc.counts["features"] += 1
            if image_problem or scene_index is None:
                problem = LabelProblem(image_problem, str(path), f"image {_short(image.file_name)}", why)
                acc.problem(file_index, ordinal, problem)
                continue
            item = f"annotation {_short(ann_id, 40)}"
            try:
                class_index = _check_coco_box(box, name, scenes[scene_index], options)
            except _BadLabelError as bad:
                acc.problem(file_index, ordinal, LabelProblem(bad.kind, str(path), item, bad.detail))
                continue
            acc.positive(class_index, [(scene_index, box)])


def _check_coco_box(box: np.ndarray, name: str, scene: Scene, options: LabelOptions) -> int:
    """Class index of a COCO box ``x0, y0, x1, y1`` on ``scene``; raises :class:`_BadLabelError`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if not (np.isfinite(box).all() and w > 0 and h > 0):
        raise _BadLabelError("invalid-geometry", f"box [{x0:g}, {y0:g}, {w:g}, {h:g}] has no area")
    if x1 <= 0 or y1 <= 0 or x0 >= scene.width or y0 >= scene.height:
        raise _BadLabelError("outside", f"box [{x0:g}, {y0:g}, {w:g}, {h:g}] is outside the {scene.width}x{scene.height} image")
    return _match_class(name, options.classes, options.class_map)


def _bind_image(
    file_name: str, scenes: Sequence[Scene], coco_bind: Sequence[tuple[str, str]]
) -> tuple[int | None, str]:
    """Index of the scene a COCO image belongs to, or ``None`` and why it has none.

    ``coco_bind`` (by full ``file_name`` or its base name) comes first; then, case-insensitively
    and in this order: the scene file's name, its stem, the scene's name equal to the image
    stem, to the stem without its last ``_``/``-`` part (``los_angeles_rgb`` is ``los_angeles``),
    or to the stem's part before the first ``_`` or ``-``.
    """
    base = re.split(r"[\\/]", file_name)[-1]
    bound = dict(coco_bind)
    target = bound.get(file_name, bound.get(base))
    if target is not None:
        for i, scene in enumerate(scenes):
            if scene.source == target or Path(scene.source).resolve() == Path(target).resolve():
                return i, ""
        return None, f"labels.coco_bind maps it to {target}, not one of the scenes"
    stem = Path(base).stem.casefold()
    prefix = re.split(r"[_-]", stem, maxsplit=1)[0]
    head = re.split(r"[_-](?=[^_-]*$)", stem, maxsplit=1)[0]
    tests = (
        lambda s: Path(s.source).name.casefold() == base.casefold(),
        lambda s: Path(s.source).stem.casefold() == stem,
        lambda s: s.name.casefold() == stem,
        lambda s: s.name.casefold() == head,
        lambda s: s.name.casefold() == prefix,
    )
    for test in tests:
        hits = [i for i, s in enumerate(scenes) if test(s)]
        if len(hits) == 1:
            return hits[0], ""
        if len(hits) > 1:
            names = ", ".join(scenes[i].source for i in hits[:4])
            return None, f"matches several scenes ({names})"
    names = ", ".join(s.name for s in scenes[:5]) + (", ..." if len(scenes) > 5 else "")
    return None, f"no scene of that name (scenes: {names or 'none'})"


def expand_label_files(items: Sequence[str]) -> list[str]:
    """Label file paths, with quoted globs (``'kilns/*/labels.geojson'``) expanded in sorted order.

    Raises:
        InputError: a glob matches nothing.
    """
    out: list[str] = []
    for item in items:
        if any(ch in str(item) for ch in "*?["):
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise InputError(item, "matches no label files; check the path or the glob")
            out += matches
        else:
            out.append(str(item))
    return list(dict.fromkeys(out))
