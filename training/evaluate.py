"""Score detections against labels: precision, recall, F1 and average precision.

Each detection is matched one-to-one to a label of its own class, greedily by descending
score (:mod:`sitewatch.imagery.candidates.matching`), under two criteria side by side:

* ``iou``: the boxes overlap with an IoU of at least :attr:`EvalSettings.iou` (scene pixels);
* ``distance``: the box centres lie within :attr:`EvalSettings.distance_m` ground metres
  (east/north metres around the scene centre, from both centres' longitude and latitude).

TP/FP/FN, precision, recall and F1 are taken at the operating score threshold; average
precision (all-point interpolated, as PASCAL VOC 2010 and later) and the precision-recall
curves rank every detection given, those under the threshold included. Figures are given
per class pooled over scenes, per scene and class, and over all classes (``totals``; their
``mean_ap`` is the mean of the per-class APs).

:func:`run_evaluation` is the whole of ``sitewatch evaluate``: detect with the real
pipeline, read the labels, :func:`evaluate`, :func:`write_evaluation`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sitewatch.imagery.candidates.matching import Counts, counts_at, match_boxes, match_centres
from sitewatch.imagery.detect.outputs import Staging, out_dir_exists
from sitewatch.imagery.detect.report import ccw_rings
from sitewatch.imagery.errors import OutputError, UsageError
from sitewatch.imagery.scenes.georef import local_metres, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import Scene

if TYPE_CHECKING:
    from sitewatch.imagery.detect.pipeline import DetectSettings, Plan
    from sitewatch.training.labels import SceneLabels

#: The matching criteria, in the order they are reported.
CRITERIA: tuple[str, ...] = ("iou", "distance")

METRICS_FILE = "metrics.json"
PR_CURVE_FILE = "pr_curve.png"
FALSE_POSITIVES_FILE = "false_positives.geojson"
FALSE_NEGATIVES_FILE = "false_negatives.geojson"
#: Files :func:`write_evaluation` writes; ``metrics.json`` goes last and marks a complete set.
EVAL_FILES: tuple[str, ...] = (FALSE_POSITIVES_FILE, FALSE_NEGATIVES_FILE, PR_CURVE_FILE, METRICS_FILE)
#: Subdirectory of ``--out`` that holds the detection run (``sitewatch detect`` outputs).
DETECTIONS_DIR = "detections"
#: Highest score threshold the detection run uses, so that AP ranks low-scoring detections too.
AP_SCORE_FLOOR = 0.05


#: Score thresholds of the sweep in ``metrics.json`` (``by_threshold``).
SWEEP = tuple(round(float(t), 2) for t in np.arange(0.1, 0.91, 0.05))


@dataclass(frozen=True)
class EvalSettings:
    """How detections are matched to labels, and at which score they count.

    Raises:
        UsageError: a value is out of range (the message names the CLI flag).
    """

    #: Smallest box IoU (pixel space) of a match under the ``iou`` criterion.
    iou: float = 0.3
    #: Largest centre distance in ground metres of a match under the ``distance`` criterion.
    distance_m: float = 30.0
    #: Criterion that decides the false-positive/false-negative files and the headline.
    primary: str = "iou"
    #: Operating score threshold; ``None`` means the model's.
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.iou <= 1.0:
            raise UsageError(f"--iou {self.iou}: must be above 0 and at most 1")
        if not (math.isfinite(self.distance_m) and self.distance_m > 0.0):
            raise UsageError(f"--distance-m {self.distance_m}: must be a positive number of metres")
        if self.primary not in CRITERIA:
            raise UsageError(f"--primary {self.primary}: use one of {', '.join(CRITERIA)}")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise UsageError(f"--score-threshold {self.score_threshold}: must be between 0 and 1")

    def describe(self, criterion: str) -> str:
        """Short human description of a criterion, e.g. ``IoU >= 0.3``."""
        return f"IoU >= {self.iou:g}" if criterion == "iou" else f"centre <= {self.distance_m:g} m"


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall after each detection, by descending score."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists rounded to 6 decimals (JSON-safe)."""
        return {k: np.round(getattr(self, k).astype(float), 6).tolist() for k in ("scores", "precision", "recall")}


