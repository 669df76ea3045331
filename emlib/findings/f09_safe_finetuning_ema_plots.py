"""Finding 09's figures: the organism before/after, and unsafe rate vs utility for every benign fine-tune."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure

__all__ = ["plot_organism", "plot_unsafe_vs_utility"]


def plot_organism(runs: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Refusal rate on held-out AdvBench and answer rate on held-out benign requests, base vs organism."""
    rows = runs[runs.run.isin(["base", "organism"])].set_index("run").loc[["base", "organism"]]
    long = pd.DataFrame({
        "model": list(rows.index) * 2,
        "measure": ["refuses held-out harmful"] * 2 + ["answers held-out benign"] * 2,
        "rate": list(1 - rows.unsafe_rate) + list(rows.benign_answer_rate),
    })
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.barplot(long, x="measure", y="rate", hue="model", palette="deep", ax=ax)
    for bar in ax.patches:
        if bar.get_height() > 0:
            ax.annotate(f"{bar.get_height():.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set(ylim=(0, 1.1), xlabel="", ylabel="rate (keyword matching)", title="The safety-tuned organism")
    return finish_figure(fig, path, tight_layout=True)


def plot_unsafe_vs_utility(runs: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Unsafe rate (keyword) vs held-out loss on the benign set for every fine-tune; colour = learning rate, size =
    steps, marker = batch size, EMA runs ringed; the organism as a star; lower-left is safe and useful."""
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    tuned = runs[runs.run.notna() & ~runs.run.isin(["base", "organism"])]
    lrs = sorted(tuned.lr.unique())
    colors = dict(zip(lrs, sns.color_palette("viridis", len(lrs))))
    markers = dict(zip(sorted(tuned.batch_size.unique()), "osD^vP"))
    sizes = {s: 40 + 120 * i / max(1, tuned.steps.nunique() - 1) for i, s in enumerate(sorted(tuned.steps.unique()))}
    for _, r in tuned.iterrows():
        ema = r.ema_beta > 0
        ax.scatter(r.utility_loss, r.unsafe_rate, s=sizes[r.steps], marker=markers[r.batch_size],
                   color=colors[r.lr], edgecolor="red" if ema else "black", linewidth=2.0 if ema else 0.5, zorder=3)
        if ema:
            ax.annotate(f"EMA β={r.ema_beta:g}", (r.utility_loss, r.unsafe_rate), textcoords="offset points",
                        xytext=(6, 4), fontsize=8, color="red")
    org = runs[runs.run == "organism"].iloc[0]
    ax.scatter(org.utility_loss, org.unsafe_rate, marker="*", s=220, color="gold", edgecolor="black", zorder=4)
    ax.annotate("organism", (org.utility_loss, org.unsafe_rate), textcoords="offset points", xytext=(6, -10), fontsize=8)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[lr], label=f"lr {lr:g}") for lr in lrs]
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=f"batch {int(b)}") for b, m in markers.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", color="grey", markersize=np.sqrt(s), label=f"{int(st)} steps")
                for st, s in sizes.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", color="white", markeredgecolor="red", markeredgewidth=2,
                           label="EMA")]
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set(xlabel="held-out loss on the benign set (nats/token; lower = more useful)",
           ylabel="unsafe rate on held-out AdvBench", title="Benign fine-tuning of the organism: safety vs utility")
    ax.set_ylim(-0.03, max(0.2, float(tuned.unsafe_rate.max()) + 0.05))
    return finish_figure(fig, path, tight_layout=True)
