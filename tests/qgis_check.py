"""Open sitewatch outputs in QGIS and print what QGIS sees, as JSON (run by tests/test_qgis.py).

Run with the Python that has PyQGIS (``/usr/bin/python3`` on Debian with ``python3-qgis``),
not the project's environment: ``QT_QPA_PLATFORM=offscreen python3 tests/qgis_check.py
--raster d.tif --vector d.gpkg --vector candidates.gpkg``. Only the standard library and
``qgis`` are imported. Each vector file's every layer is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402 - after the platform is set
    QgsApplication,
    QgsFeatureSource,
    QgsRasterLayer,
    QgsVectorLayer,
)


def raster(path: str) -> dict[str, object]:
    layer = QgsRasterLayer(path, "raster", "gdal")
    return {"path": path, "valid": layer.isValid(), "bands": layer.bandCount() if layer.isValid() else 0,
            "crs": layer.crs().authid(), "width": layer.width(), "height": layer.height(),
            "renderer": layer.renderer().type() if layer.isValid() else None,
            "renderer_bands": list(layer.renderer().usesBands()) if layer.isValid() else []}


def vectors(path: str) -> list[dict[str, object]]:
    out = []
    probe = QgsVectorLayer(path, "probe", "ogr")
    names = [s.split("!!::!!")[1] for s in probe.dataProvider().subLayers()]
    for name in names:
        layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
        info: dict[str, object] = {"path": path, "layer": name, "valid": layer.isValid()}
        if layer.isValid():
            info.update(
                features=layer.featureCount(),
                geometry=layer.isSpatial(),
                crs=layer.crs().authid(),
                spatial_index=layer.hasSpatialIndex() == QgsFeatureSource.SpatialIndexPresent,
            )
            if layer.isSpatial():
                _, loaded = layer.loadDefaultStyle()
                renderer = layer.renderer()
                info["default_style_loaded"] = bool(loaded)
                info["renderer"] = renderer.type() if renderer else None
                if renderer is not None and renderer.type() == "categorizedSymbol":
                    info["render_attribute"] = renderer.classAttribute()
                    info["categories"] = [str(c.value()) for c in renderer.categories()]
                styles = layer.listStylesInDatabase()  # (default styles of this layer, ids, names, ...)
                info["styles"] = list(styles[2]) if isinstance(styles, tuple) and len(styles) > 2 else []
        out.append(info)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raster", action="append", default=[])
    ap.add_argument("--vector", action="append", default=[])
    args = ap.parse_args()
    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = {"qgis": QgsApplication.applicationVersion() if hasattr(QgsApplication, "applicationVersion") else "",
                  "rasters": [raster(p) for p in args.raster],
                  "vectors": [v for p in args.vector for v in vectors(p)]}
        from qgis.core import Qgis

        result["qgis"] = Qgis.QGIS_VERSION
        print(json.dumps(result))
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
