"""Training configs: presets validate; unknown keys, wrong types and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagery.errors import UsageError
from training.config import load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = "model:\n  name: m\n  classes: [kiln]\n  bands: [red, green, blue]\n  pixel_size_m: 1\n"


@pytest.mark.parametrize("name", ["vessels-sentinel2.yaml", "kilns-sentinel2.yaml", "kilns-highres.yaml"])
def test_presets_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.model.classes
    assert cfg.model.overlap < cfg.model.tile_size


def test_highres_preset_is_rgb_iou(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "kilns-highres.yaml")
    assert cfg.model.bands == ["red", "green", "blue"]
    assert cfg.evaluate.primary == "iou" and cfg.evaluate.iou == 0.3
    assert cfg.train.max_minutes is not None and cfg.train.max_minutes <= 30


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_fill_missing_sections(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.train.epochs == 20 and cfg.split.method == "auto" and cfg.labels.class_property == "class"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (MINIMAL + "train:\n  epoch: 3\n", "train.epoch: unknown key"),
        (MINIMAL + "trian:\n  epochs: 3\n", "trian: unknown key"),
        (MINIMAL + "train:\n  epochs: three\n", "train.epochs"),
        (MINIMAL + "train:\n  lr: -1\n", "train.lr"),
        (MINIMAL + "evaluate:\n  score_threshold: -0.1\n", "evaluate.score_threshold"),
        (MINIMAL.replace("  pixel_size_m: 1\n", "") , "model.pixel_size_m: required key is missing"),
        (MINIMAL + "  tile_size: 128\n  overlap: 128\n", "overlap (128) must be smaller than tile_size (128)"),
        (MINIMAL + "chips:\n  pos_fraction: 0.9\n  hard_fraction: 0.5\n", "pos_fraction + hard_fraction"),
        ("- just\n- a list\n", "mapping of sections"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str, expect: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_config(p)
    assert str(p) in str(err.value)
    assert expect in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_config("no/such/config.yaml")


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL)
    cfg = load_config(p, [parse_override("train.epochs=3"), parse_override("augment.scale=0.5"),
                          parse_override("split.val_scenes=[a, b]")])
    assert cfg.train.epochs == 3 and cfg.augment.scale == 0.5 and cfg.split.val_scenes == ["a", "b"]
    with pytest.raises(UsageError, match="train.epochs"):
        load_config(p, [parse_override("train.epochs=0")])
    with pytest.raises(UsageError, match="train.epoks: unknown key"):
        load_config(p, [parse_override("train.epoks=2")])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_override("train.epochs")
