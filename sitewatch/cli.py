"""The ``sitewatch`` command: a thin layer over the library API.

Errors a user can cause print one line on stderr and exit non-zero:
2 bad flag or value (also an unknown site id), 3 bad input file (also a missing run
directory or one without a candidate store), 4 model problem, 5 output problem,
6 some scenes failed (the others' results were written), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sitewatch.imagery.errors import SitewatchError

#: Exit code when a batch finished but some scenes failed.
EXIT_PARTIAL = 6


def _bands(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give band names or 1-based indexes separated by commas")
    return items


class _Progress:
    """A tqdm bar over tiles (rate, ETA) and scenes on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.scenes = 0
        self.scenes_done = 0

    def plan(self, p: Any) -> None:
        if self.enabled:
            from tqdm import tqdm

            total = sum(len(g) for g in p.grids)
            self.scenes = len(p.scenes)
            self.bar = tqdm(total=total, unit="tile", desc=f"scenes 0/{self.scenes}", file=sys.stderr,
                            dynamic_ncols=True)

    def tiles(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def scene(self, name: str) -> None:
        self.scenes_done += 1
        if self.bar is not None:
            self.bar.set_description(f"scenes {self.scenes_done}/{self.scenes}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _dashboard(link: str) -> None:
    click.echo(f"sitewatch: Dask dashboard: {link}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sitewatch")
def cli() -> None:
    """Find brick kilns and vessels in satellite scenes and map them for review.

    \b
    Start with the demo (no data needed):   sitewatch demo --out demo-run
    Then your own scenes:                   sitewatch detect SCENE... --model vessels-s2 --out run1
    Review the candidates in a browser:     sitewatch review run1
    Reviewed sites as training labels:      sitewatch export run1 --status confirmed --status rejected --out labels.geojson
    Train on your labels:                   sitewatch train --config configs/kilns-highres.yaml --images ... --labels ... --out models/m
    Measure a model on labelled scenes:     sitewatch evaluate --model models/m --labels L SCENE... --out eval1
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", "-m", required=True, help="Shipped model name (see `sitewatch models`) or a checkpoint path.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory for the outputs.")
@click.option("--tile-size", type=int, default=None, help="Tile side in pixels [default: the model's].")
@click.option("--overlap", type=int, default=None, help="Overlap between neighbouring tiles in pixels [default: the model's].")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Tiles per forward pass.")
@click.option("--score-threshold", type=float, default=None, help="Keep detections scoring at least this [default: the model's].")
@click.option("--workers", type=int, default=None, help="Parallel workers [default: one per CPU core].")
@click.option("--tiles-per-task", type=int, default=8, show_default=True, help="Tiles read and detected per Dask task.")
@click.option("--bands", default=None, help="Bands to use, in the model's order: names (B02,B03,B04,B08) or 1-based indexes.")
@click.option("--scheduler", default=None, envvar="SITEWATCH_SCHEDULER", show_envvar=True,
              help="threads (local threads, the default), processes (a local cluster of worker processes), "
                   "or the address of a running Dask scheduler (tcp://host:8786).")
@click.option("--recursive", "-r", is_flag=True, help="Walk directories of scenes (and ** globs) into subdirectories.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first scene that fails (finished work is kept for a re-run).")
@click.option("--tta/--no-tta", default=None, help="Average the heatmap over flipped tiles (3 forward passes per tile) [default: the model's].")
@click.option("--nodata", type=float, default=None, metavar="VALUE",
              help="No-data value of scene files that carry none (0 for Sentinel-2 L2A downloads without it); "
                   "files that carry one keep theirs.")
@click.option("--runtime", type=click.Choice(["auto", "onnx", "torch"]), default="auto", show_default=True,
              help="Where the model runs: ONNX Runtime (faster on the CPU) or PyTorch; auto picks ONNX Runtime on the CPU.")
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in --out.")
@click.option("--append", is_flag=True,
              help="Add the scenes to the run in --out, keeping its sites and reviews (a new run if there is none).")
@click.option("--site-distance", multiple=True, metavar="CLASS=METRES",
              help="Detections this close form one site, e.g. kiln=100 [default: kiln=100, vessel=50, "
                   "or the values of the run appended to].")
def detect(inputs: tuple[str, ...], model: str, out: Path, tile_size: int | None, overlap: int | None, batch_size: int,
           score_threshold: float | None, workers: int | None, tiles_per_task: int, bands: str | None,
           scheduler: str | None, recursive: bool, fail_fast: bool, tta: bool | None, nodata: float | None, runtime: str,
           overwrite: bool, append: bool, site_distance: tuple[str, ...]) -> None:
    """Detect objects in scenes and write candidates.gpkg, detections.geojson, run.json, map.html and quicklooks/.

    \b
    INPUT is any of:
      a raster file (GeoTIFF/COG, any band count): one scene;
      a directory of single-band files on one grid (band names such as B02 in the
        file names): one scene;
      any other directory: each raster in it (--recursive: and in subdirectories);
      a glob ('scenes/*.tif', quoted); @LIST or a .txt file: one path, glob or URL a line;
      a STAC Item or ItemCollection JSON file: one scene per item, bands from its assets;
      a URL (https://, s3://, gs://) or GDAL /vsi path.
    With --append, a scene already in the run is refused.

    \b
    A run is a resumable job: if it is interrupted (Ctrl-C, a killed process, a lost
    machine), run the same command again and it goes on from what was finished.
    A scene that fails is listed in run.json and the others go on (exit 6); with
    --fail-fast the run stops at the first failure instead.
    """
    _model_command()
    _say(f"detect: loading model {model} and opening {len(inputs)} input(s)")
    from sitewatch.imagery.candidates.sites import parse_site_distances
    from sitewatch.imagery.detect.pipeline import DetectSettings
    from sitewatch.imagery.detect.pipeline import detect as run_detect

    settings = DetectSettings(tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                              score_threshold=score_threshold, workers=workers, bands=_bands(bands),
                              tiles_per_task=tiles_per_task, tta=tta, nodata=nodata, runtime=runtime)
    progress = _Progress(sys.stderr.isatty())

    def on_plan(p: Any) -> None:
        for _, warning in p.warnings:
            click.echo(f"sitewatch: warning: {warning}", err=True)
        progress.plan(p)

    try:
        summary = run_detect(list(inputs), model, out, settings, overwrite=overwrite, scheduler=scheduler,
                             recursive=recursive, fail_fast=fail_fast, on_tiles=progress.tiles, on_plan=on_plan,
                             on_scene=progress.scene, on_dashboard=_dashboard, append=append,
                             site_distance=parse_site_distances(site_distance))
    except KeyboardInterrupt:
        progress.close()
        click.echo(f"sitewatch: interrupted; finished work is kept in {out}: run the same command again to resume",
                   err=True)
        sys.exit(130)
    finally:
        progress.close()
    counts = ", ".join(f"{n} {c}" for c, n in summary.counts().items())
    click.echo(f"{out}: {counts} in {len(summary.results)} scene(s); open {out / 'map.html'}")
    _echo_sites(out)
    for failure in summary.failures:
        click.echo(f"sitewatch: error: scene failed: {failure['errors'][0]}", err=True)
    if summary.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory for the demo's scene and outputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic scene.")
@click.option("--workers", type=int, default=None, help="Parallel workers [default: one per CPU core].")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo run in --out.")
def demo(out: Path, seed: int, workers: int | None, overwrite: bool) -> None:
    """Build a synthetic Sentinel-2-like scene (UTM, land, water, vessels, kilns) and detect on it.

    Writes the scene (demo-scene.tif), its planted objects (demo-truth.geojson), the usual
    run outputs, and demo-eval.json: how the detections match the planted objects.
    """
    _model_command()
    _say("demo: making the synthetic scene and loading the demo model")
    from sitewatch.imagery.synthetic.demo import run_demo

    progress = _Progress(sys.stderr.isatty())
    try:
        result = run_demo(out, seed=seed, workers=workers, overwrite=overwrite, on_tiles=progress.tiles, on_plan=progress.plan)
    finally:
        progress.close()
    for cls, m in result["per_class"].items():
        click.echo(f"{cls}: planted {m['planted']}, detected {m['detected']}, matched {m['tp']} "
                   f"(precision {m['precision']:.2f}, recall {m['recall']:.2f})")
    click.echo(f"{out}: open {out / 'map.html'} in a browser")


class _TrainProgress:
    """tqdm bars for reading chips and for training steps (loss, validation F1) on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.info: dict[str, str] = {}

    def stage(self, text: str, total: int | None = None) -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=text, unit="step" if total else "chip", file=sys.stderr)
        else:
            click.echo(f"sitewatch: {text}", err=True)

    def advance(self, n: int = 1, **info: Any) -> None:
        if self.bar is not None:
            for k, v in info.items():
                self.info[k] = f"{v:.3f}"
            if info:
                self.bar.set_postfix(self.info, refresh=False)
            self.bar.update(n)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"sitewatch: {text}", file=sys.stderr)
        else:
            click.echo(f"sitewatch: {text}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _ListOption(click.Option):
    """A repeatable option that also takes every value after it: ``--negatives a b c``."""


class _ListsCommand(click.Command):
    """A command whose :class:`_ListOption` options take every value that follows them.

    ``--negatives a b c`` reads as ``--negatives a --negatives b --negatives c``: without this,
    click takes ``a`` for the option and hands ``b`` and ``c`` to the positional arguments
    (for ``train``, images with no labels), silently.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {n for p in self.params if isinstance(p, _ListOption) for n in (*p.opts, *p.secondary_opts)}
        return super().parse_args(ctx, spread_list_options(args, names))


def spread_list_options(args: list[str], names: set[str]) -> list[str]:
    """``args`` with each value that follows a list option (``names``) given its own option name.

    A list option's values run to the next token that starts with ``-`` (or ``--``, after
    which every token is positional).
    """
    out: list[str] = []
    current: str | None = None
    for i, tok in enumerate(args):
        if tok == "--":
            return [*out, *args[i:]]
        if tok.startswith("-") and tok != "-":
            name = tok.split("=", 1)[0]
            current = name if name in names else None
            out.append(tok)
        elif current is not None and out and out[-1] != current:
            out.extend((current, tok))
        else:
            out.append(tok)
    return out


def _pairs(values: tuple[str, ...], flag: str, form: str) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        left, sep, right = v.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise click.BadParameter(f"{v!r}: write {form}", param_hint=flag)
        out.append((left.strip(), right.strip()))
    return tuple(out)


def _bind(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return _pairs(values, "--coco-image", "COCO_FILE_NAME=SCENE_PATH")


def _parent_config(init: str | None) -> Path:
    """The config of the model ``--init`` names (its ``config.yaml``), for a train without ``--config``."""
    if init is None:
        raise click.UsageError("Missing option '--config' (or give --init MODEL to fine-tune with that model's config)")
    from sitewatch.imagery.models.registry import resolve_model

    path = resolve_model(init).parent / "config.yaml"
    if not path.is_file():
        raise click.UsageError(f"--init {init}: the model has no config.yaml beside it; give --config")
    return path


@cli.command(cls=_ListsCommand)
@click.argument("more_images", nargs=-1, metavar="[IMAGES]...")
@click.option("--config", "-c", "config", default=None, type=click.Path(path_type=Path),
              help="Training config (YAML), e.g. configs/kilns-highres.yaml [default with --init: the parent's config].")
@click.option("--images", "-i", cls=_ListOption, multiple=True, required=True,
              help="Scenes: files, directories or quoted globs; list several after one --images.")
@click.option("--labels", "-l", cls=_ListOption, multiple=True, required=True,
              help="Label files (or quoted globs): GeoJSON, COCO JSON or a sitewatch review export; several after one --labels.")
@click.option("--negatives", cls=_ListOption, multiple=True, metavar="SCENE",
              help="Scenes known to hold none of the objects (files, directories or quoted globs): their "
                   "background, and the model's false alarms on it, train the model to stay quiet there; "
                   "several after one --negatives.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. --set train.epochs=5.")
@click.option("--epochs", type=int, default=None, help="Same as --set train.epochs=N.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Same as --set train.device=...")
@click.option("--name", default=None, help="Model name (same as --set model.name=...).")
@click.option("--labels-crs", default=None, help="CRS of label coordinates when the file declares none (EPSG:32643).")
@click.option("--skip-bad-labels", is_flag=True, help="Train without labels that cannot be used (they are still listed).")
@click.option("--coco-image", multiple=True, metavar="NAME=SCENE", help="Bind a COCO image file name to a scene path.")
@click.option("--bands", default=None, help="Bands to use, in the config's order: names or 1-based indexes.")
@click.option("--workers", type=int, default=None, help="Threads that read chips [default: one per CPU core].")
@click.option("--init", "init", default=None, metavar="MODEL",
              help="Start from this model's weights (a shipped name or a path): same architecture and bands, "
                   "classes matched by name; e.g. fine-tune vessels-s2 on reviewed candidates.")
@click.option("--resume", is_flag=True, help="Continue the unfinished training run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace a model already in --out.")
def train(more_images: tuple[str, ...], config: Path, images: tuple[str, ...], labels: tuple[str, ...],
          negatives: tuple[str, ...], out: Path, sets: tuple[str, ...],
          epochs: int | None, device: str | None, name: str | None, labels_crs: str | None, skip_bad_labels: bool,
          coco_image: tuple[str, ...], bands: str | None, workers: int | None, init: str | None, resume: bool,
          overwrite: bool) -> None:
    """Train a detector on your scenes and labels; writes a model directory for --model.

    \b
    sitewatch train --config configs/kilns-highres.yaml --images 'tiles/*.tif' \\
        --labels kilns.geojson --out models/my-kilns
    sitewatch detect NEW.tif --model models/my-kilns --out run1
    """
    if config is None:
        config = _parent_config(init)
    _model_command()
    _say(f"train: reading {config} and loading PyTorch")
    from sitewatch.training.config import load_config, parse_override
    from sitewatch.training.run import run_training

    overrides = [parse_override(s) for s in sets]
    if epochs is not None:
        overrides.append((["train", "epochs"], epochs))
    if device is not None:
        overrides.append((["train", "device"], device))
    if name is not None:
        overrides.append((["model", "name"], name))
    if labels_crs is not None:
        overrides.append((["labels", "crs"], labels_crs))
    if skip_bad_labels:
        overrides.append((["labels", "skip_problems"], True))
    cfg = load_config(config, overrides)
    progress = _TrainProgress(sys.stderr.isatty())
    command = "sitewatch " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "sitewatch train"
    try:
        res = run_training(cfg, [*images, *more_images], list(labels), out, bands=_bands(bands), coco_bind=_bind(coco_image),
                           resume=resume, overwrite=overwrite, workers=workers, progress=progress, command=command,
                           init=init, negatives=negatives)
    except KeyboardInterrupt:
        progress.close()
        saved = (out / "checkpoints" / "last.pt").is_file()
        click.echo("sitewatch: interrupted; " + ("the last finished epoch is saved: run the same command with --resume "
                                                 "to continue" if saved else "no epoch had finished"), err=True)
        sys.exit(130)
    finally:
        progress.close()
    v = res.validation
    score = (f"validation precision {v['precision']:.2f} recall {v['recall']:.2f} F1 {v['f1']:.2f} at {v['threshold']:.2f}"
             if v else "no validation split")
    click.echo(f"{out}: {res.epochs} epochs in {res.minutes:.1f} min (best epoch {res.best_epoch}); {score}")
    click.echo(f"use it: sitewatch detect SCENE... --model {out} --out RUN")


@cli.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL MODEL...")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--name", default=None, help="Name of the ensemble [default: the first model's].")
@click.option("--version", "version_", default=None, help="Version of the ensemble [default: the first model's].")
@click.option("--score-threshold", type=float, default=None, help="Default threshold [default: the first model's].")
@click.option("--tta/--no-tta", default=None,
              help="Average the heatmap over flipped tiles by default in detect (3 forward passes per tile) [default: the first model's].")
@click.option("--overwrite", is_flag=True, help="Replace a model already in --out.")
def ensemble(models: tuple[str, ...], out: Path, name: str | None, version_: str | None, score_threshold: float | None,
             tta: bool | None, overwrite: bool) -> None:
    """Combine models trained apart into one: seeds of one recipe (--set train.seed=N), or
    recipes with other encoders (a from-scratch centernet and an efficient-centernet).

    The ensemble averages its members' centre heatmaps: fewer false alarms, at one
    forward pass per member. Members need the same classes, bands, normalisation, tiling
    and output stride.

    \b
    sitewatch ensemble models/seed0 models/seed1 --out models/ensemble
    sitewatch detect SCENE --model models/ensemble --out RUN
    """
    from sitewatch.training.ensemble import combine

    lm = combine(list(models), out, name=name, version=version_, score_threshold=score_threshold, tta=tta,
                 overwrite=overwrite)
    click.echo(f"{out}: {lm.spec.name} v{lm.spec.version}, an ensemble of {len(models)} models ({lm.checksum})")


@cli.command()
@click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))
def models(dirs: tuple[Path, ...]) -> None:
    """List shipped and local models: classes, bands, resolution and metrics.

    DIRS are model directories (as `sitewatch train` writes them) or directories holding
    them; `./models` is searched when it exists.
    """
    from sitewatch.imagery.models.registry import local_models, model_summary, shipped_models

    search = list(dirs) or ([Path("models")] if Path("models").is_dir() else [])
    found = [("shipped", name, path) for name, path in shipped_models().items()]
    found += [("local", str(path.parent), path) for path in local_models(search)]
    if not found:
        click.echo("no models found; train one with `sitewatch train` or pass model directories")
    for kind, name, path in found:
        s = model_summary(path)
        click.echo(f"{name}  [{kind}] v{s['version']}  classes={','.join(s['classes'])}  bands={','.join(s['bands'])}  "
                   f"pixel={s['pixel_size_m']:g} m  threshold={s['score_threshold']:g}  {s['metrics']}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", "-m", required=True, help="Shipped model name (see `sitewatch models`) or a checkpoint path.")
@click.option("--labels", "-l", "labels", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Label file (GeoJSON, COCO JSON or a review export); repeat for several.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Directory for metrics.json, pr_curve.png, the FP/FN files and detections/.")
@click.option("--iou", type=float, default=0.3, show_default=True, help="Smallest box IoU of a match (iou criterion).")
@click.option("--distance-m", type=float, default=30.0, show_default=True,
              help="Largest centre distance in metres of a match (distance criterion).")
@click.option("--primary", type=click.Choice(["iou", "distance"]), default="iou", show_default=True,
              help="Criterion of the false-positive/false-negative files and the headline.")
@click.option("--score-threshold", type=float, default=None,
              help="Operating score threshold of the counts [default: the model's].")
@click.option("--class-property", default="class", show_default=True, help="Label property that holds the class name.")
@click.option("--point-box-m", type=float, default=50.0, show_default=True, help="Box side in metres for Point labels.")
@click.option("--labels-crs", default=None, help="CRS of label coordinates (EPSG:32643) [default: lon/lat, RFC 7946].")
@click.option("--skip-bad-labels", is_flag=True, help="Go on without unusable labels (listed in metrics.json).")
@click.option("--coco-image", multiple=True, metavar="NAME=SCENE", help="Bind a COCO image file name to a scene path.")
@click.option("--class-map", multiple=True, metavar="LABEL=CLASS", help="Read label class LABEL as model class CLASS (ship=vessel).")
@click.option("--bands", default=None, help="Bands to use, in the model's order: names (B02,B03,B04,B08) or 1-based indexes.")
@click.option("--workers", type=int, default=None, help="Parallel workers [default: one per CPU core].")
@click.option("--tta/--no-tta", default=None, help="Average the heatmap over flipped tiles [default: the model's].")
@click.option("--nodata", type=float, default=None, metavar="VALUE",
              help="No-data value of scene files that carry none (0 for Sentinel-2 L2A downloads without it); "
                   "files that carry one keep theirs.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation in --out.")
def evaluate(inputs: tuple[str, ...], model: str, labels: tuple[Path, ...], out: Path, iou: float, distance_m: float,
             primary: str, score_threshold: float | None, class_property: str, point_box_m: float,
             labels_crs: str | None, skip_bad_labels: bool, coco_image: tuple[str, ...], class_map: tuple[str, ...],
             bands: str | None, workers: int | None, tta: bool | None, nodata: float | None, overwrite: bool) -> None:
    """Detect on labelled scenes and score the detections: precision, recall, F1 and AP per class.

    \b
    Detections match labels of their class one-to-one, best score first, by box IoU
    (--iou) and, separately, by centre distance in metres (--distance-m). Writes
    metrics.json, pr_curve.png, false_positives.geojson and false_negatives.geojson
    (under the --primary criterion) and the detection run in OUT/detections.
    Where scenes overlap (tiles cut with overlap, one place on several dates), it
    also gives figures by place, each object counted once ("places" in metrics.json).
    """
    _model_command()
    _say(f"evaluate: loading model {model}")
    from sitewatch.imagery.detect.pipeline import DetectSettings
    from sitewatch.training.evaluate import CRITERIA, DETECTIONS_DIR, EVAL_FILES, EvalSettings, Metrics, run_evaluation

    settings = EvalSettings(iou=iou, distance_m=distance_m, primary=primary, score_threshold=score_threshold)
    progress = _Progress(sys.stderr.isatty())
    try:
        report = run_evaluation(list(inputs), model, list(labels), out, settings, class_property=class_property,
                                point_box_m=point_box_m, labels_crs=labels_crs, skip_bad_labels=skip_bad_labels,
                                coco_bind=_bind(coco_image), class_map=_pairs(class_map, "--class-map", "LABEL_CLASS=MODEL_CLASS"),
                                detect_settings=DetectSettings(workers=workers, bands=_bands(bands), tta=tta, nodata=nodata),
                                overwrite=overwrite, on_tiles=progress.tiles, on_plan=progress.plan)
    finally:
        progress.close()

    def cells(m: Metrics) -> str:
        ap = "    -" if m.ap is None else f"{m.ap:5.3f}"
        return f"{m.counts.precision:5.3f} {m.counts.recall:5.3f} {m.counts.f1:5.3f} {ap}"

    rows = [("(all)", cls, report.per_class[cls]) for cls in report.classes] + [("(all)", "(all)", report.totals)]
    for s in report.per_scene:
        rows += [(s.scene, cls, s.per_class[cls]) for cls in report.classes] + [(s.scene, "(all)", s.totals)]
    ws, wc = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    click.echo(f"score threshold {report.threshold:g} (AP ranks detections scoring at least "
               f"{report.meta['detections']['score_threshold']:g}); tp/fp/fn and files: {settings.describe(primary)}")
    click.echo(f"{'':{ws}}  {'':{wc}}  {'':24}  " + "  ".join(f"{settings.describe(c):23}" for c in CRITERIA))
    click.echo(f"{'scene':{ws}}  {'class':{wc}}  {'labels':>6} {'tp':>5} {'fp':>5} {'fn':>5}  "
               + "  ".join(f"{'P     R     F1    AP':23}" for _ in CRITERIA))
    for scene, cls, by_crit in rows:
        c = by_crit[primary].counts
        click.echo(f"{scene:{ws}}  {cls:{wc}}  {by_crit[primary].labels:6d} {c.tp:5d} {c.fp:5d} {c.fn:5d}  "
                   + "  ".join(f"{cells(by_crit[crit]):23}" for crit in CRITERIA))
    best = report.best_threshold()
    if best is not None:
        t, c = best
        click.echo(f"best F1 over score thresholds ({settings.describe(primary)}): {c.f1:.3f} at {t:.2f} "
                   f"(P {c.precision:.3f}, R {c.recall:.3f}); see by_threshold in metrics.json")
    for cls, pm in report.places.items():
        per_scene_labels = report.per_class[cls]["distance"].labels
        if pm.labels != per_scene_labels or pm.detections != report.per_class[cls]["distance"].detections_ranked:
            c = pm.counts
            click.echo(f"by place ({cls}; overlapping scenes merged, each object once; centre distance <= "
                       f"{settings.distance_m:g} m): {pm.labels} objects, tp {c.tp} fp {c.fp} fn {c.fn}, "
                       f"P {c.precision:.3f} R {c.recall:.3f} F1 {c.f1:.3f}")
    problems = report.meta["labels"]["problems"]
    if problems:
        click.echo(f"sitewatch: warning: left out {len(problems)} unusable label(s); see {out / 'metrics.json'}", err=True)
    for name in EVAL_FILES:
        click.echo(f"wrote {out / name}")
    click.echo(f"detections in {out / DETECTIONS_DIR}")
    failed = report.meta["failed_scenes"]
    for f in failed:
        click.echo(f"sitewatch: error: scene failed and was left out: {f['errors'][0] if f['errors'] else f['scene']}",
                   err=True)
    if failed:
        sys.exit(EXIT_PARTIAL)


def _echo_sites(run_dir: Path) -> None:
    """One line: sites per class in the run directory's store and how many are reviewed."""
    from sitewatch.imagery.candidates.store import CandidateStore

    counts = CandidateStore.in_run_dir(run_dir).counts()
    parts = [f"{c['sites']} {cls} ({c['sites'] - c['unreviewed']} reviewed)" for cls, c in sorted(counts.items())]
    click.echo(f"sites: {', '.join(parts) or 'none'} in {run_dir / 'candidates.gpkg'}")


_STATUS = click.Choice(["unreviewed", "confirmed", "rejected", "unsure"])
_RUN_DIR = click.argument("run_dir", metavar="DIR", type=click.Path(path_type=Path))


@cli.command()
@_RUN_DIR
@click.option("--status", "statuses", multiple=True, type=_STATUS, help="Only sites with this review status (repeat for several).")
@click.option("--class", "classes", multiple=True, help="Only sites of this class (repeat for several).")
@click.option("--sample", "in_sample", is_flag=True, help="Only sites in the review sample of `sitewatch estimate`.")
@click.option("--limit", type=int, default=None, help="Show at most this many sites.")
@click.option("--check", is_flag=True,
              help="Check that every site's status is its last review in the log; name the sites that differ (exit 3).")
def sites(run_dir: Path, statuses: tuple[str, ...], classes: tuple[str, ...], in_sample: bool, limit: int | None,
          check: bool) -> None:
    """List the sites of a run directory's candidate store: id, class, status, date, detections, score, lon/lat."""
    from sitewatch.imagery.candidates.store import CandidateStore

    store = CandidateStore.in_run_dir(run_dir)
    if check:
        problems = store.check()
        for p in problems:
            click.echo(p)
        if problems:
            click.echo(f"sitewatch: error: {store.path}: {len(problems)} site(s) whose status is not their last review: "
                       "the file was edited outside sitewatch; re-review them (sitewatch review) to restore them",
                       err=True)
            sys.exit(3)
        n = len(store.sites())
        click.echo(f"{store.path}: {n} site(s); every status is its last review in the log, and the log's hash "
                   "chain holds")
        head = store.chain_head()
        if head:
            click.echo(f"chain head {head}: note it down; a log rewritten later will not end in it")
        return
    found = store.sites(status=statuses or None, cls=classes or None, in_sample=in_sample, limit=limit)
    for s in found:
        click.echo(f"{s.site_id}  {s.cls}  {s.status:10}  {s.date or s.first_seen or '-':10}  n={s.n_detections:<3d} "
                   f"max={s.max_score:.3f}  {s.lon:.6f},{s.lat:.6f}")
    click.echo(f"{len(found)} site(s)")


def _record_review(run_dir: Path, site_id: str, status: str, reviewer: str | None, note: str) -> None:
    """Record one review decision for a site (appended to the store's review log)."""
    import getpass

    from sitewatch.imagery.candidates.store import CandidateStore
    from sitewatch.imagery.errors import UsageError

    if reviewer is None:
        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):
            raise UsageError("--reviewer: cannot tell who you are; give --reviewer NAME") from None
    r = CandidateStore.in_run_dir(run_dir).review(site_id, status, reviewer, note)
    click.echo(f"{r.site_id}: {r.status} by {r.reviewer} at {r.time} (review {r.review_id})")


