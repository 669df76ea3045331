"""Finding 11's figures: held-out correlation per example (linear vs KAN), one example's interaction matrices
(KAN-predicted vs measured in the network), and the measured interaction of three sets of pairs per example."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..report.plots import finish_figure
from .f11_coar_kan_model import pair_index

__all__ = ["pair_matrix", "plot_correlations", "plot_interactions", "plot_pair_sets"]



def pair_matrix(values: np.ndarray, n: int) -> np.ndarray:
    """A symmetric n×n matrix from per-pair values in triu order (diagonal NaN)."""
    a, b = pair_index(n)
    m = np.full((n, n), np.nan)
    m[a, b] = m[b, a] = values
    return m


def plot_correlations(per_example: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """One panel per α: each example's held-out correlation, linear COAR (x) vs KAN (y); grey: the same two
    surrogates on additive null data. Points above the diagonal are examples where the KAN predicts better."""
    alphas = sorted(per_example["alpha"].unique())
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.0 * len(alphas), 4.0), squeeze=False)
    for ax, a in zip(axes[0], alphas):
        d = per_example[np.isclose(per_example["alpha"], a)]
        ax.scatter(d["corr_linear_null"], d["corr_kan_null"], s=10, color="0.75", label="additive null data")
        for s, g in d.groupby("seed"):
            ax.scatter(g["corr_linear"], g["corr_kan"], s=14, alpha=0.8, label=f"CNN seed {s}")
        lo = float(np.nanmin(d[["corr_linear", "corr_kan", "corr_linear_null", "corr_kan_null"]].to_numpy()))
        lo = max(-1.0, lo - 0.02)
        ax.plot([lo, 1], [lo, 1], color="k", lw=0.8)
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1)
        wins = (d["corr_kan"] > d["corr_linear"]).mean()
        ax.set_title(f"α = {a:g}: mean {d['corr_linear'].mean():.3f} → {d['corr_kan'].mean():.3f}, "
                     f"KAN wins {wins:.0%}", fontsize=9)
        ax.set_xlabel("held-out corr, linear COAR")
        ax.set_ylabel("held-out corr, KAN surrogate")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    return finish_figure(fig, path, tight_layout=True)


def plot_interactions(i_kan: np.ndarray, i_net: np.ndarray, n: int, top_k: int, title: str = "",
                      path: str | os.PathLike | None = None) -> Figure:
    """One example: the KAN's predicted pairwise interactions (left), the network's measured m(both) − m(a) −
    m(b) + m(none) (middle), each on its own symmetric colour scale, and predicted vs measured per pair (right,
    the KAN's top-k pairs in red)."""
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.4), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, values, name in ((axes[0], i_kan, "KAN surrogate (mixed differences)"),
                             (axes[1], i_net, "network (measured)")):
        lim = float(np.nanmax(np.abs(values))) or 1.0
        im = ax.imshow(pair_matrix(values, n), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("component")
        ax.set_ylabel("component")
        fig.colorbar(im, ax=ax, shrink=0.8, label="interaction (margin)")
    top = np.argsort(-np.abs(i_kan), kind="stable")[:top_k]
    ax = axes[2]
    ax.scatter(i_kan, i_net, s=6, color="0.5", alpha=0.6, label="all pairs")
    ax.scatter(i_kan[top], i_net[top], s=18, color="tab:red", label=f"KAN top {top_k}")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("predicted by the KAN")
    ax.set_ylabel("measured in the network")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path, tight_layout=True)


def plot_pair_sets(interactions: pd.DataFrame, top_k: int, path: str | os.PathLike | None = None) -> Figure:
    """Per example (one line each): mean measured |interaction| of a random pair, of the top-k pairs by linear
    importance |β_a β_b|, and of the KAN's top-k pairs (log scale)."""
    cols = [("random_abs", "random pair"), ("important_abs", f"top {top_k} by |β_a β_b|"),
            ("top_abs", f"KAN top {top_k}")]
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    values = interactions[[c for c, _ in cols]].to_numpy()
    xs = np.arange(len(cols))
    for row in values:
        ax.plot(xs, row, color="0.7", lw=0.6, alpha=0.6)
    ax.plot(xs, np.median(values, axis=0), color="tab:red", marker="o", lw=2, label="median over examples")
    ax.set_xticks(xs, [name for _, name in cols])
    ax.set_yscale("log")
    ax.set_ylabel("mean measured |interaction| (margin)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return finish_figure(fig, path, tight_layout=True)
