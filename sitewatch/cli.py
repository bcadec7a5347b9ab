"""The ``sitewatch`` command: a thin layer over the library API.

Errors a user can cause print one line on stderr and exit non-zero:
2 bad flag or value, 3 bad input file, 4 model problem, 5 output problem,
6 some scenes failed (the others' results were written), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from imagery.errors import SitewatchError

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
    """A tqdm bar over tiles on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def plan(self, p: Any) -> None:
        if self.enabled:
            from tqdm import tqdm

            total = sum(len(g) for g in p.grids)
            self.bar = tqdm(total=total, unit="tile", desc=f"{len(p.scenes)} scene(s)", file=sys.stderr)

    def tiles(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sitewatch")
def cli() -> None:
    """Find brick kilns and vessels in satellite scenes and map them for review.

    \b
    Start with the demo (no data needed):   sitewatch demo --out demo-run
    Then your own scenes:                   sitewatch detect SCENE... --model vessels-s2 --out run1
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
@click.option("--tiles-per-task", type=int, default=16, show_default=True, help="Tiles read and detected per Dask task.")
@click.option("--bands", default=None, help="Bands to use, in the model's order: names (B02,B03,B04,B08) or 1-based indexes.")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (tcp://host:8786); local threads if omitted.")
@click.option("--tta/--no-tta", default=None, help="Average the heatmap over flipped tiles (3x slower) [default: the model's].")
@click.option("--overwrite", is_flag=True, help="Replace the results of an earlier run in --out.")
def detect(inputs: tuple[str, ...], model: str, out: Path, tile_size: int | None, overlap: int | None, batch_size: int,
           score_threshold: float | None, workers: int | None, tiles_per_task: int, bands: str | None,
           scheduler: str | None, tta: bool | None, overwrite: bool) -> None:
    """Detect objects in scenes and write detections.geojson, run.json and map.html.

    \b
    INPUT is a raster file (GeoTIFF/COG, any band count) or a directory of
    single-band files on one grid (Sentinel-2 style: band names such as B02 in the
    file names), which counts as one scene.
    """
    from imagery.pipeline import DetectSettings
    from imagery.pipeline import detect as run_detect

    settings = DetectSettings(tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                              score_threshold=score_threshold, workers=workers, bands=_bands(bands),
                              tiles_per_task=tiles_per_task, tta=tta)
    progress = _Progress(sys.stderr.isatty())
    try:
        summary = run_detect(list(inputs), model, out, settings, overwrite=overwrite, scheduler=scheduler,
                             on_tiles=progress.tiles, on_plan=progress.plan)
    finally:
        progress.close()
    counts = ", ".join(f"{n} {c}" for c, n in summary.counts().items())
    click.echo(f"{out}: {counts} in {len(summary.results)} scene(s); open {out / 'map.html'}")
    for r in summary.failed_scenes:
        click.echo(f"sitewatch: error: scene failed: {r.errors[0] if r.errors else r.scene.source}", err=True)
    if summary.failed_scenes:
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
    from imagery.demo import run_demo

    progress = _Progress(sys.stderr.isatty())
    try:
        result = run_demo(out, seed=seed, workers=workers, overwrite=overwrite, on_tiles=progress.tiles, on_plan=progress.plan)
    finally:
        progress.close()
    for cls, m in result["per_class"].items():
        click.echo(f"{cls}: planted {m['planted']}, detected {m['detected']}, matched {m['tp']} "
                   f"(precision {m['precision']:.2f}, recall {m['recall']:.2f})")
    click.echo(f"{out}: open {out / 'map.html'} in a browser")


@cli.command()
def models() -> None:
    """List the shipped models with their classes, bands, resolution and version."""
    from imagery.checkpoint import load_checkpoint
    from imagery.registry import shipped_models

    found = shipped_models()
    if not found:
        click.echo("no shipped models are installed; train one (scripts/) or pass a checkpoint path to --model")
    for name, path in found.items():
        spec = load_checkpoint(path).spec
        click.echo(f"{name}  v{spec.version}  classes={','.join(spec.classes)}  bands={','.join(spec.bands)}  "
                   f"pixel={spec.pixel_size_m:g} m  tile={spec.tile_size}  {path.parent / 'model_card.md'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn user errors into one line and an exit code."""
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
