"""sitewatch: find sites linked to forced labour in satellite imagery.

The Python API mirrors the command line::

    from sitewatch import detect, DetectSettings
    summary = detect(["scene.tif"], model="vessels-s2", out="runs/port")
"""

from imagery.errors import SitewatchError
from imagery.pipeline import DetectSettings, RunSummary, detect

__all__ = ["DetectSettings", "RunSummary", "SitewatchError", "detect"]
__version__ = "0.1.0"
