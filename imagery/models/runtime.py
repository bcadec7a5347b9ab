"""Where a model runs at inference: PyTorch, or ONNX Runtime on the CPU.

ONNX Runtime ran the shipped CenterNet 1.35x faster than eager PyTorch per CPU thread here
(42 vs 57 ms per 256-pixel tile, same outputs to 4e-6), so ``detect`` exports the model to
ONNX once per process (in memory, well under a second) and runs it there. Each running task
borrows a session of its own from a pool of idle ones (``Run`` is thread-safe, but two threads
sharing one session ran 3% slower than two sessions here); the pool holds as many sessions
as tasks ever ran at once. (Not thread-local storage: a forked child, e.g. a subprocess
with ``preexec_fn``, destroys other threads' locals, and a session destroyed there hangs.)
``torch`` keeps PyTorch, and is what CUDA devices use. The model is exported from the checksummed checkpoint this process
loaded; nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from sitewatch.imagery.errors import UsageError

log = logging.getLogger(__name__)

#: ``--runtime`` values.
RUNTIMES = ("auto", "onnx", "torch")

_EXPORTS: dict[str, bytes] = {}
_IDLE: dict[tuple[str, int], list[OnnxModel]] = {}
_LOCK = threading.Lock()


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's needs are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: str = "cpu") -> str:
    """``auto`` -> ``onnx`` on the CPU where ONNX Runtime is installed, else ``torch``.

    Raises:
        UsageError: an unknown runtime, or ``onnx`` without ONNX Runtime.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if device == "cpu" and onnx_available() else "torch"
    if runtime == "onnx" and not onnx_available():
        raise UsageError("--runtime onnx: ONNX Runtime is not installed (pip install onnxruntime onnx), "
                         "or use --runtime torch")
    return runtime


class OnnxModel:
    """A CenterNet exported to ONNX Runtime, called like the PyTorch module it came from.

    It takes a ``(N, C, H, W)`` float tensor (H and W multiples of :attr:`pad_multiple`) and
    returns the module's ``(heat, size, offset)`` tensors.
    """

    def __init__(self, model: torch.nn.Module, threads: int, onnx: bytes | None = None) -> None:
        """Export ``model`` (or take its ``onnx`` bytes from :func:`export_onnx`) into a
        session running on ``threads`` threads."""
        import onnxruntime as ort

        self.stride = getattr(model, "stride", 2)
        self.pad_multiple = getattr(model, "pad_multiple", 16)
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx or export_onnx(model), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {"x": arr}))


def _input_bands(model: torch.nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    raise UsageError("the model has no convolution to take its band count from")


def export_onnx(model: torch.nn.Module) -> bytes:
    """``model`` as an ONNX graph (opset 17) taking ``(N, C, H, W)`` with N, H and W dynamic."""
    bands = _input_bands(model)
    side = 2 * getattr(model, "pad_multiple", 16)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic, which stays dynamic
        torch.onnx.export(model, (torch.zeros(1, bands, side, side),), buf, input_names=["x"],
                          output_names=["heat", "size", "offset"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


@contextmanager
def onnx_model(model: torch.nn.Module, key: str, threads: int) -> Iterator[OnnxModel]:
    """Borrow an ONNX Runtime session of ``model`` (``key``: its checkpoint checksum) running
    on ``threads`` threads for the ``with`` block: the model is exported once per process and
    a session is made only when every earlier one is borrowed."""
    with _LOCK:
        idle = _IDLE.setdefault((key, threads), [])
        session = idle.pop() if idle else None
        onnx = _EXPORTS.get(key)
        if session is None and onnx is None:
            onnx = _EXPORTS[key] = export_onnx(model)
    if session is None:
        session = OnnxModel(model, threads, onnx)
    try:
        yield session
    finally:
        with _LOCK:
            idle.append(session)


@contextmanager
def inference_model(model: torch.nn.Module, key: str, runtime: str, threads: int) -> Iterator[Any]:
    """What :func:`sitewatch.imagery.models.inference.predict` should call inside the ``with`` block: ``model``
    itself (``torch``) or a borrowed ONNX Runtime session of it (``onnx``)."""
    if runtime != "onnx":
        yield model
        return
    with onnx_model(model, key, threads) as session:
        yield session
