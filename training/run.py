"""``sitewatch train``: scenes + labels + config -> chips -> training -> a versioned model directory.

The model directory holds ``model.pt`` (a checkpoint ``detect`` loads), ``model_card.md``,
``metrics.json``, ``config.yaml`` (the resolved config), ``training_log.csv`` and
``training_curves.png``. While training runs, ``checkpoints/last.pt`` holds the whole
training state after every epoch; ``--resume`` continues from it.
"""

from __future__ import annotations

import csv
import datetime as dt
import glob
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from sitewatch.imagery.detect.outputs import out_dir_exists
from sitewatch.imagery.errors import BandError, InputError, OutputError, UsageError
from sitewatch.imagery.models.architectures import build_model
from sitewatch.imagery.models.checkpoint import LoadedModel, ModelSpec, load_checkpoint, save_checkpoint
from sitewatch.imagery.models.registry import CHECKPOINT_NAME, resolve_model
from sitewatch.imagery.scenes.georef import ground_pixel_m
from sitewatch.imagery.scenes.normalise import Normalisation
from sitewatch.imagery.scenes.scene import RASTER_SUFFIXES, Scene, band_name_in, canonical_band, open_scene
from sitewatch.training.chips import Region, build_chips
from sitewatch.training.config import Config, config_dict
from sitewatch.training.dataset import Augment, ChipSampler
from sitewatch.training.init import check_parent, ensemble_member, imagenet_init, transfer
from sitewatch.training.labels import (
    LabelOptions,
    LabelSet,
    SceneLabels,
    expand_label_files,
    problem_summary,
    read_labels,
)
from sitewatch.training.train import Validation, make_batch, mine_hard_negatives, train_step, validate

log = logging.getLogger(__name__)

STATE_FORMAT = "sitewatch-train-state/1"
#: Files of a finished model directory.
MODEL_FILES = (CHECKPOINT_NAME, "model_card.md", "metrics.json", "config.yaml", "training_log.csv", "training_curves.png")


class Progress(Protocol):
    """What :func:`run_training` reports while it works (the CLI draws progress bars)."""

    def stage(self, text: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1, **info: Any) -> None: ...
    def note(self, text: str) -> None:
        """A line for the user: a warning or an epoch's figures."""


class _Silent:
    def stage(self, text: str, total: int | None = None) -> None:
        log.info("%s", text)

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def note(self, text: str) -> None:
        log.info("%s", text)


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    checksum: str
    epochs: int
    best_epoch: int
    validation: dict[str, Any]
    minutes: float
    label_counts: dict[str, int]
    problems: int
    history: list[dict[str, Any]] = field(default_factory=list)


def param_groups(model: torch.nn.Module, lr: float, encoder_scale: float) -> tuple[list[dict[str, Any]], list[float]]:
    """The optimiser's parameter groups: the encoder's at ``lr * encoder_scale``, the rest at ``lr``.

    Returns the groups and their peak learning rates (for the one-cycle schedule).
    """
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    if not enc or encoder_scale == 1.0:
        return [{"params": list(model.parameters())}], [lr]
    return [{"params": enc, "lr": lr * encoder_scale}, {"params": rest}], [lr * encoder_scale, lr]


