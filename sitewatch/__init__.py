"""sitewatch: find sites linked to forced labour in satellite imagery.

The Python API mirrors the command line::

    from sitewatch import detect, DetectSettings
    summary = detect(["scene.tif"], model="vessels-s2", out="runs/port")

    # or from an xarray.DataArray (band, y, x), e.g. a lazy, Dask-backed scene:
    from sitewatch import open_scene
    summary = detect(open_scene("scene.tif"), model="vessels-s2", out="runs/port-xr")
"""

from typing import TYPE_CHECKING, Any

from sitewatch.imagery.errors import SitewatchError

if TYPE_CHECKING:
    from sitewatch.imagery.detect.pipeline import DetectSettings, RunSummary, detect
    from sitewatch.imagery.scenes.arrays import open_scene_array as open_scene

__all__ = ["DetectSettings", "RunSummary", "SitewatchError", "detect", "open_scene"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: importing the pipeline pulls in torch (seconds), which `sitewatch --help`,
    # flag errors and `python -m sitewatch.cli` must not pay for.
    if name in ("DetectSettings", "RunSummary", "detect"):
        import sitewatch.imagery.detect.pipeline

        return getattr(sitewatch.imagery.detect.pipeline, name)
    if name == "open_scene":
        from sitewatch.imagery.scenes.arrays import open_scene_array

        return open_scene_array
    raise AttributeError(f"module 'sitewatch' has no attribute {name!r}")
