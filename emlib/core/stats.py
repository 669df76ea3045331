"""Bootstrap confidence intervals and small array helpers, numpy only."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["as_float_array", "bootstrap_ci", "bootstrap_diff_ci"]


def as_float_array(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Scores as a float array with None mapped to NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of `stat` over resampled values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(axis=1)
    lo, hi = np.nanquantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two independent samples, with its percentile bootstrap CI."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    da = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    db = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [alpha / 2, 1 - alpha / 2])
    return float(xa.mean() - xb.mean()), float(lo), float(hi)
