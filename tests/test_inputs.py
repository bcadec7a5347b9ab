"""Tests for sitewatch.imagery.scenes.inputs: expanding INPUTs (files, directories, globs, lists, STAC, URLs) and opening them."""

from __future__ import annotations

import json
import re
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from sitewatch.imagery.errors import BandError, InputError, NotARasterError, UsageError
from sitewatch.imagery.scenes.inputs import SceneInput, expand_inputs, gdal_path, open_input
from sitewatch.imagery.scenes.scene import REMOTE_GDAL_OPTIONS, SceneReader

MODEL_BANDS = ("B02", "B03", "B04", "B08")


def _move(path: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return path.rename(dest)


def _band_dir(make_geotiff, d: Path, bands=MODEL_BANDS, size=16) -> Path:
    """Single-band files named by band; each band's pixels equal 10 * (its position + 1)."""
    for k, band in enumerate(bands):
        data = np.full((1, size, size), 10 * (k + 1), dtype="uint16")
        _move(make_geotiff(size, size, bands=1, data=data), d / f"T33UUP_20240105_{band}_10m.tif")
    return d


def _scene(make_geotiff, dest: Path, seed: int = 0, size: int = 16) -> Path:
    return _move(make_geotiff(size, size, bands=4, seed=seed), dest)


def _names(inputs: list[SceneInput]) -> list[str]:
    return [i.name for i in inputs]


# --- files and directories --------------------------------------------------------------


def test_raster_file_is_one_scene(make_geotiff):
    path = make_geotiff(16, 16, name="S2_20240105.tif")
    [inp] = expand_inputs([path])
    assert inp == SceneInput(str(path), "S2_20240105", str(path))
    scene = open_input(inp, MODEL_BANDS)
    assert (scene.name, scene.source, scene.width) == ("S2_20240105", str(path), 16)


def test_band_directory_stays_one_scene(tmp_path, make_geotiff):
    d = _band_dir(make_geotiff, tmp_path / "T33UUP_20240105")
    [inp] = expand_inputs([d])
    assert (inp.path, inp.name) == (str(d), "T33UUP_20240105")
    scene = open_input(inp, MODEL_BANDS)
    with SceneReader(scene) as reader:
        data, _ = reader.read(0, 0, 2, 2)
    assert data[:, 0, 0].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_directory_of_scene_files_gives_one_scene_per_file(tmp_path, make_geotiff):
    for name in ("c.tif", "a.tif", "b.TIF"):
        _scene(make_geotiff, tmp_path / "scenes" / name)
    (tmp_path / "scenes" / "notes.md").write_text("not a raster")
    inputs = expand_inputs([tmp_path / "scenes"])
    assert _names(inputs) == ["a", "b", "c"]
    assert open_input(inputs[1], MODEL_BANDS).source == str(tmp_path / "scenes" / "b.TIF")


def _mixed_tree(tmp_path: Path, make_geotiff) -> Path:
    root = tmp_path / "archive"
    _scene(make_geotiff, root / "top.tif")
    _scene(make_geotiff, root / "2024" / "jan.tif", seed=1)
    _band_dir(make_geotiff, root / "2024" / "T33UUP_20240220")
    _band_dir(make_geotiff, root / "2024" / "T33UUP_20240220" / "nested", bands=("B02",))  # inside a band dir: not walked
    (root / "empty").mkdir()
    _scene(make_geotiff, root / ".cache" / "hidden.tif")
    return root


def test_recursive_directory_mixes_scene_files_and_band_directories(tmp_path, make_geotiff):
    root = _mixed_tree(tmp_path, make_geotiff)

    assert _names(expand_inputs([root])) == ["top"]
    inputs = expand_inputs([root], recursive=True)

    assert _names(inputs) == ["top", "jan", "T33UUP_20240220"]
    assert inputs[2].path == str(root / "2024" / "T33UUP_20240220")
    scenes = [open_input(i, MODEL_BANDS) for i in inputs]
    assert [len(s.bands) for s in scenes] == [4, 4, 4]
    assert Path(scenes[2].bands[3].path).name == "T33UUP_20240105_B08_10m.tif"


def test_directory_with_rasters_only_below_asks_for_recursive(tmp_path, make_geotiff):
    _scene(make_geotiff, tmp_path / "root" / "sub" / "a.tif")
    with pytest.raises(InputError, match="--recursive") as info:
        expand_inputs([tmp_path / "root"])
    assert str(tmp_path / "root") in str(info.value)
    assert _names(expand_inputs([tmp_path / "root"], recursive=True)) == ["a"]


def test_directory_without_rasters_is_an_input_error(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(InputError, match="no raster files") as info:
        expand_inputs([tmp_path / "docs"], recursive=True)
    assert str(tmp_path / "docs") in str(info.value) and "--recursive" not in str(info.value)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file or directory") as info:
        expand_inputs([tmp_path / "nope.tif"])
    assert str(tmp_path / "nope.tif") in str(info.value)


# --- globs ------------------------------------------------------------------------------


def test_glob_is_expanded_sorted_to_files_and_band_directories(tmp_path, make_geotiff):
    for name in ("s_03.tif", "s_01.tif", "s_02.tif"):
        _scene(make_geotiff, tmp_path / "in" / name)
    _band_dir(make_geotiff, tmp_path / "in" / "s_00_bands")
    (tmp_path / "in" / "s_04.txt").write_text("ignored by the glob: not a raster")

    inputs = expand_inputs([str(tmp_path / "in" / "s_0*")])

    assert _names(inputs) == ["s_00_bands", "s_01", "s_02", "s_03"]
    assert inputs[0].path == str(tmp_path / "in" / "s_00_bands")


def test_recursive_glob_takes_band_files_as_their_directory(tmp_path, make_geotiff):
    root = _mixed_tree(tmp_path, make_geotiff)
    pattern = str(root / "**" / "*.tif")

    assert _names(expand_inputs([pattern])) == ["jan"]  # without --recursive, ** is * (one level)
    # Sorted matches, each band file standing for its directory (the glob names "nested" itself;
    # hidden directories are not matched).
    assert _names(expand_inputs([pattern], recursive=True)) == ["T33UUP_20240220", "nested", "jan", "top"]


def test_glob_without_match_is_a_usage_error(tmp_path):
    pattern = str(tmp_path / "*.tif")
    with pytest.raises(UsageError, match="pattern matches nothing") as info:
        expand_inputs([pattern])
    assert pattern in str(info.value)


# --- list files -------------------------------------------------------------------------


def test_list_file_with_comments_relative_paths_and_globs(tmp_path, make_geotiff):
    a = _scene(make_geotiff, tmp_path / "data" / "a.tif")
    _scene(make_geotiff, tmp_path / "data" / "more" / "b1.tif", seed=1)
    _scene(make_geotiff, tmp_path / "data" / "more" / "b2.tif", seed=2)
    _band_dir(make_geotiff, tmp_path / "data" / "bands")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "scenes.txt").write_text(
        "# scenes for January\n\n  ../data/a.tif  \n../data/more/b*.tif\n" + str(tmp_path / "data" / "bands") + "\n"
    )

    inputs = expand_inputs([lists / "scenes.txt"])

    assert _names(inputs) == ["a", "b1", "b2", "bands"]
    assert Path(inputs[0].path).resolve() == a.resolve()
    assert [open_input(i, MODEL_BANDS).width for i in inputs] == [16] * 4


def test_at_prefix_reads_any_file_as_a_list(tmp_path, make_geotiff):
    _scene(make_geotiff, tmp_path / "x.tif")
    (tmp_path / "scenes.csv").write_text("x.tif\n")
    assert _names(expand_inputs([f"@{tmp_path / 'scenes.csv'}"])) == ["x"]


def test_list_file_with_a_missing_entry_names_file_line_and_entry(tmp_path, make_geotiff):
    _scene(make_geotiff, tmp_path / "a.tif")
    listing = tmp_path / "scenes.list"
    listing.write_text("# two scenes\na.tif\n\nmissing_scene.tif\n")
    with pytest.raises(InputError) as info:
        expand_inputs([listing])
    msg = str(info.value)
    assert msg.startswith(f"{listing}: line 4: missing_scene.tif")
    assert "no such file" in msg and "\n" not in msg


def test_list_file_with_a_pattern_matching_nothing_is_a_usage_error(tmp_path):
    listing = tmp_path / "scenes.txt"
    listing.write_text("nothing_*.tif\n")
    with pytest.raises(UsageError, match=r"scenes.txt: line 1: .*nothing_\*\.tif"):
        expand_inputs([listing])


# --- STAC -------------------------------------------------------------------------------


def _item(item_id: str, assets: dict) -> dict:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": None, "properties": {},
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"], "assets": assets,
    }


