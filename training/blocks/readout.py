"""Block readouts: fixed feature blocks + a closed-form ridge (or a small MLP) readout, as a model.

``readout`` is a registered model like ``cnn_small``: it maps normalized images ``(B, C, H, W)``
to raw outputs ``(B, n_outputs)``, exports to plain ONNX (the card, TTA, intervals and the int8
gate apply unchanged) and rebuilds from run.json + best.pt. It is not trained by gradient steps:
:func:`fit_readout` sets its constants and weights in closed form in seconds.

Inside the model::

    x (normalized) -> intensity = x * scale + offset          (per channel; back to pixel values)
                   -> fixed_features: [block(intensity) ...]  (B, D)
                   -> (f - mu) / sd                           (standardized on the train split)
                   -> readout: Linear (ridge) or MLP          (B, n_outputs), encoded target space
                   -> the kind's inverse link                 raw outputs (heads.py's convention)

The module attribute ``fixed_features`` names the fixed blocks in the ONNX node names, which int8
export keeps in float (they hold no learned weights; quantizing their inputs only loses precision).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgereg.errors import EdgeregError
from edgereg.training.blocks.features import BLOCKS, COMPACT, POINT_BLOCKS
from edgereg.training.targets.kind_training import kind_training

DEFAULT_BLOCKS = "moments,colour,spectrum,bank,pixels"
RIDGE_ALPHAS = tuple(10.0 ** e for e in range(-8, 5))  # relative to the mean eigenvalue of X'X / N
CV_FOLDS = 5
CONSTANT_SPREAD = 1e-5  # a feature spread below this (relative to its size) is float rounding: a constant


def parse_blocks(blocks: str) -> tuple[str, ...]:
    """``"moments,colour"`` -> ("moments", "colour"), compact blocks first (in BLOCKS order), pixels
    last; unknown names are an EdgeregError naming the choices."""
    names = {b.strip() for b in str(blocks).replace("+", ",").split(",") if b.strip()}
    unknown = sorted(names - set(BLOCKS))
    if not names or unknown:
        raise EdgeregError(f"unknown feature block(s) {unknown or [blocks]}; choose from {', '.join(BLOCKS)} "
                           f"(e.g. --model readout --model-opt blocks=moments,colour)")
    return tuple(b for b in BLOCKS if b in names)


def standardize(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, n_compact: int, mu2: np.ndarray | None,
                sd2: np.ndarray | None) -> np.ndarray:
    """The readout's design matrix from raw features (N, D): standardized, then (when ``mu2`` is given)
    the squares of the first ``n_compact`` standardized columns, standardized too. The numpy twin of
    :meth:`FixedFeatures.forward`."""
    xs = (x - mu) / sd
    if mu2 is None:
        return xs
    return np.hstack([xs, (xs[:, :n_compact] ** 2 - mu2) / sd2])


def standardizer(x: np.ndarray, n_compact: int, quadratic: bool) -> tuple:
    """(mu, sd, mu2, sd2) of raw training features (N, D); mu2/sd2 None without squares."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    # a feature whose spread is float rounding (a region the circle mask fills with one value) is a
    # constant: dividing by its spread would turn the rounding of another runtime into signal
    sd = np.where(sd > CONSTANT_SPREAD * (1.0 + np.abs(mu)), sd, 1.0)
    if not quadratic:
        return mu, sd, None, None
    sq = ((x[:, :n_compact] - mu[:n_compact]) / sd[:n_compact]) ** 2
    mu2, sd2 = sq.mean(axis=0), sq.std(axis=0)
    return mu, sd, mu2, np.where(sd2 > CONSTANT_SPREAD * (1.0 + np.abs(mu2)), sd2, 1.0)


