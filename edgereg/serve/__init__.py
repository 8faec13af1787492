"""`edgereg serve`: a live web page and an HTTP API around one capture loop and one model.

Modules (one concern each):

* :mod:`~edgereg.serve.hub`: the readings of the capture loop, buffered and handed to async clients.
* :mod:`~edgereg.serve.frames`: the JPEG of the latest frame with the overlay, encoded once per frame.
* :mod:`~edgereg.serve.batcher`: concurrent ``/api/predict`` requests micro-batched into one
  ONNX Runtime call.
* :mod:`~edgereg.serve.uploads`: uploaded images -> checked, decoded, cropped frames.
* :mod:`~edgereg.serve.metrics`: the Prometheus counters and histograms.
* :mod:`~edgereg.serve.guard`: bearer-token check and request size limit (ASGI middleware).
* :mod:`~edgereg.serve.app`: the Starlette application that wires them (needs the ``serve`` extra).

Only ``app``, ``guard`` and ``metrics`` import the ``serve`` extra (Starlette, prometheus_client);
the rest is numpy/OpenCV like the runtime.
"""