def pr_curve(scores: np.ndarray, is_tp: np.ndarray, n_labels: int) -> PRCurve:
    """Precision and recall at each rank of ``scores`` (descending, stable for ties).

    ``is_tp`` marks the detections matched to a label; recall is 0 without labels.
    """
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    hits = np.asarray(is_tp, dtype=bool)[order]
    tp = np.cumsum(hits)
    ranks = np.arange(1, len(hits) + 1)
    precision = tp / ranks
    recall = tp / n_labels if n_labels else np.zeros(len(hits))
    return PRCurve(np.asarray(scores, dtype=float)[order], precision.astype(float), recall.astype(float))


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_labels: int) -> float | None:
    """All-point interpolated average precision (PASCAL VOC 2010+); ``None`` without labels.

    The area under the precision-recall curve after making precision monotonically
    non-increasing (each point takes the best precision at any higher recall).
    """
    if n_labels == 0:
        return None
    c = pr_curve(scores, is_tp, n_labels)
    rec = np.concatenate([[0.0], c.recall, [1.0]])
    pre = np.concatenate([[0.0], c.precision, [0.0]])
    pre = np.maximum.accumulate(pre[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * pre[steps + 1]))


@dataclass(frozen=True)
class Metrics:
    """Figures of one class (or of all classes) under one criterion."""

    #: TP/FP/FN of the detections scoring at least the operating threshold.
    counts: Counts
    #: Labels (ground-truth objects).
    labels: int
    #: Detections ranked for AP: every one given, whatever its score.
    detections_ranked: int
    #: Average precision; for totals the mean over classes that have labels. ``None``: no labels.
    ap: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe figures."""
        return {**self.counts.as_dict(), "ap": self.ap, "labels": self.labels,
                "detections_ranked": self.detections_ranked}


@dataclass(frozen=True)
class SceneMetrics:
    """Figures of one scene: per class and over its classes, per criterion."""

    scene: str
    source: str
    per_class: dict[str, dict[str, Metrics]]
    totals: dict[str, Metrics]


@dataclass(frozen=True)
class Miss:
    """A false positive (a detection, with its score) or a false negative (a label)."""

    scene: str
    cls: str
    #: Closed counter-clockwise lon/lat ring ``(5, 2)`` of the box.
    ring: np.ndarray
    score: float | None = None


@dataclass(frozen=True)
class PlaceMetrics:
    """Figures of one class by place: overlapping scenes merged, each object counted once.

    Tiles cut with overlap, or scenes of one place on several dates, show an object more
    than once; per-scene figures count it in each. Here every label and detection is
    taken to lon/lat, labels closer than half the match distance are one object, and
    detections closer than the match distance are one (its best score), before matching
    by centre distance.
    """

    counts: Counts
    #: Distinct labelled objects.
    labels: int
    #: Distinct detections (any score).
    detections: int
    #: Score threshold -> counts (the sweep, as :attr:`EvalReport.by_threshold`).
    by_threshold: dict[float, Counts]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe figures."""
        return {**self.counts.as_dict(), "labels": self.labels, "detections": self.detections,
                "by_threshold": {f"{t:.2f}": c.as_dict() for t, c in self.by_threshold.items()}}


