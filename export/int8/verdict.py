"""The int8 gate's verdict: int8 metrics held to fp32 metrics, overall and per target.

The int8 model passes when its RMSE, overall and for every target, is at most ``(1 + max_drop)``
times the fp32 model's (both from ``edgereg.export.int8.gate.evaluate`` on the same split). Pure
functions on the metric dicts: ``edgereg.export.int8.gate`` and ``edgereg.export.int8.search`` both judge
with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgereg.errors import EdgeregError

DEFAULT_MAX_DROP = 0.10


@dataclass(frozen=True)
class GateResult:
    """fp32 vs int8 on the gate split.

    Attributes:
        passed: every RMSE (overall and per target) of int8 is within ``(1 + max_drop)`` of fp32.
        max_drop: allowed relative RMSE increase (0.10 = 10%).
        split: the split the gate compared on; n_images: its size.
        fp32_rmse, int8_rmse: overall RMSE in the user's units.
        worst: the name ("overall" or a target) with the largest relative increase, and
            worst_drop: that increase (int8 / fp32 - 1; inf when fp32 is exact and int8 is not).
    """

    passed: bool
    max_drop: float
    split: str
    n_images: int
    fp32_rmse: float
    int8_rmse: float
    worst: str
    worst_drop: float

    def to_dict(self) -> dict:
        return {"passed": self.passed, "max_drop": self.max_drop, "split": self.split, "n_images": self.n_images,
                "fp32_rmse": self.fp32_rmse, "int8_rmse": self.int8_rmse, "worst": self.worst,
                "worst_drop": self.worst_drop}

    def summary(self) -> str:
        """One line: what was compared, the numbers, and the verdict."""
        verdict = "passed" if self.passed else "FAILED"
        return (f"int8 gate {verdict} on {self.split} ({self.n_images} images): RMSE {self.int8_rmse:.4g} vs fp32 "
                f"{self.fp32_rmse:.4g}; worst {self.worst} {self.worst_drop:+.1%} (allowed {self.max_drop:+.1%})")


def _rmse_pairs(fp32: dict, int8: dict) -> list[tuple[str, float, float]]:
    """(name, fp32 RMSE, int8 RMSE): overall first, then each target."""
    return [("overall", fp32["rmse"], int8["rmse"]),
            *((name, fp32["targets"][name]["rmse"], int8["targets"][name]["rmse"]) for name in fp32["targets"])]


def check_gate(fp32: dict, int8: dict, *, max_drop: float = DEFAULT_MAX_DROP) -> GateResult:
    """Hold int8 metrics to fp32 metrics (both from :func:`evaluate` on the same split).

    Raises:
        EdgeregError: a negative max_drop.
    """
    validate_max_drop(max_drop)
    pairs = _rmse_pairs(fp32, int8)
    drops = [(name, _relative_increase(reference, value)) for name, reference, value in pairs]
    worst, worst_drop = max(drops, key=lambda item: item[1])  # the first of equals: "overall"
    return GateResult(passed=bool(worst_drop <= max_drop + 1e-12), max_drop=float(max_drop), split=fp32["split"],
                      n_images=int(fp32["n"]), fp32_rmse=float(fp32["rmse"]), int8_rmse=float(int8["rmse"]),
                      worst=worst, worst_drop=float(worst_drop))


def rmse_changes(fp32: dict, int8: dict) -> dict[str, float | None]:
    """Relative RMSE change int8 / fp32 - 1, overall and per target (None where fp32 is exact)."""
    pairs = _rmse_pairs(fp32, int8)
    return {name: (value / reference - 1.0 if reference > 0 else None) for name, reference, value in pairs}


def validate_max_drop(max_drop: float) -> None:
    """Raise EdgeregError unless ``max_drop`` is a finite number >= 0."""
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop < float("inf")):
        raise EdgeregError(f"--max-drop must be a number >= 0 (0.10 allows int8 RMSE 10% above fp32), got {max_drop}")


def _relative_increase(reference: float, value: float) -> float:
    if reference > 0:
        return value / reference - 1.0
    return 0.0 if value <= 0 else float("inf")
