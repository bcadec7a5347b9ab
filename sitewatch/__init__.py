"""sitewatch: find sites linked to forced labour in satellite imagery.

The Python API mirrors the command line::

    from sitewatch import detect, DetectSettings
    summary = detect(["scene.tif"], model="vessels-s2", out="runs/port")
"""

from typing import TYPE_CHECKING, Any

from sitewatch.imagery.errors import SitewatchError

if TYPE_CHECKING:
    from sitewatch.imagery.detect.pipeline import DetectSettings, RunSummary, detect

__all__ = ["DetectSettings", "RunSummary", "SitewatchError", "detect"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: importing the pipeline pulls in torch (seconds), which `sitewatch --help`,
    # flag errors and `python -m sitewatch.cli` must not pay for.
    if name in ("DetectSettings", "RunSummary", "detect"):
        import sitewatch.imagery.detect.pipeline

        return getattr(sitewatch.imagery.detect.pipeline, name)
    raise AttributeError(f"module 'sitewatch' has no attribute {name!r}")
