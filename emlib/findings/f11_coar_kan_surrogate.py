"""Finding 11's surrogates: the linear COAR estimator and a batched B-spline KAN, one per example, fitted together.

Both map an ablation keep-mask x ∈ {0, 1}^n (1 = kept) to the example's margin. `fit_linear` is COAR's estimator
(least squares with an intercept). `BatchedKAN` is a Kolmogorov–Arnold network [n, hidden, 1] in the form of
Liu et al. 2024 (pykan's KANLayer): every edge is φ(x) = w_b·silu(x) + Σ_g c_g B_g(x) with cubic B-splines on a
uniform grid, and a node sums its incoming edges. It carries a leading example dimension, so the surrogates of
all examples train at once in one full-batch Adam loop (pykan 0.2.8 fits one network at a time: 4–8 s of CPU
per example here, ~100× slower than this for the 240 fits of one seed). The second layer's grid follows the range of its inputs
(pykan's `update_grid`), refitted by least squares so the function is kept.

On binary inputs a first-layer spline is only ever read at 0 and 1, so it acts as an affine map: the KAN is
Σ_j g_j(w_j·x + b_j), learned univariate functions of linear scores, and every interaction it finds comes from
the curvature of the g_j.

    >>> x = torch.tensor([[0.0], [0.5], [1.0]])
    >>> bspline_basis(x, uniform_knots(3, 3, 0.0, 1.0), 3).sum(-1)  # a partition of unity on the grid
    tensor([[1.0000],
            [1.0000],
            [1.0000]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "K", "uniform_knots", "bspline_basis", "cubic_bspline_basis", "cubic_spline", "fit_linear", "predict_linear",
    "column_corr", "KanConfig", "BatchedKAN", "fit_kan", "predict_kan",
]

K = 3  # spline order: cubic, as pykan's default


def uniform_knots(grid: int, k: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """The knots of `grid` uniform intervals on [lo, hi] extended by k intervals each side: grid + 2k + 1 knots."""
    h = (hi - lo) / grid
    return lo + h * torch.arange(-k, grid + k + 1, dtype=torch.float32)


def bspline_basis(x: torch.Tensor, knots: torch.Tensor, k: int) -> torch.Tensor:
    """The grid + k B-splines of order k at x (Cox–de Boor): shape x.shape + (len(knots) − k − 1,)."""
    t = knots.to(x.dtype)
    xe = x.unsqueeze(-1)
    b = ((xe >= t[:-1]) & (xe < t[1:])).to(x.dtype)
    for p in range(1, k + 1):
        left = (xe - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)]) * b[..., :-1]
        right = (t[p + 1:] - xe) / (t[p + 1:] - t[1:-p]) * b[..., 1:]
        b = left + right
    return b


def cubic_bspline_basis(t: torch.Tensor, grid: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """The grid + 3 cubic B-splines on `uniform_knots(grid, 3, lo, hi)` at t, from the closed form of the uniform
    cubic B-spline (equal to `bspline_basis(t, knots, 3)`, with fewer operations): shape t.shape + (grid + 3,)."""
    h = (hi - lo) / grid
    centers = torch.arange(grid + 3, dtype=t.dtype) - 1.0  # B_g is centred on knot g − 1 of the plain grid
    z = ((t.unsqueeze(-1) - lo) / h - centers).abs()
    inner = 2.0 / 3.0 - z * z + 0.5 * z * z * z
    outer = (2.0 - z).clamp_min(0.0) ** 3 / 6.0
    return torch.where(z < 1.0, inner, outer)


def cubic_spline(t: torch.Tensor, coef: torch.Tensor, grid: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Σ_g coef[..., g] B_g(t) for t (E, N, H) in [lo, hi] and coef (E, H, grid + 3), reading only the four cubic
    B-splines that are non-zero at each t (equal to `(cubic_bspline_basis(t, grid) * coef[:, None]).sum(-1)`)."""
    u = (t - lo) / ((hi - lo) / grid)
    i = u.detach().floor().clamp(0, grid - 1)
    f = u - i
    f2, f3 = f * f, f * f * f
    weights = ((1 - f) ** 3 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6)
    e, h, nb = coef.shape
    row = (torch.arange(e).view(e, 1, 1) * h + torch.arange(h).view(1, 1, h)) * nb  # start of each (e, h) row
    idx = row + i.long()
    flat = coef.reshape(-1)
    return sum(w * flat[idx + r] for r, w in enumerate(weights))


