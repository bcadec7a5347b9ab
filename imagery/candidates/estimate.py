"""``sitewatch estimate``: how many of the candidate sites are real, per class, with a 95% interval.

Following the Rights Lab's Brick Belt estimate: candidates are stratified by score, a
random sample is drawn in each stratum and reviewed, and the share of confirmed sites in
each stratum is scaled up to the stratum.

* **Strata**: a class's sites sorted by ``max_score`` and cut into ``K`` groups of (nearly)
  equal size (score quantile bins; default ``K = 4``), fixed when the sample is drawn.
* **Allocation**: ``n`` sites per class, proportional to stratum size, at least 2 per
  stratum where possible (``K`` is lowered when ``n < 2K``); simple random sampling without
  replacement within each stratum. The draw (seed, strata, sizes) is kept in the store.
* **Estimator**: with ``N_h`` sites in stratum ``h``, ``n_h`` sampled sites reviewed as
  confirmed or rejected and ``p_h`` the confirmed share among them::

      N^ = sum_h N_h p_h
      Var(N^) = sum_h N_h^2 (1 - n_h / N_h) q_h (1 - q_h) / (n_h - 1),  q_h = (k_h + 2) / (n_h + 4)
      95% interval: N^ +- 1.96 SE, clipped to [confirmed sites, candidates - rejected sites]

  ``q_h`` is the Agresti-Coull share (two confirmed and two rejected added, for the variance
  only): with the plain share ``p_h``, a stratum whose sample is all confirmed (or all
  rejected) would claim no sampling error at all, and a small sample of clear kilns would
  give a zero-width interval. The point estimate uses ``p_h``.

  ``unsure`` and not yet reviewed sample members are left out of ``n_h`` (assumed to be
  like the decided ones of their stratum); the result also gives ``N^`` with every
  ``unsure`` counted as real and as not real.
* **Recall** (optional): ``N^`` counts real sites *among the candidates*. Sites the detector
  missed are not in it. Given a recall ``R`` with standard error ``s_R`` (from ``sitewatch
  evaluate``), ``T^ = N^ / R`` with ``Var(T^) = Var(N^) / R^2 + N^2 s_R^2 / R^4`` (delta method).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sitewatch.imagery.candidates.gpkg import now_iso, touch
from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.errors import OutputError, UsageError

#: Strata per class by default.
DEFAULT_STRATA = 4
#: Sites per stratum the allocation gives where it can (the variance needs 2).
MIN_PER_STRATUM = 2
#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: File the estimate is written to, in the run directory.
ESTIMATE_FILE = "estimate.json"


# --- the statistics, on plain numbers ---------------------------------------------------------


def score_strata(scores: Sequence[float], k: int) -> list[int]:
    """Stratum (0 = lowest scores) of each score: ``k`` groups of nearly equal size by score rank.

    Ties are broken by position, so the strata are a fixed partition of the sites.
    """
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    out = [0] * len(order)
    for h, chunk in enumerate(np.array_split(order, max(1, min(k, len(order))))):
        for i in chunk:
            out[int(i)] = h
    return out


def allocate(sizes: Sequence[int], n: int, minimum: int = MIN_PER_STRATUM) -> list[int]:
    """Sample size per stratum: ``min(minimum, N_h)`` each, the rest proportional to ``N_h``.

    Units beyond the minimum go one at a time to the stratum furthest below its
    proportional share ``n N_h / N``; no stratum gets more than ``N_h``; the total is
    ``min(n, N)``.
    """
    total = sum(sizes)
    n = min(n, total)
    alloc = [min(minimum, s) for s in sizes]
    while sum(alloc) > n:  # fewer than the minimum everywhere: take from the largest allocations
        alloc[int(np.argmax(alloc))] -= 1
    while sum(alloc) < n:
        deficit = [(n * s / total - a) if a < s else -math.inf for s, a in zip(sizes, alloc, strict=True)]
        alloc[int(np.argmax(deficit))] += 1
    return alloc


def stratified_estimate(sizes: Sequence[int], reviewed: Sequence[int], confirmed: Sequence[int]) -> tuple[float, float]:
    """``(N^, SE)`` of the number of real sites: see the module docstring.

    Args:
        sizes: ``N_h``, sites per stratum.
        reviewed: ``n_h``, sampled sites reviewed as confirmed or rejected.
        confirmed: confirmed sites among them.

    Raises:
        UsageError: a stratum with fewer than 2 reviewed sites that is not reviewed in full.
    """
    est, var = 0.0, 0.0
    for h, (big_n, n, k) in enumerate(zip(sizes, reviewed, confirmed, strict=True)):
        if big_n == 0:
            continue
        if n < min(2, big_n):
            raise UsageError(f"stratum {h + 1}: {n} reviewed (confirmed or rejected) of {big_n} sites; "
                             "review at least 2 of its sample")
        est += big_n * k / n
        if n < big_n:
            q = (k + 2) / (n + 4)  # Agresti-Coull: never a zero variance from an all-alike sample
            var += big_n**2 * (1 - n / big_n) * q * (1 - q) / (n - 1)
    return est, math.sqrt(var)


def interval(est: float, se: float, low: float, high: float) -> tuple[float, float, float]:
    """``est`` and its 95% interval ``est +- 1.96 se``, each clipped to ``[low, high]``."""
    def clip(v: float) -> float:
        return min(max(v, low), high)
    return clip(est), clip(est - Z95 * se), clip(est + Z95 * se)


def recall_scaled(est: float, se: float, recall: float, recall_se: float) -> tuple[float, float]:
    """``(N^ / R, SE)`` by the delta method: ``Var = Var(N^) / R^2 + N^2 s_R^2 / R^4``."""
    if not 0 < recall <= 1:
        raise UsageError(f"--recall {recall}: give the detector's recall, between 0 (exclusive) and 1")
    if recall_se < 0:
        raise UsageError(f"--recall-se {recall_se}: must be at least 0")
    return est / recall, math.sqrt(se**2 / recall**2 + est**2 * recall_se**2 / recall**4)


# --- drawing the sample ------------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """A review sample drawn for one class."""

    cls: str
    draw_id: int
    seed: int
    candidates: int
    sizes: tuple[int, ...]
    sample: tuple[int, ...]
    #: Sampled sites already reviewed (confirmed, rejected or unsure) when drawn.
    already_reviewed: int


def draw_sample(
    store: CandidateStore,
    n: int,
    *,
    strata: int = DEFAULT_STRATA,
    seed: int | None = None,
    classes: Sequence[str] | None = None,
    redraw: bool = False,
) -> list[Draw]:
    """Draw a stratified random sample of ``n`` sites per class and record it in the store.

    Args:
        store: the candidate store.
        n: sites to sample per class (all of a class's sites if it has fewer).
        strata: score strata per class (lowered where ``n < 2 * strata``).
        seed: random seed (a random one, recorded, if ``None``).
        classes: the classes to sample (every class with sites if ``None``).
        redraw: replace a class's existing sample (its reviews are kept, but a new sample
            must be reviewed before :func:`estimate` uses it).

    Raises:
        UsageError: ``n`` or ``strata`` below 1, an unknown class, or a class that already
            has a sample and ``redraw`` is false.
    """
    if n < 1:
        raise UsageError(f"--sample {n}: sample at least 1 site per class")
    if strata < 1:
        raise UsageError(f"--strata {strata}: use at least 1 stratum")
    seed = secrets.randbits(32) if seed is None else int(seed)
    draws = []
    with store.write() as con:
        present = [r[0] for r in con.execute("SELECT DISTINCT class FROM sites ORDER BY class")]
        wanted = list(classes) if classes else present
        for cls in wanted:
            if cls not in present:
                raise UsageError(f"--class {cls}: no sites of this class; the store has {', '.join(present) or 'none'}")
        old = {r[0]: r[1] for r in con.execute("SELECT class, min(drawn_at) FROM sample_strata GROUP BY class")}
        if not redraw and (again := [c for c in wanted if c in old]):
            raise UsageError(f"--sample: {', '.join(again)} already has a review sample (drawn {old[again[0]]}); "
                             "review it and run sitewatch estimate DIR, or pass --redraw to draw a new one")
        draw_id = con.execute("SELECT coalesce(max(draw_id), 0) + 1 FROM sample_strata").fetchone()[0]
        frame_max = con.execute("SELECT coalesce(max(fid), 0) FROM sites").fetchone()[0]
        drawn_at = now_iso()
        for cls in wanted:
            rows = con.execute("SELECT site_id, max_score, status FROM sites WHERE class = ? ORDER BY fid",
                               (cls,)).fetchall()
            k = max(1, min(strata, n // MIN_PER_STRATUM, len(rows)))
            stratum = score_strata([r[1] for r in rows], k)
            members = [[i for i, s in enumerate(stratum) if s == h] for h in range(k)]
            sizes = [len(m) for m in members]
            alloc = allocate(sizes, n)
            rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
            reviewed = 0
            for h in range(k):
                chosen = sorted(int(i) for i in rng.choice(members[h], size=alloc[h], replace=False))
                scores = [rows[i][1] for i in members[h]]
                con.executemany(
                    "INSERT INTO sample (draw_id, site_id, class, stratum, drawn_at, seed) VALUES (?, ?, ?, ?, ?, ?)",
                    [(draw_id, rows[i][0], cls, h + 1, drawn_at, seed) for i in chosen],
                )
                con.execute(
                    "INSERT INTO sample_strata (draw_id, class, stratum, score_min, score_max, n_sites, n_sample, "
                    "frame_max_fid, drawn_at, seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (draw_id, cls, h + 1, min(scores), max(scores), sizes[h], alloc[h], frame_max, drawn_at, seed),
                )
                reviewed += sum(rows[i][2] != "unreviewed" for i in chosen)
            draws.append(Draw(cls, draw_id, seed, len(rows), tuple(sizes), tuple(alloc), reviewed))
            draw_id += 1
        touch(con, "sample")
        touch(con, "sample_strata")
    return draws


# --- estimating --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stratum:
    """One stratum of a class's sample and its reviews so far."""

    stratum: int
    score_min: float
    score_max: float
    sites: int
    sample: int
    confirmed: int
    rejected: int
    unsure: int
    unreviewed: int