@cli.command()
@_RUN_DIR
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="File to write.")
@click.option("--format", "fmt", type=click.Choice(["geojson", "gpkg", "csv"]), default=None,
              help="File format [default: from the --out suffix].")
@click.option("--status", "statuses", multiple=True, type=_STATUS,
              help="Only sites with this review status (repeat for several) [default: all].")
@click.option("--class", "classes", multiple=True, help="Only sites of this class (repeat for several) [default: all].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export(run_dir: Path, out: Path, fmt: str | None, statuses: tuple[str, ...], classes: tuple[str, ...],
           overwrite: bool) -> None:
    """Write sites and their reviews as GeoJSON (RFC 7946), GeoPackage or CSV.

    \b
    GeoJSON and GeoPackage hold each site's footprint polygon; CSV its lon/lat. A
    GeoJSON export is ready as --labels for `sitewatch train`: confirmed sites are
    objects, rejected ones hard negatives.
    sitewatch export runs/brick --status confirmed --status rejected --out labels.geojson
    """
    from sitewatch.imagery.candidates.export import export_sites
    from sitewatch.imagery.candidates.store import CandidateStore

    n = export_sites(CandidateStore.in_run_dir(run_dir), out, fmt=fmt, statuses=statuses or None,
                     classes=classes or None, overwrite=overwrite)
    click.echo(f"{out}: {n} site(s)")