def fit_linear(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """COAR's linear estimator for every column of y at once: weights (1 + n, k) of y ≈ [1, x] @ w (least squares)."""
    design = np.c_[np.ones(len(x)), np.asarray(x, dtype=float)]
    return np.linalg.lstsq(design, np.asarray(y, dtype=float), rcond=None)[0]


def predict_linear(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[1, x] @ w: predictions (n_masks, k)."""
    return np.c_[np.ones(len(x)), np.asarray(x, dtype=float)] @ w


def column_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of a with the same column of b (NaN where a column is constant)."""
    a = np.asarray(a, dtype=float) - np.mean(a, axis=0)
    b = np.asarray(b, dtype=float) - np.mean(b, axis=0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class KanConfig:
    """A KAN surrogate's shape and training: hidden width, grid intervals, spline order, Adam steps and rate."""

    hidden: int = 4
    grid: int = 5
    steps: int = 400
    lr: float = 0.02
    grid_updates: int = 4  # second-layer grid re-fitted to its inputs' range this many times in the first half
    seed: int = 0


class BatchedKAN(nn.Module):
    """E independent KANs [n_in, hidden, 1] evaluated together; inputs shared across them: (N, n_in) → (E, N)."""

    def __init__(self, n_models: int, n_in: int, cfg: KanConfig) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(cfg.seed)
        e, h, nb = n_models, cfg.hidden, cfg.grid + K
        self.cfg = cfg
        self.register_buffer("knots1", uniform_knots(cfg.grid, K, 0.0, 1.0))  # masks live in {0, 1}
        self.register_buffer("lo2", -torch.ones(e, h))
        self.register_buffer("hi2", torch.ones(e, h))
        self.wb1 = nn.Parameter((torch.rand(e, n_in, h, generator=g) * 2 - 1) / n_in ** 0.5)
        self.c1 = nn.Parameter(torch.randn(e, n_in * nb, h, generator=g) * 0.1 / n_in ** 0.5)
        self.wb2 = nn.Parameter((torch.rand(e, h, generator=g) * 2 - 1) / h ** 0.5)
        self.c2 = nn.Parameter(torch.randn(e, h, nb, generator=g) * 0.1 / h ** 0.5)
        self.bias = nn.Parameter(torch.zeros(e, 1))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the first layer reads of shared inputs x (N, n_in). For 0/1 inputs: x and the spline bases at 0 and
        1 (an edge only ever sees those two points: φ(x) = φ(0) + x·(φ(1) − φ(0)) exactly, computed n_basis times
        cheaper); otherwise the spline bases at x (N, n_in·nb) and silu(x)."""
        if bool(((x == 0) | (x == 1)).all()):
            ends = torch.tensor([0.0, 1.0])
            return x, bspline_basis(ends, self.knots1, K), F.silu(ends)
        return bspline_basis(x, self.knots1, K).flatten(1), F.silu(x)

    def hidden(self, x: torch.Tensor, feats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """The first layer's node values (E, N, hidden); `feats` = features(x), precomputed when x is fixed."""
        feats = feats if feats is not None else self.features(x)
        e, _, h = self.c1.shape
        if len(feats) == 3:  # binary inputs
            xb, ends, silu_ends = feats
            c1 = self.c1.view(e, xb.shape[1], -1, h)  # (E, n_in, nb, hidden)
            phi0 = torch.einsum("g,eigh->eih", ends[0], c1) + silu_ends[0] * self.wb1
            phi1 = torch.einsum("g,eigh->eih", ends[1], c1) + silu_ends[1] * self.wb1
            slope = (phi1 - phi0).permute(1, 0, 2).reshape(xb.shape[1], e * h)
            return (xb @ slope).view(len(xb), e, h).permute(1, 0, 2) + phi0.sum(1).unsqueeze(1)
        basis, base = feats
        splines = (basis @ self.c1.permute(1, 0, 2).reshape(basis.shape[1], e * h)).view(len(basis), e, h)
        bases = (base @ self.wb1.permute(1, 0, 2).reshape(base.shape[1], e * h)).view(len(base), e, h)
        return (splines + bases).permute(1, 0, 2)

    def _grid2(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden values mapped onto the second layer's grid [-1, 1], clamped: constant extrapolation beyond it."""
        lo, hi = self.lo2.unsqueeze(1), self.hi2.unsqueeze(1)
        return ((h - lo) / (hi - lo) * 2 - 1).clamp(-1.0, 1.0)

    def _basis2(self, h: torch.Tensor) -> torch.Tensor:
        return cubic_bspline_basis(self._grid2(h), self.cfg.grid)  # (E, N, hidden, nb)

    def edges2(self, h: torch.Tensor) -> torch.Tensor:
        """The second layer's edge values φ_j(h_j): (E, N, hidden)."""
        return cubic_spline(self._grid2(h), self.c2, self.cfg.grid) + F.silu(h) * self.wb2.unsqueeze(1)

    def forward(self, x: torch.Tensor, feats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        return self.edges2(self.hidden(x, feats)).sum(-1) + self.bias

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, feats: tuple[torch.Tensor, ...] | None = None,
                    margin: float = 0.1) -> None:
        """Set the second layer's grid to its inputs' range on x (plus `margin`) and refit the splines to keep φ."""
        h = self.hidden(x, feats)
        old = torch.einsum("enhg,ehg->enh", self._basis2(h), self.c2)
        lo, hi = h.amin(1), h.amax(1)
        pad = (hi - lo).clamp_min(1e-3) * margin
        self.lo2.copy_(lo - pad)
        self.hi2.copy_(hi + pad)
        basis = self._basis2(h).permute(0, 2, 1, 3)  # (E, hidden, N, nb)
        gram = basis.transpose(-1, -2) @ basis + 1e-4 * torch.eye(basis.shape[-1])
        rhs = basis.transpose(-1, -2) @ old.permute(0, 2, 1).unsqueeze(-1)
        self.c2.copy_(torch.linalg.solve(gram, rhs).squeeze(-1))


def fit_kan(x: np.ndarray, y: np.ndarray, cfg: KanConfig) -> tuple[BatchedKAN, np.ndarray, np.ndarray, list[float]]:
    """One KAN per column of y (n_masks, E), trained together on standardized targets (mean squared error).

    Returns the model, the columns' mean and sd (predict with `model(x) * sd + mean`) and the loss per step.
    """
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = np.asarray(y, dtype=float)
    mean, sd = y.mean(0), y.std(0) + 1e-8
    yt = torch.as_tensor(((y - mean) / sd).T, dtype=torch.float32)  # (E, N)
    model = BatchedKAN(y.shape[1], x.shape[1], cfg)
    feats = model.features(xt)  # the inputs never change: their spline bases are computed once
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    every = max(1, cfg.steps // (2 * max(cfg.grid_updates, 1)))
    losses = []
    for step in range(cfg.steps):
        if step % every == 0 and step // every < cfg.grid_updates:
            model.update_grid(xt, feats)
        loss = F.mse_loss(model(xt, feats), yt, reduction="none").mean(1).sum()  # a sum over examples: each its own lr
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() / len(yt))
    return model.eval(), mean, sd, losses


def predict_kan(model: BatchedKAN, mean: np.ndarray, sd: np.ndarray, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """The surrogates' margins on keep-masks x: (n_masks, E)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            out.append(model(torch.as_tensor(np.asarray(x[i:i + chunk]), dtype=torch.float32)).numpy().T)
    return np.concatenate(out) * sd + mean

