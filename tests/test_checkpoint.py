"""Tests for sitewatch.imagery.models.checkpoint: round trip, checksum, refusing non-checkpoints and pickled code."""

from __future__ import annotations

import json
import os
import pickle
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sitewatch.imagery.errors import CheckpointError, ModelError
from sitewatch.imagery.models.architectures import build_model
from sitewatch.imagery.models.checkpoint import FORMAT, ModelSpec, file_sha256, load_checkpoint, save_checkpoint
from sitewatch.imagery.scenes.normalise import Normalisation

ARCH_PARAMS: dict[str, Any] = {"head_width": 16, "widths": [8, 16, 16, 16]}


def tiny_spec(**changes: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "test-model",
        "version": "0.1.0",
        "arch": "centernet",
        "classes": ("vessel", "kiln"),
        "bands": ("B02", "B03", "B04", "B08"),
        "normalisation": Normalisation(method="fixed", offset=100.0, scale=1000.0),
        "arch_params": ARCH_PARAMS,
        "tile_size": 64,
        "overlap": 16,
        "score_threshold": 0.25,
        "pixel_size_m": 10.0,
        "created": "2024-01-01T00:00:00Z",
        "description": "random weights for tests",
    }
    fields.update(changes)
    return ModelSpec(**fields)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("centernet", 4, 2, ARCH_PARAMS)
    # Non-trivial BatchNorm statistics, so a loader that skipped buffers would be caught.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ModelSpec, torch.nn.Module, str]:
    spec, model = tiny_spec(), tiny_model()
    path = tmp_path / "model.pt"
    checksum = save_checkpoint(path, spec, model)
    return path, spec, model, checksum


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny forward passes: with two threads on a busy 2-core machine each one waits ~1 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_input() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).random((2, 4, 16, 16), dtype=np.float32))


def test_round_trip_keeps_spec_and_outputs(
    saved: tuple[Path, ModelSpec, torch.nn.Module, str], one_thread: None
) -> None:
    path, spec, model, checksum = saved
    assert checksum.startswith("sha256:") and len(checksum) == len("sha256:") + 64
    loaded = load_checkpoint(path)
    assert loaded.spec == spec
    assert loaded.spec.classes == ("vessel", "kiln") and loaded.spec.bands == ("B02", "B03", "B04", "B08")
    assert loaded.spec.normalisation == Normalisation(method="fixed", offset=100.0, scale=1000.0)
    assert loaded.spec.tile_size == 64 and loaded.spec.overlap == 16 and loaded.spec.score_threshold == 0.25
    assert loaded.path == str(path)
    assert loaded.checksum == file_sha256(path)
    assert not loaded.model.training
    x = fixed_input()
    with torch.no_grad():
        for want, got in zip(model(x), loaded.model(x), strict=True):
            assert torch.equal(want, got)
    # The same weights give the same content checksum; other weights another.
    assert save_checkpoint(path.with_name("again.pt"), spec, model) == checksum
    assert save_checkpoint(path.with_name("other.pt"), spec, tiny_model(seed=1)) != checksum


def test_saved_file_holds_only_plain_data(saved: tuple[Path, ModelSpec, torch.nn.Module, str]) -> None:
    path, spec, _, checksum = saved
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "spec", "state_dict", "checksum"}
    assert raw["format"] == FORMAT and raw["checksum"] == checksum
    json.dumps(raw["spec"])  # the spec is JSON-safe
    assert ModelSpec.from_dict(raw["spec"]) == spec
    # Written atomically: no temporary file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _edit_and_resave(path: Path, edit: Any) -> None:
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)  # keeps the old checksum field