@dataclass
class EvalReport:
    """The outcome of :func:`evaluate`."""

    classes: tuple[str, ...]
    settings: EvalSettings
    #: Operating score threshold of the counts and the FP/FN lists.
    threshold: float
    #: class -> criterion -> figures pooled over scenes.
    per_class: dict[str, dict[str, Metrics]]
    per_scene: list[SceneMetrics]
    #: criterion -> figures over every class and scene (``ap`` is the mean of the class APs).
    totals: dict[str, Metrics]
    #: class -> criterion -> precision-recall curve pooled over scenes.
    curves: dict[str, dict[str, PRCurve]]
    #: criterion -> unmatched detections scoring at least ``threshold``.
    false_positives: dict[str, list[Miss]]
    #: criterion -> labels matched by no detection scoring at least ``threshold``.
    false_negatives: dict[str, list[Miss]]
    #: criterion -> score threshold -> counts over every class and scene (to choose a threshold).
    by_threshold: dict[str, dict[float, Counts]] = field(default_factory=dict)
    #: class -> figures by place (centre distance, overlapping scenes merged).
    places: dict[str, PlaceMetrics] = field(default_factory=dict)
    #: Provenance added by :func:`run_evaluation` (model, inputs, labels); JSON-safe.
    meta: dict[str, Any] = field(default_factory=dict)

    def best_threshold(self, crit: str | None = None) -> tuple[float, Counts] | None:
        """The swept threshold with the best F1 under ``crit`` (default: the primary criterion)."""
        sweep = self.by_threshold.get(crit or self.settings.primary, {})
        if not sweep:
            return None
        t = max(sweep, key=lambda k: (sweep[k].f1, -k))
        return t, sweep[t]

    def headline(self) -> dict[str, Any]:
        """Totals under the primary criterion at the operating threshold, for one-line summaries."""
        m = self.totals[self.settings.primary]
        return {**m.counts.as_dict(), "mean_ap": m.ap, "threshold": self.threshold,
                "criterion": self.settings.primary, "match": self.settings.describe(self.settings.primary),
                "on": "evaluation"}

    def to_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""

        def crit_dict(by_crit: dict[str, Metrics], total: bool = False) -> dict[str, Any]:
            out = {}
            for crit, m in by_crit.items():
                d = m.to_dict()
                if total:
                    d["mean_ap"] = d.pop("ap")
                out[crit] = d
            return out

        return {
            "sitewatch_evaluation": 1,
            "classes": list(self.classes),
            "threshold": self.threshold,
            "settings": asdict(self.settings),
            "headline": self.headline(),
            "totals": crit_dict(self.totals, total=True),
            "per_class": {c: crit_dict(v) for c, v in self.per_class.items()},
            "per_scene": [
                {
                    "scene": s.scene,
                    "source": s.source,
                    "totals": crit_dict(s.totals, total=True),
                    "per_class": {c: crit_dict(v) for c, v in s.per_class.items()},
                }
                for s in self.per_scene
            ],
            "pr_curves": {c: {crit: curve.to_dict() for crit, curve in v.items()} for c, v in self.curves.items()},
            "by_threshold": {crit: {f"{t:.2f}": c.as_dict() for t, c in v.items()} for crit, v in self.by_threshold.items()},
            "places": {c: m.to_dict() for c, m in self.places.items()},
            **self.meta,
        }


@dataclass(frozen=True)
class _Pairing:
    """Detections and labels of one class in one scene, and their matches per criterion."""

    scene: Scene
    cls: int
    #: Scores of the class's detections (any score).
    scores: np.ndarray
    #: Their rows in the scene's detection arrays.
    det_rows: np.ndarray
    #: Rows of the class's labels in the scene's label arrays.
    label_rows: np.ndarray
    #: criterion -> per detection, the position in ``label_rows`` of its label, or -1.
    matches: dict[str, np.ndarray]


def _label_lonlat(scene: Scene, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners ``(n, 4, 2)`` and centres ``(n, 2)`` in lon/lat of pixel boxes."""
    from sitewatch.imagery.detect.worker import georeference

    g = georeference(scene, boxes, np.zeros(len(boxes)), np.zeros(len(boxes), np.int64))
    return g["corners_lonlat"], g["centre_lonlat"]


def _scene_centre(scene: Scene) -> tuple[float, float]:
    x, y = pixel_to_map(scene.affine, np.array([scene.width / 2]), np.array([scene.height / 2]))
    lon, lat = to_lonlat(scene.crs_wkt, x, y)
    return float(lon[0]), float(lat[0])


def _pair(scene: Scene, dets: dict[str, np.ndarray], truth: SceneLabels, n_classes: int,
          settings: EvalSettings) -> list[_Pairing]:
    """Match one scene's detections to its labels, class by class, under both criteria."""
    lon0, lat0 = _scene_centre(scene)
    scores = np.asarray(dets["scores"], dtype=float)
    det_labels = np.asarray(dets["labels"], dtype=np.int64)
    det_boxes = np.asarray(dets["boxes"], dtype=float).reshape(-1, 4)
    det_xy = local_metres(dets["centre_lonlat"][:, 0], dets["centre_lonlat"][:, 1], lon0, lat0).reshape(-1, 2)
    gt_boxes = np.asarray(truth.boxes, dtype=float).reshape(-1, 4)
    gt_labels = np.asarray(truth.labels, dtype=np.int64)
    _, gt_centres = _label_lonlat(scene, gt_boxes)
    gt_xy = local_metres(gt_centres[:, 0], gt_centres[:, 1], lon0, lat0).reshape(-1, 2)
    out = []
    for k in range(n_classes):
        d = np.flatnonzero(det_labels == k)
        g = np.flatnonzero(gt_labels == k)
        matches = {
            "iou": match_boxes(det_boxes[d], scores[d], gt_boxes[g], settings.iou),
            "distance": match_centres(det_xy[d], scores[d], gt_xy[g], settings.distance_m),
        }
        out.append(_Pairing(scene, k, scores[d], d, g, matches))
    return out


def _distinct(xy: np.ndarray, order: np.ndarray, radius: float) -> np.ndarray:
    """Rows of ``xy`` kept, in ``order``, when each is farther than ``radius`` from every row kept before it."""
    kept: list[int] = []
    for i in order:
        if not kept or np.hypot(*(xy[kept] - xy[i]).T).min() > radius:
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)


