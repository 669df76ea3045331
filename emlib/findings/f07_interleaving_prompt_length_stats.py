"""Finding 07's measurements: the activation region (distance to the harmful set's centroid), and the contrasts of
EM rates (length interaction, rank correlation with position, moved vs original) over shared bootstrap draws."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.stats import hierarchical_draws, spearman_rows
from .base import Effect

__all__ = [
    "region_position", "nearest", "position_draws", "leave_one_out_spearman", "em_draws", "contrast",
]


def _spread(harmful: torch.Tensor) -> float:
    """RMS distance of the harmful examples from their centroid (the region's unit length)."""
    centred = harmful.double() - harmful.double().mean(dim=0)
    return float(centred.pow(2).sum(dim=1).mean().sqrt())


def region_position(harmful: torch.Tensor, examples: torch.Tensor) -> float:
    """‖centroid(examples) − centroid(harmful)‖ / RMS spread of the harmful examples about their centroid (n × d
    activations each): 0 at the harmful set's centre, about 1 at the distance of a typical harmful example."""
    gap = examples.double().mean(dim=0) - harmful.double().mean(dim=0)
    return float(gap.norm()) / _spread(harmful)


def nearest(harmful: torch.Tensor, pool: torch.Tensor, k: int) -> list[int]:
    """Indices (in pool order) of the k pool examples closest (Euclidean) to the harmful set's centroid."""
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot pick {k} of {len(pool)} examples")
    dist = (pool.double() - harmful.double().mean(dim=0)).norm(dim=1)
    return sorted(torch.argsort(dist, stable=True)[:k].tolist())


def position_draws(harmful: torch.Tensor, sets: Sequence[torch.Tensor], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(sets)) region positions with the harmful examples and each set's examples resampled."""
    rng = np.random.default_rng(seed)
    h = harmful.double().numpy()

    def weights(n: int) -> np.ndarray:  # (n_boot, n) resampling weights summing to 1 per draw
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n

    wh = weights(len(h))
    centre = wh @ h  # (n_boot, d)
    # weighted mean squared distance to the weighted centre: Σ w‖h‖² − ‖c‖²
    spread = np.sqrt(np.maximum(wh @ (h**2).sum(axis=1) - (centre**2).sum(axis=1), 0.0))
    out = np.empty((n_boot, len(sets)))
    for j, s in enumerate(sets):
        x = s.double().numpy()
        out[:, j] = np.linalg.norm(weights(len(x)) @ x - centre, axis=1) / spread
    return out


def leave_one_out_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Spearman correlation of x and y with each point left out in turn (one value per point)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~np.eye(len(x), dtype=bool)
    return np.array([spearman_rows(x[k], y[k])[0] for k in keep])


def em_draws(answers: pd.DataFrame, cells: Sequence[pd.Series], n_boot: int, seed: int,
             column: str = "em") -> tuple[np.ndarray, np.ndarray]:
    """EM rates of the given cells (boolean row masks of `answers`) and their bootstrap draws (n_boot, cells), one
    draw of training seeds and questions shared by every cell, answers resampled within each (`hierarchical_draws`).
    A cell without training seeds (the base model) counts as one seed always kept."""
    values, questions, seeds = [], [], []
    for mask in cells:
        cell = answers[mask]
        values.append(cell[column].astype(float).to_numpy())
        questions.append(cell["question_id"].astype(str).to_numpy())
        seeds.append(None if cell["seed"].isna().any() else cell["seed"].astype(int).to_numpy())
    return hierarchical_draws(values, questions, seeds, n_boot=n_boot, seed=seed)


def contrast(name: str, point: np.ndarray, draws: np.ndarray, weights: np.ndarray, *, n_seeds: int, n_questions: int,
             n_answers: int, method: str) -> Effect:
    """The effect Σ weights · cell rates with its percentile 95 % CI over the shared draws."""
    w = np.asarray(weights, float)
    lo, hi = np.quantile(draws @ w, [0.025, 0.975])
    return Effect(name, float(point @ w), float(lo), float(hi), method, n_seeds, n_questions, n_answers)
