"""The bad-input corpus of ``sitewatch detect``: rasters, checkpoints, flags, batches, outputs.

Every case is built here, in code, then run as its own ``sitewatch`` process (forked from one
preloaded interpreter, see :mod:`clirun`). Each entry of :data:`CORPUS` states the outcome a
user gets: the exit code, the words its one stderr line must hold, and whether outputs are
written. ``docs/bad-inputs.md`` is the table of these cases (and of the label, config and
review-server cases tested elsewhere); :func:`test_the_table_lists_every_case_and_each_test_exists`
keeps the two in step.

Error cases must leave the case's directory byte for byte as it was: no run directory, no
staging or job directory, earlier results untouched, and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from clirun import ENV, FAST, NORTH, SITEWATCH, Case, geotiff, noise, run_forked, tree

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Bad:
    """One corpus entry: how to build it and what must happen."""

    id: str
    #: Builds the case's inputs in a directory; returns the arguments after ``detect``
    #: (``{out}`` stands for the run directory) and, optionally, a function preparing ``out``.
    build: Callable[[Path, Path], list[str]]
    code: int
    #: Words the single stderr line must contain (``{dir}``: the case directory).
    words: tuple[str, ...] = ()
    #: Results are written (a warning, or a batch with failures) rather than nothing.
    writes: bool = False
    #: Lines on stderr: one error or warning, none for a clean run, one per failed scene.
    lines: int = 1
    prepare: str | None = None


def _tif(d: Path, name: str, data: np.ndarray, grid: tuple[Any, Any] = NORTH, nodata: float | None = None) -> Path:
    return geotiff(d / name, data, grid, nodata=nodata)


def _scene(d: Path) -> Path:
    return _tif(d, "scene.tif", noise(4, 80, 96, seed=1))


def not_a_raster(d: Path, model: Path) -> list[str]:
    (d / "notes.tif").write_text("not a raster at all\n")
    return [str(d / "notes.tif")]


def truncated(d: Path, model: Path) -> list[str]:
    p = _tif(d, "truncated.tif", noise(4, 512, 512, seed=3))
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
    return [str(p)]


def damaged_tiles(d: Path, model: Path) -> list[str]:
    """Header and tile index intact, the compressed tiles in the middle overwritten."""
    p = _tif(d, "damaged.tif", noise(4, 256, 256, seed=4))
    raw = bytearray(p.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4000] = b"\xab" * 4000
    p.write_bytes(bytes(raw))
    with rasterio.open(p) as src:  # the header still opens: only the pixels are bad
        assert src.width == 256
    return [str(p)]


def zero_width(d: Path, model: Path) -> list[str]:
    """A GeoTIFF whose ImageWidth tag says 0 pixels."""
    p = _tif(d, "zero.tif", noise(1, 32, 32))
    raw = bytearray(p.read_bytes())
    assert raw[:4] == b"II*\x00"  # little-endian classic TIFF
    ifd = int.from_bytes(raw[4:8], "little")
    for k in range(int.from_bytes(raw[ifd : ifd + 2], "little")):
        e = ifd + 2 + 12 * k
        if int.from_bytes(raw[e : e + 2], "little") == 256:  # ImageWidth
            raw[e + 8 : e + 12] = (0).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    return [str(p)]


def no_crs(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "nocrs.tif", noise(4, 32, 32), (None, NORTH[1])))]


def no_geotransform(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "notransform.tif", noise(4, 32, 32), ("EPSG:32633", None)))]


def rotated(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "rotated.tif", noise(4, 64, 64), ("EPSG:32633", Affine(10, 2, 500_000, 2, -10, 4_800_000))))]


def coarse_pixels(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "coarse.tif", noise(4, 64, 64), ("EPSG:32633", Affine(30, 0, 500_000, 0, -30, 4_800_000))))]


def six_bands(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "six.tif", noise(6, 32, 32)))]


def complex_pixels(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "complex.tif", noise(4, 32, 32).astype("complex64")))]


def nan_and_inf(d: Path, model: Path) -> list[str]:
    data = noise(4, 96, 96, seed=5).astype("float32")
    data[:, 8:40, 8:40] = np.nan
    data[2, 56:88, 56:88] = np.inf
    return [str(_tif(d, "naninf.tif", data))]


def all_nodata(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "empty.tif", np.zeros((4, 64, 64), "uint16"), nodata=0))]


def smaller_than_a_tile(d: Path, model: Path) -> list[str]:
    return [str(_tif(d, "small.tif", noise(4, 5, 7)))]


def bands_on_different_grids(d: Path, model: Path) -> list[str]:
    bands = d / "T33TWN_20260101"
    bands.mkdir()
    for name in ("B02", "B03", "B04"):
        _tif(bands, f"T33TWN_{name}.tif", noise(1, 64, 64))
    _tif(bands, "T33TWN_B08.tif", noise(1, 32, 32), ("EPSG:32633", Affine(20, 0, 500_000, 0, -20, 4_800_000)))
    return [str(bands)]


def missing_file(d: Path, model: Path) -> list[str]:
    return [str(d / "nowhere.tif")]


def junk_checkpoint(d: Path, model: Path) -> list[str]:
    (d / "model.pt").write_text("junk\n")
    return [str(_scene(d)), "--model", str(d / "model.pt")]


def edited_checkpoint(d: Path, model: Path) -> list[str]:
    """A real checkpoint with one weight changed after it was saved."""
    ckpt = torch.load(model, weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1.0
    torch.save(ckpt, d / "edited.pt")
    return [str(_scene(d)), "--model", str(d / "edited.pt")]


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def pickled_code(d: Path, model: Path) -> list[str]:
    ckpt = torch.load(model, weights_only=True)
    ckpt["extra"] = _Payload(d / "PWNED")
    torch.save(ckpt, d / "evil.pt")
    return [str(_scene(d)), "--model", str(d / "evil.pt")]


def other_bands_checkpoint(d: Path, model: Path) -> list[str]:
    """A checkpoint for three RGB bands, on a four-band scene."""
    from conftest import TINY_PARAMS

    from sitewatch.imagery.models.architectures import build_model
    from sitewatch.imagery.models.checkpoint import ModelSpec, save_checkpoint

    spec = ModelSpec(name="rgb", version="0", arch="centernet", classes=("kiln",), bands=("red", "green", "blue"),
                     arch_params=TINY_PARAMS)
    save_checkpoint(d / "rgb.pt", spec, build_model("centernet", 3, 1, TINY_PARAMS))
    return [str(_scene(d)), "--model", str(d / "rgb.pt")]


def with_flags(*flags: str) -> Callable[[Path, Path], list[str]]:
    def build(d: Path, model: Path) -> list[str]:
        return [str(_scene(d)), *flags]

    return build


def some_scenes_fail(d: Path, model: Path) -> list[str]:
    return [str(_scene(d)), *not_a_raster(d, model), *no_crs(d, model)]


def every_scene_fails(d: Path, model: Path) -> list[str]:
    return [*not_a_raster(d, model), *no_crs(d, model)]


CORPUS: list[Bad] = [
    Bad("not-a-raster", not_a_raster, 3, ("notes.tif", "not a raster")),
    Bad("truncated", truncated, 3, ("truncated.tif",)),
    Bad("damaged-tiles", damaged_tiles, 3, ("damaged.tif", "cannot be read", "damaged")),
    Bad("zero-width", zero_width, 3, ("zero.tif",)),
    Bad("no-crs", no_crs, 3, ("nocrs.tif", "no CRS")),
    Bad("no-geotransform", no_geotransform, 3, ("notransform.tif", "no geotransform")),
    Bad("rotated-geotransform", rotated, 3, ("rotated.tif", "rotated", "gdalwarp")),
    Bad("pixel-size-far-from-the-model", coarse_pixels, 0, ("warning", "coarse.tif", "30 m", "10 m"), writes=True),
    Bad("band-count", six_bands, 3, ("six.tif", "6 band", "--bands")),
    Bad("pixel-type", complex_pixels, 3, ("complex.tif", "complex64")),
    Bad("nan-and-inf-pixels", nan_and_inf, 0, writes=True, lines=0),
    Bad("all-nodata", all_nodata, 0, writes=True, lines=0),
    Bad("smaller-than-a-tile", smaller_than_a_tile, 0, writes=True, lines=0),
    Bad("bands-on-different-grids", bands_on_different_grids, 3, ("T33TWN_B08.tif", "same grid")),
    Bad("missing-file", missing_file, 3, ("nowhere.tif", "no such file")),
    Bad("not-a-checkpoint", junk_checkpoint, 4, ("model.pt", "not a sitewatch checkpoint")),
    Bad("checkpoint-checksum-mismatch", edited_checkpoint, 4, ("edited.pt", "checksum")),
    Bad("checkpoint-carrying-code", pickled_code, 4, ("evil.pt",)),
    Bad("checkpoint-for-other-bands", other_bands_checkpoint, 3, ("scene.tif", "red, green, blue", "--bands")),
    Bad("overlap-not-below-tile-size", with_flags("--tile-size", "32", "--overlap", "32"), 2, ("--overlap", "--tile-size")),
    Bad("negative-score-threshold", with_flags("--score-threshold", "-0.5"), 2, ("--score-threshold -0.5",)),
    Bad("unknown-flag", with_flags("--frobnicate"), 2, ("--frobnicate",)),
    Bad("some-scenes-fail", some_scenes_fail, 6, writes=True, lines=2),
    Bad("every-scene-fails", every_scene_fails, 3, ("2 inputs", "none could be opened", "nothing was written", "notes.tif")),
    Bad("finished-run-directory", with_flags(), 5, ("{out}", "--overwrite", "--append"), prepare="results"),
    Bad("foreign-files", with_flags(), 5, ("{out}", "thesis.docx"), prepare="foreign"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Case]:
    base = tmp_path_factory.mktemp("hostile")
    cases: dict[str, Case] = {}
    for bad in CORPUS:
        d = base / bad.id
        d.mkdir()
        args = bad.build(d, tiny_checkpoint)
        out = d / "run"
        if bad.prepare == "results":
            out.mkdir()
            for f in ("detections.geojson", "run.json", "map.html"):
                (out / f).write_text(f"earlier {f}\n")
        elif bad.prepare == "foreign":
            out.mkdir()
            (out / "thesis.docx").write_text("mine\n")
        model = [] if "--model" in args else ["--model", str(tiny_checkpoint)]
        flags = [] if "--tile-size" in args else FAST
        # Threshold 0 (the tiny model then reports every peak) unless the case sets its own.
        threshold = [] if "--score-threshold" in args else ["--score-threshold", "0.0"]
        case = Case(["detect", *args, *model, "--out", str(out), *flags, *threshold],
                    d, bad.code, tuple(w.replace("{out}", str(out)) for w in bad.words))
        case.before = tree(d)
        cases[bad.id] = case
    scratch = base / "std"
    scratch.mkdir()
    run_forked(list(cases.values()), scratch)
    return cases


@pytest.mark.parametrize("bad", CORPUS, ids=lambda b: b.id)
def test_bad_input(corpus: dict[str, Case], bad: Bad) -> None:
    case = corpus[bad.id]
    proc = case.proc
    assert proc is not None
    assert proc.returncode == bad.code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == bad.lines, proc.stderr
    for word in case.names:
        assert word in proc.stderr, proc.stderr
    out = case.parent / "run"
    if not bad.writes:
        assert proc.stdout == ""
        assert tree(case.parent) == case.before  # nothing written, nothing changed
    else:
        record = json.loads((out / "run.json").read_text())
        assert (out / "detections.geojson").is_file() and (out / "candidates.gpkg").is_file()
        assert not (out / ".sitewatch-job").exists()
        CHECKS[bad.id](case, record, json.loads((out / "detections.geojson").read_text())["features"])


def _coarse(case: Case, record: dict[str, Any], features: list[dict[str, Any]]) -> None:
    assert record["inputs"][0]["warnings"] and "30 m" in record["inputs"][0]["warnings"][0]


def _nan_inf(case: Case, record: dict[str, Any], features: list[dict[str, Any]]) -> None:
    assert features  # threshold 0: the random model reports peaks on the finite pixels
    for f in features:
        cx, cy = _centre_px(f)
        assert not (8 <= cx < 40 and 8 <= cy < 40), f  # NaN block
        assert not (56 <= cx < 88 and 56 <= cy < 88), f  # inf block


def _centre_px(feature: dict[str, Any]) -> tuple[float, float]:
    """A detection's centre in scene pixels, from its lon/lat (the NORTH grid)."""
    from pyproj import Transformer

    lon, lat = feature["properties"]["lon"], feature["properties"]["lat"]
    x, y = Transformer.from_crs("EPSG:4326", NORTH[0], always_xy=True).transform(lon, lat)
    col, row = ~NORTH[1] @ (x, y)
    return col, row


