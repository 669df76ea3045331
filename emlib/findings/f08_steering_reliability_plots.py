"""Finding 08's figures: per-item steerability by prompt type, the anti-steerable fraction per set beside the paper's,
what predicts steerability across sets, and the exploratory layer sweep."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure

__all__ = ["plot_steerability", "plot_sets", "plot_predictors", "plot_sweep"]


def plot_steerability(per_item: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Every test item's steerability (change of logit(matching) − logit(not matching)) per prompt type, all sets
    pooled, with the norm-matched random direction; the label gives the mean and the anti-steerable share."""
    order = list(dict.fromkeys(per_item["type"]))
    fig, ax = plt.subplots(figsize=(11, 4.2))
    palette = sns.color_palette("deep", len(order) - 1) + [(0.6, 0.6, 0.6)]
    sns.violinplot(data=per_item, x="type", y="steer", hue="type", order=order, hue_order=order, palette=palette,
                   cut=0, inner=None, linewidth=0.6, ax=ax, legend=False)
    sns.stripplot(data=per_item, x="type", y="steer", order=order, color="k", size=1.5, alpha=0.3, jitter=0.3, ax=ax)
    stats = per_item.groupby("type")["steer"].agg(["mean", lambda s: (s < 0).mean()])
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{t.replace('+', chr(10) + '+')}\n{stats.loc[t, 'mean']:+.3f} / {stats.iloc[:, 1][t]:.0%}"
                        for t in order], fontsize=7)
    ax.axhline(0, color="0.3", lw=1)
    ax.set_xlabel("prompt type the vector was built from (mean steerability / anti-steerable share)")
    ax.set_ylabel("steerability (logit difference,\nsteered − unsteered)")
    ax.set_title("Per-item steering effect, all sets pooled", fontsize=10)
    return finish_figure(fig, path, tight_layout=True)


def plot_sets(per_set: pd.DataFrame, paper: pd.DataFrame, predictor_type: str,
              path: str | os.PathLike | None = None) -> Figure:
    """Anti-steerable fraction per set for the predictor type (bars, the paper's ranking left to right), mean
    steerability and answer-token bias, with the fractions the paper's code records for the 13 sets of its Figure 1 (black ticks)."""
    d = per_set[per_set["type"] == predictor_type].reset_index(drop=True)
    fig, axes = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    x = np.arange(len(d))
    axes[0].bar(x - 0.2, d["mean"], width=0.4, color="tab:blue", label="mean steerability")
    axes[0].bar(x + 0.2, d["answer_bias"].abs(), width=0.4, color="tab:orange",
                label="|answer bias|: push toward one answer token, whatever the behaviour")
    axes[0].axhline(0, color="0.3", lw=1)
    axes[0].set_ylabel("logit difference")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].bar(x, d["anti"], color="tab:red", alpha=0.8, label=f"measured ({predictor_type})")
    where = {s: i for i, s in enumerate(d["set"])}
    px = [where[s] for s in paper["set"] if s in where]
    axes[1].scatter(px, [v for s, v in zip(paper["set"], paper["paper_anti"]) if s in where], marker="_", s=250,
                    color="k", lw=2.5, label="paper (Figure 1, Llama-2-7b-chat)", zorder=3)
    axes[1].axhline(0.5, color="0.6", ls="--", lw=1)
    axes[1].set_ylabel("anti-steerable fraction")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8, loc="upper left")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(d["set"], rotation=75, ha="right", fontsize=7)
    axes[0].set_title("Per set, in the paper's order of steerability (most steerable on Llama-2-7b-chat left)", fontsize=10)
    return finish_figure(fig, path, tight_layout=True)


def plot_predictors(per_set: pd.DataFrame, predictor_type: str, rho: dict[str, float],
                    path: str | os.PathLike | None = None) -> Figure:
    """Across sets: mean cosine of the training differences with the vector, and d′ of the projections, against
    mean steerability (one point per set; persona and x-risk sets marked)."""
    d = per_set[per_set["type"] == predictor_type]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, col, label in ((axes[0], "cosine", "mean cosine(activation difference, vector)"),
                           (axes[1], "dprime", "d′ of positive vs negative projections")):
        sns.scatterplot(data=d, x=col, y="mean", hue="kind", style="kind", ax=ax, s=40)
        ax.axhline(0, color="0.8", lw=0.8)
        ax.set_xlabel(label)
        ax.set_title(f"Spearman ρ = {rho[col]:+.2f}", fontsize=10)
    axes[0].set_ylabel(f"mean steerability ({predictor_type})")
    return finish_figure(fig, path, tight_layout=True)


def plot_sweep(sweep: pd.DataFrame, layer: int, path: str | os.PathLike | None = None) -> Figure:
    """Exploratory: mean steerability and anti-steerable fraction of the prefilled vector per layer, one line per set."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, label in ((axes[0], "mean", "mean steerability"), (axes[1], "anti", "anti-steerable fraction")):
        sns.lineplot(data=sweep, x="layer", y=col, hue="set", marker="o", ax=ax, legend=ax is axes[1])
        ax.axvline(layer, color="0.6", ls="--", lw=1)
        ax.set_ylabel(label)
    axes[0].axhline(0, color="0.8", lw=0.8)
    axes[1].legend(fontsize=7, loc="best")
    axes[0].set_title("Layer sweep (exploratory; dashed: the verdict's layer)", fontsize=10)
    return finish_figure(fig, path, tight_layout=True)
