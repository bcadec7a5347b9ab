"""``sitewatch train``: config + scenes + labels -> a model directory ``detect`` can use.

Tiny models on small seeded synthetic scenes: these tests check the machinery (files,
splits, resume, early stopping, errors), not detection quality.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from sitewatch.cli import main
from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.errors import BandError, OutputError, UsageError
from sitewatch.imagery.models.checkpoint import load_checkpoint
from sitewatch.imagery.synthetic.sentinel2 import make_scene, truth_to_geojson
from sitewatch.training.config import load_config, parse_override
from sitewatch.training.labels import LabelError
from sitewatch.training.run import MODEL_FILES, run_training

CONFIG = """
model:
  name: tiny-s2
  classes: [vessel, kiln]
  bands: [B02, B03, B04, B08]
  pixel_size_m: 10
  arch_params: {widths: [8, 16, 16, 16], blocks: [1, 1, 1, 1], head_width: 16}
  tile_size: 128
  overlap: 32
  max_box_px: 64
chips: {size: 64, negatives_per_scene: 4}
split: {method: scene, val_fraction: 0.34}
train: {epochs: 2, steps_per_epoch: 3, batch_size: 4, threads: 1, lr: 0.003}
evaluate: {primary: distance, distance_m: 30}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three 192 px synthetic scenes side by side (UTM 33N) and one GeoJSON of their objects."""
    root = tmp_path_factory.mktemp("train-data")
    features = []
    for i in range(3):
        path = root / "scenes" / f"s{i}.tif"
        path.parent.mkdir(exist_ok=True)
        planted = make_scene(path, seed=200 + i, width=192, height=192, origin=(500_000.0 + 5000 * i, 4_800_000.0),
                             n_vessels=5, n_kilns=2)
        with rasterio.open(path) as src:
            features += truth_to_geojson(planted, src.transform, src.crs)["features"]
    labels = root / "labels.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    cfg = root / "tiny.yaml"
    cfg.write_text(CONFIG)
    return {"scenes": root / "scenes", "labels": labels, "config": cfg, "root": root}


def _train(data: dict[str, Path], out: Path, *overrides: str, **kw):  # type: ignore[no-untyped-def]
    cfg = load_config(data["config"], [parse_override(o) for o in overrides])
    return run_training(cfg, [str(data["scenes"])], [str(data["labels"])], out, workers=1, **kw)


def test_model_directory_is_complete_and_detect_uses_it(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = _train(data, out)
    for name in MODEL_FILES:
        assert (out / name).is_file(), name
    spec = load_checkpoint(out / "model.pt").spec
    assert spec.classes == ("vessel", "kiln") and spec.bands == ("B02", "B03", "B04", "B08")
    assert spec.tile_size == 128 and 0 < spec.score_threshold <= 1
    assert spec.edge_padding == "zero" and spec.nodata_margin_px == 0  # mirror only when the config asks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert metrics["labels"]["class:vessel"] == 15 and metrics["labels"]["class:kiln"] == 6
    assert all("val_f1" in h for h in metrics["history"]), "one scene of three validates"
    rows = list(csv.DictReader((out / "training_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "model_card.md").read_text()
    assert "vessel, kiln" in card and "Split:" in card and "validation" in card
    assert res.epochs == 2 and (out / "checkpoints" / "last.pt").is_file()
    summary = detect([data["scenes"] / "s0.tif"], out, tmp_path / "run", DetectSettings(workers=1))
    assert (tmp_path / "run" / "detections.geojson").is_file() and summary.results[0].tiles_total > 0


def test_training_is_repeatable(data: dict[str, Path], tmp_path: Path) -> None:
    _train(data, tmp_path / "a")
    _train(data, tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "model.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "b" / "model.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _StopAfter:
    """A progress sink that interrupts training like Ctrl-C once ``steps`` steps are done."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0

    def stage(self, text: str, total: int | None = None) -> None:
        self.training = text.startswith("training")

    def advance(self, n: int = 1, **info: object) -> None:
        if getattr(self, "training", False):
            self.done += n
            if self.done > self.steps:
                raise KeyboardInterrupt

    def note(self, text: str) -> None:
        pass


def test_resume_after_interruption_matches_an_uninterrupted_run(data: dict[str, Path], tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    _train(data, whole)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        _train(data, part, progress=_StopAfter(4))  # in epoch 2, after epoch 1's state was saved
    assert not (part / "model.pt").exists() and (part / "checkpoints" / "last.pt").exists()
    with pytest.raises(OutputError, match="--resume"):
        _train(data, part)
    _train(data, part, resume=True)
    a = load_checkpoint(whole / "model.pt").model.state_dict()
    b = load_checkpoint(part / "model.pt").model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float()) for k in a)
    assert json.loads((part / "metrics.json").read_text())["epochs_run"] == 2


