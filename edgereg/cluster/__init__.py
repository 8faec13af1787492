"""Scoring beyond one machine: ``edgereg infer MODEL PATH --engine ray`` on Ray Data.

Needs the ``cluster`` extra (``pip install 'edgereg[cluster]'``); nothing else in edgereg imports
Ray. Modules: ``plan`` (actor pool sizing, no Ray), ``session`` (start or join Ray), ``stages``
(decode tasks and ONNX Runtime actors), ``parts`` (exactly-once output), ``engine`` (the pipeline).
The command itself is :mod:`edgereg.cli.ray`. See docs/scoring-a-million-images.md.
"""