@dataclass(frozen=True)
class ClassEstimate:
    """The estimate for one class (``estimate`` is ``None`` with a ``problem`` when there is none yet)."""

    cls: str
    draw_id: int
    drawn_at: str
    seed: int
    #: Sites of the class when the sample was drawn (the population estimated).
    candidates: int
    #: Sites of the class added since (not covered by the estimate).
    added_since_draw: int
    #: Confirmed and rejected sites among the candidates, in or out of the sample.
    confirmed: int
    rejected: int
    strata: tuple[Stratum, ...]
    estimate: float | None = None
    se: float | None = None
    low: float | None = None
    high: float | None = None
    precision: float | None = None
    #: ``N^`` with every unsure sample member counted as real / as not real.
    unsure_as_real: float | None = None
    unsure_as_not_real: float | None = None
    problem: str | None = None
    #: Scaled by the detector's recall (sites the detector missed included).
    recall: float | None = None
    recall_se: float | None = None
    with_missed: dict[str, float] | None = field(default=None)


def estimate(
    store: CandidateStore,
    *,
    recall: Mapping[str, float] | None = None,
    recall_se: Mapping[str, float] | None = None,
) -> list[ClassEstimate]:
    """The stratified estimate of real sites per class, from the current sample and its reviews.

    Args:
        store: the candidate store.
        recall: detector recall per class (``"*"`` for every class), to include missed sites.
        recall_se: standard error of each recall (0 if not given).

    Raises:
        UsageError: no sample has been drawn.
        InputError: the store's site statuses and review log disagree (see :meth:`CandidateStore.check`).
    """
    store.require_consistent()
    out = []
    with store.read() as con:
        draws = con.execute(
            "SELECT class, max(draw_id) FROM sample_strata GROUP BY class ORDER BY class").fetchall()
        if not draws:
            raise UsageError(f"{store.path}: no review sample yet; draw one with sitewatch estimate DIR --sample 50")
        for cls, draw_id in draws:
            rows = con.execute(
                "SELECT stratum, score_min, score_max, n_sites, n_sample, frame_max_fid, drawn_at, seed "
                "FROM sample_strata WHERE draw_id = ? AND class = ? ORDER BY stratum", (draw_id, cls)).fetchall()
            frame_max, drawn_at, seed = rows[0][5], rows[0][6], rows[0][7]
            tally = {(h, s): c for h, s, c in con.execute(
                "SELECT m.stratum, s.status, count(*) FROM sample m JOIN sites s ON s.site_id = m.site_id "
                "WHERE m.draw_id = ? AND m.class = ? GROUP BY m.stratum, s.status", (draw_id, cls))}
            strata = tuple(Stratum(h, lo, hi, big_n, n, tally.get((h, "confirmed"), 0), tally.get((h, "rejected"), 0),
                                   tally.get((h, "unsure"), 0), tally.get((h, "unreviewed"), 0))
                           for h, lo, hi, big_n, n, *_ in rows)
            totals = dict(con.execute("SELECT status, count(*) FROM sites WHERE class = ? AND fid <= ? GROUP BY status",
                                      (cls, frame_max)).fetchall())
            added = con.execute("SELECT count(*) FROM sites WHERE class = ? AND fid > ?", (cls, frame_max)).fetchone()[0]
            base = ClassEstimate(cls, draw_id, drawn_at, seed, sum(s.sites for s in strata), added,
                                 totals.get("confirmed", 0), totals.get("rejected", 0), strata)
            out.append(_estimate_class(base, _for_class(recall, cls), _for_class(recall_se, cls)))
    return out


