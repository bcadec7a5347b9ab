"""Run directories and atomic output files.

Outputs are first written into a hidden staging directory beside ``--out`` and only
renamed into place once every file is complete, so a failed or killed run never leaves a
half-written file that looks finished, and earlier results stay intact until then.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sitewatch.imagery.errors import OutputError, UsageError

#: Files a finished run writes; their presence marks a directory as holding results.
RESULT_FILES = ("detections.geojson", "run.json", "map.html", "candidates.gpkg")
#: Directory of a run's quick-look PNGs (one per scene).
QUICKLOOK_DIR = "quicklooks"


def out_dir_exists(out: Path) -> bool:
    """Whether the output directory ``out`` exists; missing parents are fine (they are created
    when outputs are written).

    Raises:
        OutputError: ``out`` or one of its parents is a file.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory; choose a directory path")
    if not out.exists() and any(p.exists() and not p.is_dir() for p in out.parents):
        raise OutputError(f"--out {out}: a parent path is a file, not a directory; choose another path")
    return out.exists()


def check_out_dir(out: Path, overwrite: bool, own_files: tuple[str, ...] = (), *, append: bool = False) -> None:
    """Refuse an output directory that holds results (unless ``overwrite`` or ``append``) or foreign files.

    ``own_files`` names files the caller itself put there (the demo's scene), which
    are not foreign. With ``append``, a directory holding results must hold a candidate
    store to add to; one without results is treated as a new run.

    Raises:
        OutputError: the directory cannot be used.
        UsageError: both ``overwrite`` and ``append``.
    """
    if overwrite and append:
        raise UsageError("--append and --overwrite: choose one (--append adds scenes and keeps reviews, "
                         "--overwrite replaces every result)")
    if not out_dir_exists(out):
        return
    present = [f for f in RESULT_FILES if (out / f).exists()]
    if present and append:
        if not (out / "candidates.gpkg").is_file():
            raise OutputError(
                f"--out {out}: holds results without a candidate store (candidates.gpkg), from an older sitewatch; "
                "re-run those scenes with --overwrite, or append to a new directory"
            )
        return
    if present and not overwrite:
        raise OutputError(
            f"--out {out}: already holds results ({', '.join(present)}); "
            "pass --overwrite to replace them, --append to add these scenes to them (detect), or choose another directory "
            "(from Python: overwrite=True, append=True)"
        )
    if not present:
        others = [p.name for p in out.iterdir()
                  if not p.name.startswith(".") and p.name not in own_files and not _empty_quicklooks(p)]
        if others:
            raise OutputError(
                f"--out {out}: holds files that are not sitewatch results ({', '.join(sorted(others)[:3])}); "
                "choose an empty or new directory"
            )


def _empty_quicklooks(p: Path) -> bool:
    """An empty ``quicklooks`` directory (left by removing a run's files) is not foreign."""
    return p.name == QUICKLOOK_DIR and p.is_dir() and not any(p.iterdir())


class Staging:
    """A hidden directory next to ``out`` where a run writes before committing its files."""

    def __init__(self, out: Path) -> None:
        self.out = out
        parent = out.parent if str(out.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=parent))
        except OSError as exc:
            raise OutputError(f"--out {out}: cannot write in {parent} ({exc.strerror})") from None

    def path(self, name: str) -> Path:
        """Where to write output ``name`` before commit."""
        return self.dir / name

    def write_json(self, name: str, doc: Any) -> None:
        """Write a JSON document to the staging directory."""
        try:
            with open(self.path(name), "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
                f.write("\n")
        except OSError as exc:
            raise OutputError(f"{self.out / name}: cannot write ({exc.strerror})") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a binary file to the staging directory; ``name`` may hold a subdirectory (``quicklooks/a.png``)."""
        try:
            self.path(name).parent.mkdir(parents=True, exist_ok=True)
            self.path(name).write_bytes(data)
        except OSError as exc:
            raise OutputError(f"{self.out / name}: cannot write ({exc.strerror})") from None

    def write_text(self, name: str, text: str) -> None:
        """Write a text file to the staging directory."""
        try:
            self.path(name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{self.out / name}: cannot write ({exc.strerror})") from None

    def commit(self, names: list[str]) -> None:
        """Move the staged files into ``out`` (each rename is atomic), then clean up.

        ``run.json`` goes last: its presence means the run's other files are complete.
        Names may hold a subdirectory (``quicklooks/a.png``), which is created in ``out``.
        """
        try:
            self.out.mkdir(parents=False, exist_ok=True)
            ordered = [n for n in names if n != "run.json"] + [n for n in names if n == "run.json"]
            if "run.json" in names:
                # An earlier run's run.json would vouch for a mix of old and new files if the
                # renames below stopped part-way (an error, or the process killed).
                (self.out / "run.json").unlink(missing_ok=True)
            for name in ordered:
                if "/" in name:
                    (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path(name), self.out / name)
        except OSError as exc:
            raise OutputError(f"--out {self.out}: cannot write results ({exc.strerror})") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging directory and anything in it."""
        shutil.rmtree(self.dir, ignore_errors=True)
