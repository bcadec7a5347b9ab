"""What ``detect INPUT...`` accepts, expanded into one :class:`SceneInput` per scene.

An INPUT is a raster file, a band directory, a directory of scene files, a glob pattern,
a list file (``.txt``/``.list`` or ``@FILE``), a STAC Item/ItemCollection JSON file, or a
URL (``http(s)://``, ``s3://``, ``gs://``, ``az://``) or GDAL ``/vsi...`` path.
:func:`expand_inputs` only looks at names and JSON; :func:`open_input` opens one scene.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sitewatch.imagery.errors import InputError, SitewatchError, UsageError
from sitewatch.imagery.scenes.scene import (
    BAND_PATTERN,
    RASTER_SUFFIXES,
    Scene,
    band_name_in,
    open_band_files,
    open_scene,
)

LIST_SUFFIXES = (".txt", ".list")
STAC_SUFFIXES = (".json", ".geojson")
#: URL schemes and the GDAL virtual file system that reads each.
URL_PREFIXES = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/"}
#: STAC ``eo:bands`` common names of the Sentinel-2 bands; red edge is ambiguous (B05-B07), so absent.
S2_COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "nir": "B08",
    "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12",
}
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual"}


@dataclass(frozen=True)
class SceneInput:
    """One scene to open: a raster/band-directory ``path``, or STAC ``assets``, never both.

    Attributes:
        source: What the user named (``a.tif``, ``items.json#ITEM_ID``), for messages.
        name: The scene's name (file stem, directory name or STAC item id).
        path: A raster file, a GDAL ``/vsi...`` path or a band directory; ``None`` for assets.
        assets: ``(band name, GDAL path)`` pairs of a STAC item's single-band assets.
    """

    source: str
    name: str
    path: str | None = None
    assets: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.path is None) == (not self.assets):
            raise UsageError(f"{self.source}: a scene input needs either a path or band assets, not both")


def gdal_path(href: str) -> str:
    """Convert a URL to the GDAL virtual path that reads it (``s3://b/k`` -> ``/vsis3/b/k``)."""
    for prefix, vsi in URL_PREFIXES.items():
        if href.startswith(prefix):
            return vsi + (href if vsi == "/vsicurl/" else href[len(prefix) :])
    return href[len("file://") :] if href.startswith("file://") else href


def _is_url(text: str) -> bool:
    """A URL or a GDAL virtual path: taken as given, never looked for on the local disk."""
    return text.startswith("/vsi") or text.startswith(tuple(URL_PREFIXES))


def _stem(text: str) -> str:
    return Path(text.split("?", 1)[0].rstrip("/")).stem


def expand_inputs(items: Sequence[str | Path], *, recursive: bool = False) -> list[SceneInput]:
    """Expand command-line INPUTs into scenes, in the order given (globs and directories sorted).

    Args:
        items: Raster files, directories, glob patterns, list files, STAC JSON files or URLs.
        recursive: Walk subdirectories of directories, and let ``**`` in patterns match them.

    Raises:
        InputError: a path is missing, a directory holds nothing usable, a list entry is bad,
            or a JSON file is not STAC.
        UsageError: a pattern matches nothing, or a scene is named twice.
    """
    out: list[SceneInput] = []
    for item in items:
        out.extend(_expand(str(item), recursive, frozenset()))
    seen: dict[str, SceneInput] = {}
    for inp in out:
        key = _identity(inp)
        if key in seen:
            first = seen[key].source
            said = "given twice" if first == inp.source else f"the same scene as {first}"
            raise UsageError(f"{inp.source}: {said}; name each scene once")
        seen[key] = inp
    return out


def open_input(inp: SceneInput, model_bands: Sequence[str], bands_flag: Sequence[str] | None = None) -> Scene:
    """Open and validate one expanded input for a model that takes ``model_bands``.

    Raises:
        InputError: the scene cannot be read or its bands do not fit the model; the message
            names ``inp.source`` (the STAC file and item id for STAC scenes).
        UsageError: ``bands_flag`` does not fit the scene.
    """
    try:
        if inp.path is None:
            return open_band_files(inp.name, inp.source, inp.assets, model_bands, bands_flag)
        return replace(open_scene(inp.path, model_bands, bands_flag), name=inp.name, source=inp.source)
    except InputError as exc:
        # Name what the user named: the STAC item of an asset, not only the asset's path.
        if exc.path.startswith(inp.source) or gdal_path(inp.source) == inp.path:
            raise
        raise type(exc)(inp.source, f"{exc.path}: {exc.reason}") from None


def _identity(inp: SceneInput) -> str:
    """What a scene reads, so that one scene named two ways is caught."""
    paths = [inp.path] if inp.path is not None else sorted(p for _, p in inp.assets)
    return "|".join(p if p.startswith("/vsi") else str(Path(p).resolve()) for p in paths)


def _expand(text: str, recursive: bool, lists: frozenset[Path]) -> list[SceneInput]:
    if text.startswith("@"):
        return _read_list(Path(text[1:]), recursive, lists)
    if _is_url(text):
        if text.split("?", 1)[0].lower().endswith(STAC_SUFFIXES):
            raise UsageError(f"{text}: remote STAC JSON is not read directly; download it and name the file")
        return [SceneInput(text, _stem(text), gdal_path(text))]
    p = Path(text)
    if not p.exists() and any(c in text for c in "*?["):
        return _glob(text, recursive, lists)
    if not p.exists():
        raise InputError(p, "no such file or directory")
    if p.is_dir():
        found = _scan_dir(p, recursive)
        if not found:
            raise InputError(p, _empty_dir_reason(p, recursive))
        return found
    if p.suffix.lower() in LIST_SUFFIXES:
        return _read_list(p, recursive, lists)
    if p.suffix.lower() in STAC_SUFFIXES:
        return _read_stac(p)
    return [SceneInput(text, p.stem, text)]


def _is_band_dir(files: Iterable[Path]) -> bool:
    return any(band_name_in(f.name) for f in files)


def _rasters(p: Path) -> list[Path]:
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)


def _scan_dir(p: Path, recursive: bool) -> list[SceneInput]:
    """A band directory is one scene; otherwise each raster file is (and, if recursive, each subdirectory's)."""
    files = _rasters(p)
    if _is_band_dir(files):
        return [SceneInput(str(p), p.name, str(p))]
    out = [SceneInput(str(f), f.stem, str(f)) for f in files]
    if recursive:
        for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
            out.extend(_scan_dir(sub, recursive))
    return out


def _empty_dir_reason(p: Path, recursive: bool) -> str:
    if not recursive and any(f.suffix.lower() in RASTER_SUFFIXES for f in p.rglob("*")):
        return "directory holds no raster files, but its subdirectories do; pass --recursive to take them"
    return f"directory holds no raster files ({'/'.join(RASTER_SUFFIXES)}); name scene files or a band directory"


def _glob(pattern: str, recursive: bool, lists: frozenset[Path]) -> list[SceneInput]:
    """Sorted matches that are raster files, STAC JSON files or band directories."""
    out: list[SceneInput] = []
    matches = sorted(glob.glob(pattern, recursive=recursive))
    band_dirs: dict[Path, bool] = {}  # directory -> is a band directory, each looked at once
    taken: set[Path] = set()
    for m in map(Path, matches):
        folder = m if m.is_dir() else m.parent
        if folder not in band_dirs:
            band_dirs[folder] = _is_band_dir(_rasters(folder))
        if band_dirs[folder] and (m.is_dir() or m.suffix.lower() in RASTER_SUFFIXES):
            if folder not in taken:  # a band file stands for its directory, which is the scene
                taken.add(folder)
                out.append(SceneInput(str(folder), folder.name, str(folder)))
        elif m.is_file() and m.suffix.lower() in RASTER_SUFFIXES + STAC_SUFFIXES:
            out.extend(_expand(str(m), recursive, lists))
    if not out:
        hint = "" if recursive or "**" not in pattern else " (** needs --recursive)"
        found = f"{len(matches)} path(s) but no raster file, band directory or STAC file" if matches else "nothing"
        raise UsageError(
            f"{pattern}: pattern matches {found}{hint}; check the pattern (quote it so the shell does not expand it)"
        )
    return out


def _read_list(p: Path, recursive: bool, lists: frozenset[Path]) -> list[SceneInput]:
    """One path, pattern or URL per line; blank lines and ``#`` lines skipped; relative to the list."""
    if not p.is_file():
        raise InputError(p, "no such list file")
    if p.resolve() in lists:
        raise UsageError(f"{p}: list file includes itself")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read list file ({exc}); expected UTF-8 text, one path per line") from None
    out: list[SceneInput] = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = entry if _is_url(entry) or os.path.isabs(entry) else str(p.parent / entry)
        try:
            out.extend(_expand(target, recursive, lists | {p.resolve()}))
        except InputError as exc:
            raise InputError(p, f"line {number}: {entry}: {exc.reason}") from None
        except SitewatchError as exc:
            raise UsageError(f"{p}: line {number}: {exc}") from None
    return out


def _read_stac(p: Path) -> list[SceneInput]:
    expected = 'expected a STAC Item ("type": "Feature" with "stac_version") or an ItemCollection of them'
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(p, f"not valid JSON ({exc}); {expected}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    features = [doc] if kind == "Feature" else doc.get("features") if kind == "FeatureCollection" else None
    if not isinstance(features, list) or not all(isinstance(f, dict) and "stac_version" in f for f in features):
        raise InputError(p, f"not STAC: {expected}")
    if not features:
        raise InputError(p, "STAC ItemCollection has no Items")
    return [_stac_item(p, item, n) for n, item in enumerate(features)]


def _stac_item(p: Path, item: dict[str, Any], n: int) -> SceneInput:
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise InputError(p, f"STAC Item {n + 1} has no id; {p.name} is not valid STAC")
    source = f"{p}#{item_id}"
    assets = item.get("assets")
    bands: dict[str, str] = {}
    data: list[tuple[str, str]] = []
    for key, asset in (assets.items() if isinstance(assets, dict) else []):
        if not isinstance(asset, dict) or not _is_raster(asset):
            continue
        href = _href(asset.get("href"), p.parent, source, key)
        data.append((key, href))
        band = _asset_band(key, asset)
        if band and band not in bands:  # first wins, e.g. the GeoTIFF before its JP2 copy
            bands[band] = href
    if bands:
        return SceneInput(source, item_id, assets=tuple(sorted(bands.items())))
    if len(data) == 1:
        return SceneInput(source, item_id, data[0][1])
    keys = ", ".join(k for k, _ in data) or "none"
    raise InputError(
        source,
        f"no asset names a band (raster assets: {keys}); expected asset keys such as B02, or "
        "eo:bands names/common names (blue, green, red, nir...), or a single multi-band data asset",
    )


def _is_raster(asset: dict[str, Any]) -> bool:
    roles = set(asset.get("roles") or ())
    if roles & _NOT_DATA_ROLES and "data" not in roles:
        return False
    href = str(asset.get("href", "")).split("?", 1)[0].lower()
    kind = str(asset.get("type", "")).lower()
    return kind.startswith(("image/tiff", "image/jp2")) or href.endswith((".tif", ".tiff", ".jp2")) or "data" in roles


def _asset_band(key: str, asset: dict[str, Any]) -> str | None:
    """The Sentinel-2 band an asset holds: by key, by its one band's name, or by its common name."""
    if BAND_PATTERN.fullmatch(key):
        return key.upper()
    entries = asset.get("eo:bands") or asset.get("bands")
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        return None  # a multi-band asset (e.g. a true-colour composite) is no single band
    name, common = entries[0].get("name"), entries[0].get("common_name") or entries[0].get("eo:common_name")
    if isinstance(name, str) and BAND_PATTERN.fullmatch(name):
        return name.upper()
    return S2_COMMON_NAMES.get(common) if isinstance(common, str) else None


def _href(href: object, base: Path, source: str, key: str) -> str:
    if not isinstance(href, str) or not href:
        raise InputError(source, f"asset {key} has no href; the STAC item is not valid")
    if _is_url(href):
        return gdal_path(href)
    local = gdal_path(href)  # file:// -> path
    path = Path(local) if os.path.isabs(local) else base / local
    if not path.exists():
        raise InputError(source, f"asset {key} points to {path}, which does not exist")
    return os.path.normpath(path)
