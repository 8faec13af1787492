"""``edgereg.export``: a trained run folder -> deployable models and their report.

Modules: ``onnx_export`` (torch -> ``model.onnx`` with the card), ``fp16``, ``card_io`` (the card
into ONNX metadata), ``readings`` (each model's held-out readings, made once), ``report``
(``export_report.json``), ``speed``. Packages: ``int8`` (quantization, the accuracy gate, the
float-layer search), ``uncertainty`` (conformal intervals, the novelty score), ``c`` (C99 for
microcontrollers).
"""
