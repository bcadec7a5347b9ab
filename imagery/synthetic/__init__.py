"""Synthetic scenes for tests and the demo: ``sentinel2`` (Sentinel-2-like 10 m scenes
with vessels and kilns), ``highres`` (1 m RGB scenes with kiln outlines) and ``demo``
(``sitewatch demo``: a scene, a run, and its evaluation).

The top stage: may import ``detect`` (the demo runs it), ``candidates``, ``models``,
``scenes`` and ``errors``.
"""
