"""The ``detect`` run: ``pipeline`` plans a run and builds its Dask tasks, ``execution``
runs them (threads, a local cluster, a running cluster), ``worker`` is what a task does
(read, normalise, infer, georeference), ``merge`` suppresses duplicates across seams,
``jobs`` records finished tasks so a run resumes, ``results`` holds what a run produced,
and ``report``, ``outputs`` and ``mapview`` write it.

May import ``candidates`` (the store it writes), ``models``, ``scenes`` and ``errors``.
"""