def _band_asset(href: str, common_name: str) -> dict:
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"], "eo:bands": [{"name": common_name, "common_name": common_name}]}


EXTRAS = {  # never read: the thumbnail and metadata files do not even exist
    "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
    "granule_metadata": {"href": "meta.xml", "type": "application/xml", "roles": ["metadata"]},
    "visual": {"href": "tci.tif", "type": "image/tiff", "roles": ["visual"],
               "eo:bands": [{"common_name": c} for c in ("red", "green", "blue")]},
}


def _stac_collection(tmp_path: Path, make_geotiff) -> Path:
    """Two items with relative hrefs and common names only; the second has no NIR band."""
    folder = tmp_path / "stac"
    values = {"nir": 40, "red": 30, "green": 20, "blue": 10}  # written (and listed) out of model order
    for item in ("S2A_1", "S2B_2"):
        for common, value in values.items():
            data = np.full((1, 16, 16), value, dtype="uint16")
            _move(make_geotiff(16, 16, bands=1, data=data), folder / item / f"{common}.tif")
    first = {c: _band_asset(f"./S2A_1/{c}.tif", c) for c in values} | EXTRAS
    second = {c: _band_asset(f"S2B_2/{c}.tif", c) for c in ("blue", "green", "red")} | EXTRAS
    path = folder / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_item("S2A_1", first), _item("S2B_2", second)]}))
    return path