def expand_images(items: Sequence[str], bands: Sequence[str], allow_missing: bool = False) -> list[str]:
    """Scene paths from files, globs and directories.

    A directory whose raster files are all named by band (``..._B02.tif``) and hold every
    band of ``bands`` (with ``allow_missing``: at least one) is one scene; any other
    directory contributes each raster file in it as a scene.

    Raises:
        InputError: a path or glob matches nothing.
        BandError: a band directory lacks some of ``bands`` (and ``allow_missing`` is off).
    """
    out: list[str] = []
    for item in items:
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise InputError(item, "matches no files; check the path or quote the glob")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise InputError(p, "no such file or directory")
            if p.is_dir():
                rasters = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES)
                if not rasters:
                    raise InputError(p, "directory holds no raster files (.tif/.tiff/.jp2)")
                named = [band_name_in(f.name) for f in rasters]
                wanted = [canonical_band(b) for b in bands]
                by_band = all(named) and len(set(named)) == len(named) and set(wanted) & set(named)
                lacking = [b for b, w in zip(bands, wanted, strict=True) if w not in named]
                if by_band and lacking and not allow_missing:
                    raise BandError(p, f"has no {', '.join(lacking)} (the model takes {', '.join(bands)}); "
                                    "to train on it with zeros in their place, set chips.missing_bands: zero "
                                    "(and augment.band_dropout) in the config")
                if by_band:
                    out.append(str(p))
                else:
                    out += [str(f) for f in rasters]
            else:
                out.append(str(p))
    return list(dict.fromkeys(out))


def _ground_px(scene: Scene) -> float:
    return ground_pixel_m(scene.affine, scene.crs_wkt, scene.width / 2, scene.height / 2)


def make_regions(truth: Sequence[SceneLabels], cfg: Config) -> list[Region]:
    """Decide which scenes, or which blocks of them, are validation."""
    sp = cfg.split
    n = len(truth)
    if sp.val_scenes:
        names = {v.lower() for v in sp.val_scenes}
        chosen = [t.scene.name.lower() in names or Path(t.scene.source).name.lower() in names for t in truth]
        missing = names - {t.scene.name.lower() for t in truth} - {Path(t.scene.source).name.lower() for t in truth}
        if missing:
            raise UsageError(f"split.val_scenes: no scene named {', '.join(sorted(missing))}")
        return [Region(None, 1.0, c) for c in chosen]
    if sp.val_fraction == 0:
        return [Region(None, 1.0, False) for _ in truth]
    method = sp.method if sp.method != "auto" else ("scene" if n >= 3 else "block")
    rng = np.random.default_rng(sp.seed)
    if method == "scene":
        if n < 2:
            raise UsageError("split.method scene needs at least 2 scenes; use split.method block for one scene")
        k = min(n - 1, max(1, round(n * sp.val_fraction)))
        val = set(rng.permutation(n)[:k].tolist())
        return [Region(None, 1.0, i in val) for i in range(n)]
    regions = []
    for t in truth:
        px = sp.block_m / _ground_px(t.scene)
        rows, cols = math.ceil(t.scene.height / px), math.ceil(t.scene.width / px)
        blocks = rng.random((rows, cols)) < sp.val_fraction
        if blocks.all() or (rows * cols > 1 and not blocks.any()):
            flat = blocks.ravel()
            flat[:] = False
            flat[rng.permutation(flat.size)[: max(1, round(flat.size * sp.val_fraction))]] = True
            if flat.all():
                flat[0] = False
        regions.append(Region(blocks, px, False))
    return regions


