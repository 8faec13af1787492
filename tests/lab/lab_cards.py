"""The lab card of tests/lab: calibration, validation limits and intervals with known numbers.

* calibration: reference = 10 + 5 x, standards spanning 2..18 (so x outside -1.6..1.6 extrapolates);
* validation: LoB 3, LoD 4, LoQ 6, working range 6..16;
* intervals: difficulty 1 + 0.5 x on -2..2 with floor 0.1, median 1, wide factor 1.5 (wide for x > 1),
  quantiles 2 below and 1.5 above at 90 % (3 and 3 at the other levels).
"""

from __future__ import annotations

from edgereg.lab.intervals import LEVELS, Difficulty, IntervalSet, TargetIntervals, format_level

T_90 = 1.8946  # Student t, 7 dof, 95th percentile (two-sided 90 %)


def lab_sections(*, calibration_id: str = "cal-1") -> dict:
    quantiles = {level: ((2.0, 1.5) if level == 0.9 else (3.0, 3.0),) for level in LEVELS}
    target = TargetIntervals(Difficulty("value", (1.0, 0.5, 0.0, 0.0), (-2.0, 2.0), 0.1), (), quantiles, 1.0)
    entry = IntervalSet("none", (target,), "fp32", "val", "test", 100, 100)
    from edgereg.export.uncertainty.conformal import ConformalOptions, intervals_section

    intervals = intervals_section([entry], ("conc",), options=ConformalOptions(wide_factor=1.5), note="test")
    calibration = {"id": "cal-1", "date": "2026-11-30T10:00:00Z", "tta": "none", "targets": {"conc": {
        "fit": "linear", "coef": [10.0, 5.0], "cov": [[0.01, 0.0], [0.0, 0.0025]], "residual_sd": 0.1, "dof": 7,
        "t": {format_level(level): (T_90 if level == 0.9 else 2.5) for level in LEVELS},
        "reference_range": [2.0, 18.0]}}}
    validation = {"id": "val-1", "date": "2026-11-30T11:00:00Z", "calibration_id": calibration_id,
                  "targets": {"conc": {"lob": 3.0, "lod": 4.0, "loq": 6.0, "range": [6.0, 16.0]}}}
    return {"intervals": intervals, "calibration": calibration, "validation": validation}


