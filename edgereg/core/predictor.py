"""The Python API: load an edgereg ONNX model once, then read values from frames or files.

    >>> predictor = Predictor("model.int8.onnx", tta="d4")
    >>> result = predictor.predict([frame])          # frame: (H, W, 3) uint8 BGR
    >>> result.values[0], result.spread[0], result.names
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgereg.core.card import NOVELTY_NAME, ModelCard, card_from_metadata, novelty_threshold
from edgereg.core.providers import resolve_providers
from edgereg.core.rows import reading_values
from edgereg.core.tta import TTASpec, parse_tta
from edgereg.errors import EdgeregError, ModelFileError, ShapeError, did_you_mean
from edgereg.lab.intervals import DEFAULT_CONFIDENCE
from edgereg.lab.readout import LabReadout
from edgereg.preprocess import PreprocessConfig, prepare_frames, preprocess_batch
from edgereg.preprocess.decode import default_threads
from edgereg.preprocess.frames import read_frames
from edgereg.preprocess.geometry import CropBox

UNFAMILIAR = "unfamiliar"  # the flag of a reading whose novelty exceeds the card's threshold

GRAPH_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class Predictions:
    """Readings for a batch of images.

    Attributes:
        values: (B, T) float64 in physical units (coords in source pixels, angles in degrees).
        spread: (B, T) float64 standard deviation across TTA views (circular, in degrees, for
            angles), or None without TTA.
        names: the T target names.
        index: (B,) int64 position of each reading in the caller's input (predict_paths skips
            unreadable files, so positions may have gaps).
        lo, hi: (B, T) float64 conformal interval bounds at ``confidence``, in the units of
            ``values`` (angles wrapped to [0, 360), so lo > hi passes through 0), or None when the
            card has no intervals or intervals were not asked for.
        confidence: the level of ``lo``/``hi``, or None.
        raw: (B, T) float64 the network's readings before the card's calibration to standards, or
            None when no calibration was applied (then ``values`` are the network's readings).
        flags: B tuples of lab flags (``edgereg.lab.readout.LAB_FLAGS``), e.g. ``("below_lod",)``, then
            ``unfamiliar`` when the reading's novelty exceeds the card's threshold.
        novelty: (B,) float64 novelty score (the model's ``novelty`` output, mean over TTA views),
            or None for models without it (exported before it, or with --no-novelty).
    """

    values: np.ndarray
    spread: np.ndarray | None
    names: tuple[str, ...]
    index: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    confidence: float | None = None
    raw: np.ndarray | None = None
    flags: list[tuple[str, ...]] = field(default_factory=list)
    novelty: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def take(self, start: int, stop: int) -> Predictions:
        """Readings ``start:stop`` with every field cut alike, indexed from 0 (one request's share of
        a micro-batch)."""
        part = slice(start, stop)
        cut = lambda array: None if array is None else array[part]  # noqa: E731
        return replace(self, values=self.values[part], spread=cut(self.spread), lo=cut(self.lo), hi=cut(self.hi),
                       raw=cut(self.raw), flags=self.flags[part], index=np.arange(stop - start, dtype=np.int64),
                       novelty=cut(self.novelty))

    def rows(self) -> Iterator[dict[str, float]]:
        """One dict per image: ``{name: value, name + "_lo": lo, name + "_hi": hi, ...,
        name + "_spread": spread, ...}`` (bounds only with intervals, spreads only with TTA), the
        number columns of an output row (``edgereg.core.rows``)."""
        for i in range(len(self.values)):
            yield reading_values(self.names, self.values[i], None if self.spread is None else self.spread[i],
                                 None if self.lo is None else self.lo[i], None if self.hi is None else self.hi[i])


class Predictor:
    """Batched inference of an edgereg ONNX model with ONNX Runtime, configured by its card.

    Args:
        model_path: the .onnx file (fp32, int8 or fp16) with an edgereg card.
        providers: "auto" (TensorRT, then CUDA, then CPU, as available), "cpu", "cuda", "tensorrt",
            or a list of ONNX Runtime provider names.
        tta: "none", "d4", "rot:N", or None for the card's default.
        batch_size: images per ONNX Runtime call (all TTA views of a batch go in the same call).
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        card: a card to use instead of the embedded one (e.g. to override preprocessing).
        graph_optimization: "none", "basic", "extended" or "all".
        decode_threads: threads that decode files in predict_paths.
        preprocess_parallel: run the preprocessing kernel on numba's threads (True), on the calling
            thread (False), or by batch size (None). Folder scoring passes False: its decoder
            threads already keep every core busy.
        confidence: level of the conformal intervals (``lo``/``hi``) when the card has them (one
            of the levels stored at export: 0.5, 0.8, 0.9, 0.95, 0.99); None for no intervals.
        calibration: apply the card's calibration to standards (False: the network's readings,
            flagged ``uncalibrated`` when the card has lab information).
    """

    def __init__(self, model_path: str | os.PathLike, *, providers: str | Sequence[str] = "auto",
                 tta: str | None = None, batch_size: int = 32, threads: int | None = None,
                 card: ModelCard | None = None, graph_optimization: str = "all",
                 decode_threads: int | None = None, preprocess_parallel: bool | None = None,
                 confidence: float | None = DEFAULT_CONFIDENCE, calibration: bool = True) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: '{path}'; check the path (expected an .onnx file)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = ort.SessionOptions()
        if not isinstance(graph_optimization, str) or graph_optimization not in GRAPH_LEVELS:
            raise EdgeregError(f"graph_optimization is {graph_optimization!r}"
                               f"{did_you_mean(str(graph_optimization), GRAPH_LEVELS)}; expected one of "
                               f"{', '.join(GRAPH_LEVELS)}")
        options.graph_optimization_level = GRAPH_LEVELS[graph_optimization]
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        chosen = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises untyped errors for bad files
            message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"'{path}' is not a loadable ONNX model ({message}); "
                                 "export it again with `edgereg export`") from None
        self.card = card or card_from_metadata(self.session.get_modelmeta().custom_metadata_map,
                                               source=str(path))
        self.path = path
        self.config = PreprocessConfig.from_card(self.card)
        self.tta: TTASpec = parse_tta(self.card.tta if tta is None else tta)
        self.batch_size = int(batch_size)
        self.decode_threads = decode_threads or default_threads()
        self.preprocess_parallel = preprocess_parallel
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        # the novelty output is read only with the card's threshold (models before it have neither)
        self.novelty_threshold = novelty_threshold(self.card) if NOVELTY_NAME in outputs else None
        self._fetch = [self._output] + ([NOVELTY_NAME] if self.novelty_threshold is not None else [])
        self._check_io()
        if self.tta.mode == "d4" and self.config.input_size[0] != self.config.input_size[1]:
            from edgereg.errors import TTAError

            raise TTAError(f"D4 TTA needs a square model input, got {self.config.input_size}; "
                           "use --tta rot:N or none")
        self.lab = LabReadout(self.card, tta=str(self.tta), confidence=confidence, calibrate=calibration)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.card.targets)

    def _check_io(self) -> None:
        shape = self.session.get_inputs()[0].shape
        expected = (self.config.n_channels, *self.config.input_size)
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(f is not None and f != e for f, e in zip(fixed, expected)):
            raise ModelFileError(
                f"'{self.path}': model input is {shape} but the card says (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); the card does not belong to this model — re-export it"
            )

    def predict(self, images) -> Predictions:
        """Read values from decoded frames.

        Args:
            images: a list of (H, W, 3) uint8 BGR frames of any sizes, or (B, H, W, 3) uint8.

        Returns:
            Predictions for every frame, in order.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ShapeError(f"expected a list of frames or (B, H, W, 3), got one frame {images.shape}; "
                             "wrap it in a list: predict([frame])")
        frames, boxes = prepare_frames(images, self.config)
        return self.predict_prepared(frames, boxes)

    def predict_prepared(self, frames: np.ndarray, boxes: Sequence[CropBox] | None = None) -> Predictions:
        """Read values from frames already cropped and resized to the model input.

        Args:
            frames: (B, H, W, 3) uint8 BGR at ``card.input_size``.
            boxes: each frame's CropBox (needed to map coords to source pixels; None = identity).
        """
        n = len(frames)
        values, spread, novelty = self._empty_readings(n)
        for start in range(0, n, self.batch_size):
            chunk = frames[start:start + self.batch_size]
            tensor = preprocess_batch(chunk, self.config, self.tta,
                                      parallel=self.preprocess_parallel)  # (b*V, C, H, W)
            self._infer_views(tensor, values, spread, novelty, start)
        return self._finish(values, spread, boxes, novelty)

    def predict_tensor(self, tensor: np.ndarray, boxes: Sequence[CropBox] | None = None) -> Predictions:
        """Read values from model input that ``preprocess_batch(frames, self.config, self.tta)`` made.

        For pipelines that preprocess in another process (``edgereg.cluster`` runs the kernel in
        its decode tasks and ONNX Runtime in separate actors).

        Args:
            tensor: (B * V, C, H, W) float32, the V = ``self.tta.n`` views of image b in rows
                b*V .. b*V + V - 1.
            boxes: each image's CropBox (needed to map coords to source pixels; None = identity).
        """
        views = self.tta.n
        if tensor.ndim != 4 or len(tensor) % views:
            raise ShapeError(f"expected (B * {views}, C, H, W) float32 for TTA {self.tta}, got {tensor.shape}")
        n = len(tensor) // views
        values, spread, novelty = self._empty_readings(n)
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            self._infer_views(tensor[start * views:stop * views], values, spread, novelty, start)
        return self._finish(values, spread, boxes, novelty)

    def _empty_readings(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(values (n, T), spread (n, T) or None without TTA, novelty (n,) or None), float64, to be filled."""
        n_targets = len(self.card.targets)
        return (np.empty((n, n_targets)), (np.empty((n, n_targets)) if self.tta.n > 1 else None),
                np.empty(n) if len(self._fetch) > 1 else None)

    def _infer_views(self, tensor: np.ndarray, values: np.ndarray, spread: np.ndarray | None,
                     novelty: np.ndarray | None, start: int) -> None:
        """Run one batch (b*V, C, H, W) and write its TTA-reduced readings (and novelty) into rows start..start+b."""
        n_targets = len(self.card.targets)
        count = len(tensor) // self.tta.n
        outputs = self.session.run(self._fetch, {self._input: tensor})
        raw = outputs[0]
        if novelty is not None:
            scores = outputs[1].reshape(count, self.tta.n)  # (b*V, 1) -> (b, V)
            novelty[start:start + count] = scores[:, 0] if self.tta.n == 1 else scores.mean(axis=1)
        if raw.ndim != 2 or raw.shape != (len(tensor), n_targets):
            raise ModelFileError(f"'{self.path}': model output is {raw.shape}, expected "
                                 f"({len(tensor)}, {n_targets}) for targets {self.card.targets}")
        views = raw.astype(np.float64).reshape(count, self.tta.n, n_targets)  # (b*V,T) -> (b,V,T)
        reduced, spread_chunk = self.card.target_kind.reduce_views(views, self.tta)
        values[start:start + count] = reduced
        if spread is not None:
            spread[start:start + count] = spread_chunk

    def _finish(self, values: np.ndarray, spread: np.ndarray | None,
                boxes: Sequence[CropBox] | None, novelty: np.ndarray | None = None) -> Predictions:
        """Coords to source pixels, then the lab post-processing (calibration, intervals, flags), then
        ``unfamiliar`` for readings whose novelty exceeds the card's threshold."""
        values, spread, scale = self.card.target_kind.to_source(values, spread, boxes, self.config.input_size)
        lab = self.lab.process(values, spread, scale)
        flags = lab.flags
        if novelty is not None:
            unfamiliar = ~(novelty <= self.novelty_threshold)  # NaN scores are unfamiliar too
            flags = [(*f, UNFAMILIAR) if u else f for f, u in zip(flags, unfamiliar.tolist())]
        return Predictions(lab.values, spread, self.names, np.arange(len(values), dtype=np.int64), lo=lab.lo,
                           hi=lab.hi, confidence=self.lab.level if lab.lo is not None else None, raw=lab.raw,
                           flags=flags, novelty=novelty)

    def predict_paths(self, paths: Sequence[str | os.PathLike]) -> tuple[Predictions, list[tuple[int, str, str]]]:
        """Decode files in worker threads and read values from those that decode.

        Returns:
            (Predictions for the readable files, with ``index`` their positions in ``paths``;
            errors as ``[(index, path, reason), ...]`` for the others).
        """
        good, boxes, index, errors = [], [], [], []
        for i, loaded in read_frames(list(paths), self.config, threads=self.decode_threads):
            if isinstance(loaded, Exception):
                errors.append((i, str(paths[i]), str(loaded)))
                continue
            frame, box = loaded
            good.append(frame)
            boxes.append(box)
            index.append(i)
        height, width = self.config.input_size
        frames = np.stack(good) if good else np.empty((0, height, width, 3), dtype=np.uint8)
        result = self.predict_prepared(frames, boxes)
        return replace(result, index=np.asarray(index, dtype=np.int64)), errors
