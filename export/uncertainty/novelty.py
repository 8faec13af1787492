"""The novelty score at export: a shrinkage Mahalanobis distance of the penultimate features.

Fitted on the rows the shipped model was trained on (mean and a Ledoit-Wolf covariance of the
features ``edgereg.training.targets.regressor.embed`` returns: the head's input for the registry CNNs, the
standardized block features for a block readout), baked into the exported graph as a second output
``novelty (N, 1) float32`` (:class:`edgereg.training.targets.regressor.NoveltyHead`), and given a threshold
on held-out rows (rows nothing here was fitted on): the ``1 - rate`` conformal quantile of their
scores, so that for new photos exchangeable with those rows at most ``rate`` (default 5%) are
flagged ``unfamiliar`` on average. The card stores the threshold (``card.novelty``).

Ledoit-Wolf (2004): ``S* = (1 - s) S + s m I`` with ``m = tr(S) / D`` and the shrinkage ``s`` that
minimizes the expected Frobenius loss, estimated from the data (all through the N x N Gram matrix,
so a few thousand features cost no more than a few hundred). The precision keeps the top
``MAX_COMPONENTS`` eigenvectors of ``S*`` and one eigenvalue (the mean of the others) for the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgereg.errors import EdgeregError
from edgereg.lab.intervals import conformal_quantile

FALSE_ALARM_RATE = 0.05  # share of familiar photos flagged `unfamiliar`, at most, on average
MAX_COMPONENTS = 128  # eigenvectors kept in the graph (the rest share one eigenvalue)
MAX_FIT_ROWS = 2000  # rows the covariance is estimated from at most (a seeded draw beyond)
MIN_THRESHOLD_ROWS = 20  # held-out rows needed for a 95% threshold (19) plus one


@dataclass(frozen=True)
class ShrinkageFit:
    """A Ledoit-Wolf mean and precision in the form NoveltyHead takes.

    Attributes:
        mean: (D,) float64 feature mean.
        basis: (D, k) float64 top eigenvectors of the shrunk covariance.
        weights: (k,) float64 ``1 / l - 1 / r`` for their eigenvalues ``l``.
        rest: ``1 / r``, the precision along every other direction.
        shrinkage: the Ledoit-Wolf ``s`` in [0, 1].
        n: rows fitted on.
    """

    mean: np.ndarray
    basis: np.ndarray
    weights: np.ndarray
    rest: float
    shrinkage: float
    n: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) float64 distances (what the graph's ``novelty`` computes in float32)."""
        c = np.asarray(features, np.float64) - self.mean
        q = c @ self.basis
        return np.sqrt(np.maximum((q * q * self.weights).sum(1) + (c * c).sum(1) * self.rest, 0.0))


def fit_shrinkage(features: np.ndarray, *, seed: int = 0) -> ShrinkageFit:
    """Ledoit-Wolf mean and precision of ``features (N, D)`` (N >= 2).

    Raises:
        EdgeregError: fewer than 2 rows, or non-finite features.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise EdgeregError(f"the novelty score needs >= 2 rows of finite features, got {x.shape}")
    if len(x) > MAX_FIT_ROWS:
        x = x[np.random.default_rng(seed).choice(len(x), MAX_FIT_ROWS, replace=False)]
    n, d = x.shape
    mean = x.mean(axis=0)
    c = x - mean
    gram = c @ c.T  # (n, n)
    # sample covariance S = c'c / n, all its invariants from the Gram matrix
    trace_s = float(np.trace(gram)) / n
    frob_s2 = float((gram * gram).sum()) / n ** 2  # ||S||_F^2
    m = trace_s / d
    delta2 = max(frob_s2 - m * m * d, 0.0)  # ||S - m I||_F^2
    norms2 = np.diag(gram)  # ||x_i||^2
    quad = (gram * gram).sum(axis=1) / n  # x_i' S x_i
    beta2 = float(np.sum(norms2 ** 2 - 2.0 * quad + frob_s2)) / n ** 2
    shrinkage = 1.0 if delta2 <= 0 else min(beta2, delta2) / delta2
    eigval, eigvec = np.linalg.eigh(gram)  # ascending; S's nonzero eigenvalues are eigval / n
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None) / n, eigvec[:, order]
    k = int(min(MAX_COMPONENTS, d, int((eigval > 1e-12 * max(eigval[0], 1e-300)).sum())))
    basis = c.T @ eigvec[:, :k] / np.sqrt(np.maximum(eigval[:k] * n, 1e-300))  # (d, k) unit eigenvectors of S
    floor = max(shrinkage * m, 1e-12 * max(m, 1e-300), 1e-30)
    top = (1.0 - shrinkage) * eigval[:k] + shrinkage * m
    rest_eig = ((1.0 - shrinkage) * max(trace_s - float(eigval[:k].sum()), 0.0) / max(d - k, 1) + shrinkage * m)
    rest_eig = max(rest_eig, floor)
    top = np.maximum(top, floor)
    return ShrinkageFit(mean=mean, basis=basis, weights=1.0 / top - 1.0 / rest_eig, rest=1.0 / rest_eig,
                        shrinkage=float(shrinkage), n=n)


def threshold(scores: np.ndarray, rate: float = FALSE_ALARM_RATE) -> float:
    """The ``1 - rate`` conformal quantile of held-out ``scores (n,)``: at most ``rate`` of new
    exchangeable rows exceed it, on average (infinite when n < (1 - rate) / rate)."""
    if not 0 < rate < 1:
        raise EdgeregError(f"--novelty-rate must be in (0, 1), got {rate}")
    return conformal_quantile(np.asarray(scores, np.float64), 1.0 - rate)


def novelty_section(fit: ShrinkageFit, limit: float, *, rate: float, n_threshold: int, fitted_on: str,
                    threshold_rows: str, features: int) -> dict:
    """The ``card.novelty`` JSON."""
    return {"output": "novelty", "score": "Ledoit-Wolf shrinkage Mahalanobis distance of the penultimate features",
            "threshold": float(limit) if math.isfinite(limit) else None, "false_alarm_rate": float(rate),
            "n_threshold": int(n_threshold), "n_fit": int(fit.n), "features": int(features),
            "components": int(fit.basis.shape[1]), "shrinkage": fit.shrinkage, "fitted_on": fitted_on,
            "threshold_rows": threshold_rows}


__all__ = ["FALSE_ALARM_RATE", "ShrinkageFit", "fit_shrinkage", "novelty_section", "threshold"]
