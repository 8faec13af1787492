"""C99 for microcontrollers from an edgereg ONNX model: ``codegen`` (the entry) lowers the graph
(``lowering``) to C steps (``ops``), places every tensor in a static arena (``arena``), renders
``model.c``/``model.h`` from the kernels in ``templates/`` (``render``) and adds the lab-grade
post-processing (``lab``).
"""