def _spec(cfg: Config, threshold: float, created: str) -> ModelSpec:
    m = cfg.model
    return ModelSpec(
        name=m.name, version=m.version, arch=m.arch, classes=tuple(m.classes), bands=tuple(m.bands),
        normalisation=Normalisation(**m.normalisation.model_dump()), arch_params=dict(m.arch_params),
        tile_size=m.tile_size, overlap=m.overlap, score_threshold=threshold, pixel_size_m=m.pixel_size_m,
        tta=m.tta, max_box_px=m.max_box_px, nodata_margin_px=m.nodata_margin_px, edge_padding=m.edge_padding, created=created, description=m.description,
    )


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device cuda: no CUDA device is available; use cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_model_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a finished model directory (unless overwrite) or a directory of foreign files."""
    if not out_dir_exists(out):
        if resume:
            raise UsageError(f"--resume: {out} does not exist; nothing to resume")
        return
    finished = (out / CHECKPOINT_NAME).exists()
    state = (out / "checkpoints" / "last.pt").exists()
    if resume:
        if not state:
            raise UsageError(f"--resume: {out} holds no training state (checkpoints/last.pt); start without --resume")
        return
    if finished and not overwrite:
        raise OutputError(f"--out {out}: already holds a trained model; choose another directory or pass --overwrite")
    if state and not finished and not overwrite:
        raise OutputError(f"--out {out}: holds an unfinished training run; pass --resume to continue it or --overwrite")
    foreign = [p.name for p in out.iterdir() if p.name not in (*MODEL_FILES, "checkpoints", ".staging")]
    if foreign:
        raise OutputError(f"--out {out}: holds files sitewatch did not write ({', '.join(sorted(foreign)[:3])}); choose an empty directory")


def _plain(x: Any) -> Any:
    """Plain JSON-able data (numpy scalars become Python numbers), as ``weights_only`` loading needs."""
    return json.loads(json.dumps(x, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state file is the same user problem
        raise InputError(path, f"not a training state this version can resume ({type(exc).__name__}); start again with --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(path, "not a sitewatch training state; start again with --overwrite")
    return state


def _val_truth(truth: Sequence[SceneLabels], regions: Sequence[Region]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for si, (t, r) in enumerate(zip(truth, regions, strict=True)):
        if not r.any_val:
            continue
        c = np.stack([(t.boxes[:, 0] + t.boxes[:, 2]) / 2, (t.boxes[:, 1] + t.boxes[:, 3]) / 2], 1) if len(t.boxes) else np.zeros((0, 2))
        keep = r.is_val(c[:, 0], c[:, 1]) if len(c) else np.zeros(0, bool)
        out[si] = (t.boxes[keep], t.labels[keep])
    return out


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ep, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    f1 = [h.get("val_f1") for h in history]
    if any(v is not None for v in f1):
        ax2 = ax.twinx()
        ax2.plot(ep, [v if v is not None else float("nan") for v in f1], "s-", color="tab:orange", label="validation F1")
        ax2.set_ylabel("validation F1", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("sitewatch training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_log(history: list[dict[str, Any]], path: Path) -> None:
    keys = ["epoch", "steps", "seconds", "loss", "lr", "hard_negatives", "val_precision", "val_recall", "val_f1", "val_threshold"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for h in history:
            w.writerow(h)


def _parent(init: str | Path, m: Any) -> LoadedModel:
    """The model ``--init`` names, loaded and checked against the config.

    Raises:
        ModelError: no such model. CheckpointError: not a usable checkpoint.
        UsageError: another architecture or other bands.
    """
    parent = ensemble_member(load_checkpoint(resolve_model(init)), str(init), m.arch, m.arch_params)
    check_parent(parent, str(init), m.arch, m.arch_params, m.bands)
    return parent


def _init_line(init: dict[str, Any], labels: dict[str, int]) -> str:
    """The model card's line on where the weights started."""
    if init["kind"] == "imagenet":
        bands = ", ".join(f"{b}: {src}" for b, src in init["bands"].items())
        return (f"encoder from ImageNet ({init['weights']}; stem filters by band: {bands}); "
                "pyramid and heads at random")
    if init["kind"] == "model":
        p = init["parent"]
        per_class = ", ".join(f"{n} {k.removeprefix('class:')}" for k, n in labels.items() if k.startswith("class:"))
        added = f"{labels.get('positives', 0)} objects ({per_class or 'none'}), {labels.get('negatives', 0)} known non-objects"
        return (f"fine-tuned from `{p['name']}` v{p['version']} ({p['checksum']}, `--init {p['ref']}`); "
                f"classes kept: {', '.join(init['classes_kept']) or 'none'}; new: {', '.join(init['classes_new']) or 'none'}; "
                f"dropped: {', '.join(init['classes_dropped']) or 'none'}. Labels added by this fine-tune: {added}")
    return "from scratch (random weights, no pretrained encoder)"


