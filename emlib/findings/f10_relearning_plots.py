"""Finding 10's figures: forget accuracy before/after relearning per setting, recovery against the two weight-space
predictors, and the retain loss along the straight path from the original to each model."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..report.plots import finish_figure
from .f10_relearning_train import METHODS, RETRAIN

__all__ = ["plot_relearning", "plot_predictors", "plot_paths"]

SHORT = {"gradient_ascent": "GA", "retain_finetune": "FT", "random_relabel": "RR", "weight_noise": "WN",
         "weight_distance": "WD"}


def _colors() -> dict[str, tuple]:
    return dict(zip(METHODS, sns.color_palette("deep", len(METHODS))))



def plot_relearning(summary: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Forget accuracy after unlearning (open circle) and after relearning on the retain set (filled), one pair per
    method x strength (seed means); greyed pairs did not unlearn effectively. Lines: original and retrain."""
    colors = _colors()
    rows = summary[summary["method"].isin(METHODS)].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.2))
    ref = summary.set_index("method")
    ax.axhline(ref.loc["original", "forget_before"], color="0.3", ls=":", lw=1, label="original")
    ax.axhline(ref.loc[RETRAIN, "forget_before"], color="0.4", ls="--", lw=1, label="retrain")
    ax.axhline(ref.loc[RETRAIN, "forget_after"], color="0.4", lw=1.5, label="retrain, relearned")
    for i, row in rows.iterrows():
        c = colors[row["method"]] if row["effective"] else (0.75, 0.75, 0.75)
        ax.annotate("", xy=(i, row["forget_after"]), xytext=(i, row["forget_before"]),
                    arrowprops=dict(arrowstyle="->", color=c, lw=1.5))
        ax.plot(i, row["forget_before"], "o", mfc="white", mec=c, ms=7)
        ax.plot(i, row["forget_after"], "o", color=c, ms=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{SHORT[m]} {s:g}" for m, s in zip(rows["method"], rows["strength"])], rotation=60, fontsize=8)
    ax.set_ylabel("forget-set accuracy")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("Unlearned (open) -> relearned on the retain set only (filled); grey: not effective", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return finish_figure(fig, path, tight_layout=True)


def plot_predictors(summary: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Forget accuracy after relearning against L2 distance to the original (left, log scale) and against the
    linear-path loss barrier (right); filled markers: effective settings; star: the retrain."""
    colors = _colors()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharey=True)
    rows = summary[summary["method"].isin(METHODS)]
    ref = summary[summary["method"] == RETRAIN]
    for ax, col, label in ((axes[0], "l2", "L2 distance to the original"),
                           (axes[1], "barrier", "loss barrier on the linear path (nats)")):
        for method, group in rows.groupby("method", sort=False):
            labelled = False
            for effective, marker_face in ((True, colors[method]), (False, "white")):
                g = group[group["effective"] == effective]
                if len(g):
                    ax.scatter(g[col], g["forget_after"], s=40, color=marker_face, edgecolors=colors[method],
                               label=None if labelled else SHORT[method])
                    labelled = True
        ax.scatter(ref[col], ref["forget_after"], marker="*", s=160, color="0.3", label="retrain")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    if (summary["l2"] > 0).any():
        axes[0].set_xscale("log")
        axes[0].xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("forget accuracy after relearning")
    axes[0].legend(fontsize=7)
    return finish_figure(fig, path, tight_layout=True)


def plot_paths(curves: pd.DataFrame, settings: list[tuple[str, float]], path: str | os.PathLike | None = None) -> Figure:
    """Retain-set loss along the straight path from the original (t = 0) to each of `settings` (method, strength)
    and to the retrain (t = 1), first seed."""
    colors = {**_colors(), RETRAIN: (0.3, 0.3, 0.3)}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, strength in [*settings, (RETRAIN, 0.0)]:
        c = curves[(curves["method"] == method) & np.isclose(curves["strength"], strength)].sort_values("t")
        label = "retrain" if method == RETRAIN else f"{SHORT[method]} {strength:g}"
        ax.plot(c["t"], c["retain_loss"], marker="o", ms=3, color=colors[method], label=label)
    ax.set_xlabel("t (0: original, 1: unlearned model)")
    ax.set_ylabel("retain-set loss (nats, log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title("Straight path from the original, first seed", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return finish_figure(fig, path, tight_layout=True)