def test_edited_weight_fails_the_checksum(saved: tuple[Path, ModelSpec, torch.nn.Module, str]) -> None:
    path = saved[0]

    def edit(raw: dict[str, Any]) -> None:
        key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
        raw["state_dict"][key].view(-1)[0] += 1e-3

    _edit_and_resave(path, edit)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_edited_spec_fails_the_checksum(saved: tuple[Path, ModelSpec, torch.nn.Module, str]) -> None:
    path = saved[0]
    _edit_and_resave(path, lambda raw: raw["spec"].update(classes=["kiln", "vessel"]))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_removed_weight_fails_the_checksum(saved: tuple[Path, ModelSpec, torch.nn.Module, str]) -> None:
    path = saved[0]
    _edit_and_resave(path, lambda raw: raw["state_dict"].pop(next(iter(raw["state_dict"]))))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("random.pt", np.random.default_rng(0).bytes(4096), None),
        ("empty.pt", b"", "not a sitewatch checkpoint"),
        ("model.json", json.dumps({"format": FORMAT, "spec": {}, "state_dict": {}}).encode(), None),
        ("zipped.pt", b"PK\x03\x04" + np.random.default_rng(1).bytes(512), None),
    ],
)
def test_files_that_are_not_checkpoints_raise(tmp_path: Path, name: str, content: bytes, message: str | None) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    # Callers can catch it as a model error or as an OSError.
    assert isinstance(info.value, ModelError) and isinstance(info.value, OSError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conv.weight": torch.zeros(2)}, "format marker"),  # a bare state_dict
        ([1, 2, 3], "format marker"),
        ({"format": FORMAT, "spec": {"name": "x"}, "state_dict": {}, "checksum": "sha256:0"}, "incomplete or invalid"),
        ({"format": FORMAT, "state_dict": {}}, "incomplete or invalid"),
        # Plain data that weights_only admits but that is no checkpoint content.
        ({"format": FORMAT, "spec": tiny_spec().to_dict(), "state_dict": {"w": 1}, "checksum": "x"}, "tensors"),
        ({"format": FORMAT, "spec": tiny_spec().to_dict(), "state_dict": [1, 2], "checksum": "x"}, "tensors"),
        (
            {"format": FORMAT, "spec": tiny_spec().to_dict(), "state_dict": {1: torch.zeros(1)}, "checksum": "x"},
            "tensors",
        ),
        (
            {
                "format": FORMAT,
                "spec": {**tiny_spec().to_dict(), "description": torch.zeros(1)},
                "state_dict": {},
                "checksum": "x",
            },
            "incomplete or invalid",
        ),
    ],
)
def test_torch_files_without_a_valid_checkpoint_raise(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_unknown_architecture_with_a_valid_checksum_raises(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_spec(arch="yolo"), tiny_model())
    with pytest.raises(CheckpointError, match="unknown architecture 'yolo'"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture_raise(tmp_path: Path) -> None:
    # The spec says 3 classes; the weights are for 2. The checksum is valid.
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_spec(classes=("a", "b", "c")), tiny_model())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


class ExecPayload:
    """Unpickling this runs Python code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


class ShellPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("payload", [ExecPayload, ShellPayload])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused_and_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: type, writer: str
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    # A well-formed checkpoint wrapper, so only the payload makes it bad.
    content = {"format": FORMAT, "spec": tiny_spec().to_dict(), "state_dict": {}, "checksum": "x", "x": payload(marker)}
    if writer == "torch.save":
        torch.save(content, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(content, f)
    # The payload is live: unpickling it unsafely would create the marker.
    with open(path.with_suffix(".check"), "wb") as f:
        pickle.dump(payload(tmp_path / "live"), f)
    pickle.loads(path.with_suffix(".check").read_bytes())  # noqa: S301 - proves the payload works
    assert (tmp_path / "live").exists()

    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    assert calls and all(c.get("weights_only") is True for c in calls)


def test_the_spec_reads_without_torch_the_same_as_a_full_load(tiny_checkpoint: Path) -> None:
    from sitewatch.imagery.models.spec import read_spec

    assert read_spec(tiny_checkpoint) == load_checkpoint(tiny_checkpoint).spec


def test_reading_the_spec_never_runs_pickled_code(tmp_path: Path) -> None:
    import pickle
    import zipfile

    from sitewatch.imagery.errors import CheckpointError
    from sitewatch.imagery.models.spec import read_spec

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"format": FORMAT, "spec": Payload()}))
    with pytest.raises(CheckpointError, match="refused: the file holds pickled objects or code"):
        read_spec(evil)
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a sitewatch checkpoint"):
        read_spec(junk)
