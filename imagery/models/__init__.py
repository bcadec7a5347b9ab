"""What a model is and how it runs: ``architectures`` (the detectors), ``checkpoint``
(saving, loading, checksums), ``registry`` (shipped models by name), ``runtime`` (ONNX
Runtime or PyTorch) and ``inference`` (tiles in, raw detections out).

May import ``scenes`` (normalisation) and ``errors``. The only stage that imports torch
at module level, apart from the ``detect`` modules that run models.
"""
