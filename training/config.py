"""Training configs: YAML files in ``configs/``, validated, with command-line overrides.

A config has the sections ``model``, ``labels``, ``chips``, ``augment``, ``split``,
``train`` and ``evaluate``. Unknown keys, wrong types and out-of-range values are errors
that name the file and the key. Overrides use dotted keys (``train.epochs=3``) and are
validated the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imagery.errors import UsageError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormalisationConfig(_Section):
    """How raw pixel values become model inputs (see :mod:`imagery.normalise`)."""

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
    arch: Literal["centernet"] = "centernet"
    arch_params: dict[str, Any] = Field(default_factory=dict)
    normalisation: NormalisationConfig = NormalisationConfig()
    tile_size: int = Field(256, ge=32, le=4096)
    overlap: int = Field(64, ge=0)
    #: Largest box side in pixels the model may report.
    max_box_px: float = Field(256.0, gt=0)
    tta: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.overlap >= self.tile_size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile_size ({self.tile_size})")
        if len(set(c.lower() for c in self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        return self


class LabelsConfig(_Section):
    """How label files are read (see :mod:`training.labels`)."""

    class_property: str = "class"
    #: Label class names -> model class names, e.g. ``{ship: vessel}``.
    class_map: dict[str, str] = Field(default_factory=dict)
    #: Side in metres of the box given to a Point label.
    point_box_m: float = Field(50.0, gt=0)
    #: CRS of label coordinates when the file declares none (default: WGS84 lon/lat).
    crs: str | None = None
    #: Go on without labels that cannot be used (they are still reported).
    skip_problems: bool = False


class ChipsConfig(_Section):
    """Which windows are read for training (see :mod:`training.chips`)."""

    size: int = Field(128, ge=32, le=1024)
    #: Share of chips centred on a labelled object.
    pos_fraction: float = Field(0.6, ge=0, le=1)
    #: Share of chips centred on hard negatives, once there are any.
    hard_fraction: float = Field(0.25, ge=0, le=1)
    #: Most background windows read per scene (from the tile grid, at random).
    negatives_per_scene: int = Field(64, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ChipsConfig:
        if self.pos_fraction + self.hard_fraction > 1:
            raise ValueError("pos_fraction + hard_fraction must be at most 1")
        return self


class AugmentConfig(_Section):
    """Augmentations suited to overhead imagery."""

    dihedral: bool = True
    brightness: float = Field(0.25, ge=0, le=2)
    contrast: float = Field(0.3, ge=0, le=0.95)
    noise: float = Field(0.02, ge=0, le=1)
    #: Scale jitter: factors drawn log-uniformly in [1/(1+scale), 1+scale].
    scale: float = Field(0.0, ge=0, le=2)


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

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if any(not 0 < f < 1 for f in self.mine_at):
            raise ValueError("mine_at fractions must be between 0 and 1")
        return self


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


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


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
        UsageError: the file is missing, not YAML, or fails validation (names the key).
    """
    doc: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--config {p}: no such file (presets are in configs/)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UsageError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"{p}: a config must be a mapping of sections (model:, train:, ...)")
        doc = loaded
    doc = apply_overrides(doc, list(overrides))
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise UsageError(f"{where}: {_describe(exc)}") from None


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for model cards, metrics.json and the resume check)."""
    return cfg.model_dump(mode="json")
