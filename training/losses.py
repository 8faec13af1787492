"""Training losses. Each compares a Regressor's raw output with its encoded targets.

``loss(raw (B, n_outputs), target (B, n_outputs)) -> scalar tensor``. The loss applies the kind's
link first, so every loss works in the target's own space (see
:mod:`edgereg.training.regressor` for the encodings):

* scalar: ``sigmoid(raw)`` vs the range-scaled target in [0, 1]. This is the MSE on the
  standardized target up to the constant factor ``(std / (hi - lo))**2`` (same minimum, same Adam
  steps), and it is the [0, 1] space that seed 003's log-MSE term needs;
* distribution: ``softmax(raw)`` for the pointwise losses; ``log_softmax(raw)`` for soft-label
  cross-entropy and KL (seed 002: train with cross-entropy, report RMSE);
* vector (standardized), coords ([0, 1]) and angle ((sin, cos) pairs): the raw output as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgereg.card import KINDS
from edgereg.errors import EdgeregError, did_you_mean
from edgereg.training.heads import check_kind

LOSSES = ("mse", "huber", "mse_logmse", "soft_ce", "kl")
DEFAULT_LOSS = {"scalar": "mse", "vector": "mse", "distribution": "soft_ce", "coords": "mse", "angle": "mse"}
LOSS_KINDS = {
    "mse": KINDS,
    "huber": KINDS,
    "mse_logmse": ("scalar", "distribution", "coords"),  # needs targets in [0, 1]
    "soft_ce": ("distribution",),
    "kl": ("distribution",),
}
UNIT_SPACE_KINDS = ("scalar", "distribution", "coords")  # targets in [0, 1]; the others ~ +-1


def to_target_space(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """The raw output mapped into the encoded target's space: (B, n_outputs) -> (B, n_outputs)."""
    if kind == "scalar":
        return torch.sigmoid(raw)
    if kind == "distribution":
        return torch.softmax(raw, dim=1)
    return raw


class MSELoss(nn.Module):
    """Mean squared error in the target space."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(to_target_space(raw, self.kind), target)


class HuberLoss(nn.Module):
    """Huber loss in the target space: quadratic within ``delta``, linear beyond (robust to outliers)."""

    def __init__(self, kind: str, *, delta: float):
        super().__init__()
        self.kind = kind
        self.delta = delta

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(to_target_space(raw, self.kind), target, delta=self.delta)


class MSELogMSELoss(nn.Module):
    """``MSE + alpha * MSE(log(p + eps), log(t + eps))`` on [0, 1] targets (seed 003).

    The log term stretches small values apart, so small errors near 0 still give gradient. The
    prediction enters the log clipped to [0, 1]: the sigmoid/softmax links and the soft-argmax head
    stay inside anyway; a linear coords head that strays outside is pulled back by the MSE term.
    """

    def __init__(self, kind: str, *, alpha: float, eps: float):
        super().__init__()
        self.kind = kind
        self.alpha = alpha
        self.eps = eps

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = to_target_space(raw, self.kind)
        log_term = F.mse_loss(torch.log(prediction.clamp(0.0, 1.0) + self.eps), torch.log(target + self.eps))
        return F.mse_loss(prediction, target) + self.alpha * log_term


class SoftCrossEntropyLoss(nn.Module):
    """Cross-entropy of the predicted bins against soft labels: ``-sum(t * log_softmax(raw))``, batch mean."""

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target * torch.log_softmax(raw, dim=1)).sum(dim=1).mean()


class KLDivergenceLoss(nn.Module):
    """``KL(target || softmax(raw))``, batch mean: the cross-entropy minus the targets' own entropy."""

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(torch.log_softmax(raw, dim=1), target, reduction="batchmean")


def default_loss(kind: str) -> str:
    """The loss used for ``kind`` when none is asked for (``DEFAULT_LOSS``, one per kind)."""
    check_kind(kind)
    return DEFAULT_LOSS[kind]


def make_loss(name: str | None, kind: str, *, alpha: float = 5.0, eps: float = 1e-6,
              delta: float | None = None) -> nn.Module:
    """The loss module ``name`` for targets of ``kind``.

    Args:
        name: one of LOSSES, or None for the kind's default.
        kind: the target kind.
        alpha: weight of the log-MSE term of ``mse_logmse`` (seed 003 suggests 5).
        eps: added inside the logs of ``mse_logmse``; 1e-6 rather than seed 003's 1e-9 keeps the
            gradient ``1 / (p + eps)`` finite in float32.
        delta: Huber threshold in target-space units; default 1.0 for standardized vectors and
            (sin, cos) pairs, 0.1 for the [0, 1] targets (scalar, distribution, coords).

    Returns:
        A module called as ``loss(raw (B, n_outputs), encoded_target (B, n_outputs))``.

    Raises:
        EdgeregError: unknown loss or kind, or a loss that does not fit the kind.
    """
    check_kind(kind)
    name = name or DEFAULT_LOSS[kind]
    if name not in LOSSES:
        raise EdgeregError(
            f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; expected one of {', '.join(LOSSES)}"
        )
    if kind not in LOSS_KINDS[name]:
        suited = [loss for loss in LOSSES if kind in LOSS_KINDS[loss]]
        raise EdgeregError(
            f"loss {name!r} does not fit kind {kind!r} (it needs {' or '.join(LOSS_KINDS[name])} targets); "
            f"use one of {', '.join(suited)}"
        )
    if name == "mse":
        return MSELoss(kind)
    if name == "huber":
        if delta is None:
            delta = 0.1 if kind in UNIT_SPACE_KINDS else 1.0
        if delta <= 0:
            raise EdgeregError(f"Huber delta must be > 0, got {delta}")
        return HuberLoss(kind, delta=float(delta))
    if name == "mse_logmse":
        if alpha < 0 or eps <= 0:
            raise EdgeregError(f"mse_logmse needs alpha >= 0 and eps > 0, got alpha={alpha}, eps={eps}")
        return MSELogMSELoss(kind, alpha=float(alpha), eps=float(eps))
    return SoftCrossEntropyLoss() if name == "soft_ce" else KLDivergenceLoss()