def test_stac_item_collection_maps_common_names_and_resolves_relative_hrefs(tmp_path, make_geotiff):
    path = _stac_collection(tmp_path, make_geotiff)

    first, second = expand_inputs([path])

    assert (first.name, first.source, first.path) == ("S2A_1", f"{path}#S2A_1", None)
    assert dict(first.assets) == {b: str(path.parent / "S2A_1" / f"{c}.tif")
                                  for b, c in zip(MODEL_BANDS, ("blue", "green", "red", "nir"), strict=True)}
    assert [b for b, _ in second.assets] == ["B02", "B03", "B04"]  # no thumbnail, metadata or visual
    scene = open_input(first, MODEL_BANDS)
    assert (scene.name, scene.source, scene.width, CRS.from_wkt(scene.crs_wkt)) == (
        "S2A_1", f"{path}#S2A_1", 16, CRS.from_epsg(32633))
    with SceneReader(scene) as reader:
        data, _ = reader.read(0, 0, 2, 2)
    assert data[:, 1, 1].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_stac_item_missing_a_band_names_file_item_and_band(tmp_path, make_geotiff):
    path = _stac_collection(tmp_path, make_geotiff)
    second = expand_inputs([path])[1]
    with pytest.raises(BandError) as info:
        open_input(second, MODEL_BANDS)
    msg = str(info.value)
    assert msg.startswith(f"{path}#S2B_2: has 3 band(s) (B02, B03, B04)")
    assert "missing: B08" in msg


