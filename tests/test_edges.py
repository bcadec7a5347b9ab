"""Scene edges and no-data: mirrored padding past the scene, ``--nodata`` for untagged files, and
a model's ``nodata_margin_px``, which drops detections whose box touches no-data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.detect.worker import mirror_padding
from sitewatch.imagery.models.checkpoint import load_checkpoint, save_checkpoint
from sitewatch.imagery.models.inference import touches_nodata
from sitewatch.imagery.models.registry import resolve_model
from sitewatch.imagery.scenes.scene import SceneReader, open_scene, with_nodata
from sitewatch.imagery.synthetic.sentinel2 import make_scene
from sitewatch.training.chips import Window, _mirror_outside


def test_mirror_padding_continues_the_scene() -> None:
    tile = np.zeros((2, 8, 8), np.float32)
    inside = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6) + 1
    tile[:, :5, :6] = inside
    mirror_padding(tile, width=6, height=5)
    assert (tile[:, :5, :6] == inside).all()  # the scene's pixels are untouched
    assert (tile[:, :5, 6] == inside[:, :, 5]).all() and (tile[:, :5, 7] == inside[:, :, 4]).all()
    assert (tile[:, 5, :6] == inside[:, 4, :]).all() and (tile[:, 7, :6] == inside[:, 2, :]).all()
    assert (tile > 0).all()  # no zero band left along the edge
    whole = tile.copy()
    mirror_padding(whole, width=8, height=8)
    assert (whole == tile).all()  # a tile inside the scene is left as it is


def test_training_chips_mirror_as_detect_does() -> None:
    """A chip reaching past the raster's top-left and bottom-right gets the same mirror as a tile."""

    class _Scene:
        width, height = 6, 5

    data = np.zeros((1, 8, 8), np.float32)
    inside = np.arange(1, 31, dtype=np.float32).reshape(1, 5, 6)
    data[:, 2:7, 1:7] = inside  # the window starts 1 column left of and 2 rows above the raster
    _mirror_outside(data, _Scene(), Window(0, -1, -2, 8, "object"))
    assert (data[:, 2:7, 1:7] == inside).all()
    assert (data[:, 2:7, 0] == inside[:, :, 0]).all() and (data[:, 1, 1:7] == inside[:, 0]).all()
    assert (data[:, 2:7, 7] == inside[:, :, 5]).all() and (data[:, 7, 1:7] == inside[:, 4]).all()
    assert (data > 0).all()


def test_touches_nodata() -> None:
    nodata = np.zeros((20, 20), bool)
    nodata[:, 15:] = True
    boxes = np.array([[2.0, 2.0, 6.0, 6.0], [10.0, 2.0, 14.5, 6.0], [13.0, 2.0, 16.0, 6.0]])
    assert touches_nodata(boxes, nodata, 0).tolist() == [False, False, True]
    assert touches_nodata(boxes, nodata, 1).tolist() == [False, True, True]
    assert touches_nodata(boxes, np.zeros((20, 20), bool), 5).tolist() == [False, False, False]
    assert touches_nodata(np.zeros((0, 4)), nodata, 1).shape == (0,)


def _untagged(src: Path, dst: Path) -> Path:
    """``src`` written again without a nodata value (as many Sentinel-2 L2A downloads come)."""
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    profile.pop("nodata", None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def test_nodata_value_for_untagged_files(tmp_path: Path) -> None:
    make_scene(tmp_path / "tagged.tif", seed=3, width=128, height=128, n_vessels=2, n_kilns=1, nodata_border=20)
    path = _untagged(tmp_path / "tagged.tif", tmp_path / "untagged.tif")
    scene = open_scene(path, ("B02", "B03", "B04", "B08"))
    assert scene.nodata is None
    with SceneReader(scene) as r:
        assert r.read(0, 0, 128, 128)[1].all()  # no tag: the zero strip is data
    with SceneReader(with_nodata(scene, 0)) as r:
        valid = r.read(0, 0, 128, 128)[1]
        assert not valid[:, :20].any() and valid[:, 20:].all()
        assert not r.overview(64)[1][:, :9].any()
    tagged = open_scene(tmp_path / "tagged.tif", ("B02", "B03", "B04", "B08"))
    assert with_nodata(tagged, 7) is tagged  # a file's own value wins


def test_detect_nodata_flag(tmp_path: Path) -> None:
    make_scene(tmp_path / "tagged.tif", seed=3, width=256, height=256, n_vessels=3, n_kilns=2, nodata_border=64)
    path = _untagged(tmp_path / "tagged.tif", tmp_path / "untagged.tif")
    runs = {}
    for name, value in (("plain", None), ("flag", 0.0)):
        summary = detect([path], "demo", tmp_path / name, DetectSettings(workers=1, nodata=value))
        stats = summary.results[0].stats
        assert stats is not None
        runs[name] = stats.valid_fraction
    assert runs["plain"] == 1.0
    assert runs["flag"] == pytest.approx(0.75, abs=0.02)


def test_nodata_margin_drops_boxes_that_touch_nodata(tmp_path: Path) -> None:
    """A model's nodata_margin_px: a margin wider than the scene drops every detection of a scene with
    a no-data strip, and none of the same scene without one."""
    lm = load_checkpoint(resolve_model("demo"))
    wide = tmp_path / "wide.pt"
    save_checkpoint(wide, replace(lm.spec, nodata_margin_px=4096.0), lm.model)
    counts = {}
    for border in (0, 40):
        scene = tmp_path / f"b{border}.tif"
        make_scene(scene, seed=4, width=256, height=256, n_vessels=4, n_kilns=3, nodata_border=border)
        for model in ("demo", wide):
            summary = detect([scene], model, tmp_path / f"run-{border}-{Path(str(model)).stem}", DetectSettings(workers=1))
            counts[border, Path(str(model)).stem] = sum(summary.counts().values())
    assert counts[0, "demo"] > 0 and counts[40, "demo"] > 0
    assert counts[0, "wide"] == counts[0, "demo"]
    assert counts[40, "wide"] == 0


def test_checkpoints_without_edge_padding_keep_zero_padding() -> None:
    """Models measured before sitewatch mirrored keep the padding they were measured with."""
    for name in ("demo", "vessels-s2", "kilns-s2"):
        spec = load_checkpoint(resolve_model(name)).spec
        assert spec.edge_padding == "zero" and spec.nodata_margin_px == 0, name


def test_the_loss_leaves_cells_without_a_valid_pixel_unsupervised() -> None:
    """Mirrored padding can hold an object's mirror image: with ``valid`` in the targets, a confident
    heatmap there costs nothing, while the same heat on valid ground is a false positive's loss."""
    import torch

    from sitewatch.training.targets import centernet_loss, make_targets

    t = {k: torch.from_numpy(v)[None] for k, v in make_targets(np.zeros((0, 4)), np.zeros(0, int), 1, 16, 2).items()}
    heat = torch.full((1, 1, 8, 8), -8.0)
    heat[0, 0, 6, 6] = 6.0  # confident in the bottom-right corner
    size, off = torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8)
    plain = centernet_loss(heat, size, off, t)[1]["focal"]
    valid = torch.ones(1, 8, 8)
    valid[0, 5:, 5:] = 0  # the corner is padding
    masked = centernet_loss(heat, size, off, {**t, "valid": valid})[1]["focal"]
    assert plain > 1.0 and masked < 0.01 * plain