def _all_nodata(case: Case, record: dict[str, Any], features: list[dict[str, Any]]) -> None:
    assert features == []
    assert record["tiles"]["skipped"] == record["tiles"]["total"] > 0
    assert record["failed_scenes"] == []


def _small(case: Case, record: dict[str, Any], features: list[dict[str, Any]]) -> None:
    assert record["inputs"][0]["width"] == 7 and record["inputs"][0]["height"] == 5
    assert record["tiles"]["total"] == 1 and record["tiles"]["failed"] == 0


def _some_fail(case: Case, record: dict[str, Any], features: list[dict[str, Any]]) -> None:
    assert case.proc is not None
    failed = {Path(f["scene"]).name: f["errors"][0] for f in record["failed_scenes"]}
    assert set(failed) == {"notes.tif", "nocrs.tif"}
    assert "not a raster" in failed["notes.tif"] and "no CRS" in failed["nocrs.tif"]
    for name in failed:
        assert name in case.proc.stderr
    assert {i["status"] for i in record["inputs"] if i["name"] == "scene"} == {"ok"}
    assert features and {f["properties"]["scene"] for f in features} == {"scene"}


CHECKS: dict[str, Callable[[Case, dict[str, Any], list[dict[str, Any]]], None]] = {
    "pixel-size-far-from-the-model": _coarse,
    "nan-and-inf-pixels": _nan_inf,
    "all-nodata": _all_nodata,
    "smaller-than-a-tile": _small,
    "some-scenes-fail": _some_fail,
}