def test_stac_bands_by_asset_key_and_stac_1_1_band_name(tmp_path, make_geotiff):
    for band in ("b02", "b03", "b04", "near"):
        _move(make_geotiff(16, 16, bands=1), tmp_path / f"{band}.jp2.tif")
    assets = {k: {"href": f"{k}.jp2.tif"} for k in ("b02", "b03", "b04")}
    assets["near"] = {"href": "near.jp2.tif", "roles": ["data"], "bands": [{"name": "B08"}]}
    path = tmp_path / "item.geojson"
    path.write_text(json.dumps(_item("one", assets) | {"stac_version": "1.1.0"}))

    [inp] = expand_inputs([path])

    assert [(b, Path(p).name) for b, p in inp.assets] == [
        ("B02", "b02.jp2.tif"), ("B03", "b03.jp2.tif"), ("B04", "b04.jp2.tif"), ("B08", "near.jp2.tif")]


def test_stac_item_with_one_multiband_asset_is_a_path_scene(tmp_path, make_geotiff):
    tif = _scene(make_geotiff, tmp_path / "cog" / "scene.tif")
    path = tmp_path / "item.json"
    path.write_text(json.dumps(_item("S2_multi", {"image": {"href": "cog/scene.tif", "roles": ["data"]}} | EXTRAS)))

    [inp] = expand_inputs([path])

    assert (inp.path, inp.assets, inp.name) == (str(tif), (), "S2_multi")
    scene = open_input(inp, MODEL_BANDS)
    assert (scene.name, scene.source, [b.index for b in scene.bands]) == ("S2_multi", f"{path}#S2_multi", [1, 2, 3, 4])
    with pytest.raises(BandError) as info:
        open_input(inp, (*MODEL_BANDS, "B11"))
    assert str(info.value).startswith(f"{path}#S2_multi: {tif}: has 4 band(s)")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}), "not STAC"),
        (json.dumps([1, 2]), "not STAC"),
    ],
)
def test_json_that_is_not_stac_is_an_input_error(tmp_path, text, needle):
    path = tmp_path / "labels.geojson"
    path.write_text(text)
    with pytest.raises(InputError, match=needle) as info:
        expand_inputs([path])
    assert str(path) in str(info.value) and "STAC Item" in str(info.value)


def test_stac_asset_pointing_to_a_missing_file_names_item_and_asset(tmp_path):
    path = tmp_path / "item.json"
    path.write_text(json.dumps(_item("gone", {"B02": {"href": "nowhere/B02.tif"}})))
    with pytest.raises(InputError, match=r"item\.json#gone: asset B02 points to .*nowhere/B02\.tif"):
        expand_inputs([path])


# --- URLs and GDAL virtual paths ---------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("https://e.org/a/B02.tif?sig=1", "/vsicurl/https://e.org/a/B02.tif?sig=1"),
        ("http://e.org/B02.tif", "/vsicurl/http://e.org/B02.tif"),
        ("s3://bucket/key/B02.tif", "/vsis3/bucket/key/B02.tif"),
        ("gs://bucket/B02.tif", "/vsigs/bucket/B02.tif"),
        ("az://container/B02.tif", "/vsiaz/container/B02.tif"),
        ("/vsizip//data/x.zip/B02.tif", "/vsizip//data/x.zip/B02.tif"),
    ],
)
def test_urls_become_gdal_paths(href, expected):
    assert gdal_path(href) == expected
    [inp] = expand_inputs([href])
    assert (inp.path, inp.source, inp.name) == (expected, href, "B02")


def test_zipped_geotiff_is_read_through_vsizip(tmp_path, make_geotiff):
    tif = make_geotiff(40, 24, bands=4, seed=7)
    archive = tmp_path / "delivery.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tif, "inner/scene.tif")
    vsi = f"/vsizip/{archive}/inner/scene.tif"

    [inp] = expand_inputs([vsi])
    scene = open_input(inp, MODEL_BANDS)

    assert (scene.name, scene.width, scene.height) == ("scene", 40, 24)
    with SceneReader(scene) as reader:
        got, _ = reader.read(0, 0, 40, 24)
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(got, src.read().astype(np.float32))


