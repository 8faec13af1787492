"""``--check-standard VALUE``: watch live readings of a reference standard for drift.

A lab places a standard of known value in front of the camera on a schedule (e.g. a systemd timer
running ``edgereg infer MODEL --camera 0 --frames 60 --check-standard 150``). Each *stable* reading
(the smoothed value held within tolerance; see ``edgereg.live.loop``) is compared with the standard: the
check fails when the standard lies outside the smoothed value's interval, i.e. outside
``[smoothed - (value - lo), smoothed + (hi - value)]`` with the reading's own conformal bounds at
the run's ``--confidence``. Unstable or withheld readings are not judged.

At a 90% level one stable reading in ten may miss by chance; a drift is reported when the miss
persists for ``persist`` consecutive stable readings (default 3), then once per episode. The CLI
prints a warning line on stderr, adds the verdict to each JSON line (``"standard"``) and exits with
1 when any drift was seen, so a scheduled check can raise an alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgereg.errors import EdgeregError


@dataclass
class StandardCheck:
    """Compares stable readings with a standard's known value (one target, or the first).

    Args:
        value: the standard's reference value, in the model's (calibrated) units.
        target: the target the standard is for (None: the model's first target).
        persist: consecutive failing stable readings before a drift is declared.
    """

    value: float
    target: str | None = None
    persist: int = 3
    checked: int = 0
    failed_in_row: int = 0
    drifts: int = 0
    in_drift: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise EdgeregError(f"--check-standard must be a finite number, got {self.value}")
        if self.persist < 1:
            raise EdgeregError(f"the drift persistence must be >= 1, got {self.persist}")

    def update(self, reading) -> tuple[dict | None, str | None]:
        """Judge one ``edgereg.live.loop.Reading``.

        Returns:
            (the verdict for the JSON line, or None when the reading is not judged;
            a warning sentence when a drift episode starts, else None).

        Raises:
            EdgeregError: the model gives no intervals (the check needs them).
        """
        if not reading.ok or not reading.stable or reading.values is None:
            return None, None
        if reading.lo is None:
            raise EdgeregError("--check-standard needs prediction intervals: this model's card has none "
                               "(re-export it with `edgereg export`), or --confidence was turned off")
        name = self.target or next(iter(reading.values))
        value, smoothed = reading.values[name], reading.smoothed[name]
        low = smoothed - (value - reading.lo[name])
        high = smoothed + (reading.hi[name] - value)
        inside = bool(low <= self.value <= high)
        self.checked += 1
        self.failed_in_row = 0 if inside else self.failed_in_row + 1
        warning = None
        if self.failed_in_row >= self.persist and not self.in_drift:
            self.in_drift = True
            self.drifts += 1
            warning = (f"standard drift: {name} reads {smoothed:.4g} [{low:.4g}, {high:.4g}] for "
                       f"{self.failed_in_row} stable readings, which excludes the standard's {self.value:g} "
                       f"(frame {reading.frame}); recalibrate with `edgereg calibrate`")
        elif inside:
            self.in_drift = False
        verdict = {"target": name, "value": self.value, "reading": smoothed, "lo": low, "hi": high,
                   "deviation": smoothed - self.value, "inside": inside, "drift": self.in_drift}
        return verdict, warning

    def summary(self) -> str:
        if not self.checked:
            return f"standard {self.value:g}: no stable reading to check"
        state = f"{self.drifts} drift episode(s)" if self.drifts else "no drift"
        return f"standard {self.value:g}: {self.checked} stable readings checked, {state}"


__all__ = ["StandardCheck"]
