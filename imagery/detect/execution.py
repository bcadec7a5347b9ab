"""Running a run's tasks: local threads, a local cluster of processes, or a cluster someone runs.

Every result is handed to a callback the moment its task finishes (the pipeline records
it in the job's store and drops it), so nothing accumulates in the client.

* ``threads`` (the default): Dask's threaded scheduler in this process, one single-threaded
  model per worker thread (PyTorch releases the GIL): the fastest layout on one machine.
* ``processes``: a :class:`distributed.LocalCluster` of single-threaded worker processes,
  started with the allocator settings that keep PyTorch fast (see the README).
* an address (``tcp://host:8786``): an existing Dask distributed scheduler, started with
  ``dask scheduler`` / ``dask worker``, dask-jobqueue or Kubernetes. Workers must be able to
  import sitewatch and read the scenes' paths (a shared file system, or remote COGs).

On a distributed cluster the model's checkpoint reaches each worker once, through a
worker plugin (also on workers that join or restart later), not with every task. A
worker that dies mid-task has its tasks retried elsewhere by the scheduler; a task that
kills ``distributed.scheduler.allowed-failures`` workers is reported as failed.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from sitewatch.imagery.detect.allocator import ALLOCATOR_ENV
from sitewatch.imagery.detect.worker import preload_model
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.models.checkpoint import LoadedModel
from sitewatch.imagery.scenes.scene import release_shared

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

#: ``--scheduler`` values that are not addresses.
LOCAL_SCHEDULERS = ("threads", "processes")

@dataclass(frozen=True)
class Task:
    """One Dask task of a run: a scene's statistics (``block`` is ``None``) or one block of tiles."""

    scene: int
    block: int | None
    tiles: int
    delayed: Any


#: Called with each task and its value the moment it finishes, in the calling thread.
OnResult = Callable[[Task, Any], None]
#: Called with a task the cluster gave up on and the reason.
OnFailure = Callable[[Task, BaseException], None]


def check_scheduler(scheduler: str | None) -> str:
    """Normalise ``--scheduler``: ``threads``, ``processes`` or an address.

    Raises:
        UsageError: neither a known name nor something that looks like an address.
    """
    value = (scheduler or "threads").strip()
    if value in LOCAL_SCHEDULERS:
        return value
    if "://" in value or ":" in value:
        return value
    raise UsageError(
        f"--scheduler {value}: use threads, processes, or a scheduler address such as tcp://10.0.0.5:8786"
    )


class ModelPlugin(WorkerPlugin):  # type: ignore[misc]
    """A worker plugin that loads the checkpoint into each worker's model cache once."""

    def __init__(self, data: bytes, checksum: str, name: str) -> None:
        self.data = data
        self.checksum = checksum
        self.name = name

    def setup(self, worker: Any) -> None:
        """Load the model on ``worker`` (Dask calls this on every current and future worker)."""
        preload_model(self.data, self.checksum, self.name)

    def teardown(self, worker: Any) -> None:
        """Nothing to release: the cache lives as long as the worker process."""


def run_tasks(
    tasks: Sequence[Task],
    on_result: OnResult,
    on_failure: OnFailure,
    *,
    scheduler: str,
    workers: int,
    model: LoadedModel,
    on_dashboard: Callable[[str], None] | None = None,
) -> None:
    """Run ``tasks``; call ``on_result(task, value)`` as each finishes, in the calling thread.

    ``on_failure(task, exc)`` is called for a task the cluster gave up on (its workers kept
    dying). Exceptions raised by the callbacks stop the run and propagate.
    """
    if not tasks:
        return
    if scheduler == "threads":
        _run_threads(tasks, on_result, workers)
        return
    with _client(scheduler, workers) as client:
        if on_dashboard is not None and client.dashboard_link:
            on_dashboard(client.dashboard_link)
        _run_distributed(client, tasks, on_result, on_failure, model)


def _done(_: Any) -> int:
    return 0


#: Thread pools of the ``threads`` scheduler by size, kept for the life of the process as Dask
#: keeps its own (no threads started per run).
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="sitewatch-worker")
        return pool


def _pack_exception(exc: BaseException, dumps: Any) -> tuple[BaseException, Any]:
    return exc, sys.exc_info()[2]


def _run_threads(tasks: Sequence[Task], on_result: OnResult, workers: int) -> None:
    """Run ``tasks`` on Dask's local (threaded) scheduler with a pool of ``workers`` threads.

    Dask's own threaded ``get`` keeps only as many tasks in flight as there are threads, so
    a thread that finishes a task idles until the calling thread has recorded the result and
    handed it the next one. Here the scheduler keeps one more task queued per thread, so the
    threads go straight on while results are recorded.
    """
    from dask.callbacks import Callback
    from dask.local import get_async

    by_key = {t.delayed.key: t for t in tasks}
    pool = _pool(workers)

    class _Record(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:  # noqa: A002
            task = by_key.get(key)
            if task is not None:  # Dask calls this in the calling thread
                on_result(task, result)

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return get_async(pool.submit, 2 * workers, dsk, keys, get_id=threading.get_ident,
                         pack_exception=_pack_exception, **kwargs)

    # Each task feeds a tiny sink, so its result is an intermediate that Dask drops once
    # recorded, instead of a final value held until every task has finished.
    sinks = [dask.delayed(_done, pure=True)(t.delayed, dask_key_name=f"done-{t.delayed.key}") for t in tasks]
    try:
        with _Record():
            dask.compute(*sinks, scheduler=get)
    finally:
        release_shared()


@contextmanager
def _client(scheduler: str, workers: int) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    if scheduler == "processes":
        with dask.config.set({"distributed.nanny.pre-spawn-environ": ALLOCATOR_ENV}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0") as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, ValueError, TypeError) as exc:  # unreachable (OSError after the timeout) or malformed
        raise UsageError(
            f"--scheduler {scheduler}: cannot connect ({str(exc).strip().splitlines()[0][:160]}); "
            "start a scheduler (dask scheduler) or use --scheduler threads"
        ) from None
    with client:
        yield client


def _run_distributed(client: Client, tasks: Sequence[Task], on_result: OnResult, on_failure: OnFailure,
                     model: LoadedModel) -> None:
    from distributed import as_completed
    plugin_name = f"sitewatch-model-{model.checksum.removeprefix('sha256:')[:16]}"
    with open(model.path, "rb") as f:
        data = f.read()
    client.register_plugin(ModelPlugin(data, model.checksum, plugin_name), name=plugin_name)
    by_key: dict[Any, Task] = {}
    futures = client.compute([t.delayed for t in tasks])
    for fut, t in zip(futures, tasks, strict=True):
        by_key[fut.key] = t
    queue = as_completed(futures)
    del futures  # as_completed holds each future until it is handed out; then it is released
    for fut in queue:
        task = by_key[fut.key]
        if fut.status == "error":
            exc = fut.exception()
            from distributed.scheduler import KilledWorker

            if isinstance(exc, KilledWorker):
                on_failure(task, exc)
            else:
                fut.result()  # a bug in a task: raise it with its traceback
        else:
            on_result(task, fut.result())
        fut.release()