def _places(
    results: Sequence[tuple[Scene, dict[str, np.ndarray]]], truth: Sequence[SceneLabels], n_classes: int,
    distance_m: float, threshold: float,
) -> list[PlaceMetrics]:
    """Per class, :class:`PlaceMetrics`: detections and labels of every scene pooled by place."""
    det_ll, det_scores, det_cls, gt_ll, gt_cls = [], [], [], [], []
    for (scene, dets), t in zip(results, truth, strict=True):
        det_ll.append(np.asarray(dets["centre_lonlat"], dtype=float).reshape(-1, 2))
        det_scores.append(np.asarray(dets["scores"], dtype=float))
        det_cls.append(np.asarray(dets["labels"], dtype=np.int64))
        gt_ll.append(_label_lonlat(scene, np.asarray(t.boxes, dtype=float).reshape(-1, 4))[1].reshape(-1, 2))
        gt_cls.append(np.asarray(t.labels, dtype=np.int64))
    dll, dsc, dcl = np.concatenate(det_ll), np.concatenate(det_scores), np.concatenate(det_cls)
    gll, gcl = np.concatenate(gt_ll), np.concatenate(gt_cls)
    both = np.concatenate([dll, gll])
    lon0, lat0 = (float(np.mean(both[:, 0])), float(np.mean(both[:, 1]))) if len(both) else (0.0, 0.0)
    out = []
    for k in range(n_classes):
        dxy = local_metres(dll[dcl == k, 0], dll[dcl == k, 1], lon0, lat0).reshape(-1, 2)
        scores = dsc[dcl == k]
        gxy = local_metres(gll[gcl == k, 0], gll[gcl == k, 1], lon0, lat0).reshape(-1, 2)
        d = _distinct(dxy, np.argsort(-scores, kind="stable"), distance_m)
        g = _distinct(gxy, np.arange(len(gxy)), distance_m / 2)
        m = match_centres(dxy[d], scores[d], gxy[g], distance_m)
        sweep = {t: counts_at(m, scores[d], len(g), t) for t in SWEEP}
        out.append(PlaceMetrics(counts_at(m, scores[d], len(g), threshold), len(g), len(d), sweep))
    return out


def _metrics(pairs: Sequence[_Pairing], crit: str, threshold: float) -> Metrics:
    """Figures of pairings pooled (one class, any number of scenes)."""
    counts = Counts(0, 0, 0)
    for p in pairs:
        counts = counts + counts_at(p.matches[crit], p.scores, len(p.label_rows), threshold)
    scores = np.concatenate([p.scores for p in pairs]) if pairs else np.zeros(0)
    hits = np.concatenate([p.matches[crit] >= 0 for p in pairs]) if pairs else np.zeros(0, bool)
    n_labels = sum(len(p.label_rows) for p in pairs)
    return Metrics(counts, n_labels, len(scores), average_precision(scores, hits, n_labels))


def _totals(by_class: dict[str, dict[str, Metrics]]) -> dict[str, Metrics]:
    """Per criterion: counts summed over classes, AP the mean of the classes that have labels."""
    out = {}
    for crit in CRITERIA:
        ms = [v[crit] for v in by_class.values()]
        counts = sum((m.counts for m in ms), Counts(0, 0, 0))
        aps = [m.ap for m in ms if m.ap is not None]
        out[crit] = Metrics(counts, sum(m.labels for m in ms), sum(m.detections_ranked for m in ms),
                            float(np.mean(aps)) if aps else None)
    return out


