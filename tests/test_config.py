"""Training configs: presets validate; unknown keys, wrong types and bad values are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sitewatch.imagery.errors import UsageError
from sitewatch.training.config import Config, load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = "model:\n  name: m\n  classes: [kiln]\n  bands: [red, green, blue]\n  pixel_size_m: 1\n"


@pytest.mark.parametrize("name", ["vessels-sentinel2.yaml", "kilns-sentinel2.yaml", "kilns-highres.yaml", "kilns-s2-rgb.yaml"])
def test_presets_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.model.classes
    assert cfg.model.overlap < cfg.model.tile_size


def test_highres_preset_is_rgb_iou(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "kilns-highres.yaml")
    assert cfg.model.bands == ["red", "green", "blue"]
    assert cfg.evaluate.primary == "iou" and cfg.evaluate.iou == 0.3
    assert cfg.train.max_minutes is not None and cfg.train.max_minutes <= 30


KILNS_S2 = CONFIGS.parent / "imagery" / "weights" / "kilns-s2"
SCRATCH = ["model.arch=centernet", "model.pretrained=none",
           "model.arch_params={widths: [32, 64, 96, 128], blocks: [1, 2, 2, 1], head_width: 32}"]


def _recipe(cfg: Config) -> dict[str, Any]:
    """What makes a kiln recipe, less the name, version and threshold a release sets."""
    d = cfg.model_dump()
    for key in ("name", "version", "description"):
        d["model"].pop(key)
    d["evaluate"].pop("score_threshold")
    d["train"].pop("encoder_lr_scale")  # the from-scratch CenterNet has no encoder to scale
    return d


@pytest.mark.parametrize(("member_config", "overrides"), [("config.yaml", []), ("config-scratch.yaml", SCRATCH)])
def test_kilns_s2_rgb_preset_is_the_recipe_of_the_shipped_members(member_config: str, overrides: list[str]) -> None:
    # The preset is the ImageNet member's recipe; with the overrides its comments and the
    # README give, the from-scratch member's. A preset edited without retraining fails here.
    preset = load_config(CONFIGS / "kilns-s2-rgb.yaml", [parse_override(o) for o in overrides])
    member = load_config(KILNS_S2 / member_config)
    assert _recipe(preset) == _recipe(member)
    assert preset.model.arch == member.model.arch


def test_kilns_s2_rgb_preset_uses_the_imagenet_encoder_at_its_held_out_threshold() -> None:
    cfg = load_config(CONFIGS / "kilns-s2-rgb.yaml")
    assert (cfg.model.arch, cfg.model.pretrained) == ("efficient-centernet", "imagenet")
    assert cfg.train.encoder_lr_scale == 0.3 and cfg.evaluate.score_threshold == 0.4
    assert cfg.train.max_minutes is not None and cfg.train.max_minutes <= 30


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_fill_missing_sections(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.train.epochs == 20 and cfg.split.method == "auto" and cfg.labels.class_property == "class"


#: ``(test id, config text, the error after "FILE: ")``; text ``None``: the file does not exist,
#: bytes: written as they are.
BAD_CONFIGS: list[tuple[str, str | bytes | None, str]] = [
    # unknown keys: a guess when one is close, else the keys the section knows
    ("unknown-key", MINIMAL + "train:\n  epoch: 3\n", "train.epoch: unknown key; did you mean epochs?"),
    ("unknown-section", MINIMAL + "trian:\n  epochs: 3\n", "trian: unknown key; did you mean train?"),
    ("unknown-key-no-guess", MINIMAL + "augment:\n  zzz: 1\n",
     "augment.zzz: unknown key (known keys: dihedral, brightness, contrast, noise, scale, band_dropout, copy_paste, copy_paste_max)"),
    ("unknown-nested-key", MINIMAL + "  normalisation:\n    hihg: 99\n",
     "model.normalisation.hihg: unknown key; did you mean high?"),
    ("non-text-key", MINIMAL + "train:\n  1: 2\n", "train.1: keys must be text"),
    # wrong types
    ("text-for-int", MINIMAL + "train:\n  epochs: three\n",
     "train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'three')"),
    ("float-for-int", MINIMAL + "train:\n  epochs: 2.5\n", "train.epochs: Input should be a valid integer"),
    ("text-for-classes", MINIMAL.replace("[kiln]", "kiln"), "model.classes: Input should be a valid list (got 'kiln')"),
    ("list-for-bool", MINIMAL + "augment:\n  dihedral: [1]\n", "augment.dihedral: Input should be a valid boolean (got a list)"),
    ("number-for-class-name", MINIMAL.replace("[kiln]", "[kiln, 5]"), "model.classes[1]: Input should be a valid string (got 5)"),
    ("section-not-mapping", MINIMAL + "train: 5\n",
     "train: Input should be a valid dictionary or instance of TrainConfig (got 5)"),
    ("bad-choice", MINIMAL + "train:\n  device: gpu\n", "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
    ("date-for-text", MINIMAL + "  version: 2024-01-01\n", "model.version: Input should be a valid string"),
    # out-of-range values
    ("negative-lr", MINIMAL + "train:\n  lr: -1\n", "train.lr: Input should be greater than 0 (got -1)"),
    ("negative-threshold", MINIMAL + "evaluate:\n  score_threshold: -0.1\n",
     "evaluate.score_threshold: Input should be greater than or equal to 0 (got -0.1)"),
    ("negative-iou", MINIMAL + "evaluate:\n  iou: -0.5\n", "evaluate.iou: Input should be greater than 0 (got -0.5)"),
    ("zero-pixel-size", MINIMAL.replace("pixel_size_m: 1", "pixel_size_m: 0"),
     "model.pixel_size_m: Input should be greater than 0 (got 0)"),
    ("negative-pixel-size", MINIMAL.replace("pixel_size_m: 1", "pixel_size_m: -10"),
     "model.pixel_size_m: Input should be greater than 0 (got -10)"),
    ("nan-pixel-size", MINIMAL.replace("pixel_size_m: 1", "pixel_size_m: .nan"),
     "model.pixel_size_m: Input should be a finite number (got nan)"),
    ("infinite-minutes", MINIMAL + "train:\n  max_minutes: .inf\n", "train.max_minutes: Input should be a finite number"),
    ("empty-classes", MINIMAL.replace("[kiln]", "[]"),
     "model.classes: List should have at least 1 item after validation, not 0 (got a list)"),
    ("blank-class", MINIMAL.replace("[kiln]", "[kiln, ' ']"), "model.classes: names must not be empty"),
    ("same-class-twice", MINIMAL.replace("[kiln]", "[kiln, Kiln]"), "model.classes: names must be distinct, got kiln, Kiln"),
    ("missing-key", MINIMAL.replace("  pixel_size_m: 1\n", ""), "model.pixel_size_m: required key is missing"),
    ("empty-file", "", "model: required key is missing"),
    ("overlap-equals-tile", MINIMAL + "  tile_size: 128\n  overlap: 128\n",
     "model.overlap: must be smaller than model.tile_size (128), got 128"),
    ("overlap-above-tile", MINIMAL + "  tile_size: 64\n  overlap: 100\n",
     "model.overlap: must be smaller than model.tile_size (64), got 100"),
    ("default-overlap-above-tile", MINIMAL + "  tile_size: 32\n",
     "model.overlap: must be smaller than model.tile_size (32), got 64"),
    ("tile-too-small", MINIMAL + "  tile_size: 8\n",
     "model.tile_size: Input should be greater than or equal to 32 (got 8)"),
    ("fractions-above-1", MINIMAL + "chips:\n  pos_fraction: 0.9\n  hard_fraction: 0.5\n",
     "chips.hard_fraction: pos_fraction + hard_fraction must be at most 1, got 0.9 + 0.5"),
    ("mine-at-1", MINIMAL + "train:\n  mine_at: [0.5, 1]\n",
     "train.mine_at: fractions must be between 0 and 1 (exclusive), got [0.5, 1.0]"),
    ("bad-name", MINIMAL.replace("name: m", "name: my model"), "model.name: String should match pattern"),
    ("bad-labels-crs", MINIMAL + "labels:\n  crs: EPSG:999999\n",
     "labels.crs: 'EPSG:999999' is not a CRS pyproj understands; use e.g. 'EPSG:32643'"),
    ("two-errors", MINIMAL + "train:\n  epochs: 0\n  batch_size: 0\n",
     "train.epochs: Input should be greater than or equal to 1 (got 0); train.batch_size: Input should be greater"),
    ("many-errors", MINIMAL.replace("[kiln]", "[" + ", ".join(["1"] * 30) + "]"),
     "model.classes[4]: Input should be a valid string (got 1); and 25 more"),
    # files that are not a config
    ("missing-file", None, "no such file (presets are in configs/)"),
    ("list", "- just\n- a list\n", "a config must be a mapping of sections (model:, train:, ...), not a list"),
    ("scalar", "just text\n", "a config must be a mapping of sections (model:, train:, ...), not 'just text'"),
    ("unclosed-list", "model: [unclosed\n",
     "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2 column 1); fix the syntax"),
    ("bad-indent", MINIMAL + " train:\n", "not valid YAML (expected <block end>, but found '<block mapping start>' at line 6 column 2)"),
    ("tab", "model:\n\tname: m\n", "not valid YAML (found character '\\t' that cannot start any token at line 2"),
    ("python-tag", MINIMAL + "train: !!python/object/apply:os.system [ls]\n",
     "not valid YAML (could not determine a constructor for the tag"),
    ("nested-too-deep", "model: " + "[" * 3000 + "]" * 3000 + "\n", "not valid YAML (nested too deeply)"),
    ("nul-character", "model: \x00\n", "not valid YAML (unacceptable character #x0000"),
    ("latin-1", "model:\n  name: S\u00e3o\n".encode("latin-1"), "not valid YAML (not UTF-8 text); save the config as UTF-8"),
]


@pytest.mark.parametrize(("text", "expect"), [pytest.param(*c[1:], id=c[0]) for c in BAD_CONFIGS])
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str | bytes | None, expect: str) -> None:
    p = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    elif text is not None:
        p.write_text(text)
    with pytest.raises(UsageError) as err:
        load_config(p)
    message = str(err.value)
    assert message.startswith(f"{p}: ") or message.startswith(f"--config {p}: ")
    assert expect in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory; name a YAML file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        pytest.param(MINIMAL + "train:\n  epoch: 3\n", "train.epoch: unknown key; did you mean epochs?", id="unknown-key"),
        pytest.param(MINIMAL.replace("pixel_size_m: 1", "pixel_size_m: 0"), "model.pixel_size_m", id="zero-pixel"),
        pytest.param("model: [unclosed\n", "not valid YAML", id="bad-yaml"),
        pytest.param("- a list\n", "mapping of sections", id="list"),
    ],
)
def test_cli_train_bad_config_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expect: str
) -> None:
    from sitewatch.cli import main

    p = _write(tmp_path, text)
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as ex:
        main(["train", "--config", str(p), "--images", "x.tif", "--labels", "x.geojson", "--out", str(out)])
    err = capsys.readouterr().err
    assert ex.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(p) in err and expect in err
    assert not out.exists()


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