class FixedFeatures(nn.Module):
    """Normalized images -> standardized block features, with no learned weight.

    ``(B, C, H, W) float32 -> (B, D) float32``: back to pixel values (``x * scale + offset``), every
    block, then ``(f - mu) / sd``. Its constants are set by :func:`fit_readout`.
    """

    def __init__(self, block_names: tuple[str, ...], in_channels: int, input_size: tuple[int, int], *,
                 quadratic: bool = False, points: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(BLOCKS[b](in_channels, tuple(input_size), points=points) if b in POINT_BLOCKS
                                    else BLOCKS[b](in_channels, tuple(input_size)) for b in block_names)
        self.n_raw = d = sum(b.n_features for b in self.blocks)
        self.n_compact = q = sum(b.n_features for name, b in zip(block_names, self.blocks) if name in COMPACT)
        self.quadratic = bool(quadratic) and q > 0
        self.n_features = d + (q if self.quadratic else 0)
        self.register_buffer("scale", torch.ones(1, in_channels, 1, 1))
        self.register_buffer("offset", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("mu", torch.zeros(1, d))
        self.register_buffer("sd", torch.ones(1, d))
        if self.quadratic:
            self.register_buffer("mu2", torch.zeros(1, q))
            self.register_buffer("sd2", torch.ones(1, q))

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalized -> (B, D) block features before standardization."""
        intensity = images * self.scale + self.offset
        return torch.cat([block(intensity) for block in self.blocks], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        xs = (self.raw(images) - self.mu) / self.sd  # (B, D)
        if not self.quadratic:
            return xs
        squares = (xs[:, :self.n_compact].square() - self.mu2) / self.sd2  # (B, Dq)
        return torch.cat([xs, squares], dim=1)  # (B, D + Dq)

    def set_standardizer(self, mu, sd, mu2, sd2) -> None:
        """Copy :func:`standardizer`'s arrays into the buffers."""
        with torch.no_grad():
            for name, value in (("mu", mu), ("sd", sd), ("mu2", mu2), ("sd2", sd2)):
                if value is not None:
                    getattr(self, name).copy_(torch.from_numpy(np.asarray(value, np.float32)[None]))


class BlockReadout(nn.Module):
    """Fixed feature blocks, standardization and a linear (``hidden=0``) or one-hidden-layer readout.

    ``(B, C, H, W) float32 normalized -> (B, n_outputs) float32 raw``.
    """

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 blocks: str = DEFAULT_BLOCKS, hidden: int = 0, quadratic: bool = False):
        super().__init__()
        self.kind = kind
        self.block_names = parse_blocks(blocks)
        points = n_outputs // 2 if kind_training(kind).target.xy_points else 0
        if not points and set(self.block_names) & set(POINT_BLOCKS):
            raise EdgeregError(f"the {', '.join(POINT_BLOCKS)} block reads positions: it needs coordinate targets "
                               f"(x, y columns), not {kind}; choose other blocks")
        self.fixed_features = FixedFeatures(self.block_names, in_channels, input_size, quadratic=quadratic,
                                            points=points)
        d = self.n_features = self.fixed_features.n_features
        if hidden:
            self.readout = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))
        else:
            self.readout = nn.Linear(d, n_outputs)
        self.input_shape = (in_channels, *input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.readout(self.fixed_features(images))  # (B, n_outputs) encoded targets
        return kind_training(self.kind).from_target_space(z)


# ----------------------------------------------------------------------------------------------------
# Closed-form fitting


def ridge_path(x: np.ndarray, z: np.ndarray, alphas: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ridge solutions for each alpha: [(W (D, T), b (T,))], x standardized (N, D) float64, z (N, T).

    One eigendecomposition serves every alpha (alpha scaled by the mean eigenvalue): of the Gram
    matrix X'X (D x D) when N >= D, else of the kernel matrix XX' (N x N), the same solution
    ``W = X' (XX' + a)^-1 Z`` at a fraction of the cost when features outnumber rows.
    """
    x_mean, z_mean = x.mean(axis=0), z.mean(axis=0)
    xc, zc = x - x_mean, z - z_mean
    primal = xc.shape[0] >= xc.shape[1]
    eigval, eigvec = np.linalg.eigh(xc.T @ xc if primal else xc @ xc.T)
    eigval = np.clip(eigval, 0.0, None)
    proj = eigvec.T @ (xc.T @ zc if primal else zc)  # (D or N, T)
    unit = max(float(eigval.mean()), 1e-12)
    out = []
    for alpha in alphas:
        coef = eigvec @ (proj / (eigval + alpha * unit)[:, None])
        w = coef if primal else xc.T @ coef  # (D, T)
        out.append((w, z_mean - x_mean @ w))
    return out


def choose_alpha(x: np.ndarray, z: np.ndarray, groups: np.ndarray | None, *, seed: int = 0) -> tuple[float, float]:
    """(alpha, its cross-validated MSE in the encoded space) by K-fold CV on the rows given, folds of
    whole groups when ``groups`` is given (a penalty chosen on rows of seen groups would be too weak)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    if groups is not None and len(np.unique(groups)) >= 3:
        unique = np.unique(groups)
        order = rng.permutation(len(unique))
        fold_of_group = {g: i % CV_FOLDS for i, g in zip(range(len(unique)), unique[order])}
        folds = np.array([fold_of_group[g] for g in groups])
    else:
        folds = rng.permutation(n) % min(CV_FOLDS, max(2, n // 2))
    errors = np.zeros(len(RIDGE_ALPHAS))
    for f in np.unique(folds):
        train, held = folds != f, folds == f
        for i, (w, b) in enumerate(ridge_path(x[train], z[train], RIDGE_ALPHAS)):
            errors[i] += ((x[held] @ w + b - z[held]) ** 2).sum()
    errors /= n * z.shape[1]
    best = int(np.argmin(errors))
    return RIDGE_ALPHAS[best], float(errors[best])


@torch.no_grad()
def block_features(model: BlockReadout, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(N, D) float64 features of normalized images (N, C, H, W), in batches."""
    model.eval()
    parts = [model.fixed_features.raw(images[i:i + batch]).double().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.fixed_features.n_raw))


@torch.no_grad()
def prepare_blocks(model: BlockReadout, images: torch.Tensor, targets_encoded: torch.Tensor | None = None, *,
                   intensity_scale, intensity_offset) -> None:
    """Set the blocks' data-dependent constants from training images, in place.

    Args:
        images: (N, C, H, W) float32 normalized training images (the model's input).
        targets_encoded: (N, n_outputs) their targets in the encoded space (the template block
            learns its template from the labelled positions).
        intensity_scale, intensity_offset: (C,) the affine from the normalized input back to pixel
            values (the preprocessing's std and mean, or the reference ratio's).
    """
    channels = images.shape[1]
    fixed = model.fixed_features
    fixed.scale.copy_(torch.as_tensor(np.asarray(intensity_scale, np.float32)).view(1, channels, 1, 1))
    fixed.offset.copy_(torch.as_tensor(np.asarray(intensity_offset, np.float32)).view(1, channels, 1, 1))
    intensity = images * fixed.scale + fixed.offset
    for block in fixed.blocks:
        block.fit(intensity, targets_encoded)


@torch.no_grad()
def fit_head(model: BlockReadout, x: np.ndarray, z: np.ndarray, groups: np.ndarray | None = None, *,
             seed: int = 0) -> dict:
    """Fit the standardization and the readout on raw block features, in place.

    Args:
        x: (N, D) float64 raw features of the training rows (:func:`block_features`).
        z: (N, n_outputs) float64 targets in the kind's encoded space.
        groups: (N,) group ids, for grouped cross-validation of the penalty.

    Returns:
        A record: alpha and its cross-validated MSE (ridge), or the weight decay (MLP); feature count.
    """
    finite = np.isfinite(x).all(axis=1)
    x, z = x[finite], np.asarray(z, np.float64)[finite]
    groups = None if groups is None else np.asarray(groups)[finite]
    fixed = model.fixed_features
    stats = standardizer(x, fixed.n_compact, fixed.quadratic)
    fixed.set_standardizer(*stats)
    xs = standardize(x, *stats[:2], fixed.n_compact, *stats[2:])
    if isinstance(model.readout, nn.Linear):
        alpha, cv_mse = choose_alpha(xs, z, groups, seed=seed)
        ((w, b),) = ridge_path(xs, z, (alpha,))
        model.readout.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        model.readout.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        return {"alpha": alpha, "cv_mse": round(cv_mse, 8), "features": int(xs.shape[1]), "rows": int(len(x))}
    with torch.enable_grad():
        return fit_mlp(model, xs, z, seed=seed)


def fit_readout(model: BlockReadout, images: torch.Tensor, targets_encoded: torch.Tensor, *,
                intensity_scale, intensity_offset, groups: np.ndarray | None = None, seed: int = 0) -> dict:
    """:func:`prepare_blocks` then :func:`fit_head` on the images' features: the whole fit, in place."""
    prepare_blocks(model, images, targets_encoded, intensity_scale=intensity_scale, intensity_offset=intensity_offset)
    return fit_head(model, block_features(model, images), targets_encoded.double().numpy(), groups, seed=seed)


@torch.no_grad()
def readout_outputs(model: BlockReadout, x: np.ndarray) -> torch.Tensor:
    """Raw outputs (N, n_outputs) of a fitted model from raw block features (N, D) float64."""
    fixed = model.fixed_features
    stats = [None if getattr(fixed, n, None) is None else getattr(fixed, n)[0].double().numpy()
             for n in ("mu", "sd", "mu2", "sd2")]
    xs = standardize(x, stats[0], stats[1], fixed.n_compact, stats[2], stats[3])
    z = model.readout(torch.from_numpy(xs.astype(np.float32)))
    return kind_training(model.kind).from_target_space(z)


def fit_mlp(model: BlockReadout, xs: np.ndarray, z: np.ndarray, *, seed: int, steps: int = 600) -> dict:
    """Full-batch AdamW on standardized features, weight decay chosen on a held-out fifth of the rows."""
    rng = np.random.default_rng(seed)
    held = rng.permutation(len(xs)) < max(1, len(xs) // 5)
    x_t, z_t = torch.from_numpy(xs.astype(np.float32)), torch.from_numpy(z.astype(np.float32))
    best = None
    for decay in (1e-4, 1e-2, 1e-1):
        torch.manual_seed(seed)
        for layer in model.readout:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        optimizer = torch.optim.AdamW(model.readout.parameters(), lr=3e-3, weight_decay=decay)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (model.readout(x_t[~held]) - z_t[~held]).square().mean()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            err = float((model.readout(x_t[held]) - z_t[held]).square().mean())
        if best is None or err < best[0]:
            best = (err, decay, {k: v.clone() for k, v in model.readout.state_dict().items()})
    with torch.no_grad():
        model.readout.load_state_dict(best[2])
    return {"weight_decay": best[1], "held_mse": best[0], "features": int(xs.shape[1]), "rows": int(len(xs))}
