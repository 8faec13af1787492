"""Training losses. Each compares a Regressor's raw output with its encoded targets.

``loss(raw (B, n_outputs), target (B, n_outputs)) -> scalar tensor``. The loss applies the kind's
link first, so every loss works in the target's own space (see
:mod:`edgereg.training.targets.regressor` for the encodings):

* scalar: ``sigmoid(raw)`` vs the range-scaled target in [0, 1]. This is the MSE on the
  standardized target up to the constant factor ``(std / (hi - lo))**2`` (same minimum, same Adam
  steps), and it is the [0, 1] space that seed 003's log-MSE term needs;
* distribution: ``softmax(raw)`` for the pointwise losses; ``log_softmax(raw)`` for soft-label
  cross-entropy and KL (seed 002: train with cross-entropy, report RMSE);
* vector (standardized), coords ([0, 1]) and angle ((sin, cos) pairs): the raw output as is;
* count: ``poisson`` reads the raw output as a log-rate; the pointwise losses compare ``exp(raw)``.

Which losses fit a kind, and its default, are attributes of ``kind_training(kind)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgereg.errors import EdgeregError, did_you_mean
from edgereg.training.targets.kind_training import KIND_TRAINING, kind_training

LOSSES = ("mse", "huber", "mse_logmse", "soft_ce", "kl", "poisson")


def to_target_space(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """The raw output mapped into the encoded target's space: (B, n_outputs) -> (B, n_outputs)."""
    return kind_training(kind).to_target_space(raw)


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


class PoissonNLLLoss(nn.Module):
    """Poisson negative log-likelihood of counts given a log-rate: ``exp(raw) - t * raw``, mean.

    The constant ``log(t!)`` is left out (it does not move the minimum); the rate ``exp(raw)`` is the
    expected count the model outputs.
    """

    def forward(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.poisson_nll_loss(raw, target, log_input=True, full=False)


def default_loss(kind: str) -> str:
    """The loss used for ``kind`` when none is asked for (its ``kind_training(kind).loss``)."""
    return kind_training(kind).loss


def loss_kinds(name: str) -> tuple[str, ...]:
    """The kinds the loss ``name`` fits."""
    return tuple(kind for kind, training in KIND_TRAINING.items() if name in training.losses)


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
    training = kind_training(kind)
    name = name or training.loss
    if name not in LOSSES:
        raise EdgeregError(
            f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; expected one of {', '.join(LOSSES)}"
        )
    if name not in training.losses:
        raise EdgeregError(
            f"loss {name!r} does not fit kind {kind!r} (it needs {' or '.join(loss_kinds(name))} targets); "
            f"use one of {', '.join(training.losses)}"
        )
    if name == "mse":
        return MSELoss(kind)
    if name == "huber":
        if delta is None:
            delta = 0.1 if training.unit_space else 1.0
        if delta <= 0:
            raise EdgeregError(f"Huber delta must be > 0, got {delta}")
        return HuberLoss(kind, delta=float(delta))
    if name == "mse_logmse":
        if alpha < 0 or eps <= 0:
            raise EdgeregError(f"mse_logmse needs alpha >= 0 and eps > 0, got alpha={alpha}, eps={eps}")
        return MSELogMSELoss(kind, alpha=float(alpha), eps=float(eps))
    if name == "poisson":
        return PoissonNLLLoss()
    return SoftCrossEntropyLoss() if name == "soft_ce" else KLDivergenceLoss()
