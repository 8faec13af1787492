"""The time budget of one ``train`` call: the wall clock, its stages, and the shares of each part."""

from __future__ import annotations

import math
import time


class BudgetClock:
    """Wall-clock accounting of one ``train`` call against its time budget (None: no budget)."""

    def __init__(self, budget_s: float | None, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self.budget = budget_s
        self.stages: dict[str, float] = {}
        self._mark = self.started

    @property
    def deadline(self) -> float | None:
        return None if self.budget is None else self.started + self.budget

    def left(self) -> float:
        return math.inf if self.budget is None else self.deadline - time.perf_counter()

    def mark(self, stage: str) -> None:
        """Charge the time since the previous mark to ``stage``."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._mark
        self._mark = now

    def used(self) -> float:
        return time.perf_counter() - self.started

    def record(self, stopped: str) -> dict:
        used = self.used()
        return {"budget_s": self.budget, "used_s": round(used, 1),
                "used_share": None if not self.budget else round(used / self.budget, 3),
                "stages_s": {k: round(v, 1) for k, v in self.stages.items()}, "stopped": stopped}

    def line(self, stopped: str) -> str:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.stages.items())
        if not self.budget:
            return f"time: {self.used():.0f} s ({stages}); no --time-budget; stopped: {stopped}"
        return (f"time budget: used {self.used():.0f} s of {self.budget:.0f} s ({self.used() / self.budget:.0%}): "
                f"{stages}; stopped: {stopped}")


FIT_SHARE_GUESS = 0.5  # share of the budget the final fit gets, assumed when choosing the input size
REFIT_SHARE = 0.45  # with a refit, the first fit gets this share of the time left, the refit the rest
FOLDS_SHARE = 0.3  # under k-fold, the fold fits together get this share of the time left, the refit the rest


def eval_reserve(budget: float | None) -> float:
    """Seconds kept back at the end of a budget for the report (plot, metrics.json, run.json) and
    the baselines; the scoring passes themselves are counted by the fit at their measured speed
    (``closing_rows``)."""
    return 0.0 if budget is None else min(30.0, 2.0 + 0.02 * budget)

