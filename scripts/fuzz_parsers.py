"""Fuzz the label parsers (GeoJSON, COCO JSON) and the config parser with hypothesis.

    python scripts/fuzz_parsers.py --examples 20000 --seed 1
    python scripts/fuzz_parsers.py --seconds 300 --target geojson --target config
    python scripts/fuzz_parsers.py --examples 500 --seed 7 --verbose

Each generated input is written to a file, as the CLI would read it, and parsed:
``geojson`` and ``coco`` files by :func:`sitewatch.training.labels.read_labels` with one small
GeoTIFF scene (64 x 64 pixels of 10 m in UTM 33N, written to a temporary directory) and
drawn :class:`sitewatch.training.labels.LabelOptions`; ``config`` files (with drawn ``--set``
overrides) by :func:`sitewatch.training.config.load_config`. Inputs are valid documents with a few
mutations (keys dropped, values replaced by arbitrary JSON or YAML, coordinates swapped,
scaled to metres or made NaN, rings opened), arbitrary JSON values (NaN and Infinity
included), truncated text, token soup and raw bytes.

Every input must either load (and then give finite boxes inside the scene) or raise a
:class:`sitewatch.imagery.errors.SitewatchError` whose message is one line, names the file (label
file and config errors) and stays short; the CLI prints that line and exits with the
error's exit code. Anything else (another exception type, a multi-line or nameless
message, a Python warning, which the CLI would print as extra lines, or a bad box) is a
crash: hypothesis shrinks it, the script prints the smallest failing input with its
traceback and exits 1. With ``--seconds`` each target runs in batches of different seeds
until the time is spent (or ``--examples`` per target, whichever comes first).

Prints per target: examples, loaded, clean SitewatchError, crashes and seconds (and with
``--verbose`` the count of each error type). Exit status: 0 when nothing crashed, 1
otherwise. No atheris: hypothesis is the test dependency already installed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sitewatch.imagery.errors import InputError, SitewatchError
from sitewatch.imagery.scenes.georef import pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import Scene, open_scene
from sitewatch.training.config import Config, config_dict, load_config, parse_override
from sitewatch.training.labels import LabelOptions, LabelSet, read_labels

TARGETS = ("geojson", "coco", "config")
BANDS = ("B02", "B03", "B04", "B08")
#: The fuzzed scene: 64 x 64 pixels of 10 m whose upper-left corner is E 500000, N 4800000 in UTM 33N.
SCENE_TRANSFORM = Affine(10, 0, 500_000, 0, -10, 4_800_000)
SCENE_SIZE = 64
#: Longest error message accepted as "one clear line" (a summary lists at most 3 labels per kind).
MAX_MESSAGE = 1500
#: Examples per hypothesis run when running against the clock.
BATCH = 500

# --- inputs ---------------------------------------------------------------------------------------

#: Keys and text values of the formats, so arbitrary values often look like the real thing.
KEYS = (
    "type", "features", "geometry", "coordinates", "properties", "class", "status", "id", "crs", "name",
    "images", "annotations", "categories", "bbox", "file_name", "width", "height", "image_id", "category_id",
)
WORDS = (
    "FeatureCollection", "Feature", "Point", "MultiPoint", "Polygon", "MultiPolygon", "LineString",
    "GeometryCollection", "vessel", "kiln", "Kiln", "ship", "", " ", "confirmed", "rejected", "unsure",
    "maybe", "EPSG:32633", "EPSG:4326", "EPSG:5703", "OGC:CRS84", "scene.tif", "other.png", "name",
)
CRS_NAMES = ("EPSG:32633", "EPSG:4326", "EPSG:3857", "urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:5703", "EPSG:999999", "x")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
#: Arbitrary JSON values (what Python's json reads: NaN and Infinity too).
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def _coordinate(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Mostly inside ``lo..hi``, sometimes anywhere."""
    inside = st.floats(lo, hi)
    return st.one_of(inside, inside, inside, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 500_000.0]))


