"""int8 ONNX with an accuracy gate: ONNX Runtime's static QDQ quantization (``quantize``), the
gate that keeps int8 only when it holds (``gate``, its verdict ``verdict``), the accuracy- and
speed-controlled search of which layers stay float (``search``), and the calibrators' time plan
(``calib_budget``).
"""
