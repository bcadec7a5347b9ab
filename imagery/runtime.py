"""Where a model runs at inference: PyTorch, or ONNX Runtime on the CPU.

ONNX Runtime ran the shipped CenterNet 1.35x faster than eager PyTorch per CPU thread here
(42 vs 57 ms per 256-pixel tile, same outputs to 4e-6), so ``detect`` exports the model to
ONNX once per process (in memory, well under a second) and runs it there, one single-threaded
session shared by the worker threads (``Run`` is thread-safe). ``torch`` keeps PyTorch, and
is what CUDA devices use. The model is exported from the checksummed checkpoint this process
loaded; nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Any

import numpy as np
import torch

from imagery.errors import UsageError

log = logging.getLogger(__name__)

#: ``--runtime`` values.
RUNTIMES = ("auto", "onnx", "torch")

_SESSIONS: dict[tuple[str, int], OnnxModel] = {}
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

    def __init__(self, model: torch.nn.Module, threads: int) -> None:
        import onnxruntime as ort

        self.stride = getattr(model, "stride", 2)
        self.pad_multiple = getattr(model, "pad_multiple", 16)
        self.device = torch.device("cpu")
        bands = _input_bands(model)
        example = torch.zeros(1, bands, 2 * self.pad_multiple, 2 * self.pad_multiple)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic, which stays dynamic
            torch.onnx.export(model, (example,), buf, input_names=["x"], output_names=["heat", "size", "offset"],
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {"x": arr}))


def _input_bands(model: torch.nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
    raise UsageError("the model has no convolution to take its band count from")


def onnx_model(model: torch.nn.Module, key: str, threads: int) -> OnnxModel:
    """The ONNX Runtime version of ``model`` (``key``: its checkpoint checksum), made once per
    process and thread count."""
    with _LOCK:
        found = _SESSIONS.get((key, threads))
        if found is None:
            found = _SESSIONS[(key, threads)] = OnnxModel(model, threads)
        return found


def inference_model(model: torch.nn.Module, key: str, runtime: str, threads: int) -> Any:
    """What :func:`imagery.inference.predict` should call: ``model`` itself (``torch``) or its
    ONNX Runtime session (``onnx``)."""
    return onnx_model(model, key, threads) if runtime == "onnx" else model