@cli.command()
@_RUN_DIR
@click.option("--cell", default="1km", show_default=True, help="Cell side: 1km, 500m, 750 (metres).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="File to write: .tif (GeoTIFF), .nc (NetCDF), .geojson or .gpkg (cell polygons).")
@click.option("--status", "statuses", multiple=True, type=_STATUS,
              help="Count only sites with this review status (repeat for several) [default: every candidate].")
@click.option("--class", "classes", multiple=True, help="Only sites of this class (repeat for several).")
@click.option("--no-dates", is_flag=True, help="One layer per vessel class, not one per acquisition date.")
@click.option("--crs", default=None,
              help="Grid CRS in metres, for every region [default: each region's UTM zone, or EPSG:6933 over > 6 degrees].")
@click.option("--region", default=None,
              help="Only this region (r1, r2, ... west to east: sites more than 50 km or 20 cells apart).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def density(run_dir: Path, cell: str, out: Path, statuses: tuple[str, ...], classes: tuple[str, ...], no_dates: bool,
            crs: str | None, region: str | None, overwrite: bool) -> None:
    """Count sites per grid cell and flag hotspots (Getis-Ord Gi*, 95%): a layer for QGIS and web maps.

    Sites more than 50 km (or 20 cells) apart are split into regions r1, r2, ... (west to
    east), each with its own grid and its own hotspots. A .gpkg/.geojson holds every region
    (column region); a .tif/.nc holds one grid, so --out d.tif writes d-r1.tif, d-r2.tif,
    ...; --region NAME writes only that region, to --out itself.

    \b
    sitewatch density runs/delta --cell 1km --out delta-density.tif
    sitewatch density runs/delta --cell 2km --status confirmed --out confirmed.gpkg
    """
    from sitewatch.imagery.candidates.density import density_regions, parse_cell, region_gap, write_density_regions
    from sitewatch.imagery.candidates.store import CandidateStore

    cell_m = parse_cell(cell)
    grids = density_regions(CandidateStore.in_run_dir(run_dir), cell_m, statuses=statuses or None,
                            classes=classes or None, by_date=not no_dates, crs=crs, region=region)
    paths = write_density_regions(grids, out, overwrite=overwrite)
    many = len(grids) > 1
    if many:
        click.echo(f"{sum(ds.attrs['sites'] for ds in grids.values())} sites in {len(grids)} regions (sites more "
                   f"than {region_gap(cell_m) / 1000:g} km apart), each on its own grid with its own hotspots, "
                   f"in {', '.join(map(str, paths))}:")
    for k, (name, ds) in enumerate(grids.items()):
        hot = int((ds["hotspot"] == 1).sum())
        cold = int((ds["hotspot"] == -1).sum())
        w, s_, e, n = (float(b) for b in ds.attrs["region_bounds"].split())
        where = f"  {name} -> {paths[min(k, len(paths) - 1)]}" if many else str(paths[0])
        if not many and ds.attrs["regions"] > 1:
            where += f" (region {name} of {ds.attrs['regions']})"
        around = f" around lon {(w + e) / 2:.2f}, lat {(s_ + n) / 2:.2f}" if ds.attrs["regions"] > 1 else ""
        click.echo(f"{where}: {ds.attrs['sites']} sites on {ds.sizes['x']} x {ds.sizes['y']} cells of {cell_m:g} m "
                   f"({ds.attrs['crs']}){around}, {ds.sizes['layer']} layer(s): {', '.join(map(str, ds.layer.values))}; "
                   f"{hot} hot and {cold} cold cell(s) at 95% confidence")


def _per_class(values: tuple[str, ...], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        cls, sep, number = v.rpartition("=")
        try:
            out[cls.strip() if sep else "*"] = float(number)
        except ValueError:
            raise click.BadParameter(f"{v!r}: write a number, or CLASS=NUMBER", param_hint=flag) from None
    return out


@cli.command()
@_RUN_DIR
@click.option("--sample", "sample_size", type=int, default=None,
              help="Draw a stratified random sample of this many sites per class to review.")
@click.option("--strata", type=int, default=4, show_default=True, help="Score strata per class of a new sample.")
@click.option("--seed", type=int, default=None, help="Seed of a new sample [default: random, recorded].")
@click.option("--class", "classes", multiple=True, help="Draw a sample for this class only (repeat for several).")
@click.option("--redraw", is_flag=True, help="Replace an existing sample (its reviews are kept).")
@click.option("--recall", multiple=True, metavar="[CLASS=]R",
              help="Detector recall (from `sitewatch evaluate`) to include the sites it missed.")
@click.option("--recall-se", multiple=True, metavar="[CLASS=]SE", help="Standard error of --recall [default: 0].")
def estimate(run_dir: Path, sample_size: int | None, strata: int, seed: int | None, classes: tuple[str, ...],
             redraw: bool, recall: tuple[str, ...], recall_se: tuple[str, ...]) -> None:
    """Estimate the number of real sites per class with a 95% interval, from a reviewed random sample.

    \b
    1. sitewatch estimate DIR --sample 50     draw 50 sites per class, stratified by score
    2. review them (sitewatch review, or the review page: filter "sample")
    3. sitewatch estimate DIR                 the estimate; also written to DIR/estimate.json
    It counts real sites among the candidates; --recall R (with --recall-se) also
    counts the sites the detector missed. The README describes the method.
    """
    from sitewatch.imagery.candidates.estimate import draw_sample, write_estimate
    from sitewatch.imagery.candidates.estimate import estimate as run_estimate
    from sitewatch.imagery.candidates.store import CandidateStore

    store = CandidateStore.in_run_dir(run_dir)
    if sample_size is not None:
        for d in draw_sample(store, sample_size, strata=strata, seed=seed, classes=classes or None, redraw=redraw):
            click.echo(f"{d.cls}: sampled {sum(d.sample)} of {d.candidates} sites in {len(d.sizes)} score strata "
                       f"(seed {d.seed}); {sum(d.sample) - d.already_reviewed} to review")
        click.echo(f"review them: sitewatch review {run_dir} --sample (the review page), or sitewatch review {run_dir} "
                   f"--site ID --status confirmed|rejected (list them: sitewatch sites {run_dir} --sample); "
                   f"then run sitewatch estimate {run_dir}")
        return
    estimates = run_estimate(store, recall=_per_class(recall, "--recall"), recall_se=_per_class(recall_se, "--recall-se"))
    click.echo(f"{'class':8} {'candidates':>10} {'sample':>6} {'conf':>5} {'rej':>5} {'unsure':>6} {'todo':>5}  "
               f"{'real sites':>10}  {'95% interval':>17}  {'precision':>9}")
    for e in estimates:
        c = {k: sum(getattr(s, k) for s in e.strata) for k in ("sample", "confirmed", "rejected", "unsure", "unreviewed")}
        head = (f"{e.cls:8} {e.candidates:10d} {c['sample']:6d} {c['confirmed']:5d} {c['rejected']:5d} "
                f"{c['unsure']:6d} {c['unreviewed']:5d}")
        if e.estimate is None:
            click.echo(f"{head}  {e.problem}")
            continue
        click.echo(f"{head}  {e.estimate:10.1f}  [{e.low:7.1f}, {e.high:7.1f}]  {e.precision:9.2f}")
        if c["unsure"]:
            click.echo(f"{'':8} unsure counted as real: {e.unsure_as_real:.1f}; as not real: {e.unsure_as_not_real:.1f}")
        if e.with_missed:
            m = e.with_missed
            click.echo(f"{'':8} with the sites the detector missed (recall {e.recall:.2f} +- {e.recall_se:.2f}): "
                       f"{m['estimate']:.1f} [{m['low']:.1f}, {m['high']:.1f}]")
        if e.added_since_draw:
            click.echo(f"{'':8} {e.added_since_draw} site(s) added since the sample was drawn are not covered; "
                       "draw a new sample (--sample N --redraw) to include them")
    click.echo("real sites = estimated number of candidate sites that are real; sites the detector missed are "
               "not counted" + (" (except in the recall line)" if recall else ""))
    click.echo(f"wrote {write_estimate(Path(run_dir), estimates)}")


@cli.command("review")
@click.argument("run_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; a network address needs reviewer tokens (sitewatch reviewers add).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="On a network address: a host name reviewers open the page by (repeat for several).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--sample", is_flag=True, help="Open on the random sample drawn by `sitewatch estimate DIR --sample N`.")
@click.option("--site", "site_id", default=None, help="Record one decision without the page: the site id (with --status).")
@click.option("--status", type=click.Choice(["unreviewed", "confirmed", "rejected", "unsure"]), default=None,
              help="With --site: the decision.")
@click.option("--reviewer", default=None,
              help="Who decides: with --site, and on the page opened by the printed URL [default: your login name].")
@click.option("--note", default="", help="With --site: a note kept with the decision.")
def review_page(run_dir: Path, host: str, allow_hosts: tuple[str, ...], port: int, sample: bool, site_id: str | None,
                status: str | None, reviewer: str | None, note: str) -> None:
    """Review a run's sites in the browser: serve the review page at http://127.0.0.1:8765/ until Ctrl-C.

    \b
    A map of the sites over the scenes' quick-looks, a list to sort and filter, an image chip
    of the selected site; y confirm, n reject, u unsure, arrows next/previous. Decisions are
    saved at once in DIR/candidates.gpkg. The page's JSON API is in the README.
    sitewatch review runs/brick                     # then open the printed URL
    sitewatch review runs/brick --sample            # the sample of sitewatch estimate
    sitewatch review runs/brick --site kiln-000012 --status confirmed --note "chimney"
    """
    import signal

    from sitewatch.imagery.review.server import make_server

    if site_id is not None or status is not None:  # one decision from the command line
        if site_id is None or status is None:
            raise click.UsageError("--site and --status go together (or give neither to open the review page)")
        _record_review(run_dir, site_id, status, reviewer, note)
        return
    server = make_server(run_dir, host, port, sample=sample, owner=reviewer, allow_hosts=allow_hosts,
                         log=lambda line: click.echo(f"sitewatch review: {line}", err=True))
    summary = server.app.summary()
    what = f"the sample ({summary['sample']['sites']} sites)" if sample else f"{summary['sites']} sites"
    if server.loopback_only:
        click.echo(f"review {what} of {run_dir} as {server.owner}: open {server.login_url} (Ctrl-C to stop)")
    else:
        names = [n for n, _, revoked in server.app.store.reviewers() if revoked is None]
        bound, port_ = server.server_address[:2]
        click.echo(f"sitewatch: listening on {bound}:{port_}, reachable from other machines: reviewers with "
                   f"tokens ({', '.join(names)}) can read the {summary['sites']} sites of {run_dir}, their "
                   "detections, image chips and scene quick-looks, and record reviews under their own names; "
                   f"requests must name one of these hosts: {', '.join(sorted(server.allow_hosts))}. No encryption: "
                   "put it behind an HTTPS proxy outside a trusted network", err=True)
        click.echo(f"review {what} of {run_dir}: each reviewer opens http://HOST:{port_}/#token=THEIR_TOKEN "
                   "(Ctrl-C to stop)")

    def _stop(signum: int, frame: object) -> None:  # `kill` stops it as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("sitewatch review: stopped; every decision is saved", err=True)
    finally:
        server.server_close()


@cli.group()
def reviewers() -> None:
    """Personal tokens for the review page: who may review a run, under their own name."""


@reviewers.command("add")
@click.argument("name")
@_RUN_DIR
def reviewers_add(name: str, run_dir: Path) -> None:
    """Issue NAME a token for the review page of DIR (shown once; the run keeps only its hash)."""
    from sitewatch.imagery.candidates.store import CandidateStore, check_reviewer

    token = CandidateStore.in_run_dir(run_dir).add_reviewer(name)
    who = check_reviewer(name)
    click.echo(f"reviewer {who}: token {token}")
    click.echo(f"give it to {who} privately; they open http://HOST:PORT/#token={token} "
               "(sitewatch review prints HOST and PORT). It is not shown again: revoke it and add it anew if lost.")


@reviewers.command("list")
@_RUN_DIR
def reviewers_list(run_dir: Path) -> None:
    """The reviewers of DIR with a token, and when each was issued or revoked."""
    from sitewatch.imagery.candidates.store import CandidateStore

    rows = CandidateStore.in_run_dir(run_dir).reviewers()
    for name, created, revoked in rows:
        click.echo(f"{name}  issued {created}" + (f"  revoked {revoked}" if revoked else ""))
    click.echo(f"{len(rows)} reviewer(s)")


@reviewers.command("revoke")
@click.argument("name")
@_RUN_DIR
def reviewers_revoke(name: str, run_dir: Path) -> None:
    """Revoke NAME's token (their reviews stay in the log; their open pages stop working)."""
    from sitewatch.imagery.candidates.store import CandidateStore

    CandidateStore.in_run_dir(run_dir).revoke_reviewer(name)
    click.echo(f"reviewer {name}: token revoked")


#: Set by :func:`main` when it runs as the ``sitewatch`` program (not called from Python with
#: arguments): only then may a model command re-execute the process.
_MAY_REEXEC = False


def _model_command() -> None:
    """First thing a command that runs models does, once its arguments are parsed:
    re-execute the process with glibc allocator settings that make PyTorch on the CPU
    1.5-2x faster (:mod:`sitewatch.imagery.detect.allocator`).

    glibc reads them only at process start, hence the re-exec (the process keeps its pid).
    ``--help`` and flag errors never get here, so they answer at once. Any of the settings
    already set, or ``SITEWATCH_NO_ALLOCATOR_TUNING=1``, leaves things as they are.
    """
    import os

    from sitewatch.imagery.detect.allocator import ALLOCATOR_ENV

    if (not _MAY_REEXEC or not sys.platform.startswith("linux") or os.environ.get("SITEWATCH_NO_ALLOCATOR_TUNING")
            or any(k in os.environ for k in ALLOCATOR_ENV)):
        return
    env = {**os.environ, **ALLOCATOR_ENV}
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606 - same program, same arguments
    except OSError:
        return  # run as we are


def _say(text: str) -> None:
    """A status line on a terminal (never in logs or pipes, where stderr carries only errors)."""
    if sys.stderr.isatty():
        click.echo(f"sitewatch: {text}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn user errors into one line and an exit code."""
    global _MAY_REEXEC
    _MAY_REEXEC = argv is None
    try:
        cli.main(args=argv, prog_name="sitewatch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "sitewatch"
        click.echo(f"{where}: error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("sitewatch: interrupted", err=True)
        sys.exit(130)
    except SitewatchError as exc:
        click.echo(f"sitewatch: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("sitewatch: interrupted; no results were written", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
