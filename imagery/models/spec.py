"""What a model is and how to feed it (:class:`ModelSpec`), readable without PyTorch.

A checkpoint (:mod:`sitewatch.imagery.models.checkpoint`) is a ``torch.save`` zip whose
pickle holds the spec as plain data beside the weights. :func:`read_spec` reads the spec
alone with a restricted unpickler that never imports torch and builds no tensor, so
commands that only list models start in a fraction of a second. It does not verify the
weights' checksum: loading a model for use (``load_checkpoint``) does.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sitewatch.imagery.errors import CheckpointError
from sitewatch.imagery.scenes.normalise import Normalisation

#: The ``format`` marker of a sitewatch checkpoint.
FORMAT = "sitewatch-checkpoint/1"


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and how to feed it."""

    name: str
    version: str
    arch: str
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    normalisation: Normalisation = Normalisation()
    arch_params: dict[str, Any] = field(default_factory=dict)
    tile_size: int = 256
    overlap: int = 32
    score_threshold: float = 0.3
    pixel_size_m: float = 10.0
    #: Average the heatmap over flipped inputs at inference (3x compute).
    tta: bool = False
    #: Largest box side in pixels the model may report (about 1.5x the largest label).
    max_box_px: float = 256.0
    #: Drop a detection whose box, grown by this many pixels, touches no-data inside the scene
    #: (0: keep all). The bright or dark strip along a scene's no-data edge fools small-object
    #: models, and an object cut by no-data cannot be checked by a reviewer anyway.
    nodata_margin_px: float = 0.0
    #: What fills an edge tile past the scene: ``mirror`` (the scene mirrored at its edge, as the model's
    #: training chips were) or ``zero`` (the default, and what checkpoints without the field were
    #: trained with, so they keep the padding they were measured with).
    edge_padding: Literal["mirror", "zero"] = "zero"
    created: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed dict (JSON-safe)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["bands"] = list(self.bands)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        d["bands"] = tuple(d["bands"])
        d["normalisation"] = Normalisation(**d.get("normalisation", {}))
        return cls(**d)


def _placeholder(*args: Any, **kwargs: Any) -> None:
    """Stands in for torch's tensor and storage constructors: weights are not wanted here."""
    return None


class _SpecUnpickler(pickle.Unpickler):
    """Plain data and dicts; every torch name becomes :func:`_placeholder`; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" or module.startswith("torch."):
            return _placeholder
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid: Any) -> None:
        return None


def read_spec(path: str | Path) -> ModelSpec:
    """The spec of the checkpoint at ``path``, read without PyTorch and without its weights.

    Raises:
        CheckpointError: missing file, not a sitewatch checkpoint, or refused content.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        with zipfile.ZipFile(p) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                raise CheckpointError(f"{p}: not a sitewatch checkpoint (no pickled data in the file)")
            with zf.open(name) as f:
                raw = _SpecUnpickler(f).load()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{p}: not a sitewatch checkpoint ({type(exc).__name__})") from None
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{p}: refused: the file holds pickled objects or code, not just weights; "
            "only load checkpoints written by sitewatch"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a sitewatch checkpoint (no '{FORMAT}' format marker)")
    try:
        return ModelSpec.from_dict(raw["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint metadata is incomplete or invalid ({exc})") from None
