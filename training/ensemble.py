"""Combine models trained apart (other seeds of one recipe, or other encoders) into one ensemble model.

Models trained from scratch on a few hundred objects differ a lot from seed to seed, and
mostly in their false alarms; averaging their centre heatmaps ranks the objects they agree
on first. Measured on the vessels recipe (two models of two held-out splits, matching
centres within 30 m): on algiers, casablanca and honolulu the members gave F1 0.56 and 0.54
at threshold 0.5 and their ensemble 0.59, with half the false alarms (AP 0.52 and 0.54 -> 0.56); on
athens, cartagena and klang the members gave 0.46 and 0.37 and the ensemble 0.44 (AP 0.41
and 0.37 -> 0.43). So an ensemble is steadier than a single seed, not better than the
luckiest one; it costs one forward pass per member.

Members may differ in architecture: a from-scratch CenterNet and an ImageNet-encoder model
of the same bands and tiling make a different kind of mistake (see the kilns-s2 model card).

    sitewatch ensemble models/seed0 models/seed1 --out models/ensemble
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sitewatch.imagery.errors import ModelError, OutputError, UsageError
from sitewatch.imagery.models.architectures import MEMBER_ARCHITECTURES, build_model
from sitewatch.imagery.models.checkpoint import LoadedModel, ModelSpec, load_checkpoint
from sitewatch.imagery.models.registry import CHECKPOINT_NAME, resolve_model
from sitewatch.training.export import save_model_dir

#: Spec fields that must agree between members: what the members see and what they report.
#: Their architectures may differ (a from-scratch CenterNet beside an ImageNet encoder's) as long
#: as their heatmaps have one output stride.
MUST_MATCH = ("classes", "bands", "normalisation", "tile_size", "overlap", "pixel_size_m", "max_box_px",
              "edge_padding")


def combine(
    models: Sequence[str | Path],
    out: str | Path,
    *,
    name: str | None = None,
    version: str | None = None,
    score_threshold: float | None = None,
    tta: bool | None = None,
    overwrite: bool = False,
) -> LoadedModel:
    """Write a model directory ``out`` holding one ``centernet-ensemble`` of ``models``.

    Args:
        models: two or more shipped model names, model directories or checkpoints:
            ``centernet`` or ``efficient-centernet`` models with the same classes, bands,
            normalisation and tiling and one output stride (seeds of one recipe, or recipes
            with other encoders).
        out: the model directory to write (``model.pt``, ``model_card.md``, ``metrics.json``).
        name, version: of the ensemble (default: the first member's).
        score_threshold: the ensemble's default threshold (default: the first member's).
        tta: whether ``detect`` averages the heatmap over flipped tiles by default (default: the
            first member's).
        overwrite: replace a model already in ``out``.

    Returns:
        The ensemble, loaded back from ``out``.

    Raises:
        UsageError: fewer than two models, or a bad threshold.
        ModelError: a model cannot be found or loaded, or the models do not fit together.
        OutputError: ``out`` holds a model (without ``overwrite``) or cannot be written.
    """
    if len(models) < 2:
        raise UsageError(f"an ensemble needs at least two models, got {len(models)}")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise UsageError(f"--score-threshold {score_threshold}: must be between 0 and 1")
    out = Path(out)
    if (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise OutputError(f"--out {out}: already holds a model; pass --overwrite to replace it")
    members = [load_checkpoint(resolve_model(m)) for m in models]
    first = members[0]
    for m in members:
        if m.spec.arch not in MEMBER_ARCHITECTURES:
            raise ModelError(f"{m.path}: is a {m.spec.arch} model; only {' and '.join(MEMBER_ARCHITECTURES)} models "
                             "can be combined (combine an ensemble's own members instead)")
    for m in members[1:]:
        for key in MUST_MATCH:
            a, b = getattr(first.spec, key), getattr(m.spec, key)
            if a != b:
                raise ModelError(f"{m.path}: its {key} ({b}) differs from {first.path}'s ({a}); "
                                 "combine models of one recipe trained with other seeds")
    seen: dict[str, str] = {}
    for m in members:
        if m.checksum in seen:
            raise ModelError(f"{m.path}: is the same model as {seen[m.checksum]}; combine models trained with other seeds")
        seen[m.checksum] = m.path
    strides = {m.model.stride for m in members}
    if len(strides) != 1:
        raise ModelError(f"{', '.join(m.path for m in members)}: their heatmaps have other output strides "
                         f"({', '.join(str(m.model.stride) for m in members)}); combine models of one stride")
    if all(m.spec.arch == "centernet" and m.spec.arch_params == first.spec.arch_params for m in members):
        arch_params = {**first.spec.arch_params, "members": len(members)}  # seeds of one recipe
    else:
        arch_params = {"members": len(members), "member_archs": [m.spec.arch for m in members],
                       "member_params": [dict(m.spec.arch_params) for m in members]}
    spec = replace(
        first.spec,
        arch="centernet-ensemble",
        arch_params=arch_params,
        name=name or first.spec.name,
        version=version or first.spec.version,
        score_threshold=first.spec.score_threshold if score_threshold is None else float(score_threshold),
        tta=first.spec.tta if tta is None else bool(tta),
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        description=f"{first.spec.description} (ensemble of {len(members)} models)".strip(),
    )
    model = build_model(spec.arch, len(spec.bands), len(spec.classes), spec.arch_params)
    for slot, m in zip(model.members, members, strict=True):
        slot.load_state_dict(m.model.state_dict())
    model.eval()
    listed = [{"path": m.path, "checksum": m.checksum, "name": m.spec.name, "version": m.spec.version,
               "created": m.spec.created, "arch": m.spec.arch, "arch_params": dict(m.spec.arch_params)}
              for m in members]
    try:
        save_model_dir(out, spec, model, _card(spec, listed), {"ensemble_of": listed})
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the model ({exc.strerror or exc})") from None
    return load_checkpoint(out / CHECKPOINT_NAME)


def _card(spec: ModelSpec, members: list[dict[str, Any]]) -> str:
    rows = "\n".join(f"| {i + 1} | `{m['path']}` | {m['name']} {m['version']} | `{m['arch']}` {json.dumps(m['arch_params'])} "
                     f"| {m['created']} | `{m['checksum']}` |" for i, m in enumerate(members))
    return f"""# Model card: {spec.name} v{spec.version}

* **What:** {spec.description}
* **Classes:** {', '.join(spec.classes)}. **Bands:** {', '.join(spec.bands)} (in this order).
  **Resolution:** about {spec.pixel_size_m:g} m pixels.
* **Architecture:** `centernet-ensemble`: {len(members)} models (below), their centre probabilities,
  box sizes and offsets averaged; made by `sitewatch ensemble` on {spec.created}.
* **Default score threshold:** {spec.score_threshold:g}. **Flip averaging (`--tta`) by default:**
  {'yes' if spec.tta else 'no'}.

| member | from | model | architecture | created | checksum |
|---|---|---|---|---|---|
{rows}

Each member's own card says how it was trained. Measure the ensemble with
`sitewatch evaluate` on labelled scenes none of its members saw.
"""