def test_resume_with_another_config_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        _train(data, out, progress=_StopAfter(4))
    with pytest.raises(UsageError, match="another config"):
        _train(data, out, "train.lr=0.01", resume=True)


def test_early_stopping_on_validation_f1(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    # a learning rate too small to change anything: validation F1 cannot improve after epoch 1
    res = _train(data, out, "train.epochs=6", "train.patience=1", "train.lr=1e-9")
    metrics = json.loads((out / "metrics.json").read_text())
    assert res.epochs == 2 and metrics["best_epoch"] == 1
    assert metrics["stopped"].startswith("early stop")


def test_single_scene_splits_by_spatial_block(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(data["config"], [parse_override("split.method=block"), parse_override("split.block_m=640"),
                                       parse_override("split.val_fraction=0.3")])
    out = tmp_path / "m"
    with pytest.raises(LabelError, match="outside every image"):
        run_training(cfg, [str(data["scenes"] / "s1.tif")], [str(data["labels"])], out, workers=1)
    assert not out.exists(), "nothing is written when labels are refused"
    cfg = load_config(data["config"], [parse_override("split.method=block"), parse_override("split.block_m=640"),
                                       parse_override("split.val_fraction=0.3"), parse_override("labels.skip_problems=true")])
    run_training(cfg, [str(data["scenes"] / "s1.tif")], [str(data["labels"])], out, workers=1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["windows"]["validation"] > 0 and metrics["windows"]["train"] > 0
    assert metrics["label_problems"] == 14  # the other two scenes' objects


def test_output_directory_rules(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    _train(data, out)
    with pytest.raises(OutputError, match="already holds a trained model"):
        _train(data, out)
    _train(data, out, overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        _train(data, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="nothing to resume"):
        _train(data, tmp_path / "nothing", resume=True)


def test_cli_train_then_models(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "mine"
    out.parent.mkdir()
    main(["train", "--config", str(data["config"]), "--images", str(data["scenes"] / "*.tif"),
          "--labels", str(data["labels"]), "--out", str(out), "--epochs", "1", "--workers", "1"])
    assert "use it: sitewatch detect" in capsys.readouterr().out
    assert (out / "model.pt").is_file()
    main(["models", str(out.parent)])
    text = capsys.readouterr().out
    assert str(out) in text and "[local]" in text and "classes=vessel,kiln" in text and "F1=" in text


@pytest.mark.parametrize(
    ("args", "code", "expect"),
    [
        (["--set", "train.epoch=1"], 2, "train.epoch: unknown key"),
        (["--set", "train.epochs=-1"], 2, "train.epochs"),
        (["--device", "gpu"], 2, "--device"),
        (["--coco-image", "nonsense"], 2, "COCO_FILE_NAME=SCENE_PATH"),
    ],
)
def test_cli_bad_flags_one_line(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                args: list[str], code: int, expect: str) -> None:
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as ex:
        main(["train", "--config", str(data["config"]), "--images", str(data["scenes"]),
              "--labels", str(data["labels"]), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert ex.value.code == code
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_bad_labels_one_line(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.geojson"
    doc = json.loads(data["labels"].read_text())
    doc["features"][0]["properties"]["class"] = "tanker"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as ex:
        main(["train", "--config", str(data["config"]), "--images", str(data["scenes"]), "--labels", str(bad),
              "--out", str(out)])
    err = capsys.readouterr().err
    assert ex.value.code == 3
    assert str(bad) in err and "tanker" in err and "--skip-bad-labels" in err and err.count("\n") == 1
    assert not out.exists()


def test_scene_labels_in_pixels_match_the_planted_objects(data: dict[str, Path]) -> None:
    from sitewatch.imagery.scenes.scene import open_scene
    from sitewatch.training.labels import LabelOptions, read_labels

    scene = open_scene(data["scenes"] / "s0.tif", ("B02", "B03", "B04", "B08"))
    ls = read_labels([data["labels"]], [scene], LabelOptions(classes=("vessel", "kiln"), skip_problems=True))
    planted = make_scene(data["root"] / "again.tif", seed=200, width=192, height=192, n_vessels=5, n_kilns=2)
    got = np.sort(ls.scenes[0].boxes, axis=0)
    want = np.sort(np.array([o.box for o in planted]), axis=0)
    assert np.allclose(got, want, atol=0.01)


def test_scenes_without_objects_give_background_windows(data: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.tif"
    make_scene(empty, seed=300, width=192, height=192, origin=(600_000.0, 4_800_000.0), n_vessels=0, n_kilns=0)
    out = tmp_path / "m"
    cfg = load_config(data["config"], [parse_override("split.val_fraction=0"), parse_override("labels.skip_problems=true")])
    res = run_training(cfg, [str(data["scenes"] / "s0.tif"), str(empty)], [str(data["labels"])], out, workers=1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert res.label_counts["positives"] == 7 and metrics["validation"] is None
    card = (out / "model_card.md").read_text()
    assert "`empty` (train): 0 labels" in card


def test_a_band_directory_lacking_a_band_trains_only_when_asked(data: dict[str, Path], tmp_path: Path) -> None:
    """Split s1.tif into single-band files without B02: refused by default with the setting to
    change; with ``chips.missing_bands: zero`` it trains, and the model card says so."""
    part = tmp_path / "s1-bands"
    part.mkdir()
    with rasterio.open(data["scenes"] / "s1.tif") as src:
        profile = {**src.profile, "count": 1}
        for k, band in enumerate(("B02", "B03", "B04", "B08"), start=1):
            if band != "B02":
                with rasterio.open(part / f"s1_{band}.tif", "w", **profile) as dst:
                    dst.write(src.read(k), 1)
    images = [str(data["scenes"] / "s0.tif"), str(part)]
    cfg = load_config(data["config"], [parse_override("split.val_fraction=0"), parse_override("labels.skip_problems=true")])
    with pytest.raises(BandError) as err:
        run_training(cfg, images, [str(data["labels"])], tmp_path / "refused", workers=1)
    assert str(part) in str(err.value) and "B02" in str(err.value) and "chips.missing_bands: zero" in str(err.value)
    assert not (tmp_path / "refused").exists()
    cfg = load_config(data["config"], [parse_override(o) for o in (
        "split.val_fraction=0", "labels.skip_problems=true", "chips.missing_bands=zero", "augment.band_dropout=0.2")])
    res = run_training(cfg, images, [str(data["labels"])], tmp_path / "m", workers=1)
    assert res.label_counts["positives"] == 14
    assert "missing_bands" in (tmp_path / "m" / "config.yaml").read_text()


def test_negative_scenes_give_background_windows_and_never_validate(data: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "negatives" / "quiet.tif"
    empty.parent.mkdir()
    make_scene(empty, seed=301, width=192, height=192, origin=(700_000.0, 4_800_000.0), n_vessels=0, n_kilns=0)
    cfg = load_config(data["config"], [parse_override("chips.negative_scene_windows=5")])
    out = tmp_path / "m"
    run_training(cfg, [str(data["scenes"])], [str(data["labels"])], out, workers=1, negatives=[str(empty.parent / "*.tif")])
    metrics = json.loads((out / "metrics.json").read_text())
    card = (out / "model_card.md").read_text()
    assert "`quiet` (negatives (object-free)): 0 labels" in card
    run_training(cfg, [str(data["scenes"])], [str(data["labels"])], tmp_path / "plain", workers=1)
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert metrics["windows"]["train"] == plain["windows"]["train"] + 5
    assert metrics["windows"]["validation"] == plain["windows"]["validation"]
    assert "quiet" not in card.split("validation:")[-1].split(")")[0]


def test_list_options_of_train_take_every_value_after_them() -> None:
    """`--negatives a b c` names three negative scenes: none of them becomes an unlabelled training image."""
    from sitewatch.cli import cli, spread_list_options

    train = cli.commands["train"]
    ctx = train.make_context("train", ["--config", "c.yaml", "--images", "x.tif", "y.tif", "--labels", "l1.geojson",
                                       "l2.json", "--negatives", "p1", "p2", "p3", "--out", "m", "z.tif"])
    assert ctx.params["negatives"] == ("p1", "p2", "p3")
    assert ctx.params["labels"] == ("l1.geojson", "l2.json")
    assert ctx.params["images"] == ("x.tif", "y.tif") and ctx.params["more_images"] == ("z.tif",)
    ctx = train.make_context("train", ["-i", "a", "b", "--negatives=n1", "n2", "-l", "l", "-o", "m", "--", "-odd.tif"])
    assert ctx.params["images"] == ("a", "b") and ctx.params["negatives"] == ("n1", "n2")
    assert ctx.params["more_images"] == ("-odd.tif",)
    assert spread_list_options(["--set", "a=1", "b", "--x", "c"], {"--x"}) == ["--set", "a=1", "b", "--x", "c"]


def test_mirror_edge_padding_trains_and_is_recorded(data: dict[str, Path], tmp_path: Path) -> None:
    """model.edge_padding: mirror reaches the checkpoint, so detect fills edge tiles as training did."""
    _train(data, tmp_path / "m", "model.edge_padding=mirror", "train.epochs=1")
    spec = load_checkpoint(tmp_path / "m" / "model.pt").spec
    assert spec.edge_padding == "mirror"
    summary = detect([data["scenes"] / "s0.tif"], tmp_path / "m" / "model.pt", tmp_path / "run", DetectSettings(workers=1))
    assert summary.results[0].stats is not None and not summary.failed_scenes
    with pytest.raises(UsageError, match="edge_padding"):
        load_config(data["config"], [parse_override("model.edge_padding=reflect")])
