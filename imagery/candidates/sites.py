"""Group detections into sites: one place (and, for vessels, one date) per site.

Detections from many scenes and dates are grouped per class. A detection joins the
nearest existing site of its class within the class's site distance of the site's point
(its detections' mean centre); otherwise it starts a new site. Vessels move, so a vessel
site only takes detections of one acquisition date; kilns persist, so a kiln site takes
detections of every date.

The grouping is incremental: sites are never split, merged or renumbered, so site ids
(and the reviews attached to them) stay valid as new scenes are added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.georef import ground_distance_m

#: Site distance in metres per class: detections this close to a site's point belong to it.
#: Kilns: 60 m. The same kiln seen in two tiles or on two dates lands within ~20 m of itself
#: (Sentinel-2 co-registration is ~11 m); two real kilns of the shared Bangladesh tiles stand
#: 80 m apart, centre to centre, and 100 m made them one site.
DEFAULT_SITE_DISTANCE_M: dict[str, float] = {"kiln": 60.0, "vessel": 50.0}
#: Site distance of a class without a default.
FALLBACK_SITE_DISTANCE_M = 50.0
#: Classes that move: their sites only group detections of one acquisition date.
MOVING_CLASSES = frozenset({"vessel", "ship", "boat"})


def per_date(cls: str) -> bool:
    """Whether sites of class ``cls`` are per acquisition date (moving objects)."""
    return cls.lower() in MOVING_CLASSES


def site_distances(classes: Sequence[str], given: Mapping[str, float] | None = None,
                   earlier: Mapping[str, float] | None = None) -> dict[str, float]:
    """The site distance of every class: ``given``, else ``earlier`` (a store's last run), else the default.

    Raises:
        UsageError: a distance is not a positive number of metres.
    """
    for cls, d in (given or {}).items():
        if not (isinstance(d, int | float) and np.isfinite(d) and d > 0):
            raise UsageError(f"--site-distance {cls}={d}: give a positive distance in metres, e.g. {cls}=100")
    out: dict[str, float] = {}
    for cls in [*classes, *(earlier or {}), *(given or {})]:
        if given and cls in given:
            out[cls] = float(given[cls])
        elif earlier and cls in earlier:
            out[cls] = float(earlier[cls])
        else:
            out[cls] = DEFAULT_SITE_DISTANCE_M.get(cls.lower(), FALLBACK_SITE_DISTANCE_M)
    return out


def parse_site_distances(values: Sequence[str]) -> dict[str, float]:
    """``["kiln=100", "vessel=50"]`` -> ``{"kiln": 100.0, "vessel": 50.0}``.

    Raises:
        UsageError: a value is not ``CLASS=METRES`` with a positive number.
    """
    out: dict[str, float] = {}
    for v in values:
        cls, sep, metres = v.partition("=")
        try:
            d = float(metres)
        except ValueError:
            d = float("nan")
        if not sep or not cls.strip() or not np.isfinite(d) or d <= 0:
            raise UsageError(f"--site-distance {v!r}: write CLASS=METRES with a positive distance, e.g. kiln=100")
        out[cls.strip()] = d
    return out


@dataclass
class SitePoint:
    """What grouping needs to know of a site: class, date group, point and detection count."""

    cls: str
    #: Acquisition date for per-date classes (``None``: undated); always ``None`` for the others.
    date: str | None
    lon: float
    lat: float
    n: int

    def join(self, lon: float, lat: float) -> None:
        """Add a detection centre: the point stays the mean of all centres."""
        self.lon = (self.lon * self.n + lon) / (self.n + 1)
        self.lat = (self.lat * self.n + lat) / (self.n + 1)
        self.n += 1


def group_date(cls: str, acquired: str | None) -> str | None:
    """The date a site of class ``cls`` is bound to: the acquisition date for moving classes, else ``None``."""
    return acquired if per_date(cls) else None


#: Side in degrees of the grid cells :func:`assign` files site points under (~1.1 km of latitude).
CELL_DEG = 0.01
_M_PER_DEG = 6_371_008.8 * np.pi / 180


def assign(
    sites: list[SitePoint],
    detections: Sequence[tuple[str, str | None, float, float]],
    distances: Mapping[str, float],
) -> list[int]:
    """Assign each detection to a site, in order, creating sites as needed.

    Site points are filed in a grid of :data:`CELL_DEG` cells per class and date group, so
    each detection is compared with the sites of the nearby cells only.

    Args:
        sites: existing sites; new sites are appended to this list and points are updated
            in place as detections join.
        detections: ``(class, acquisition date or None, lon, lat)`` per detection.
        distances: site distance in metres per class (:func:`site_distances`).

    Returns:
        The index into ``sites`` of each detection's site.
    """
    grid: dict[tuple[str, str | None, int, int], list[int]] = {}

    def cell(s: SitePoint) -> tuple[str, str | None, int, int]:
        return (s.cls, s.date, int(np.floor(s.lat / CELL_DEG)), int(np.floor(s.lon / CELL_DEG)))

    for i, s in enumerate(sites):
        grid.setdefault(cell(s), []).append(i)
    out: list[int] = []
    for cls, acquired, lon, lat in detections:
        date = group_date(cls, acquired)
        limit = distances.get(cls, DEFAULT_SITE_DISTANCE_M.get(cls.lower(), FALLBACK_SITE_DISTANCE_M))
        # Cells to search: the limit in latitude cells, and in longitude cells at this latitude
        # (site points within the limit are within a fraction of a degree, so the cosine barely changes).
        r_lat = int(np.ceil(limit / (_M_PER_DEG * CELL_DEG))) + 1
        cos = max(float(np.cos(np.radians(min(abs(lat) + r_lat * CELL_DEG, 89.9)))), 1e-3)
        r_lon = int(np.ceil(limit / (_M_PER_DEG * cos * CELL_DEG))) + 1
        ci, cj = int(np.floor(lat / CELL_DEG)), int(np.floor(lon / CELL_DEG))
        near = [i for di in range(-r_lat, r_lat + 1) for dj in range(-r_lon, r_lon + 1)
                for i in grid.get((cls, date, ci + di, cj + dj), ())]
        best = -1
        if near:
            lons = np.array([sites[i].lon for i in near])
            lats = np.array([sites[i].lat for i in near])
            dist = ground_distance_m(lons, lats, np.full(len(near), lon), np.full(len(near), lat))
            k = int(np.argmin(dist))
            if dist[k] <= limit:
                best = near[k]
        if best < 0:
            sites.append(SitePoint(cls, date, lon, lat, 1))
            best = len(sites) - 1
            grid.setdefault(cell(sites[best]), []).append(best)
        else:
            before = cell(sites[best])
            sites[best].join(lon, lat)
            after = cell(sites[best])
            if after != before:
                grid[before].remove(best)
                grid.setdefault(after, []).append(best)
        out.append(best)
    return out