def _card(cfg: Config, spec: ModelSpec, res: dict[str, Any]) -> str:
    m = cfg.model
    val = res["validation"]
    if val:
        vline = (f"precision {val['precision']:.2f}, recall {val['recall']:.2f}, F1 {val['f1']:.2f} at score "
                 f"{val['threshold']:.2f} ({val['tp']} matched, {val['fp']} false, {val['fn']} missed), "
                 f"matched by {res['match']}")
    else:
        vline = "none (no validation split: split.val_fraction is 0); measure with `sitewatch evaluate`"
    scenes = "\n".join(f"  - `{s['name']}` ({s['role']}): {s['labels']} labels, {s['width']} x {s['height']} px, "
                       f"{s['pixel_m']:.2f} m pixels" for s in res["scenes"])
    return f"""# Model card: {m.name} v{m.version}

* **What:** {m.description or ", ".join(m.classes)}
* **Classes:** {", ".join(m.classes)}. **Bands:** {", ".join(m.bands)} (in this order).
  **Resolution:** about {m.pixel_size_m:g} m pixels.
* **Architecture:** `{m.arch}` {dict(m.arch_params)}; trained by `sitewatch train`.
* **Initialisation:** {_init_line(res['init'], res['labels'])}
* **Normalisation:** {m.normalisation.method} {m.normalisation.model_dump()}.
* **Data:** {res['labels']['positives']} labelled objects and {res['labels'].get('negatives', 0)} known non-objects
  (rejected candidates) in {len(res['scenes'])} scenes; label files:
  {", ".join(f"`{p}`" for p in res['label_files'])}; {res['problems']} label problems skipped.
{scenes}
* **Split:** {res['split']}.
* **Training:** {res['epochs']} epochs x {cfg.train.steps_per_epoch} steps x {cfg.train.batch_size} chips of
  {cfg.chips.size} px on {res['device']}, {res['minutes']:.1f} min; best epoch {res['best_epoch']}. Seed {cfg.train.seed}.
* **Validation:** {vline}.
* **Default score threshold:** {spec.score_threshold:g}.
* **Created:** {spec.created} by `{res['command']}`.

The full config is in `config.yaml`; per-epoch figures in `training_log.csv` and
`training_curves.png`.
"""


