"""The two stages that run on the Ray workers: decode tasks and ONNX Runtime actors.

Batches are dicts of numpy arrays (Ray Data's ``batch_format="numpy"``). No Ray import here: the
functions run in whatever process Ray Data puts them, and are plain to test.

Input rows (built by the driver, see ``edgereg.cluster.engine``):
    ``index`` int64 (row number in the driver's list of inputs), ``key`` bytes (the output's
    ``path``, UTF-8 with surrogate escapes), ``path`` bytes (file to read, ``os.fsencode``; empty
    for an input already known to fail), ``error`` str (that failure, or "").

After :func:`decode_batch`:
    ``index``, ``tensor`` (B, V, C, H, W) float32 (the model input of each image's V TTA views;
    zeros for failures), ``box`` (B, 4) float64 crop box in source pixels (x0, y0, w, h),
    ``error`` str ("" or the reason, exactly as the local engine words it).

After :class:`OnnxScorer`:
    ``index``, ``values`` (B, T) float64, ``spread`` (B, T) float64 (NaN without TTA), ``flags``
    str (joined with ";"), ``error`` str, ``provider`` str (the ONNX Runtime provider that ran).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgereg.batch.encoding import FLAG_SEPARATOR
from edgereg.batch.flags import prediction_flags
from edgereg.batch.scoring import load_entry
from edgereg.batch.sources import Entry
from edgereg.core.tta import TTASpec
from edgereg.preprocess import CropBox, PreprocessConfig, preprocess_batch
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS


def _text(value: Any) -> str:
    """A key that Arrow hands back as bytes (or already as str) -> the original str."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def decode_batch(batch: dict[str, np.ndarray], *, config: PreprocessConfig, tta: TTASpec,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """Read, decode, crop/resize and preprocess (numba, serial kernel) one block of inputs.

    Args:
        batch: input rows (see the module docstring), B of them.
        config: the model's preprocessing.
        tta: the run's TTA views (V = ``tta.n``).
        max_pixels: images declaring more pixels are failures (``--max-pixels``).

    Returns:
        ``index``, ``tensor`` (B, V, C, H, W) float32, ``box`` (B, 4) float64, ``error`` (B,) str.
    """
    import cv2

    cv2.setNumThreads(1)  # one decode task per requested CPU share; OpenCV's own pool would oversubscribe
    count = len(batch["index"])
    height, width = config.input_size
    boxes = np.zeros((count, 4), dtype=np.float64)
    errors = np.full(count, "", dtype=object)
    frames, good = [], []
    for i, (index, key, path, error) in enumerate(zip(batch["index"].tolist(), batch["key"], batch["path"],
                                                       batch["error"])):
        path = bytes(path)
        entry = Entry(index, _text(key), path=Path(os.fsdecode(path)) if path else None, error=str(error) or None)
        loaded = load_entry(entry, config, max_pixels)
        if isinstance(loaded, str):
            errors[i] = loaded
            continue
        frame, box = loaded
        frames.append(frame)
        boxes[i] = (box.x0, box.y0, box.w, box.h)
        good.append(i)
    tensor = np.empty((count, tta.n, config.n_channels, height, width), dtype=np.float32)
    if len(good) == count:  # the usual case: the kernel writes straight into the block's tensor
        preprocess_batch(np.stack(frames), config, tta, out=tensor.reshape(count * tta.n, *tensor.shape[2:]),
                         parallel=False)  # (B, V, C, H, W) viewed as (B*V, C, H, W)
    else:
        tensor[:] = 0.0
        if frames:
            views = preprocess_batch(np.stack(frames), config, tta, parallel=False)  # (b*V, C, H, W)
            tensor[good] = views.reshape(len(frames), tta.n, *views.shape[1:])  # (b*V,C,H,W) -> (b,V,C,H,W)
    return {"index": np.asarray(batch["index"], dtype=np.int64), "tensor": tensor, "box": boxes, "error": errors}


class OnnxScorer:
    """A Ray Data actor: one ONNX Runtime session, fed model input that the decode tasks made.

    Args:
        model: the .onnx file's bytes (so the workers need no copy of the driver's file).
        card: the model card's JSON in use (the embedded one, or ``--card``'s).
        providers: ``--providers`` (resolved against this worker's onnxruntime build).
        tta: the TTA spec string.
        batch_size: images per ONNX Runtime call.
        threads: intra-op threads (= the CPUs the actor requested).
    """

    def __init__(self, model: bytes, *, card: str, providers: str, tta: str, batch_size: int, threads: int,
                 confidence: float | None = 0.9, calibration: bool = True) -> None:
        from edgereg.core.card import ModelCard
        from edgereg.core.predictor import Predictor

        handle, path = tempfile.mkstemp(suffix=".onnx", prefix="edgereg-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(model)
            self.predictor = Predictor(path, providers=providers, tta=tta, batch_size=batch_size, threads=threads,
                                       card=ModelCard.from_json(card), confidence=confidence,
                                       calibration=calibration)
        finally:
            os.unlink(path)  # the session holds the model in memory
        self.provider = self.predictor.providers[0]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score the rows without an error; see the module docstring for the columns."""
        predictor = self.predictor
        count = len(batch["index"])
        n_targets = len(predictor.names)
        values = np.full((count, n_targets), np.nan)
        spread = np.full((count, n_targets), np.nan)
        lo = np.full((count, n_targets), np.nan)
        hi = np.full((count, n_targets), np.nan)
        flags = np.full(count, "", dtype=object)
        errors = np.asarray(batch["error"], dtype=object)
        good = np.flatnonzero(errors == "")
        if len(good):
            tensor = batch["tensor"] if len(good) == count else batch["tensor"][good]
            tensor = np.ascontiguousarray(tensor, dtype=np.float32)
            tensor = tensor.reshape(len(good) * predictor.tta.n, *tensor.shape[2:])  # (b,V,C,H,W) -> (b*V,C,H,W)
            boxes = [CropBox(*box) for box in batch["box"][good].tolist()]
            result = predictor.predict_tensor(tensor, boxes)
            values[good] = result.values
            if result.spread is not None:
                spread[good] = result.spread
            if result.lo is not None:
                lo[good], hi[good] = result.lo, result.hi
            flags[good] = [FLAG_SEPARATOR.join(marks) for marks in prediction_flags(predictor.card, result, boxes)]
        return {"index": np.asarray(batch["index"], dtype=np.int64), "values": values, "spread": spread, "lo": lo,
                "hi": hi, "flags": flags, "error": errors, "provider": np.full(count, self.provider, dtype=object)}
