"""sitewatch.imagery: the runtime, one subpackage per stage of the data flow.

Imports run one way, down the stages (``tests/test_import_graph.py`` checks it)::

    synthetic   -> detect, candidates, models, scenes     demo scenes and the demo run
    review      -> candidates, scenes                     the review server and its page
    detect      -> candidates, models, scenes             the ``detect`` run
    candidates  -> scenes                                 the store, sites, export, estimate
    models      -> scenes                                 architectures, checkpoints, runtimes
    scenes                                                reading and tiling scenes

Every stage may import :mod:`sitewatch.imagery.errors`, the one error hierarchy. Nothing
here imports :mod:`sitewatch.training`.
"""