def run_training(
    cfg: Config,
    images: Sequence[str],
    labels: Sequence[str],
    out: str | Path,
    *,
    bands: Sequence[str] | None = None,
    coco_bind: Sequence[tuple[str, str]] = (),
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    command: str = "sitewatch train",
    init: str | Path | None = None,
    negatives: Sequence[str] = (),
) -> TrainResult:
    """Train a model from scenes and labels as ``cfg`` says; write the model directory ``out``.

    ``init`` (a shipped model name or a path) starts from that model's weights instead of
    ``cfg``'s initialisation (:mod:`sitewatch.training.init`): the same architecture and bands,
    classes matched by name.

    ``negatives`` are scenes known to hold none of the model's objects (files, directories
    or globs, as ``images``): each gives ``chips.negative_scene_windows`` background windows
    to training (never validation), and the model's false positives on them become hard
    negatives when mining. Labels are not looked for in them.

    Raises:
        SitewatchError: bad scenes, labels (unless ``labels.skip_problems``), config or output
            location; nothing is written in ``out`` before the inputs have been checked.
    """
    prog = progress or _Silent()
    out = Path(out)
    check_model_out(out, overwrite, resume)
    if not images:
        raise UsageError("--images: name at least one scene (file, directory or glob)")
    if not labels:
        raise UsageError("--labels: name at least one label file (GeoJSON or COCO JSON)")
    labels = expand_label_files(labels)
    m = cfg.model
    parent = _parent(init, m) if init is not None else None
    zero_fill = cfg.chips.missing_bands == "zero"
    paths = expand_images(images, m.bands, zero_fill)
    scenes = [open_scene(p, m.bands, bands, allow_missing=zero_fill) for p in paths]
    for sc in scenes:
        if sc.missing_bands:
            prog.note(f"{sc.source}: no {', '.join(sc.missing_bands)}; trained with zeros in their place")
    opts = LabelOptions(classes=tuple(m.classes), class_property=cfg.labels.class_property, point_box_m=cfg.labels.point_box_m,
                        crs=cfg.labels.crs, skip_problems=cfg.labels.skip_problems, coco_bind=tuple(coco_bind),
                        class_map=tuple(cfg.labels.class_map.items()))
    label_set: LabelSet = read_labels(labels, scenes, opts)
    if label_set.problems:
        prog.note(f"skipping {len(label_set.problems)} unusable labels: {problem_summary(label_set.problems)}")
    truth = label_set.scenes
    if sum(len(t.boxes) for t in truth) == 0:
        raise InputError(labels[0], "no usable labels fall in the given images; check the label CRS and the images")
    regions = make_regions(truth, cfg)
    neg_paths = [p for p in expand_images(negatives, m.bands, zero_fill) if p not in paths] if negatives else []
    neg_scenes = [open_scene(p, m.bands, bands, allow_missing=zero_fill) for p in neg_paths]
    n_labelled = len(truth)
    truth = [*truth, *(SceneLabels(sc, np.zeros((0, 4)), np.zeros(0, np.int64)) for sc in neg_scenes)]
    regions = [*regions, *(Region(None, 1.0, False) for _ in neg_scenes)]
    background = [cfg.chips.negatives_per_scene] * n_labelled + [cfg.chips.negative_scene_windows] * len(neg_scenes)
    device = _device(cfg.train.device)
    threads = cfg.train.threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    workers = workers or (os.cpu_count() or 1)

    state: dict[str, Any] | None = None
    cfg_doc = config_dict(cfg)
    inputs_doc = {"images": [str(Path(p).resolve()) for p in paths], "labels": [str(Path(p).resolve()) for p in labels]}
    if neg_paths:
        inputs_doc["negatives"] = [str(Path(p).resolve()) for p in neg_paths]
    if parent is not None:
        inputs_doc["init"] = parent.checksum
    if resume:
        state = _load_state(out / "checkpoints" / "last.pt")
        if state["config"] != cfg_doc or state["inputs"] != inputs_doc:
            raise UsageError(f"--resume: {out} was started with another config or other inputs; use the same ones, or --overwrite")
    elif out.exists() and overwrite:
        for name in MODEL_FILES:
            (out / name).unlink(missing_ok=True)
        (out / "checkpoints" / "last.pt").unlink(missing_ok=True)

    # Windows are larger than chips so the sampler can shift and rescale inside them.
    chip = cfg.chips.size
    window = int(math.ceil(chip * (1 + cfg.augment.scale) * 1.25 / 16) * 16)
    norm = Normalisation(**m.normalisation.model_dump())
    prog.stage("reading chips", None)
    train_chips, val_chips = build_chips(truth, regions, norm, m.bands, window, background,
                                         m.tile_size, cfg.split.seed, workers=workers, on_chips=prog.advance,
                                         edge_padding=m.edge_padding)
    if not train_chips:
        raise InputError(paths[0], "no training windows: every labelled scene went to validation; lower split.val_fraction")
    aug = Augment(**cfg.augment.model_dump())
    sampler = ChipSampler(train_chips, chip, cfg.chips.pos_fraction, aug, cfg.chips.hard_fraction,
                          zero_invalid=m.edge_padding != "mirror")
    val_truth = _val_truth(truth, regions)
    dist_px = {si: cfg.evaluate.distance_m / _ground_px(truth[si].scene) for si in val_truth}
    has_val = bool(val_chips) and any(len(b) for b, _ in val_truth.values())
    if val_chips and not has_val:
        prog.note("the validation area holds no labels: no validation F1, no early stopping")

    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    model = build_model(m.arch, len(m.bands), len(m.classes), m.arch_params)
    if state is not None:
        init_info = state.get("init", {"kind": "random"})
    elif parent is not None:
        init_info = {**transfer(model, parent, m.classes), "parent": {
            "name": parent.spec.name, "version": parent.spec.version, "checksum": parent.checksum,
            "ref": str(init), "classes": list(parent.spec.classes)}}
    elif m.pretrained == "imagenet":
        init_info = imagenet_init(model, m.bands)
    else:
        init_info = {"kind": "random"}
    model = model.to(device)
    groups, max_lr = param_groups(model, cfg.train.lr, cfg.train.encoder_lr_scale)
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = cfg.train.epochs * cfg.train.steps_per_epoch
    if total >= 4:
        # warm up over 10% of the steps (at least 2), then anneal
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total,
                                                         pct_start=max(0.1, 2 / total))
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    mine_steps = sorted({int(f * total) for f in cfg.train.mine_at})
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "f1": -1.0, "threshold": None, "state": None, "validation": None}
    bad_epochs, start_epoch, elapsed, mined = 0, 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        history, best, bad_epochs = state["history"], state["best"], state["bad_epochs"]
        start_epoch, elapsed, mined = state["epoch"], state["elapsed"], [tuple(h) for h in state["mined"]]
        sampler.set_mined(mined)  # type: ignore[arg-type]
        prog.note(f"resuming {out} after epoch {start_epoch}")
    stride = getattr(model, "stride", 2)
    t_start = time.monotonic() - elapsed
    prog.stage(f"training on {device.type}", total)
    if start_epoch:
        prog.advance(start_epoch * cfg.train.steps_per_epoch)
    stopped = ""
    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        model.train()
        losses = []
        for k in range(cfg.train.steps_per_epoch):
            step = (epoch - 1) * cfg.train.steps_per_epoch + k
            if step in mine_steps and step > 0:
                mined = mine_hard_negatives(model, train_chips, m.max_box_px)
                sampler.set_mined(mined)
                model.train()
            x, t = make_batch(sampler, rng, cfg.train.batch_size, len(m.classes), stride,
                              mask_invalid=m.edge_padding == "mirror")
            losses.append(train_step(model, opt, x, t, device))
            sched.step()
            prog.advance(1, loss=losses[-1])
        row: dict[str, Any] = {"epoch": epoch, "steps": epoch * cfg.train.steps_per_epoch, "loss": float(np.mean(losses)),
                               "lr": float(sched.get_last_lr()[0]), "hard_negatives": len(sampler.hard)}
        improved = False
        if has_val:
            v: Validation = validate(model, val_chips, val_truth, len(m.classes), cfg.evaluate.primary, cfg.evaluate.iou,
                                     dist_px, m.max_box_px)
            row.update(val_precision=v.counts.precision, val_recall=v.counts.recall, val_f1=v.f1, val_threshold=v.threshold)
            prog.advance(0, val_f1=v.f1)
            if v.f1 > best["f1"]:
                improved = True
                best = {"epoch": epoch, "f1": v.f1, "threshold": v.threshold, "validation": {**v.counts.as_dict(), "threshold": v.threshold}}
        else:
            improved = True
            best = {"epoch": epoch, "f1": -1.0, "threshold": None, "validation": None}
        if improved:
            best["state"] = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        row["seconds"] = round(time.monotonic() - t_start, 1)
        history.append(row)
        vtext = f", validation F1 {row['val_f1']:.3f} at {row['val_threshold']:.2f}" if "val_f1" in row else ""
        prog.note(f"epoch {epoch}/{cfg.train.epochs}: loss {row['loss']:.3f}{vtext} ({row['seconds'] / 60:.1f} min)")
        _save_state(out / "checkpoints" / "last.pt", {
            "format": STATE_FORMAT, "config": cfg_doc, "inputs": inputs_doc, "epoch": epoch,
            "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": _plain(history),
            "best": {**_plain({k: v for k, v in best.items() if k != "state"}), "state": best["state"]},
            "bad_epochs": bad_epochs, "elapsed": time.monotonic() - t_start, "mined": _plain([list(h) for h in mined]),
            "init": _plain(init_info),
        })
        if has_val and cfg.train.patience and bad_epochs >= cfg.train.patience:
            stopped = f"early stop: no better validation F1 for {bad_epochs} epochs"
            break
        if cfg.train.max_minutes and (time.monotonic() - t_start) / 60 >= cfg.train.max_minutes:
            stopped = f"time limit: train.max_minutes {cfg.train.max_minutes:g} reached"
            break
    if stopped:
        prog.note(stopped)
    minutes = (time.monotonic() - t_start) / 60
    model.load_state_dict(best["state"])
    threshold = cfg.evaluate.score_threshold if cfg.evaluate.score_threshold is not None else (best["threshold"] or 0.3)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    spec = _spec(cfg, float(threshold), created)
    roles = ["validation" if r.all_val else ("train + validation blocks" if r.blocks is not None else "train") for r in regions]
    roles[n_labelled:] = ["negatives (object-free)"] * len(neg_scenes)
    roles = [f"{role}; no {', '.join(t.scene.missing_bands)}: zeros" if t.scene.missing_bands else role
             for role, t in zip(roles, truth, strict=True)]
    split = ("none" if not any(r.any_val for r in regions) else
             ("spatial blocks of " + f"{cfg.split.block_m:g} m" if any(r.blocks is not None for r in regions) else "whole scenes")
             + f" (validation: {', '.join(t.scene.name for t, r in zip(truth, regions, strict=True) if r.any_val)})")
    res = {
        "epochs": epoch, "best_epoch": best["epoch"], "minutes": minutes, "device": str(device), "validation": best["validation"],
        "match": f"IoU >= {cfg.evaluate.iou:g}" if cfg.evaluate.primary == "iou" else f"centre distance <= {cfg.evaluate.distance_m:g} m",
        "labels": label_set.counts, "problems": len(label_set.problems), "label_files": list(labels), "split": split,
        "scenes": [{"name": t.scene.name, "role": role, "labels": len(t.boxes), "width": t.scene.width, "height": t.scene.height,
                    "pixel_m": _ground_px(t.scene)} for t, role in zip(truth, roles, strict=True)],
        "command": command, "stopped": stopped or "all epochs run", "init": init_info,
    }
    metrics = {"validation": best["validation"], "best_epoch": best["epoch"], "epochs_run": epoch, "train_minutes": round(minutes, 2),
               "device": str(device), "score_threshold": threshold, "labels": label_set.counts, "label_problems": len(label_set.problems),
               "windows": {"train": len(train_chips), "validation": len(val_chips)}, "stopped": res["stopped"],
               "init": init_info, "history": history}
    checksum = _write_model_dir(out, spec, model, cfg, _card(cfg, spec, res), metrics, history)
    return TrainResult(out, checksum, epoch, best["epoch"], best["validation"] or {}, minutes, label_set.counts,
                       len(label_set.problems), history)


def _write_model_dir(out: Path, spec: ModelSpec, model: torch.nn.Module, cfg: Config, card: str,
                     metrics: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """Write every file into a staging directory, then move them into ``out`` (model.pt last)."""
    staging = out / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        checksum = save_checkpoint(staging / CHECKPOINT_NAME, spec, model.cpu())
        (staging / "model_card.md").write_text(card, encoding="utf-8")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        buf = io.StringIO()
        yaml.safe_dump(config_dict(cfg), buf, sort_keys=False)
        (staging / "config.yaml").write_text(buf.getvalue(), encoding="utf-8")
        _write_log(history, staging / "training_log.csv")
        _plot(history, staging / "training_curves.png")
        for name in MODEL_FILES:
            if name != CHECKPOINT_NAME:
                os.replace(staging / name, out / name)
        os.replace(staging / CHECKPOINT_NAME, out / CHECKPOINT_NAME)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the model ({exc.strerror})") from None
    finally:
        for f in staging.glob("*"):
            f.unlink(missing_ok=True)
        staging.rmdir()
    return checksum

