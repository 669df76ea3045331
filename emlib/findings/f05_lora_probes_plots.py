"""Finding 05's figures: probe AUCs beside their shuffled-label null, the adapters' coefficients, steering bars."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure, plot_heatmap

__all__ = ["plot_probe_aucs", "plot_coefficients", "plot_steering"]


def _err(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])


def plot_probe_aucs(table: pd.DataFrame, title: str = "", path: str | os.PathLike | None = None) -> Figure:
    """Per probe: the held-out AUC and the shuffled-label AUC (bars, 95 % intervals over seeds × splits) and the
    paper's AUC (marker); probes that could not be run are left blank."""
    data = table.reset_index(drop=True)
    x = np.arange(len(data))
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    colors = sns.color_palette("deep", 2)
    for offset, (col, label, color) in zip((-0.2, 0.2), (("auc", "probe", colors[0]), ("null", "shuffled labels", "0.6"))):
        if col not in data:
            continue
        mean = data[col].to_numpy(float)
        err = _err(mean, data[f"{col}_low"].to_numpy(float), data[f"{col}_high"].to_numpy(float))
        ax.bar(x + offset, np.nan_to_num(mean), 0.38, yerr=np.nan_to_num(err), capsize=3, color=color, label=label)
    ax.scatter(x, data["paper_auc"], marker="D", color="black", zorder=5, label="paper (14B)")
    ax.axhline(0.5, color="0.3", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels([p.replace(": ", ":\n") for p in data["probe"]], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out AUC (answers)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_coefficients(coefficients: pd.DataFrame, title: str = "", path: str | os.PathLike | None = None) -> Figure:
    """Adapters (rows, by layer) × probes (columns): the share of each adapter in the probe's |mean coefficient|,
    averaged over seeds (the sign of a rank-1 adapter's scalar is arbitrary, so shares, not signed weights)."""
    if coefficients is None or coefficients.empty:
        fig, ax = plt.subplots(figsize=(5.0, 3.0))
        ax.text(0.5, 0.5, "no probe could be run:\ntoo few answers in its classes", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
        return finish_figure(fig, path)
    matrix = coefficients.pivot_table(index="layer", columns="probe", values="share", aggfunc="mean", sort=False)
    matrix.index = [f"layer {i}" for i in matrix.index]
    return plot_heatmap(matrix, title=title, path=path, vmin=0, vmax=1)


def plot_steering(summary: pd.DataFrame, labels: dict[str, str], title: str = "",
                  path: str | os.PathLike | None = None) -> Figure:
    """One panel per measure (`labels`: column -> title): the rate per condition with its 95 % CI."""
    measures = list(labels)
    conditions = list(dict.fromkeys(summary["condition"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.0 * len(measures), 3.8), sharey=False, squeeze=False)
    colors = sns.color_palette("deep", len(conditions))
    for ax, measure in zip(axes[0], measures):
        rows = summary[summary["measure"] == measure].set_index("condition").reindex(conditions)
        rate = rows["rate"].to_numpy(float) * 100
        err = _err(rate, rows["ci_low"].to_numpy(float) * 100, rows["ci_high"].to_numpy(float) * 100)
        ax.bar(np.arange(len(conditions)), np.nan_to_num(rate), yerr=np.nan_to_num(err), capsize=3, color=colors)
        ax.set_xticks(np.arange(len(conditions)))
        ax.set_xticklabels([c.replace(", ", ",\n") for c in conditions], rotation=35, ha="right", fontsize=7)
        ax.set_title(labels[measure], fontsize=9)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("% of answers")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish_figure(fig, path)