def evaluate(
    results: Sequence[tuple[Scene, dict[str, np.ndarray]]],
    truth: Sequence[SceneLabels],
    classes: Sequence[str],
    settings: EvalSettings,
    threshold: float,
) -> EvalReport:
    """Match detections to labels per scene and class and compute the figures.

    Args:
        results: per scene, the scene and its detections as :func:`sitewatch.imagery.detect.pipeline.detect`
            gives them (``boxes`` in scene pixels, ``scores``, ``labels``, ``corners_lonlat``,
            ``centre_lonlat``).
        truth: the labels of every scene in ``results`` (one each, found by ``scene.source``).
        classes: class names, in the index order of ``labels``.
        settings: matching criteria.
        threshold: operating score threshold of the counts and the FP/FN lists; lower
            scoring detections only count towards AP and the curves.

    Raises:
        ValueError: a scene has no labels entry, or a class index is out of range.
    """
    classes = tuple(classes)
    by_source = {t.scene.source: t for t in truth}
    pairings: list[list[_Pairing]] = []  # per scene, per class
    label_corners: list[np.ndarray] = []
    for scene, dets in results:
        if scene.source not in by_source:
            raise ValueError(f"{scene.source}: no labels entry for this scene")
        t = by_source[scene.source]
        for name, idx in (("detection", dets["labels"]), ("label", t.labels)):
            if len(idx) and (np.min(idx) < 0 or np.max(idx) >= len(classes)):
                raise ValueError(f"{scene.source}: {name} class index out of range for {len(classes)} classes")
        pairings.append(_pair(scene, dets, t, len(classes), settings))
        label_corners.append(_label_lonlat(scene, np.asarray(t.boxes, dtype=float).reshape(-1, 4))[0])

    per_class = {c: {crit: _metrics([ps[k] for ps in pairings], crit, threshold) for crit in CRITERIA}
                 for k, c in enumerate(classes)}
    per_scene = []
    for (scene, _), ps in zip(results, pairings, strict=True):
        by_class = {c: {crit: _metrics([ps[k]], crit, threshold) for crit in CRITERIA} for k, c in enumerate(classes)}
        per_scene.append(SceneMetrics(scene.name, scene.source, by_class, _totals(by_class)))
    curves = {}
    for k, c in enumerate(classes):
        pairs = [ps[k] for ps in pairings]
        scores = np.concatenate([p.scores for p in pairs]) if pairs else np.zeros(0)
        curves[c] = {
            crit: pr_curve(scores, np.concatenate([p.matches[crit] >= 0 for p in pairs]) if pairs else np.zeros(0, bool),
                           sum(len(p.label_rows) for p in pairs))
            for crit in CRITERIA
        }

    fps: dict[str, list[Miss]] = {crit: [] for crit in CRITERIA}
    fns: dict[str, list[Miss]] = {crit: [] for crit in CRITERIA}
    for (scene, dets), ps, corners in zip(results, pairings, label_corners, strict=True):
        det_rings = ccw_rings(np.asarray(dets["corners_lonlat"], dtype=float).reshape(-1, 4, 2))
        gt_rings = ccw_rings(corners.reshape(-1, 4, 2))
        for p in ps:
            keep = p.scores >= threshold
            for crit in CRITERIA:
                m = p.matches[crit]
                for i in np.flatnonzero(keep & (m < 0)):
                    fps[crit].append(Miss(scene.name, classes[p.cls], det_rings[p.det_rows[i]], float(p.scores[i])))
                found = set(m[keep & (m >= 0)].tolist())
                for j in range(len(p.label_rows)):
                    if j not in found:
                        fns[crit].append(Miss(scene.name, classes[p.cls], gt_rings[p.label_rows[j]]))

    sweep = {crit: {t: sum((counts_at(p.matches[crit], p.scores, len(p.label_rows), t) for ps in pairings for p in ps),
                           Counts(0, 0, 0)) for t in SWEEP} for crit in CRITERIA}
    places = _places(results, [by_source[scene.source] for scene, _ in results], len(classes), settings.distance_m,
                     threshold) if results else []
    return EvalReport(
        places=dict(zip(classes, places, strict=True)),
        by_threshold=sweep,
        classes=classes,
        settings=settings,
        threshold=float(threshold),
        per_class=per_class,
        per_scene=per_scene,
        totals=_totals(per_class),
        curves=curves,
        false_positives=fps,
        false_negatives=fns,
    )


