"""What the runtime does after the network for lab-grade readings: calibration, intervals, flags.

:class:`LabReadout` is built once from the card (and the TTA, confidence level and calibration
choice in use) and turns each batch of network readings into calibrated values, conformal bounds
and the lab flags below, in one pass per batch (``edgereg.lab._kernel``, a few microseconds per
reading, no numba).

Flags (beside ``out_of_range``, ``tta_disagreement`` and ``not_finite`` of folder scoring), each
raised when any target of the reading qualifies, in this order:

* ``below_lob``, ``below_lod``, ``below_loq``: the (calibrated) value is below the limit of blank,
  of detection or of quantitation in ``card.validation`` (``edgereg validate``). They nest: a value
  below the LoB is also below the LoD and the LoQ when the limits are ordered, and gets every flag
  that applies, so filtering on ``below_loq`` finds every value that cannot be quantified.
* ``below_range`` / ``above_range``: outside the validated working range.
* ``extrapolated``: a calibrated value outside the reference values of the standards the
  calibration was fitted on.
* ``uncalibrated``: the model is used for lab work (its card holds a calibration or validation
  limits) but this reading is not traceable to standards: its target has no calibration, or the
  calibration was switched off (``--no-calibration``).
* ``interval_wide``: the reading's difficulty is above ``wide_factor`` (card, default 2) times the
  median difficulty of the conformal calibration readings: its interval is that much wider than a
  typical one.

Limits are only applied to the readings they were measured on: validation limits recorded for
another calibration than the card's (or applied to uncalibrated readings) are ignored, and
:attr:`LabReadout.notes` says so.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.errors import EdgeregError
from edgereg.lab._kernel import build_tables, postprocess
from edgereg.lab.calibration import Calibration, parse_calibration
from edgereg.lab.intervals import DEFAULT_CONFIDENCE, IntervalKernel, parse_intervals, unsupported_reason
from edgereg.lab.limits import Limits, Validation, parse_validation

LAB_FLAGS = ("below_lob", "below_lod", "below_loq", "below_range", "above_range", "extrapolated",
             "uncalibrated", "interval_wide")


class LabResult(NamedTuple):
    """One batch after :meth:`LabReadout.process` (a NamedTuple: cheap to make at batch 1).

    Attributes:
        values: (B, T) float64 calibrated readings (the network's where a target is uncalibrated).
        raw: (B, T) float64 network readings, or None when no calibration was applied.
        lo, hi: (B, T) float64 interval bounds in the units of ``values``, or None.
        flags: B tuples of lab flag names (see LAB_FLAGS).
    """

    values: np.ndarray
    raw: np.ndarray | None
    lo: np.ndarray | None
    hi: np.ndarray | None
    flags: list[tuple[str, ...]]


class LabReadout:
    """Calibration, intervals and lab flags for one model, TTA, confidence and calibration choice.

    Args:
        card: the model card.
        tta: the TTA in use, as text ("none", "d4", "rot:N").
        confidence: the interval level (one the card stores), or None for no intervals.
        calibrate: apply the card's calibration (False: report the network's readings).

    Attributes:
        level: the interval level in use, or None (no intervals in the card, or confidence None).
        calibration: the applied Calibration, or None.
        notes: sentences for the user about what does not apply as one might expect.
    """

    def __init__(self, card: ModelCard, *, tta: str = "none", confidence: float | None = 0.9,
                 calibrate: bool = True) -> None:
        self.card = card
        self.names = tuple(card.targets)
        self.notes: list[str] = []
        spec = parse_intervals(card.intervals, card.targets)
        if spec is None and confidence is not None and (card.intervals or {}).get("none"):
            self.notes.append(f"this model has no prediction intervals: {card.intervals['none']}")
        self.kernel: IntervalKernel | None = None
        self.level: float | None = None
        if spec is not None and confidence is not None:
            self.level = spec.level(confidence)
            entry, matches = spec.for_tta(tta)
            if not matches:
                self.notes.append(f"intervals were calibrated with TTA {entry.tta}, this run uses {tta}: "
                                  f"their coverage is not guaranteed; use the card's TTA, or train with --tta {tta} "
                                  "and export again")
            reason = unsupported_reason(entry, self.level)
            if reason is not None:  # a level asked for is refused; the default one is left out with a note
                supported = [f"{v:g}" for v in spec.levels if unsupported_reason(entry, v) is None]
                advice = (f"choose {' or '.join(supported) if supported else '--no-intervals'}, or re-export with "
                          "more held-out images")
                if abs(self.level - DEFAULT_CONFIDENCE) > 1e-9:
                    raise EdgeregError(f"--confidence {confidence:g}: {reason}; {advice}")
                self.notes.append(f"no intervals written: {reason}; {advice}")
                self.level = None
            else:
                self.kernel = IntervalKernel(entry, card.kind, self.level, wide_factor=spec.wide_factor)
        stored = parse_calibration(card.calibration, card.targets)
        self.calibration: Calibration | None = stored if calibrate else None
        if self.calibration is not None and self.calibration.tta != tta:
            self.notes.append(f"the calibration was fitted on readings with TTA {self.calibration.tta}, this run uses "
                              f"{tta}: recalibrate with --tta {tta} for traceable readings")
        self.lab_use = stored is not None or bool(card.validation)
        self.uncalibrated = np.array([self.lab_use and (self.calibration is None
                                                        or name not in self.calibration.targets)
                                      for name in self.names])  # (T,)
        validation = parse_validation(card.validation, card.targets)
        self.validation = validation
        if validation is not None:
            current = self.calibration.id if self.calibration is not None else None
            if validation.calibration_id != current:
                self.notes.append(
                    f"validation limits were measured with calibration {validation.calibration_id or 'none'}, "
                    f"these readings use {current or 'none'}: limits not applied; run `edgereg validate` again")
                self.validation = None
        self._limits = self.limit_arrays()
        self._trivial = self.kernel is None and not self.lab_use
        self._tables = build_tables(self.names, card.kind, kernel=self.kernel, calibration=self.calibration,
                                    level=self.level, limits=self._limits, uncalibrated=self.uncalibrated)
        self._kind_code = card.target_kind.lab_code

    def limit_arrays(self) -> dict[str, np.ndarray] | None:
        """(T,) arrays of each limit (NaN where absent), or None without validation limits."""
        if self.validation is None:
            return None
        nan = float("nan")
        targets = self.validation.targets

        def column(get) -> np.ndarray:
            return np.array([get(targets[n]) if n in targets else nan for n in self.names], dtype=np.float64)

        return {"lob": column(lambda lim: nan if lim.lob is None else lim.lob),
                "lod": column(lambda lim: nan if lim.lod is None else lim.lod),
                "loq": column(lambda lim: nan if lim.loq is None else lim.loq),
                "range_lo": column(lambda lim: nan if lim.range is None else lim.range[0]),
                "range_hi": column(lambda lim: nan if lim.range is None else lim.range[1])}

    @property
    def has_intervals(self) -> bool:
        return self.kernel is not None

    def process(self, values: np.ndarray, spread: np.ndarray | None, scale: np.ndarray | None = None) -> LabResult:
        """Calibrate, bound and flag a batch (``edgereg.lab._kernel.postprocess``).

        Args:
            values: (B, T) float64 network readings after TTA reduction (coords in source pixels).
            spread: (B, T) float64 TTA spread, or None.
            scale: (B, T) float64 crop sides for coords (see ``edgereg.lab.intervals``), or None.
        """
        n = len(values)
        if self._trivial:
            return LabResult(values, None, None, None, [()] * n)
        bounded = self.kernel is not None
        out, masks = postprocess(values, spread, scale, self._tables, self._kind_code, bounded)  # out: (3, B, T)
        flags = [_FLAG_SETS[m] for m in masks]
        calibrated = self.calibration is not None
        return LabResult(out[0] if calibrated else values, values if calibrated else None,
                         out[1] if bounded else None, out[2] if bounded else None, flags)


_FLAG_SETS = [tuple(name for bit, name in enumerate(LAB_FLAGS) if mask >> bit & 1)
              for mask in range(1 << len(LAB_FLAGS))]


def interval_coverage(card: ModelCard, tta: str, values: np.ndarray, spread: np.ndarray | None,
                      scale: np.ndarray | None, truth: np.ndarray, *, calibrate: bool = True,
                      bins: int = 5) -> dict | None:
    """Observed coverage of the card's intervals on labelled readings, at every stored level.

    Args:
        card, tta: the model card and the TTA the readings were made with.
        values, spread, scale: (N, T) the network's readings (before calibration), TTA spread or
            None, crop sides for coords or None (see :meth:`LabReadout.process`).
        truth: (N, T) the labels, in the units of the calibrated readings.
        calibrate: apply the card's calibration (as the runtime does by default).
        bins: equal-width bins of the truth per target for the conditional coverage.

    Returns:
        {"levels": {"0.9": {"coverage", "targets": {name: coverage}, "mean_width": {name: w},
        "bins": {name: [{"lo", "hi", "n", "coverage"}]}}}, ...}, "tta"} or None without intervals.
    """
    from edgereg.lab.intervals import format_level, parse_intervals, rows_needed

    spec = parse_intervals(card.intervals, card.targets)
    if spec is None:
        return None
    result: dict = {"tta": tta, "levels": {}}
    truth = np.asarray(truth, dtype=np.float64)
    entry_for_tta, _ = spec.for_tta(tta)
    for level in spec.levels:
        reason = unsupported_reason(entry_for_tta, level)
        if reason is not None:  # infinite bounds: no coverage to report, say why
            result["levels"][format_level(level)] = {"unsupported": reason, "needs_rows": rows_needed(level)}
            continue
        readout = LabReadout(card, tta=tta, confidence=level, calibrate=calibrate)
        lab = readout.process(values, spread, scale)
        assert lab.lo is not None and lab.hi is not None  # the card stores intervals: the readout is bounded
        inside = card.target_kind.covered(truth, lab.lo, lab.hi)  # (N, T)
        width = card.target_kind.interval_width(lab.lo, lab.hi)  # (N, T)
        entry: dict[str, Any] = {"coverage": float(inside.mean()), "targets": {}, "mean_width": {}, "bins": {}}
        for j, name in enumerate(card.targets):
            entry["targets"][name] = float(inside[:, j].mean())
            finite = np.isfinite(width[:, j])
            entry["mean_width"][name] = float(width[finite, j].mean()) if finite.all() else float("inf")
            edges = np.linspace(truth[:, j].min(), truth[:, j].max(), bins + 1)
            which = np.clip(np.searchsorted(edges, truth[:, j], side="right") - 1, 0, bins - 1)
            entry["bins"][name] = [{"lo": float(edges[k]), "hi": float(edges[k + 1]), "n": int((which == k).sum()),
                                    "coverage": float(inside[which == k, j].mean()) if (which == k).any() else None}
                                   for k in range(bins)]
        result["levels"][format_level(level)] = entry
    return result


__all__ = ["LAB_FLAGS", "interval_coverage", "LabReadout", "LabResult", "Limits", "Validation", "parse_validation"]
