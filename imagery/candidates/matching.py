"""Match detections to ground truth: by centre distance (metres) or by box IoU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, with the derived scores."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 with no detections."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 with no ground truth."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict[str, float]:
        """Counts and scores as a plain dict."""
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}


def greedy_match(scores: np.ndarray, affinity: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching by descending score.

    ``affinity`` (n_pred, n_gt): larger is better; ``ok`` marks admissible pairs.
    Returns for each prediction the index of its ground truth, or -1.
    """
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(affinity.shape[1], dtype=bool)
    result = np.full(len(scores), -1, dtype=np.int64)
    for i in order:
        cand = ok[i] & ~taken
        if cand.any():
            j = int(np.argmax(np.where(cand, affinity[i], -np.inf)))
            taken[j] = True
            result[i] = j
    return result


def match_centres(pred_xy: np.ndarray, scores: np.ndarray, gt_xy: np.ndarray, max_dist: float) -> np.ndarray:
    """Match predicted centres to ground-truth centres within ``max_dist`` (same units)."""
    if len(pred_xy) == 0 or len(gt_xy) == 0:
        return np.full(len(pred_xy), -1, dtype=np.int64)
    d = np.linalg.norm(pred_xy[:, None, :] - gt_xy[None, :, :], axis=2)
    return greedy_match(scores, -d, d <= max_dist)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(n, 4)`` and ``(m, 4)`` boxes ``x0, y0, x1, y1``."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, min_iou: float) -> np.ndarray:
    """Match predicted boxes to ground-truth boxes with IoU of at least ``min_iou``."""
    if len(pred) == 0 or len(gt) == 0:
        return np.full(len(pred), -1, dtype=np.int64)
    iou = box_iou(pred, gt)
    return greedy_match(scores, iou, iou >= min_iou)


def counts_at(matches: np.ndarray, scores: np.ndarray, n_gt: int, threshold: float) -> Counts:
    """Counts for the detections scoring at least ``threshold``.

    Matches are recomputed by the caller per threshold only when exactness matters; with
    greedy matching by score, the matches of the kept (higher-scoring) detections do not
    depend on the dropped ones, so one matching serves every threshold.
    """
    keep = scores >= threshold
    tp = int((matches[keep] >= 0).sum())
    return Counts(tp=tp, fp=int(keep.sum()) - tp, fn=n_gt - tp)
