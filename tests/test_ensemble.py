"""Ensembles of one recipe's models (sitewatch.training.ensemble, `sitewatch ensemble`)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sitewatch.imagery.errors import ModelError, OutputError, UsageError
from sitewatch.imagery.models.architectures import build_model
from sitewatch.imagery.models.checkpoint import load_checkpoint, save_checkpoint
from sitewatch.imagery.models.runtime import inference_model, onnx_available
from sitewatch.training.ensemble import combine
from tests.clirun import SITEWATCH
from tests.test_checkpoint import tiny_model, tiny_spec


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in (0, 1, 2):
        path = tmp_path / f"seed{seed}" / "model.pt"
        save_checkpoint(path, tiny_spec(), tiny_model(seed=seed))
        paths.append(path.parent)
    return paths


def test_the_ensemble_averages_its_members_centre_probabilities(tmp_path: Path, members: list[Path]) -> None:
    lm = combine(members, tmp_path / "ens", name="tiny-ens", version="2.0.0", score_threshold=0.4)
    assert lm.spec.arch == "centernet-ensemble" and lm.spec.arch_params["members"] == 3
    assert (lm.spec.name, lm.spec.version, lm.spec.score_threshold) == ("tiny-ens", "2.0.0", 0.4)
    assert lm.spec.bands == tiny_spec().bands and lm.spec.normalisation == tiny_spec().normalisation
    parts = [load_checkpoint(m / "model.pt").model for m in members]
    x = torch.randn(2, 4, 64, 64)
    with torch.inference_mode():
        heat, size, offset = lm.model(x)
        outs = [p(x) for p in parts]
    prob = torch.stack([torch.sigmoid(o[0]) for o in outs]).mean(0)
    assert torch.allclose(torch.sigmoid(heat), prob, atol=1e-6)
    assert torch.allclose(size, torch.stack([o[1] for o in outs]).mean(0), atol=1e-6)
    assert torch.allclose(offset, torch.stack([o[2] for o in outs]).mean(0), atol=1e-6)
    card = (tmp_path / "ens" / "model_card.md").read_text()
    assert all(load_checkpoint(m / "model.pt").checksum in card for m in members)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_an_ensemble_runs_in_onnx_runtime_as_in_torch(tmp_path: Path, members: list[Path]) -> None:
    lm = combine(members[:2], tmp_path / "ens")
    x = torch.randn(2, 4, 64, 96)
    with torch.inference_mode():
        want = lm.model(x)
    with inference_model(lm.model, lm.checksum, "onnx", 1) as net:
        got = net(x)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


def _efficient(path: Path, seed: int, **params: int) -> Path:
    """A tiny efficient-centernet (random weights) of tiny_spec's bands and classes."""
    torch.manual_seed(seed)
    params = {"head_width": 8, **params}
    save_checkpoint(path, tiny_spec(arch="efficient-centernet", arch_params=params),
                    build_model("efficient-centernet", 4, 2, params).eval())
    return path


def test_members_of_other_architectures_are_averaged_as_they_are(tmp_path: Path, members: list[Path]) -> None:
    """A from-scratch centernet and an efficient-centernet of the same bands and tiling: the
    ensemble rebuilds each member as it was and averages them, in torch and after a reload."""
    eff = _efficient(tmp_path / "eff.pt", seed=3)
    lm = combine([members[0], eff], tmp_path / "mixed")
    assert lm.spec.arch_params["member_archs"] == ["centernet", "efficient-centernet"]
    assert lm.model.pad_multiple == 32 and lm.model.stride == 2
    parts = [load_checkpoint(members[0] / "model.pt").model, load_checkpoint(eff).model]
    x = torch.randn(1, 4, 64, 96)
    with torch.inference_mode():
        heat, size, _ = lm.model(x)
        outs = [p(x) for p in parts]
    assert torch.allclose(torch.sigmoid(heat), torch.stack([torch.sigmoid(o[0]) for o in outs]).mean(0), atol=1e-6)
    assert torch.allclose(size, (outs[0][1] + outs[1][1]) / 2, atol=1e-6)
    card = (tmp_path / "mixed" / "model_card.md").read_text()
    assert "`efficient-centernet`" in card and "`centernet`" in card
    # a member whose heatmap has another output stride cannot be averaged cell by cell
    coarse = _efficient(tmp_path / "coarse.pt", seed=4, out_stride=4)
    with pytest.raises(ModelError, match="other output strides"):
        combine([members[0], coarse], tmp_path / "strides")
    assert not (tmp_path / "strides").exists()


def test_models_that_do_not_fit_together_are_refused(tmp_path: Path, members: list[Path]) -> None:
    with pytest.raises(UsageError, match="at least two"):
        combine(members[:1], tmp_path / "one")
    other = tmp_path / "other.pt"
    save_checkpoint(other, tiny_spec(bands=("B04", "B03", "B02", "B08")), tiny_model(seed=5))
    with pytest.raises(ModelError, match=r"other\.pt: its bands .* differs"):
        combine([members[0], other], tmp_path / "mixed")
    with pytest.raises(ModelError, match="the same model"):
        combine([members[0], members[0]], tmp_path / "twice")
    lm = combine(members[:2], tmp_path / "ens")
    with pytest.raises(ModelError, match="centernet-ensemble model"):
        combine([tmp_path / "ens", members[2]], tmp_path / "nested")
    with pytest.raises(OutputError, match="already holds a model"):
        combine(members[1:], tmp_path / "ens")
    assert load_checkpoint(tmp_path / "ens" / "model.pt").checksum == lm.checksum  # untouched
    assert not any((tmp_path / d).exists() for d in ("one", "mixed", "twice", "nested"))
    assert combine(members[1:], tmp_path / "ens", overwrite=True).checksum != lm.checksum


def test_the_command_writes_a_model_detect_can_use(tmp_path: Path, members: list[Path]) -> None:
    r = subprocess.run([*SITEWATCH, "ensemble", *map(str, members[:2]), "--out", str(tmp_path / "ens"), "--tta"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "an ensemble of 2 models" in r.stdout
    lm = load_checkpoint(tmp_path / "ens" / "model.pt")
    assert lm.spec == replace(lm.spec, arch="centernet-ensemble")
    # --tta makes flip averaging the ensemble's default in detect (its members' was off), and the card says so.
    assert lm.spec.tta and not load_checkpoint(members[0] / "model.pt").spec.tta
    assert "Flip averaging (`--tta`) by default:**\n  yes" in (tmp_path / "ens" / "model_card.md").read_text()
    bad = subprocess.run([*SITEWATCH, "ensemble", str(members[0]), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "at least two models" in bad.stderr
    assert "Traceback" not in bad.stderr
