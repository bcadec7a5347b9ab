"""Job directories: what a detection run has finished, so an interrupted run resumes.

A run keeps ``.sitewatch-job/job.sqlite`` inside ``--out`` while it works. The client
records each scene's statistics and each block of tiles there the moment its task
finishes (one SQLite transaction each), then drops the result: detections stream to
disk instead of piling up in the client. Re-running the same command into the same
directory opens the job again and schedules only what is missing; the final outputs are
built from the job's records, so a resumed run writes exactly what an uninterrupted one
writes. The job directory is removed once the outputs are committed.

A job is the same job when its *fingerprint* matches: the model checksum, every setting
that changes detections, and the ordered list of scene sources. Each scene also carries a
signature (its files' sizes and modification times); a scene whose files changed since
its records were written is done again from scratch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sitewatch.imagery import errors
from sitewatch.imagery.detect.worker import BlockResult, SceneStats
from sitewatch.imagery.errors import InputError, OutputError, SitewatchError
from sitewatch.imagery.scenes.scene import Scene

#: Hidden directory inside ``--out`` that holds an unfinished job's records.
JOB_DIR = ".sitewatch-job"
_DB = "job.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenes (
    scene INTEGER PRIMARY KEY, signature TEXT NOT NULL, error TEXT,
    lo BLOB, hi BLOB, quicklook BLOB, quicklook_scale REAL, valid_fraction REAL);
CREATE TABLE IF NOT EXISTS blocks (
    scene INTEGER NOT NULL, block INTEGER NOT NULL, tiles_total INTEGER NOT NULL,
    tiles_skipped INTEGER NOT NULL, tiles_failed INTEGER NOT NULL, errors TEXT NOT NULL,
    detections BLOB NOT NULL, PRIMARY KEY (scene, block));
"""


def fingerprint(doc: Mapping[str, Any]) -> str:
    """A stable SHA-256 of a JSON-able description of a job."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def scene_signature(scene: Scene) -> str:
    """Sizes and modification times of a scene's local files (remote files: their paths only); an
    array scene's Dask token (its graph's name, or a hash of a NumPy array's pixels)."""
    parts = [] if scene.array is None else [f"array:{scene.array.token}:{scene.array.picks}"]
    for f in scene.files:
        if f.startswith("/vsi"):
            parts.append(f)
            continue
        try:
            st = os.stat(f)
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{f}:missing")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def has_job(out: Path) -> bool:
    """Whether ``out`` holds an unfinished job's records."""
    return (out / JOB_DIR / _DB).is_file()


def recorded_blocks(out: Path) -> int:
    """How many blocks of tiles the unfinished job in ``out`` has recorded (0 if none): a way
    to watch a job from another process."""
    if not has_job(out):
        return 0
    try:
        with closing(sqlite3.connect(out / JOB_DIR / _DB, timeout=1)) as con:
            return int(con.execute("SELECT count(*) FROM blocks").fetchone()[0])
    except sqlite3.Error:
        return 0


