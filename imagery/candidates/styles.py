"""QGIS layer styles embedded in sitewatch's GeoPackages: sites coloured by review status.

QGIS keeps a GeoPackage's styles in its ``layer_styles`` table (one row per style, as QML
and optionally SLD); a row with ``useAsDefault = 1`` is applied when the layer is opened,
so ``candidates.gpkg`` and an exported sites GeoPackage open coloured by ``status``:
grey ``unreviewed``, red ``confirmed``, blue ``rejected``, orange ``unsure``. The QML is a
categorized renderer written by hand (the subset of QGIS's format QGIS 3.x reads); the
SLD carries the same rules for other clients (GeoServer, uDig).
"""

from __future__ import annotations

import sqlite3
from xml.sax.saxutils import escape, quoteattr

from sitewatch.imagery.candidates.gpkg import add_layer_style

#: Colour (RGB) of each review status; the statuses of the store, in its order.
STATUS_COLOURS: dict[str, tuple[int, int, int]] = {
    "unreviewed": (150, 150, 150),
    "confirmed": (215, 48, 39),
    "rejected": (69, 117, 180),
    "unsure": (253, 174, 97),
}
#: ``styleName`` of the status style.
STATUS_STYLE = "sitewatch review status"

_OUTLINE = (35, 35, 35)


def _rgba(rgb: tuple[int, int, int], alpha: int = 255) -> str:
    return ",".join(str(v) for v in (*rgb, alpha))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _symbol(index: int, rgb: tuple[int, int, int], polygon: bool) -> str:
    if polygon:
        props = {"color": _rgba(rgb, 90), "style": "solid", "outline_color": _rgba(rgb), "outline_style": "solid",
                 "outline_width": "0.6", "outline_width_unit": "MM", "joinstyle": "miter"}
        kind, cls = "fill", "SimpleFill"
    else:
        props = {"color": _rgba(rgb), "name": "circle", "size": "3", "size_unit": "MM",
                 "outline_color": _rgba(_OUTLINE), "outline_style": "solid", "outline_width": "0.3",
                 "outline_width_unit": "MM"}
        kind, cls = "marker", "SimpleMarker"
    options = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
    legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (f'<symbol type="{kind}" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="{cls}" enabled="1" pass="0" locked="0"><Option type="Map">{options}</Option>'
            f"{legacy}</layer></symbol>")


def status_qml(polygon: bool = False, column: str = "status") -> str:
    """A QGIS QML style: a categorized renderer on ``column`` with one category per review status.

    Args:
        polygon: fill symbols (site footprints) instead of point markers (site centres).
        column: the status column.
    """
    cats = "".join(f"<category value={quoteattr(s)} symbol=\"{i}\" label={quoteattr(s)} render=\"true\"/>"
                   for i, s in enumerate(STATUS_COLOURS))
    syms = "".join(_symbol(i, rgb, polygon) for i, rgb in enumerate(STATUS_COLOURS.values()))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.22.0" styleCategories="Symbology">'
            f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(column)} symbollevels="0" '
            'enableorderby="0" forceraster="0">'
            f"<categories>{cats}</categories><symbols>{syms}</symbols></renderer-v2>"
            "<blendMode>0</blendMode><featureBlendMode>0</featureBlendMode><layerOpacity>1</layerOpacity>"
            "</qgis>\n")


def status_sld(layer: str, polygon: bool = False, column: str = "status") -> str:
    """The same style as :func:`status_qml` as an OGC SLD 1.1 document for ``layer``."""
    rules = []
    for status, rgb in STATUS_COLOURS.items():
        if polygon:
            sym = (f'<se:PolygonSymbolizer><se:Fill><se:SvgParameter name="fill">{_hex(rgb)}</se:SvgParameter>'
                   '<se:SvgParameter name="fill-opacity">0.35</se:SvgParameter></se:Fill><se:Stroke>'
                   f'<se:SvgParameter name="stroke">{_hex(rgb)}</se:SvgParameter>'
                   '<se:SvgParameter name="stroke-width">2</se:SvgParameter></se:Stroke></se:PolygonSymbolizer>')
        else:
            sym = ('<se:PointSymbolizer><se:Graphic><se:Mark><se:WellKnownName>circle</se:WellKnownName><se:Fill>'
                   f'<se:SvgParameter name="fill">{_hex(rgb)}</se:SvgParameter></se:Fill><se:Stroke>'
                   f'<se:SvgParameter name="stroke">{_hex(_OUTLINE)}</se:SvgParameter></se:Stroke></se:Mark>'
                   '<se:Size>11</se:Size></se:Graphic></se:PointSymbolizer>')
        rules.append(f"<se:Rule><se:Name>{escape(status)}</se:Name><ogc:Filter><ogc:PropertyIsEqualTo>"
                     f"<ogc:PropertyName>{escape(column)}</ogc:PropertyName><ogc:Literal>{escape(status)}</ogc:Literal>"
                     f"</ogc:PropertyIsEqualTo></ogc:Filter>{sym}</se:Rule>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<StyledLayerDescriptor version="1.1.0" xmlns="http://www.opengis.net/sld" '
            'xmlns:se="http://www.opengis.net/se" xmlns:ogc="http://www.opengis.net/ogc" '
            'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<NamedLayer><se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(STATUS_STYLE)}</se:Name>"
            f"<se:FeatureTypeStyle>{''.join(rules)}</se:FeatureTypeStyle></UserStyle></NamedLayer>"
            "</StyledLayerDescriptor>\n")


def add_status_style(con: sqlite3.Connection, table: str = "sites", *, polygon: bool = False) -> None:
    """Embed the review-status style of ``table`` as its default QGIS style (replacing an older one)."""
    add_layer_style(con, table, STATUS_STYLE, status_qml(polygon), status_sld(table, polygon),
                    "sites coloured by review status (sitewatch)")
