"""Checkpoints: weights plus everything ``detect`` needs, loaded without unpickling code.

A checkpoint is a ``torch.save`` dict of plain types and tensors::

    {"format": "sitewatch-checkpoint/1", "spec": {...}, "state_dict": {...}, "checksum": "sha256:..."}

``spec`` holds the architecture, class names, band names and order, normalisation, tile
size and overlap, score threshold, pixel size and version. ``checksum`` is a SHA-256 over
the spec (canonical JSON) and every tensor's bytes, so a damaged or edited file is refused.
Loading uses ``torch.load(weights_only=True)``, which refuses pickled code. The spec alone
can be read without torch (:func:`sitewatch.imagery.models.spec.read_spec`).
"""


from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sitewatch.imagery.errors import CheckpointError
from sitewatch.imagery.models.architectures import ARCHITECTURES, build_model
from sitewatch.imagery.models.spec import FORMAT, ModelSpec


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's spec, its network in eval mode, and its file's checksum."""

    spec: ModelSpec
    model: torch.nn.Module
    path: str
    checksum: str


def _digest(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """SHA-256 of ``data`` (a checkpoint file's bytes), as ``sha256:HEX``, as :func:`file_sha256` gives it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as ``sha256:HEX``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | Path, spec: ModelSpec, model: torch.nn.Module) -> str:
    """Write a checkpoint atomically; returns its checksum."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sd = spec.to_dict()
    checksum = _digest(sd, state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "spec": sd, "state_dict": state, "checksum": checksum}, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return checksum


def load_checkpoint(path: str | Path, data: bytes | None = None) -> LoadedModel:
    """Load and verify a checkpoint; never executes pickled code.

    ``data``, when given, is the checkpoint file's bytes (sent to a cluster worker, which
    may not see ``path``); ``path`` then only names it in messages.

    Raises:
        CheckpointError: missing file, not a sitewatch checkpoint, refused content,
            unknown architecture, or checksum mismatch.
    """
    p = Path(path)
    if data is None and not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        raw = torch.load(io.BytesIO(data) if data is not None else p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            raise CheckpointError(
                f"{p}: refused: the file holds pickled objects or code, not just weights; "
                "only load checkpoints written by sitewatch"
            ) from None
        raise CheckpointError(f"{p}: not a sitewatch checkpoint (unreadable pickle data)") from None
    except Exception as exc:  # junk bytes fail in the unpickler with anything: KeyError, IndexError...
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise CheckpointError(f"{p}: not a sitewatch checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a sitewatch checkpoint (no '{FORMAT}' format marker)")
    try:
        sd, state, checksum = raw["spec"], raw["state_dict"], raw["checksum"]
        # weights_only admits any plain data: a non-tensor weight or a non-JSON spec value
        # must be refused here, not escape as AttributeError/TypeError from _digest.
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise TypeError("state_dict must map parameter names to tensors")
        spec = ModelSpec.from_dict(sd)
        digest = _digest(sd, state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint metadata is incomplete or invalid ({exc})") from None
    if digest != checksum:
        raise CheckpointError(f"{p}: checksum mismatch: the file is damaged or was edited; get a fresh copy")
    if spec.arch not in ARCHITECTURES:
        raise CheckpointError(f"{p}: unknown architecture {spec.arch!r} (known: {', '.join(ARCHITECTURES)})")
    model = build_model(spec.arch, len(spec.bands), len(spec.classes), spec.arch_params)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not fit architecture {spec.arch} ({str(exc)[:120]})") from None
    model.eval()
    file_checksum = bytes_sha256(data) if data is not None else file_sha256(p)
    return LoadedModel(spec=spec, model=model, path=str(p), checksum=file_checksum)


__all__ = ["FORMAT", "LoadedModel", "ModelSpec", "bytes_sha256", "file_sha256", "load_checkpoint", "save_checkpoint"]