@st.composite
def geojson_docs(draw: st.DrawFn, bounds: tuple[float, float, float, float]) -> Any:
    """A valid GeoJSON FeatureCollection (or single Feature) of labels around ``bounds`` (lon/lat)."""
    lon0, lat0, lon1, lat1 = bounds
    pad_lon, pad_lat = (lon1 - lon0) / 4, (lat1 - lat0) / 4
    lon = _coordinate(lon0 - pad_lon, lon1 + pad_lon)
    lat = _coordinate(lat0 - pad_lat, lat1 + pad_lat)
    features = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["Point", "Polygon", "MultiPolygon", "MultiPoint"]))
        if kind == "Point":
            geometry: Any = {"type": "Point", "coordinates": [draw(lon), draw(lat)]}
        elif kind == "MultiPoint":
            geometry = {"type": "MultiPoint", "coordinates": [[draw(lon), draw(lat)] for _ in range(draw(st.integers(1, 3)))]}
        else:
            xa, xb, ya, yb = draw(lon), draw(lon), draw(lat), draw(lat)
            ring = [[xa, ya], [xb, ya], [xb, yb], [xa, yb], [xa, ya]]
            geometry = {"type": "Polygon", "coordinates": [ring]}
            if kind == "MultiPolygon":
                geometry = {"type": "MultiPolygon", "coordinates": [[ring]]}
        props: dict[str, Any] = {}
        if draw(st.integers(0, 4)):
            props["class"] = draw(st.sampled_from(["vessel", "kiln", "Kiln", "ship"]))
        if not draw(st.integers(0, 4)):
            props["status"] = draw(st.sampled_from(["confirmed", "rejected", "unsure", "unreviewed", "maybe"]))
        feat: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
        if draw(st.booleans()):
            feat["id"] = draw(st.integers(0, 99) | st.text(max_size=6))
        features.append(feat)
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if not draw(st.integers(0, 5)):
        doc["crs"] = {"type": "name", "properties": {"name": draw(st.sampled_from(CRS_NAMES) | st.text(max_size=10))}}
    if features and not draw(st.integers(0, 6)):
        return features[0]
    return doc


