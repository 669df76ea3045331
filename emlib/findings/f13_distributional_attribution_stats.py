"""Finding 13's statistics: how a removal moves the distribution of an outcome over seeds, and bootstrap CIs that
resample seeds (every statistic is recomputed from per-seed outcomes) and, for correlations, examples too.

Outcomes are arrays over seeds: `base` [S] (full data) and `moved` [K, S] (the same seeds without example k, actual
or predicted). Pairing is by seed: seed s of `moved` shares its initialisation and batch order with seed s of `base`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STATS", "shift", "shifts", "pearson", "correlation", "corr_ci", "paired_stat_ci", "permutation_null", "two_way_indices"]

STATS = ("mean", "var", "sd")


def _stat(x: np.ndarray, name: str) -> np.ndarray:
    """A statistic over the last axis: mean, var (ddof 1), sd (ddof 1) or q<p> (the p-quantile, e.g. q0.1)."""
    if name == "mean":
        return x.mean(-1)
    if name == "var":
        return x.var(-1, ddof=1)
    if name == "sd":
        return x.std(-1, ddof=1)
    if name.startswith("q"):
        return np.quantile(x, float(name[1:]), axis=-1)
    raise ValueError(f"unknown statistic {name!r}")


def shift(base: np.ndarray, moved: np.ndarray, name: str) -> np.ndarray:
    """stat(moved_k) - stat(base) for each row k of moved [..., K, S] against base [..., S]."""
    return _stat(moved, name) - _stat(base, name)[..., None]


def shifts(base: np.ndarray, moved: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """{name: shift(base, moved, name)} for several statistics."""
    return {n: shift(base, moved, n) for n in names}


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r over the last axis (NaN where either side is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def correlation(a: np.ndarray, b: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Pearson r, or Spearman's rho (Pearson r of average ranks), over the last axis."""
    if method == "pearson":
        return pearson(a, b)
    if method == "spearman":
        from scipy.stats import rankdata

        return pearson(rankdata(a, axis=-1), rankdata(b, axis=-1))
    raise ValueError(f"unknown correlation {method!r}; use pearson or spearman")


def two_way_indices(n_seeds: int, n_items: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap indices: seeds [n_boot, n_seeds] and items (examples) [n_boot, n_items], drawn independently."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (n_boot, n_seeds)), rng.integers(0, n_items, (n_boot, n_items))


def corr_ci(base: np.ndarray, pred: np.ndarray, actual: np.ndarray, name: str, n_boot: int, seed: int,
            alpha: float = 0.05, method: str = "pearson") -> tuple[float, float, float]:
    """Correlation between predicted and actual shifts of `name` over the K examples, with a two-way percentile
    bootstrap CI: each replicate resamples seeds (shifts recomputed from the resampled runs, predicted and actual
    paired by seed) and, independently, examples. base [S], pred and actual [K, S]."""
    r = float(correlation(shift(base, pred, name), shift(base, actual, name), method))
    si, ei = two_way_indices(base.shape[-1], pred.shape[0], n_boot, seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        bs = base[si[b]]
        p, a = pred[ei[b]][:, si[b]], actual[ei[b]][:, si[b]]
        boots[b] = correlation(shift(bs, p, name), shift(bs, a, name), method)
    lo, hi = np.nanquantile(boots, [alpha / 2, 1 - alpha / 2])
    return r, float(lo), float(hi)


def paired_stat_ci(base: np.ndarray, moved: np.ndarray, fn, n_boot: int, seed: int,
                   alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fn(base [S], moved [K, S]) -> [K] with a percentile CI from resampling seeds (paired across base and moved)."""
    value = fn(base, moved)
    idx = np.random.default_rng(seed).integers(0, base.shape[-1], (n_boot, base.shape[-1]))
    boots = np.stack([fn(base[i], moved[:, i]) for i in idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    return value, lo, hi


def permutation_null(pred_shift: np.ndarray, actual_shift: np.ndarray, n_perm: int, seed: int,
                     q: float = 0.95, method: str = "pearson") -> float:
    """The q-quantile of the correlation when the predictions are shuffled across examples (no attribution)."""
    rng = np.random.default_rng(seed)
    rs = np.array([correlation(rng.permutation(pred_shift), actual_shift, method) for _ in range(n_perm)])
    return float(np.nanquantile(rs, q))
