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

from imagery.errors import UsageError
from imagery.georef import ground_distance_m

#: Site distance in metres per class: detections this close to a site's point belong to it.
DEFAULT_SITE_DISTANCE_M: dict[str, float] = {"kiln": 100.0, "vessel": 50.0}
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


def assign(
    sites: list[SitePoint],
    detections: Sequence[tuple[str, str | None, float, float]],
    distances: Mapping[str, float],
) -> list[int]:
    """Assign each detection to a site, in order, creating sites as needed.

    Args:
        sites: existing sites; new sites are appended to this list and points are updated
            in place as detections join.
        detections: ``(class, acquisition date or None, lon, lat)`` per detection.
        distances: site distance in metres per class (:func:`site_distances`).

    Returns:
        The index into ``sites`` of each detection's site.
    """
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, s in enumerate(sites):
        groups.setdefault((s.cls, s.date), []).append(i)
    out: list[int] = []
    for cls, acquired, lon, lat in detections:
        key = (cls, group_date(cls, acquired))
        members = groups.setdefault(key, [])
        best = -1
        if members:
            lons = np.array([sites[i].lon for i in members])
            lats = np.array([sites[i].lat for i in members])
            dist = ground_distance_m(lons, lats, np.full(len(members), lon), np.full(len(members), lat))
            k = int(np.argmin(dist))
            limit = distances.get(cls, DEFAULT_SITE_DISTANCE_M.get(cls.lower(), FALLBACK_SITE_DISTANCE_M))
            if dist[k] <= limit:
                best = members[k]
        if best < 0:
            sites.append(SitePoint(cls, key[1], lon, lat, 1))
            best = len(sites) - 1
            members.append(best)
        else:
            sites[best].join(lon, lat)
        out.append(best)
    return out