def recorded_fingerprint(out: Path) -> str | None:
    """The fingerprint of the unfinished job in ``out``, if there is one (and it is readable)."""
    if not has_job(out):
        return None
    try:
        with closing(sqlite3.connect(out / JOB_DIR / _DB)) as con:
            row = con.execute("SELECT value FROM job WHERE key = 'fingerprint'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _array_blob(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _blob_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Job:
    """The records of one detection job in ``out/.sitewatch-job``.

    Only the client process writes; each record is one transaction, so a run killed at
    any moment loses at most the task it was recording.
    """

    def __init__(self, out: Path, key: str) -> None:
        self.out = out
        self.dir = out / JOB_DIR
        self.key = key
        self.resumed = False
        self.created_out = False

    @classmethod
    def open(cls, out: Path, key: str, *, discard_other: bool) -> Job:
        """Open the job in ``out`` if it has fingerprint ``key``, else start a new one.

        Args:
            out: the run directory.
            key: the job's fingerprint.
            discard_other: an unfinished job with another fingerprint may be thrown away
                (``--overwrite``); otherwise it is refused.

        Raises:
            OutputError: ``out`` holds another unfinished job and ``discard_other`` is false,
                or the job directory cannot be written.
        """
        job = cls(out, key)
        if has_job(out):
            if recorded_fingerprint(out) == key:
                job.resumed = True
                return job
            if not discard_other:
                raise OutputError(
                    f"--out {out}: holds an unfinished job with other inputs, model or settings "
                    f"({JOB_DIR}); re-run that command to finish it, or pass --overwrite (overwrite=True from Python) to discard it"
                )
            job.discard()
        try:
            job.created_out = not out.exists()
            job.dir.mkdir(parents=True, exist_ok=True)
            with closing(job.connect()) as con, con:
                con.executescript(_SCHEMA)
                con.execute("INSERT OR REPLACE INTO job VALUES ('fingerprint', ?)", (key,))
        except (OSError, sqlite3.Error) as exc:
            job.discard()
            raise OutputError(f"--out {out}: cannot keep the job's records in {job.dir} ({exc})") from None
        return job

    def connect(self) -> sqlite3.Connection:
        """A connection for recording results (the caller closes it)."""
        con = sqlite3.connect(self.dir / _DB, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def check_scenes(self, con: sqlite3.Connection, signatures: Mapping[int, str]) -> None:
        """Forget the records of scenes whose files changed since they were written."""
        with con:
            for scene, sig in con.execute("SELECT scene, signature FROM scenes").fetchall():
                if signatures.get(scene) != sig:
                    con.execute("DELETE FROM scenes WHERE scene = ?", (scene,))
                    con.execute("DELETE FROM blocks WHERE scene = ?", (scene,))

    def done_scenes(self, con: sqlite3.Connection) -> set[int]:
        """Scenes whose statistics are recorded."""
        return {r[0] for r in con.execute("SELECT scene FROM scenes")}

    def is_empty(self, con: sqlite3.Connection) -> bool:
        """Nothing is recorded yet."""
        return not con.execute("SELECT 1 FROM scenes UNION ALL SELECT 1 FROM blocks LIMIT 1").fetchone()

    def done_blocks(self, con: sqlite3.Connection) -> set[tuple[int, int]]:
        """``(scene, block)`` pairs already recorded."""
        return {(r[0], r[1]) for r in con.execute("SELECT scene, block FROM blocks")}

    def record_stats(self, con: sqlite3.Connection, scene: int, signature: str,
                     stats: SceneStats | SitewatchError) -> None:
        """Record a scene's statistics, or the error that stopped them."""
        with self._writing(), con:
            if isinstance(stats, SceneStats):
                con.execute(
                    "INSERT OR REPLACE INTO scenes VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                    (scene, signature, np.asarray(stats.lo, np.float32).tobytes(), np.asarray(stats.hi, np.float32).tobytes(),
                     stats.png(), stats.quicklook_scale, stats.valid_fraction),
                )
            else:
                kind = type(stats).__name__ if isinstance(stats, InputError) else "InputError"
                path = getattr(stats, "path", "")
                reason = getattr(stats, "reason", str(stats))
                con.execute("INSERT OR REPLACE INTO scenes (scene, signature, error) VALUES (?, ?, ?)",
                            (scene, signature, json.dumps({"kind": kind, "path": path, "reason": reason})))

    def record_block(self, con: sqlite3.Connection, scene: int, block: int, result: BlockResult) -> None:
        """Record one block of tiles."""
        with self._writing(), con:
            con.execute(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (scene, block, result.tiles_total, result.tiles_skipped, result.tiles_failed,
                 json.dumps(list(result.errors)), _array_blob(result.detections)),
            )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write of the records (a full disk, a vanished directory) into one
        clear :class:`OutputError`; what was recorded before stays, so the job can resume."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"--out {self.out}: cannot record finished work in {self.dir} ({exc}); "
                              "free some space and run the same command again to resume") from None

    def stats(self, con: sqlite3.Connection, scene: int, *, quicklook: bool = True) -> SceneStats | InputError | None:
        """A scene's recorded statistics, the error that stopped them, or ``None``."""
        row = con.execute(
            "SELECT error, lo, hi, quicklook, quicklook_scale, valid_fraction FROM scenes WHERE scene = ?",
            (scene,),
        ).fetchone()
        if row is None:
            return None
        if row[0] is not None:
            err = json.loads(row[0])
            cls = getattr(errors, err["kind"], InputError)
            if not (isinstance(cls, type) and issubclass(cls, InputError)):
                cls = InputError
            return cls(err["path"], err["reason"])
        if quicklook:
            with Image.open(io.BytesIO(row[3])) as im:
                ql = np.asarray(im.convert("RGB"))
        else:
            ql = np.zeros((1, 1, 3), np.uint8)
        return SceneStats(np.frombuffer(row[1], np.float32).copy(), np.frombuffer(row[2], np.float32).copy(),
                          ql, float(row[4]), float(row[5]), quicklook_png=bytes(row[3]) if quicklook else b"")

    def blocks(self, con: sqlite3.Connection, scene: int) -> Iterator[BlockResult]:
        """A scene's recorded blocks, in block order."""
        for row in con.execute(
            "SELECT tiles_total, tiles_skipped, tiles_failed, errors, detections FROM blocks "
            "WHERE scene = ? ORDER BY block", (scene,),
        ):
            yield BlockResult(_blob_arrays(row[4]), int(row[0]), int(row[1]), int(row[2]), tuple(json.loads(row[3])))

    def discard(self) -> None:
        """Remove the job's records (after its outputs were committed, or to start over), and
        ``out`` itself when the job created it and nothing else was put there."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.created_out:
            with contextlib.suppress(OSError):
                self.out.rmdir()