def test_pickled_code_never_ran(corpus: dict[str, Case]) -> None:
    assert not (corpus["checkpoint-carrying-code"].parent / "PWNED").exists()


# --- outputs on a full disk or a read-only directory: an error line, earlier results intact ---


def _earlier_run(tmp_path: Path, tiny_checkpoint: Path, out: Path) -> tuple[Path, dict[str, bytes | None]]:
    scene = _scene(tmp_path)
    proc = subprocess.run([*SITEWATCH, "detect", str(scene), "--model", str(tiny_checkpoint), "--out", str(out), *FAST],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return scene, tree(out)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs where this process may mount one (root), else ``None``."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
        if done.returncode == 0:
            yield mnt
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            return
    yield None


def test_full_disk_keeps_the_earlier_results(tmp_path: Path, tiny_checkpoint: Path, small_disk: Path | None) -> None:
    """A real full disk (a full tmpfs) where the test may mount one, else a file-size limit
    (RLIMIT_FSIZE): either way the OS refuses the writes, not a patched Python function."""
    out = (small_disk or tmp_path) / "run"
    scene, before = _earlier_run(tmp_path, tiny_checkpoint, out)
    preexec = None
    if small_disk is not None:
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(b"\0" * max(free - 8192, 0))
    else:
        preexec = _limit_file_size(4096)
    proc = subprocess.run([*SITEWATCH, "detect", str(scene), "--model", str(tiny_checkpoint), "--out", str(out),
                           *FAST, "--overwrite"], capture_output=True, text=True, timeout=300, env=ENV,
                          preexec_fn=preexec)
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert str(out) in proc.stderr
    assert tree(out) == before


def _make_read_only(path: Path) -> Callable[[], None]:
    """Make ``path`` unwritable even for root (the immutable attribute), or by mode for others."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed ({done.stderr.decode().strip()}): cannot make a read-only directory")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_directory_keeps_the_earlier_results(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "run"
    scene, before = _earlier_run(tmp_path, tiny_checkpoint, out)
    undo = _make_read_only(out)
    try:
        proc = subprocess.run([*SITEWATCH, "detect", str(scene), "--model", str(tiny_checkpoint), "--out", str(out),
                               *FAST, "--overwrite"], capture_output=True, text=True, timeout=300, env=ENV)
    finally:
        undo()
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert str(out) in proc.stderr
    assert tree(out) == before


# --- the table in docs/ ----------------------------------------------------------------------


def test_the_table_lists_every_case_and_each_test_exists() -> None:
    """Every corpus case has a row in docs/bad-inputs.md, and every test a row names exists."""
    text = TABLE.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|- ")]
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`", text))
    assert cited
    for bad in CORPUS:
        assert ("tests/test_hostile.py", "test_bad_input", bad.id) in cited, f"no row cites {bad.id}"
    for path, name, param in cited:
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} does not exist"
        if path == "tests/test_hostile.py" and name == "test_bad_input":
            assert param in {b.id for b in CORPUS}, f"{param} is not a corpus case"
    assert len(rows) > len(CORPUS)



# --- a run killed at any moment -------------------------------------------------------------


def _whole_outputs(out: Path) -> list[str]:
    """The result files in ``out``, each checked to be complete; fails on a partial one."""
    import sqlite3

    from PIL import Image

    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".sitewatch-job" not in p.parts)
    for name in names:
        path = out / name
        assert not path.name.startswith("."), f"a staging file was left: {name}"
        if name.endswith((".json", ".geojson")):
            json.loads(path.read_text())
        elif name.endswith(".html"):
            assert path.read_text().rstrip().endswith("</html>"), name
        elif name.endswith(".png"):
            with Image.open(path) as im:
                im.verify()
        elif name.endswith(".gpkg"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",), name
        else:
            raise AssertionError(f"unexpected file {name}")
    return names


def test_a_run_killed_at_any_moment_leaves_whole_files_or_none(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """``kill -9`` a ``detect --overwrite`` over an earlier run at moments spread across its
    life (start-up, reading, inference, writing); after each, every output file is complete
    (the earlier run's or the new one's, never half-written), ``run.json`` is there whenever
    the other results are, and the final run completes."""
    scene = _tif(tmp_path, "scene.tif", noise(4, 320, 320, seed=7))
    out = tmp_path / "run"
    args = [*SITEWATCH, "detect", str(scene), "--model", str(tiny_checkpoint), "--out", str(out), *FAST,
            "--score-threshold", "0.0"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    before = _whole_outputs(out)
    assert "run.json" in before and "detections.geojson" in before
    killed = 0
    for delay in (0.5, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0):
        proc = subprocess.Popen([*args, "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            killed += 1
        proc.wait(timeout=60)
        names = _whole_outputs(out)
        assert names == before, (delay, names)  # the same set of files, each complete
    assert killed >= 5  # most kills landed mid-run, not after it
    last = subprocess.run([*args, "--overwrite"], capture_output=True, text=True, timeout=300, env=ENV)
    assert last.returncode == 0, last.stderr
    assert _whole_outputs(out) == before
    assert not (out / ".sitewatch-job").exists()