@st.composite
def coco_docs(draw: st.DrawFn) -> Any:
    """A valid COCO detection document whose first image is usually the fuzzed scene."""
    names = st.sampled_from(["scene.tif", "scene_01.png", "images/scene.jpg", "other.png"])
    sizes = st.sampled_from([SCENE_SIZE, 100]) | st.integers(-2, 10**6)
    images = [
        {"id": k, "file_name": draw(names | st.text(max_size=8)), "width": draw(sizes), "height": draw(sizes)}
        for k in range(1, draw(st.integers(1, 3)) + 1)
    ]
    categories = [{"id": 1, "name": "vessel"}, {"id": 2, "name": "Kiln"}, {"id": 3, "name": draw(st.sampled_from(WORDS))}]
    number = st.floats(-10, 80) | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**400), 10**400)
    annotations = [
        {
            "id": draw(st.just(k) | st.text(max_size=8)),
            "image_id": draw(st.sampled_from([im["id"] for im in images])),
            "category_id": draw(st.integers(1, 3)),
            "bbox": [draw(number) for _ in range(4)],
        }
        for k in range(draw(st.integers(0, 5)))
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _section_fields() -> dict[str, list[str]]:
    """Config section -> its keys, read from the pydantic models."""
    out = {}
    for name, f in Config.model_fields.items():
        model = f.annotation
        out[name] = list(model.model_fields) if isinstance(model, type) and hasattr(model, "model_fields") else []
    return out


SECTIONS = _section_fields()
MINIMAL_CONFIG = {"model": {"name": "m", "classes": ["kiln", "vessel"], "bands": ["red", "green", "blue"], "pixel_size_m": 1.0}}
#: Every key's default value (what a valid config may hold).
DEFAULTS = config_dict(Config.model_validate(MINIMAL_CONFIG))
config_values = scalars | st.lists(scalars, max_size=3) | st.sampled_from([0, -1, 1, 0.5, 32, 64, 256, 4096, "auto"])


@st.composite
def config_docs(draw: st.DrawFn) -> Any:
    """The minimal valid config with a few known keys set to their default or to a drawn value."""
    doc = json.loads(json.dumps(MINIMAL_CONFIG))
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(sorted(SECTIONS)))
        key = draw(st.sampled_from(SECTIONS[section]))
        value = DEFAULTS[section][key] if draw(st.booleans()) else draw(config_values)
        doc.setdefault(section, {})[key] = value
    return doc


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and list indexes) into ``doc``."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any]) -> Any:
    """``doc`` (a fresh copy) with one mutation at a drawn path."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return draw(values)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    value = parent[key]
    op = draw(st.sampled_from(["drop", "replace", "swap", "metres", "nan", "open", "wrap"]))
    if op == "drop":
        del parent[key]
    elif op == "swap" and isinstance(value, list) and len(value) >= 2:
        value[0], value[1] = value[1], value[0]
    elif op == "metres" and isinstance(value, int | float) and not isinstance(value, bool):
        parent[key] = value * 100_000
    elif op == "nan":
        parent[key] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 10**400]))
    elif op == "open" and isinstance(value, list) and len(value) >= 2:
        value.pop()
    elif op == "wrap":
        parent[key] = [value]
    else:
        parent[key] = draw(values)
    return doc


@st.composite
def mutated(draw: st.DrawFn, docs: st.SearchStrategy[Any], values: st.SearchStrategy[Any]) -> Any:
    """A document of ``docs`` with 0 to 3 mutations."""
    doc = draw(docs)
    for _ in range(draw(st.integers(0, 3))):
        doc = _mutate(draw, doc, values)
    return doc


def _dump_json(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # NaN and Infinity as Python writes them


def _truncate(data: bytes, draw: st.DrawFn) -> bytes:
    return data[: draw(st.integers(0, len(data)))]


@st.composite
def json_files(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """Bytes of a label file: a (mutated) document, any JSON value, truncated JSON or raw bytes."""
    choice = draw(st.integers(0, 9))
    if choice <= 5:
        return _dump_json(draw(mutated(docs, json_values)))
    if choice <= 7:
        return _dump_json(draw(json_values))
    if choice == 8:
        return _truncate(_dump_json(draw(docs)), draw)
    return draw(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))


YAML_TOKENS = (
    "model:", "train:", "chips:", "\n", "\n  ", "  ", "- ", "[", "]", "{", "}", ": ", ",", "name: m", "classes: [a]",
    "bands: [r]", "pixel_size_m: 1", "epochs: 3", "&a ", "*a", "!!python/object ", "!!binary ", "'", '"', "\t", "#",
    "...", "---", ".nan", ".inf", "~", "? ", "|", ">", "%YAML 1.1\n", "\x00", "\ufeff", "1e999", "0x1F",
)


@st.composite
def config_files(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """Bytes of a config file and ``--set`` overrides."""
    choice = draw(st.integers(0, 9))
    if choice <= 5:
        doc = draw(mutated(config_docs(), config_values))
        data = yaml.safe_dump(doc, sort_keys=False).encode() if doc is not None else b""
    elif choice <= 7:
        data = "".join(draw(st.lists(st.sampled_from(YAML_TOKENS), max_size=30))).encode()
    elif choice == 8:
        data = _truncate(yaml.safe_dump(draw(config_docs())).encode(), draw)
    else:
        data = draw(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
    keys = [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]
    override = st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(keys) | st.text(max_size=10),
        st.text(max_size=10) | st.sampled_from(["3", "-1", "0", "[a, b]", "{x: 1}", ".nan", "null"]),
    ) | st.text(max_size=12)
    return data, draw(st.lists(override, max_size=2))


@st.composite
def label_options(draw: st.DrawFn, scene: Scene) -> LabelOptions:
    """Options as ``train``/``evaluate`` build them; mostly the defaults."""
    return LabelOptions(
        classes=draw(st.sampled_from([("vessel", "kiln"), ("kiln",)])),
        point_box_m=draw(st.sampled_from([50.0] * 36 + [1e-9, 1e9, math.nan, -1.0])),
        crs=draw(st.sampled_from([None] * 45 + ["EPSG:32633", "EPSG:4326", "EPSG:3857", "EPSG:5703", "nonsense"])),
        skip_problems=draw(st.booleans()),
        class_map=draw(st.sampled_from([(), (("ship", "vessel"),)])),
        coco_bind=draw(st.sampled_from([(), (("other.png", scene.source),), (("other.png", "/no/such.tif"),)])),
    )


# --- checks ---------------------------------------------------------------------------------------


def _reason(exc: SitewatchError, path: Path | None) -> str:
    """``LabelError: not JSON (...)``: the error type and the start of its message, for --verbose."""
    message = str(exc)
    if path is not None:
        message = message.replace(f"{path}: ", "", 1)
    return f"{type(exc).__name__}: {''.join('N' if c.isdigit() else c for c in message[:48])}"


class CrashError(Exception):
    """An input that breaks the contract: the exception or the reason, with its traceback."""


def _check_message(exc: SitewatchError, path: Path | None) -> None:
    """Raise :class:`CrashError` unless ``exc`` reads as one short line (naming ``path`` when given)."""
    message = str(exc)
    if not message or "\n" in message or "\r" in message or len(message) > MAX_MESSAGE:
        raise CrashError(f"{type(exc).__name__} message is not one short line: {message!r}")
    if path is not None and str(path) not in message:
        raise CrashError(f"{type(exc).__name__} message does not name {path}: {message!r}")


def _check_result(result: LabelSet, scene: Scene) -> None:
    """Raise :class:`CrashError` unless every box and negative is finite and inside the scene."""
    for sl in result.scenes:
        boxes = sl.boxes
        if not np.isfinite(boxes).all() or not np.isfinite(sl.negatives).all():
            raise CrashError(f"non-finite boxes or negatives: {boxes.tolist()} {sl.negatives.tolist()}")
        inside = (
            (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= scene.width) & (boxes[:, 3] <= scene.height)
            & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
        )
        if not inside.all():
            raise CrashError(f"boxes outside the {scene.width}x{scene.height} scene: {boxes[~inside].tolist()}")
        if len(sl.labels) != len(boxes) or not ((sl.labels >= 0) & (sl.labels < 2)).all():
            raise CrashError(f"bad class indexes {sl.labels.tolist()} for {len(boxes)} boxes")


def _guarded(call: Callable[[], str]) -> str:
    """Run ``call``; a Python warning escaping it is a :class:`CrashError` (the CLI would print it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = call()
    if caught:
        w = caught[0]
        raise CrashError(f"a warning escaped: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")
    return outcome


@dataclass
class Target:
    """One parser under fuzz: how to draw an input and how to feed it."""

    name: str
    inputs: st.SearchStrategy[Any]
    #: Feeds one input; returns ``loaded`` or the SitewatchError's type and reason (:func:`_reason`).
    feed: Callable[[Any], str]


def label_target(name: str, docs: st.SearchStrategy[Any], workdir: Path, scene: Scene) -> Target:
    """A label-file target: ``docs`` written to ``labels.<ext>`` and read onto ``scene``."""
    path = workdir / ("labels.geojson" if name == "geojson" else "coco.json")

    def feed(case: tuple[bytes, LabelOptions]) -> str:
        data, options = case
        path.write_bytes(data)

        def call() -> str:
            try:
                result = read_labels([path], [scene], options)
            except SitewatchError as exc:
                _check_message(exc, path if isinstance(exc, InputError) else None)
                return _reason(exc, path)
            _check_result(result, scene)
            return "loaded"

        return _guarded(call)

    return Target(name, st.tuples(json_files(docs), label_options(scene)), feed)


def config_target(workdir: Path) -> Target:
    """The config target: a YAML file and ``--set`` overrides given to ``load_config``."""
    path = workdir / "config.yaml"

    def feed(case: tuple[bytes, list[str]]) -> str:
        data, sets = case
        path.write_bytes(data)

        def call() -> str:
            try:
                overrides = [parse_override(s) for s in sets]
            except SitewatchError as exc:
                _check_message(exc, None)
                return _reason(exc, None)
            try:
                cfg = load_config(path, overrides)
            except SitewatchError as exc:
                _check_message(exc, path)
                return _reason(exc, path)
            config_dict(cfg)
            return "loaded"

        return _guarded(call)

    return Target("config", config_files(), feed)


def write_scene(directory: Path) -> Scene:
    """The fuzzed scene: a 64 x 64, 4-band uint16 GeoTIFF in UTM 33N."""
    path = directory / "scene.tif"
    data = np.full((len(BANDS), SCENE_SIZE, SCENE_SIZE), 500, dtype="uint16")
    profile = {
        "driver": "GTiff", "width": SCENE_SIZE, "height": SCENE_SIZE, "count": len(BANDS), "dtype": "uint16",
        "crs": "EPSG:32633", "transform": SCENE_TRANSFORM,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return open_scene(path, BANDS)


def lonlat_bounds(scene: Scene) -> tuple[float, float, float, float]:
    """``lon0, lat0, lon1, lat1`` of the scene's corners."""
    cols = np.array([0.0, scene.width, 0.0, scene.width])
    rows = np.array([0.0, 0.0, scene.height, scene.height])
    lon, lat = to_lonlat(scene.crs_wkt, *pixel_to_map(scene.affine, cols, rows))
    return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


def make_targets(names: Sequence[str], workdir: Path) -> list[Target]:
    """The targets called ``names``, sharing one scene written to ``workdir``."""
    scene = write_scene(workdir)
    docs = {"geojson": geojson_docs(lonlat_bounds(scene)), "coco": coco_docs()}
    return [config_target(workdir) if n == "config" else label_target(n, docs[n], workdir, scene) for n in names]


# --- running --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of one target (shrinking attempts included once something crashed)."""

    loaded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    seconds: float = 0.0
    #: The smallest failing input found and what went wrong.
    failure: tuple[Any, str] | None = None

    @property
    def examples(self) -> int:
        return self.loaded + sum(self.errors.values()) + self.crashes


def run_target(target: Target, examples: int, seconds: float | None, first_seed: int) -> Tally:
    """Fuzz ``target`` for ``examples`` inputs or ``seconds``, whichever ends first; stop at a crash."""
    tally = Tally()
    start = time.monotonic()
    batch_index = 0
    while tally.examples < examples and tally.failure is None:
        if seconds is not None and time.monotonic() - start >= seconds:
            break
        size = min(BATCH if seconds is not None else examples, examples - tally.examples)

        @settings(
            max_examples=size,
            deadline=None,
            database=None,
            derandomize=False,
            phases=(Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @seed(first_seed * 1_000_003 + batch_index)
        @given(target.inputs)
        def one(case: Any) -> None:
            try:
                outcome = target.feed(case)
            except CrashError as exc:
                tally.crashes += 1
                tally.failure = (case, f"{exc}\n{traceback.format_exc()}")
                raise
            except Exception as exc:
                tally.crashes += 1
                tally.failure = (case, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                raise
            if outcome == "loaded":
                tally.loaded += 1
            else:
                tally.errors[outcome] += 1

        try:
            one()
        except Exception:  # the failure (the shrunk input's, replayed last) is in tally.failure
            if tally.failure is None:
                raise
        batch_index += 1
    tally.seconds = time.monotonic() - start
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    """Fuzz the chosen targets and print a table; the exit status is 1 when something crashed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=None, help="inputs per target (default 1000, or no limit with --seconds)")
    ap.add_argument("--seconds", type=float, default=None, help="time per target; runs until spent or --examples")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (same seed, same inputs)")
    ap.add_argument("--target", action="append", choices=TARGETS, help="what to fuzz (repeat; default: all)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the 25 commonest errors (type and reason)")
    args = ap.parse_args(argv)
    if args.examples is not None:
        examples = args.examples
    else:
        examples = 1000 if args.seconds is None else sys.maxsize
    names = args.target or list(TARGETS)
    failed = False
    print(f"{'target':8} {'examples':>9} {'loaded':>8} {'SitewatchError':>15} {'crashes':>8} {'seconds':>8}")
    with tempfile.TemporaryDirectory(prefix="sitewatch-fuzz-") as tmp:
        for target in make_targets(names, Path(tmp)):
            tally = run_target(target, examples, args.seconds, args.seed)
            print(
                f"{target.name:8} {tally.examples:>9} {tally.loaded:>8} {sum(tally.errors.values()):>15} "
                f"{tally.crashes:>8} {tally.seconds:>8.1f}",
                flush=True,
            )
            if args.verbose:
                for kind, n in tally.errors.most_common(25):
                    print(f"    {kind}: {n}")
            if tally.failure is not None:
                failed = True
                case, why = tally.failure
                print(f"\nCRASH in {target.name} (smallest input found):\n{case!r}\n{why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
