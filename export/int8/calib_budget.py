"""A time plan for the histogram calibrators: how many images and bins fit, or skip.

ONNX Runtime's entropy calibrator (``HistogramCollector.get_entropy_threshold``) searches the
clipping threshold in pure Python: for a histogram of B bins it tries about B/2 thresholds, each
summing O(B) bins, so one tensor costs O(B^2) (measured here: 0.01 s at 256 bins, 0.04 s at 512,
0.28 s at 2048). B is not the ``num_bins`` asked for: the collector widens a histogram at its
original bin width whenever a later batch reaches further than the first one, so a tensor whose
first batch is quiet and whose later batches are not ends with ``num_bins * later / first`` bins
(tens of thousands; minutes per tensor). That is how ``export --int8`` once ran for over 15
minutes on a 74k-parameter model.

Three things bound it. :func:`merge_bounded` keeps a histogram growing between batches within
``COLLECT_BINS`` (ONNX Runtime's own merge can even fail: too many bins for float32 to space).
:func:`coarsen_histogram` merges neighbouring bins of a collected histogram (symmetric around zero,
as the entropy collector keeps it) down to at most the planned bin count (``ENTROPY_BINS`` when the
budget allows) before the threshold search, so the search costs ``tensors x cost(bins)`` whatever
the activations look like. A histogram that grew less than 4-fold (the common case) reaches the
search as ONNX Runtime collected it.
:func:`plan_calibrator` decides, from costs measured on the first calibration batch (the pilot),
how many calibration images and how many bins fit in the seconds left, and skips the calibrator
when even the smallest plan does not fit. Pure functions; the measuring is done in
``edgereg.export.int8.quantize.calibrate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QUANTIZED_BINS = 128  # the entropy search's int8 levels (num_quantized_bins)
HISTOGRAM_BINS = 512  # bins of the entropy collector's first histogram (it widens them at that bin width)
COLLECT_BINS = 8192  # histogram bins the entropy collector may grow to between batches (merge_bounded)
ENTROPY_BINS = 2048  # histogram bins the entropy search sees at most, when the budget allows (TensorRT's)
PREFERRED_BINS = 512  # bins are cut down to this before images are
MIN_ENTROPY_BINS = 256  # fewer leaves the search too few candidates to be worth its time
PREFERRED_IMAGES = 64  # images are cut down to this before bins go below PREFERRED_BINS
MIN_IMAGES = 16  # fewer calibration images than this: the calibrator is skipped instead


@dataclass(frozen=True)
class CalibrationPlan:
    """What one calibrator may do within its share of the ``--int8-budget``.

    Attributes:
        method: "minmax", "entropy" or "percentile".
        images: calibration images it collects (0 when skipped); available: images offered.
        num_bins: histogram bins the entropy threshold search sees at most; None for the others.
        predicted_s: predicted seconds for the rest of the calibration after the pilot (collection +
            threshold search); an upper bound: it prices every tensor's search at ``num_bins`` bins.
        seconds: measured seconds of the whole calibration (None until measured).
        skipped: the calibrator did not run (its ranges are not used).
        note: why images or bins were cut or the calibrator skipped; "" when it ran in full.
    """

    method: str
    images: int
    available: int
    num_bins: int | None = None
    predicted_s: float = 0.0
    seconds: float | None = None
    skipped: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {"images": self.images, "available": self.available, "num_bins": self.num_bins,
                "predicted_s": round(self.predicted_s, 2),
                "seconds": None if self.seconds is None else round(self.seconds, 2), "skipped": self.skipped,
                "note": self.note}


def entropy_search_work(bins: int, quantized_bins: int = QUANTIZED_BINS) -> float:
    """Relative cost of ONNX Runtime's entropy threshold search on one histogram of ``bins`` bins.

    About ``bins/2 - quantized_bins/2 + 1`` candidate thresholds, each with a fixed Python overhead
    (two loops over the quantized bins, ~190 us here) plus sums over all ``bins`` (~50 ns a bin):
    ``candidates * (bins + 4000)``. Fitted on 256..2048 bins within 5%.
    """
    candidates = max(bins // 2 - quantized_bins // 2 + 1, 1)
    return float(candidates) * (bins + 4000.0)


def plan_calibrator(method: str, *, available: int, collected: int, seconds_per_image: float,
                    threshold_seconds: Callable[[int], float] | None, seconds_left: float | None,
                    batch: int = 1, bins: int = ENTROPY_BINS, preferred_bins: int = PREFERRED_BINS,
                    min_bins: int = MIN_ENTROPY_BINS, preferred_images: int = PREFERRED_IMAGES,
                    min_images: int = MIN_IMAGES) -> CalibrationPlan:
    """The most images and bins a histogram calibrator can use in ``seconds_left``, or a skip.

    In order: every image with bins halved from ``bins`` down to ``preferred_bins``; then fewer
    images (at least ``preferred_images``) with bins halved on down to ``min_bins``; then at least
    ``min_images`` images at ``min_bins``. When even that does not fit, the calibrator is skipped.

    Args:
        method: the calibrator's name (for the plan and its note).
        available: calibration images offered.
        collected: images already collected (the pilot batch); they cost nothing more.
        seconds_per_image: measured collection seconds per image (model run + histogram update).
        threshold_seconds: predicted seconds of the threshold search over all tensors at a given
            bin count (the entropy calibrator's), or None when that search is cheap (percentile).
        seconds_left: seconds this calibrator may still take; None = no budget (full plan).
        batch: images are collected in batches of this size: a subsample is a whole number of them.
        bins: the most histogram bins for the threshold search.
        preferred_bins, min_bins, preferred_images, min_images: the limits described above.

    Returns:
        CalibrationPlan (``skipped`` when nothing fits), with ``predicted_s`` for the remaining work.
    """
    bin_choices = [None] if threshold_seconds is None else _halvings(bins, min_bins)
    full_bins = [b for b in bin_choices if b is None or b >= min(preferred_bins, bins)]
    fewer_bins = [b for b in bin_choices if b is None or b <= max(preferred_bins, min_bins)]

    def cost(images: int, num_bins: int | None) -> float:
        search = 0.0 if num_bins is None else threshold_seconds(num_bins)
        return max(images - collected, 0) * seconds_per_image + search

    def plan(images: int, num_bins: int | None, note: str = "") -> CalibrationPlan:
        return CalibrationPlan(method=method, images=images, available=available, num_bins=num_bins,
                               predicted_s=cost(images, num_bins), note=note)

    if seconds_left is None or cost(available, bin_choices[0]) <= seconds_left:
        return plan(available, bin_choices[0])
    floor_images = min(available, max(collected, min_images))
    stages = ((available, full_bins), (min(available, preferred_images), fewer_bins), (floor_images, bin_choices[-1:]))
    for wanted, choices in stages:
        for num_bins in choices:
            fit = _images_that_fit(seconds_left - cost(collected, num_bins), seconds_per_image)
            images = min(available, collected + (fit // batch) * batch if fit >= 0 else collected - 1)
            if images >= max(wanted, collected, 1):
                return plan(images, num_bins, _cut_note(available, images, bins, num_bins, seconds_left,
                                                        cost(available, bin_choices[0])))
    least = cost(floor_images, bin_choices[-1])
    bins_part = f" at {bin_choices[-1]} bins" if bin_choices[-1] is not None else ""
    return CalibrationPlan(method=method, images=0, available=available, num_bins=bin_choices[-1],
                           predicted_s=least, skipped=True,
                           note=f"skipped: predicted {least:.1f} s for {floor_images} images{bins_part}, "
                                f"{max(seconds_left, 0.0):.1f} s left of the budget")


def _halvings(bins: int, min_bins: int) -> list[int]:
    """[bins, bins/2, ...] down to min_bins (bins itself when it is already below)."""
    choices = [bins]
    while choices[-1] // 2 >= min_bins:
        choices.append(choices[-1] // 2)
    return choices


def _images_that_fit(seconds: float, seconds_per_image: float) -> int:
    if seconds < 0:
        return -1
    if seconds_per_image <= 0:
        return 1 << 30
    return int(seconds // seconds_per_image)


def _cut_note(available: int, images: int, bins: int | None, num_bins: int | None, seconds_left: float,
              full_cost: float) -> str:
    cuts = []
    if images < available:
        cuts.append(f"{images} of {available} images")
    if num_bins is not None and bins is not None and num_bins < bins:
        cuts.append(f"{num_bins} histogram bins instead of {bins}")
    return (f"subsampled to {' and '.join(cuts)}: the full calibration was predicted at {full_cost:.1f} s, "
            f"{seconds_left:.1f} s left of the budget")


def coarsen_histogram(histogram: tuple, max_bins: int) -> tuple:
    """An entropy collector's histogram with neighbouring bins merged down to at most ``max_bins``.

    Args:
        histogram: ``(hist (B,) int, edges (B+1,) float32, min, max, threshold)`` as ONNX Runtime's
            ``HistogramCollector.collect_value`` keeps it: B equal bins over [-threshold, threshold].
        max_bins: the most bins wanted (>= 2).

    Returns:
        The same 5-tuple with ``ceil(B / factor)`` bins (factor = ceil(B / max_bins)); zero bins are
        added at both ends first so that the zero bin stays in the middle, which widens the range by
        less than one coarse bin each side. Counts are preserved; min and max are unchanged. The
        input is returned as it is when it already has at most ``max_bins`` bins.
    """
    hist, edges, low, high, threshold = histogram
    count = len(hist)
    if count <= max_bins:
        return histogram
    factor = -(-count // max_bins)
    pad = (-count) % (2 * factor)  # a multiple of 2 * factor keeps an even bin count centred on zero
    left, right = pad // 2, pad - pad // 2
    width = (float(edges[-1]) - float(edges[0])) / count
    padded = np.concatenate([np.zeros(left, hist.dtype), hist, np.zeros(right, hist.dtype)])
    coarse = padded.reshape(-1, factor).sum(axis=1)
    start, stop = float(edges[0]) - left * width, float(edges[-1]) + right * width
    new_edges = np.linspace(start, stop, len(coarse) + 1).astype(edges.dtype)
    new_threshold = np.array(max(abs(start), abs(stop)), dtype=np.asarray(threshold).dtype)
    return coarse, new_edges, low, high, new_threshold


def merge_bounded(old_histogram: tuple, data: np.ndarray, new_min, new_max, new_threshold, *,
                  max_bins: int) -> tuple | None:
    """ONNX Runtime's ``HistogramCollector.merge_histogram``, bounded to ``max_bins`` bins.

    ONNX Runtime widens a histogram at its original bin width when ``data`` reaches beyond it:
    ``bins * new_threshold / threshold`` bins, millions for a quiet first batch (or more than
    float32 can space, which raises). When that would exceed ``max_bins``, the old counts are moved
    onto ``max_bins`` equal bins over [-new_threshold, new_threshold] (each old bin into the bin
    holding its centre) and ``data`` is added on the same grid.

    Args:
        old_histogram: ``(hist (B,), edges (B+1,), min, max, threshold)``.
        data: the new batch's values, flattened.
        new_min, new_max, new_threshold: of ``data`` (threshold = max |value|).
        max_bins: the most bins (even).

    Returns:
        The merged 5-tuple, or None where ONNX Runtime's own merge stays within ``max_bins``.
    """
    hist, edges, low, high, threshold = old_histogram
    if new_threshold <= threshold or threshold == 0:
        return None
    width = 2 * float(threshold) / len(hist)
    if len(hist) + 2 * (int((float(new_threshold) - float(threshold)) // width) + 1) <= max_bins:
        return None
    dtype = edges.dtype
    new_edges = np.linspace(-float(new_threshold), float(new_threshold), max_bins + 1).astype(dtype)
    centres = (edges[:-1].astype(np.float64) + edges[1:]) / 2
    index = np.clip(np.searchsorted(new_edges, centres, side="right") - 1, 0, max_bins - 1)
    moved = np.bincount(index, weights=hist, minlength=max_bins).astype(hist.dtype)
    fresh, _ = np.histogram(data, max_bins, range=(-float(new_threshold), float(new_threshold)))
    return (moved + fresh, new_edges, min(low, new_min), max(high, new_max),
            np.array(new_threshold, dtype=np.asarray(new_threshold).dtype))
