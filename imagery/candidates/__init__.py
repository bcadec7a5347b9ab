"""What happens to detections after a run: the candidate ``store`` (a GeoPackage written
through ``gpkg``), ``sites`` (grouping detections over scenes and dates), ``export``,
``estimate`` (how many sites are real) and ``matching`` (detections against labels).

May import ``scenes`` and ``errors``. It knows nothing of a detection run: ``detect``
hands it plain records (``RunInfo``, ``SceneInfo``, ``Detection``). No torch here.
"""