def _for_class(values: Mapping[str, float] | None, cls: str) -> float | None:
    if not values:
        return None
    return values.get(cls, values.get("*"))


def _estimate_class(base: ClassEstimate, recall: float | None, recall_se: float | None) -> ClassEstimate:
    sizes = [s.sites for s in base.strata]
    low, high = base.confirmed, base.candidates - base.rejected
    try:
        est, se = stratified_estimate(sizes, [s.confirmed + s.rejected for s in base.strata],
                                      [s.confirmed for s in base.strata])
    except UsageError as exc:
        return ClassEstimate(**{**_fields(base), "problem": f"not enough reviews yet: {exc}"})
    point, lo, hi = interval(est, se, low, high)
    as_real, _ = stratified_estimate(sizes, [s.confirmed + s.rejected + s.unsure for s in base.strata],
                                     [s.confirmed + s.unsure for s in base.strata])
    as_not, _ = stratified_estimate(sizes, [s.confirmed + s.rejected + s.unsure for s in base.strata],
                                    [s.confirmed for s in base.strata])
    extra: dict[str, Any] = {}
    if recall is not None:
        t, t_se = recall_scaled(point, se, recall, recall_se or 0.0)
        t_point, t_lo, t_hi = interval(t, t_se, base.confirmed, math.inf)
        extra = {"recall": recall, "recall_se": recall_se or 0.0,
                 "with_missed": {"estimate": t_point, "se": t_se, "low": t_lo, "high": t_hi}}
    return ClassEstimate(**{**_fields(base), "estimate": point, "se": se, "low": lo, "high": hi,
                            "precision": point / base.candidates if base.candidates else None,
                            "unsure_as_real": as_real, "unsure_as_not_real": as_not, **extra})


def _fields(e: ClassEstimate) -> dict[str, Any]:
    return {k: getattr(e, k) for k in e.__dataclass_fields__}


def estimate_document(estimates: Sequence[ClassEstimate]) -> dict[str, Any]:
    """The content of ``estimate.json``."""
    return {
        "what": "estimated number of real sites among the candidate sites per class (sites the detector missed "
                "are not counted unless with_missed is given, which divides by the detector's recall)",
        "method": "stratified random sample by score; N = sum_h N_h p_h, Var = sum_h N_h^2 (1 - n_h/N_h) "
                  "q_h (1 - q_h) / (n_h - 1) with q_h = (k_h + 2) / (n_h + 4) (Agresti-Coull); 95% interval N +- 1.96 SE clipped to [confirmed, candidates - rejected]",
        "computed_at": now_iso(),
        "classes": {e.cls: asdict(e) for e in estimates},
    }


def write_estimate(run_dir: Path, estimates: Sequence[ClassEstimate]) -> Path:
    """Write ``estimate.json`` into ``run_dir`` (temporary file, then rename).

    Raises:
        OutputError: it cannot be written.
    """
    path = run_dir / ESTIMATE_FILE
    tmp = run_dir / f".{ESTIMATE_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(estimate_document(estimates), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
