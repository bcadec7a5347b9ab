"""What a scene is and how it is read: inputs, band files, tile grids, normalisation.

``inputs`` (globs, lists, STAC) -> ``scene`` (readers) -> ``tiling`` (the tile grid),
``normalise``, ``georef`` (pixels <-> map <-> lon/lat), ``acquisition`` (scene dates) and
``quicklook`` (natural-colour pictures of scene pixels).

The lowest stage: it imports only ``errors``. No torch here.
"""