def test_the_same_scene_named_twice_is_a_usage_error(tmp_path, make_geotiff):
    a = _scene(make_geotiff, tmp_path / "scenes" / "a.tif")
    with pytest.raises(UsageError, match="given twice"):
        expand_inputs([a, a])
    with pytest.raises(UsageError) as info:
        expand_inputs([tmp_path / "scenes", tmp_path / "scenes" / ".." / "scenes" / "a.tif"])
    msg = str(info.value)
    assert msg.startswith(str(tmp_path / "scenes" / ".." / "scenes" / "a.tif")) and f"same scene as {a}" in msg


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with single byte ranges, as /vsicurl/ needs."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        data = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        start, end = 0, len(data) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            self.server.ranges.append(self.headers["Range"])  # type: ignore[attr-defined]
            start, end = int(m.group(1)), min(int(m.group(2) or end), end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server(monkeypatch):
    """A Range-capable HTTP server on a thread; register bodies in ``server.files[url_path]``.

    GDAL blocks this process's server thread while it lists a remote directory (seen with GDAL
    3.10), which GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR prevents; the timeout turns a
    regression there into a slow test instead of a hung one.
    """
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "10")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files, server.ranges = {}, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_stac_item_over_http_reads_the_same_pixels_as_the_local_file(tmp_path, make_geotiff, http_server):
    tif = make_geotiff(48, 32, bands=4, seed=11)
    http_server.files["/cogs/scene.tif"] = tif.read_bytes()
    url = f"http://127.0.0.1:{http_server.server_port}/cogs/scene.tif"
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(_item("S2_remote", {"data": {"href": url, "type": "image/tiff", "roles": ["data"]}})))

    [inp] = expand_inputs([path])
    scene = open_input(inp, MODEL_BANDS)

    assert inp.path == f"/vsicurl/{url}"
    assert (scene.width, scene.height, CRS.from_wkt(scene.crs_wkt)) == (48, 32, CRS.from_epsg(32633))
    with SceneReader(scene) as reader:
        got, valid = reader.read(5, 3, 30, 20)
    with rasterio.open(tif) as src:
        expected = src.read(window=((3, 23), (5, 35))).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert valid.all() and http_server.ranges  # read in byte ranges, not as one download


def test_unreachable_url_is_one_quick_input_error(monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_CONNECTTIMEOUT", "2")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")
    [inp] = expand_inputs(["http://127.0.0.1:9/x.tif"])
    started = time.monotonic()
    with pytest.raises(NotARasterError) as info:
        open_input(inp, MODEL_BANDS)
    msg = str(info.value)
    assert time.monotonic() - started < 10
    assert "http://127.0.0.1:9/x.tif" in msg and "cannot be opened" in msg and "\n" not in msg


def test_unreachable_stac_asset_names_stac_file_and_item(tmp_path):
    assets = {b: {"href": f"http://127.0.0.1:9/{b}.tif"} for b in MODEL_BANDS}
    path = tmp_path / "items.json"
    path.write_text(json.dumps(_item("S2A_far", assets)))
    [inp] = expand_inputs([path])
    with pytest.raises(NotARasterError) as info:
        open_input(inp, MODEL_BANDS)
    assert str(info.value).startswith(f"{path}#S2A_far: /vsicurl/http://127.0.0.1:9/B02.tif: cannot be opened")


def test_remote_opens_use_gdal_options_but_the_environment_wins(monkeypatch, http_server, make_geotiff):
    http_server.files["/a.tif"] = make_geotiff(16, 16).read_bytes()
    seen: list[dict] = []
    real_open = rasterio.open

    def spy(*args, **kwargs):
        seen.append(rasterio.env.getenv())
        return real_open(*args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "7")
    [inp] = expand_inputs([f"http://127.0.0.1:{http_server.server_port}/a.tif"])
    open_input(inp, MODEL_BANDS)

    assert seen[0]["GDAL_DISABLE_READDIR_ON_OPEN"] == REMOTE_GDAL_OPTIONS["GDAL_DISABLE_READDIR_ON_OPEN"]
    assert seen[0]["GDAL_HTTP_MAX_RETRY"] == REMOTE_GDAL_OPTIONS["GDAL_HTTP_MAX_RETRY"]
    assert "GDAL_HTTP_TIMEOUT" not in seen[0]  # the user's GDAL_HTTP_TIMEOUT=7 applies instead
