"""Finding 08's statistics: how coherent a set's activation differences are (cosine to the vector, d′ of the
projections), rank correlations across sets with a two-stage bootstrap (sets, then items within each) and a
permutation null, and the cosines between prompt types' vectors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.stats import spearman_rows

__all__ = ["diff_cosines", "dprime", "draw_indices", "mean_cosine_draws", "dprime_draws", "spearman", "spearman_draws", "permutation_q95",
           "vector_cosines"]


def diff_cosines(pos: torch.Tensor, neg: torch.Tensor, leave_one_out: bool = False) -> np.ndarray:
    """Cosine of each example's difference pos_i − neg_i with the mean difference (the steering vector; with
    `leave_one_out`, the mean of the other differences), n × d inputs → n values."""
    diffs = (pos.double() - neg.double())
    n = diffs.shape[0]
    ref = diffs.mean(0, keepdim=True).expand_as(diffs)
    if leave_one_out:
        if n < 2:
            raise ValueError("leave-one-out needs at least two examples")
        ref = (diffs.sum(0, keepdim=True) - diffs) / (n - 1)
    return torch.nn.functional.cosine_similarity(diffs, ref, dim=-1).numpy()


def dprime(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Separation of the positive and negative activations projected on the steering vector's direction:
    (mean⁺ − mean⁻) / √((var⁺ + var⁻) / 2), population variances as in the paper's code (NaN when both are 0)."""
    v = pos.double().mean(0) - neg.double().mean(0)
    norm = float(v.norm())
    if norm == 0:
        return float("nan")
    pp, pn = (pos.double() @ (v / norm)).numpy(), (neg.double() @ (v / norm)).numpy()
    spread = np.sqrt((pp.var() + pn.var()) / 2)
    return float((pp.mean() - pn.mean()) / spread) if spread > 0 else float("nan")


def draw_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """A set's own items (row 0) and n_boot resamples of its n items with replacement: (1 + n_boot) × n indices."""
    return np.vstack([np.arange(n)[None], rng.integers(0, n, (n_boot, n))])


def mean_cosine_draws(pos: np.ndarray, neg: np.ndarray, idx: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The mean of `diff_cosines` over each row of `idx`'s items (rows of `draw_indices`), all rows at once."""
    out = []
    for start in range(0, len(idx), chunk):
        d = pos[idx[start:start + chunk]].astype(np.float64) - neg[idx[start:start + chunk]]  # draws × n × d
        ref = d.mean(1, keepdims=True)
        norms = np.maximum(np.linalg.norm(d, axis=-1) * np.linalg.norm(ref, axis=-1), 1e-8)
        out.append(((d * ref).sum(-1) / norms).mean(1))
    return np.concatenate(out)


def dprime_draws(pos: np.ndarray, neg: np.ndarray, idx: np.ndarray, chunk: int = 256) -> np.ndarray:
    """`dprime` on each row of `idx`'s items (rows of `draw_indices`), all rows at once; NaN where it is."""
    out = []
    for start in range(0, len(idx), chunk):
        p, q = pos[idx[start:start + chunk]].astype(np.float64), neg[idx[start:start + chunk]].astype(np.float64)
        v = p.mean(1) - q.mean(1)
        norm = np.linalg.norm(v, axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = v / norm
            pp, pn = np.einsum("bnd,bd->bn", p, unit), np.einsum("bnd,bd->bn", q, unit)
            spread = np.sqrt((pp.var(1) + pn.var(1)) / 2)
            dp = (pp.mean(1) - pn.mean(1)) / spread
        out.append(np.where((norm[:, 0] > 0) & (spread > 0), dp, np.nan))
    return np.concatenate(out)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN when either side is constant)."""
    return float(spearman_rows(x, y)[0])


def spearman_draws(x_draws: np.ndarray, y_draws: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    """ρ across sets of two per-set statistics, and its two-stage bootstrap draws: each draw resamples the sets with
    replacement and takes, for each drawn set, one of its own within-set resamples. x_draws, y_draws: sets × (1 + B),
    column 0 the statistic on the set's own items (row 0 of `draw_indices`)."""
    if x_draws.shape != y_draws.shape or x_draws.ndim != 2:
        raise ValueError(f"draw arrays must match (sets × draws), got {x_draws.shape} and {y_draws.shape}")
    k, b = x_draws.shape[0], x_draws.shape[1] - 1
    rho = spearman(x_draws[:, 0], y_draws[:, 0])
    if b == 0:
        return rho, np.array([])
    rng = np.random.default_rng(seed)
    sets = rng.integers(0, k, size=(b, k))
    cols = np.arange(1, b + 1)[:, None]
    return rho, spearman_rows(x_draws[sets, cols], y_draws[sets, cols])


def permutation_q95(x: Sequence[float], y: Sequence[float], n_perm: int = 2000, seed: int = 0) -> float:
    """The 95th percentile of ρ(x, y) with y shuffled across sets: what a ρ this large means by chance."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    perms = np.stack([y[rng.permutation(len(y))] for _ in range(n_perm)])
    rhos = spearman_rows(np.broadcast_to(x, perms.shape), perms)
    return float(np.nanquantile(rhos, 0.95)) if np.isfinite(rhos).any() else float("nan")  # NaN: a constant side


def vector_cosines(vectors: dict[str, torch.Tensor]) -> np.ndarray:
    """Cosine between every two prompt types' vectors, per set: {type: sets × d} → types × types × sets."""
    names = list(vectors)
    units = [torch.nn.functional.normalize(vectors[t].double(), dim=-1) for t in names]
    return np.array([[(a * b).sum(-1).numpy() for b in units] for a in units])
