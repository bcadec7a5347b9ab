"""What a ``detect`` run is made of: its settings, its plan, and what it produced.

Plain values shared by the pipeline (which makes them) and the report (which writes them),
so that neither needs the other's module.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sitewatch.imagery.detect.worker import SceneStats
from sitewatch.imagery.errors import InputError, SitewatchError, UsageError
from sitewatch.imagery.models.checkpoint import LoadedModel, ModelSpec
from sitewatch.imagery.models.runtime import resolve_runtime
from sitewatch.imagery.scenes.scene import Scene
from sitewatch.imagery.scenes.tiling import TileGrid


@dataclass(frozen=True)
class DetectSettings:
    """Settings of a detection run; ``None`` means "the model's default"."""

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    score_threshold: float | None = None
    workers: int | None = None
    bands: tuple[str, ...] | None = None
    tiles_per_task: int = 8
    nms_iou: float = 0.4
    tta: bool | None = None
    #: The value that marks no data in scene files that carry no nodata value of their own
    #: (0 for Sentinel-2 L2A downloads without the tag); files that carry one keep theirs.
    nodata: float | None = None
    #: ``auto`` (ONNX Runtime on the CPU where installed), ``onnx`` or ``torch``; see :mod:`sitewatch.imagery.models.runtime`.
    runtime: str = "auto"

    def resolved(self, spec: ModelSpec) -> DetectSettings:
        """Fill model defaults and validate.

        Raises:
            UsageError: a value is out of range.
        """
        s = replace(
            self,
            tile_size=self.tile_size if self.tile_size is not None else spec.tile_size,
            overlap=self.overlap if self.overlap is not None else spec.overlap,
            score_threshold=self.score_threshold if self.score_threshold is not None else spec.score_threshold,
            workers=self.workers if self.workers is not None else (os.cpu_count() or 1),
            tta=self.tta if self.tta is not None else spec.tta,
            runtime=resolve_runtime(self.runtime),
        )
        assert s.tile_size is not None and s.overlap is not None and s.score_threshold is not None  # noqa: S101
        if s.tile_size < 32 or s.tile_size > 4096:
            raise UsageError(f"--tile-size {s.tile_size}: use a tile size between 32 and 4096 pixels")
        if not 0 <= s.overlap < s.tile_size:
            raise UsageError(f"--overlap {s.overlap}: must be at least 0 and smaller than --tile-size ({s.tile_size})")
        if s.batch_size < 1:
            raise UsageError(f"--batch-size {s.batch_size}: must be at least 1")
        if not 0.0 <= s.score_threshold <= 1.0:
            raise UsageError(f"--score-threshold {s.score_threshold}: must be between 0 and 1")
        if s.workers is not None and s.workers < 1:
            raise UsageError(f"--workers {s.workers}: must be at least 1")
        if s.nodata is not None and not math.isfinite(s.nodata):
            raise UsageError(f"--nodata {s.nodata}: give a finite number (the value of no-data pixels in every band)")
        if s.tiles_per_task < 1:
            raise UsageError(f"tiles per task {s.tiles_per_task}: must be at least 1")
        return s


@dataclass
class SceneResult:
    """What one scene produced."""

    scene: Scene
    stats: SceneStats | None = None
    detections: dict[str, np.ndarray] = field(default_factory=dict)
    tiles_total: int = 0
    tiles_skipped: int = 0
    tiles_failed: int = 0
    errors: list[str] = field(default_factory=list)
    error: SitewatchError | None = None

    @property
    def failed(self) -> bool:
        """The scene produced nothing usable."""
        return self.stats is None or (self.tiles_total > 0 and self.tiles_failed == self.tiles_total)


@dataclass(frozen=True)
class Plan:
    """Everything checked before any work starts: model, scenes, grids, settings."""

    model: LoadedModel
    model_ref: str
    scenes: tuple[Scene, ...]
    grids: tuple[TileGrid, ...]
    settings: DetectSettings
    #: Inputs that could not be opened, as ``(input, error)``, when the plan was asked to go on without them.
    unopened: tuple[tuple[str, InputError], ...] = ()
    #: Warnings about scenes that run but may give poor detections, as ``(scene source, message)``.
    warnings: tuple[tuple[str, str], ...] = ()


@dataclass
class RunSummary:
    """The outcome of :func:`sitewatch.imagery.detect.pipeline.detect`."""

    out: Path
    results: list[SceneResult]
    plan: Plan
    started: dt.datetime
    finished: dt.datetime

    @property
    def failed_scenes(self) -> list[SceneResult]:
        """Scenes that were opened but produced nothing."""
        return [r for r in self.results if r.failed]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Every input that failed, opened or not: ``{"scene": input, "errors": [messages]}``."""
        return [{"scene": src, "errors": [str(exc)]} for src, exc in self.plan.unopened] + [
            {"scene": r.scene.source, "errors": r.errors or [f"{r.scene.source}: no tile could be read"]}
            for r in self.failed_scenes
        ]

    def counts(self) -> dict[str, int]:
        """Detections per class over all scenes."""
        out: dict[str, int] = {c: 0 for c in self.plan.model.spec.classes}
        for r in self.results:
            if r.detections and len(r.detections["scores"]):
                for c in r.detections["labels"]:
                    out[self.plan.model.spec.classes[int(c)]] += 1
        return out

    def settings_dict(self) -> dict[str, Any]:
        """The resolved settings as plain data."""
        d = asdict(self.plan.settings)
        d["bands"] = list(self.plan.settings.bands) if self.plan.settings.bands else None
        return d