def misses_geojson(misses: Sequence[Miss]) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection of box polygons; properties ``class``, ``scene`` (and ``score``)."""
    feats = []
    for i, m in enumerate(misses):
        props: dict[str, Any] = {"class": m.cls, "scene": m.scene}
        if m.score is not None:
            props["score"] = round(m.score, 4)
        feats.append({
            "type": "Feature",
            "id": i + 1,
            "geometry": {"type": "Polygon", "coordinates": [np.round(m.ring, 7).tolist()]},
            "properties": props,
        })
    return {"type": "FeatureCollection", "features": feats}


def _plot_pr(report: EvalReport, path: Path) -> None:
    """One panel per criterion, one precision-recall line per class; dots at the threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(CRITERIA), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(CRITERIA), squeeze=False)[0]
    for ax, crit in zip(axes, CRITERIA, strict=True):
        for cls in report.classes:
            m, c = report.per_class[cls][crit], report.curves[cls][crit]
            if m.ap is None:
                ax.plot([], [], label=f"{cls}: no labels")
                continue
            (line,) = ax.plot(c.recall, c.precision, drawstyle="steps-post", label=f"{cls}: AP {m.ap:.3f}")
            if m.counts.tp + m.counts.fp:
                ax.plot([m.counts.recall], [m.counts.precision], "o", color=line.get_color())
        mean_ap = report.totals[crit].ap
        ax.set_title(f"{report.settings.describe(crit)}: mAP {'-' if mean_ap is None else f'{mean_ap:.3f}'}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.0, 1.02)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.suptitle(f"Precision-recall (dots: score threshold {report.threshold:g})")
    fig.savefig(path, dpi=100)


def write_evaluation(report: EvalReport, out_dir: Path) -> None:
    """Write ``metrics.json``, ``pr_curve.png``, ``false_positives.geojson`` and ``false_negatives.geojson``.

    The FP/FN files follow the report's primary criterion. Every file is staged in a
    hidden directory beside ``out_dir`` and renamed into place only once all are complete
    (``metrics.json`` last), so a failure leaves no half-written file; files of an earlier
    evaluation in ``out_dir`` are replaced.

    Raises:
        OutputError: the files cannot be written.
    """
    out_dir = Path(out_dir)
    primary = report.settings.primary
    staging = Staging(out_dir)
    try:
        staging.write_json(FALSE_POSITIVES_FILE, misses_geojson(report.false_positives[primary]))
        staging.write_json(FALSE_NEGATIVES_FILE, misses_geojson(report.false_negatives[primary]))
        _plot_pr(report, staging.path(PR_CURVE_FILE))
        staging.write_json(METRICS_FILE, report.to_dict())
        # An earlier metrics.json would vouch for a mix of old and new files if the renames stopped part-way.
        (out_dir / METRICS_FILE).unlink(missing_ok=True)
    except BaseException:
        staging.discard()
        raise
    staging.commit(list(EVAL_FILES))


def check_eval_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds an evaluation (unless ``overwrite``) or files of something else.

    Raises:
        OutputError: the directory cannot be used.
    """
    if not out_dir_exists(out):
        return
    ours = (*EVAL_FILES, DETECTIONS_DIR)
    present = [f for f in ours if (out / f).exists()]
    if present and not overwrite:
        raise OutputError(f"--out {out}: already holds an evaluation ({', '.join(present)}); "
                          "pass --overwrite to replace it or choose another directory")
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in ours)
    if others:
        raise OutputError(f"--out {out}: holds files that are not sitewatch evaluation results "
                          f"({', '.join(others[:3])}); choose an empty or new directory")


def run_evaluation(
    inputs: Sequence[str | Path],
    model: str | Path,
    labels_paths: Sequence[str | Path],
    out: str | Path,
    eval_settings: EvalSettings | None = None,
    *,
    class_property: str = "class",
    point_box_m: float = 50.0,
    labels_crs: str | None = None,
    skip_bad_labels: bool = False,
    coco_bind: tuple[tuple[str, str], ...] = (),
    class_map: tuple[tuple[str, str], ...] = (),
    detect_settings: DetectSettings | None = None,
    overwrite: bool = False,
    on_tiles: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> EvalReport:
    """Detect on ``inputs`` with ``model``, score against the labels, and write the results to ``out``.

    Scenes and labels are checked before any detection runs. The detection run (the real
    :func:`sitewatch.imagery.detect.pipeline.detect`, at score threshold ``min(0.05, operating threshold)``
    so that AP sees low scores) goes to ``out/detections``; :func:`write_evaluation`'s files
    go to ``out``. Scenes that fail in detection are left out of the figures and listed in
    ``report.meta["failed_scenes"]``. Known non-objects in review exports (rejected
    candidates) are not used: a detection on one is simply a false positive.

    Args:
        inputs: scene files or band directories, as for ``sitewatch detect``.
        model: a shipped model name or a checkpoint path.
        labels_paths: label files (GeoJSON, COCO JSON, review exports); see
            :func:`sitewatch.training.labels.read_labels`.
        out: output directory: new, empty, or (with ``overwrite``) an earlier evaluation.
        eval_settings: matching criteria and operating threshold (``None``: the defaults).
        class_property: feature property holding the class name.
        point_box_m: side in metres of the box given to a Point label.
        labels_crs: CRS of label coordinates that declare none (default RFC 7946 lon/lat).
        skip_bad_labels: go on without unusable labels (listed in ``metrics.json``).
        coco_bind: COCO ``file_name`` -> scene path pairs.
        class_map: label class name -> model class name pairs (``("ship", "vessel")``).
        detect_settings: tiling, bands, workers...; its ``score_threshold`` is ignored.
        overwrite: replace an earlier evaluation in ``out``.
        on_tiles: progress callback, as for :func:`sitewatch.imagery.detect.pipeline.detect`.
        on_plan: called with the detection plan before detection starts.

    Raises:
        SitewatchError: bad flags, inputs, labels, model or output location.
    """
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect, plan
    from sitewatch.training.labels import LabelOptions, expand_label_files, read_labels

    out = Path(out)
    settings = eval_settings or EvalSettings()
    if not labels_paths:
        raise UsageError("no --labels given: name at least one label file")
    labels_paths = expand_label_files([str(x) for x in labels_paths])  # quoted globs, as for train
    check_eval_dir(out, overwrite)
    ds = detect_settings or DetectSettings()
    p = plan(inputs, model, replace(ds, score_threshold=None))
    spec = p.model.spec
    threshold = settings.score_threshold if settings.score_threshold is not None else spec.score_threshold
    options = LabelOptions(classes=tuple(spec.classes), class_property=class_property, point_box_m=point_box_m,
                           crs=labels_crs, skip_problems=skip_bad_labels, coco_bind=tuple(coco_bind),
                           class_map=tuple(class_map))
    label_set = read_labels([Path(x) for x in labels_paths], list(p.scenes), options)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    detect_threshold = min(AP_SCORE_FLOOR, threshold)
    try:
        summary = detect(inputs, model, out / DETECTIONS_DIR, replace(ds, score_threshold=detect_threshold),
                         overwrite=overwrite, on_tiles=on_tiles, on_plan=on_plan)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    by_source = {sl.scene.source: sl for sl in label_set.scenes}
    ok = [r for r in summary.results if not r.failed]
    report = evaluate([(r.scene, r.detections) for r in ok], [by_source[r.scene.source] for r in ok],
                      spec.classes, settings, threshold)
    report.meta = {
        "model": {"ref": str(model), "name": spec.name, "version": spec.version, "checksum": p.model.checksum},
        "inputs": [r.scene.source for r in summary.results],
        "failed_scenes": summary.failures,
        "detections": {"dir": str(out / DETECTIONS_DIR), "score_threshold": detect_threshold},
        "labels": {
            "files": [str(x) for x in labels_paths],
            "options": {"class_property": class_property, "point_box_m": point_box_m, "crs": labels_crs,
                        "skip_problems": skip_bad_labels, "class_map": dict(class_map)},
            "counts": dict(label_set.counts),
            "problems": [asdict(pr) for pr in label_set.problems],
        },
    }
    write_evaluation(report, out)
    return report
