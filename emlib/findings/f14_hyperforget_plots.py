"""Finding 14's figures: forget vs retain accuracy per sampled model beside the baselines; relearning."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure

__all__ = ["plot_forget_retain", "plot_relearn"]

_MARKERS = {"original": "o", "retrain": "*", "ascent": "v", "finetune": "s", "ascent+repair": "D"}


def plot_forget_retain(models: pd.DataFrame, baselines: pd.DataFrame, retain_margin: float | None = None,
                       path: str | os.PathLike | None = None) -> Figure:
    """Forget (x) vs retain (y) test accuracy: every sampled model (forget and control conditions) and every
    baseline (one marker per seed and class); left the classes in the training conditions, right the held-out ones."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, squeeze=False)
    colors = sns.color_palette("deep", 8)
    for ax, held in zip(axes[0], (False, True)):
        m, b = models[models.held_out == held], baselines[baselines.held_out == held]
        for k, (method, marker) in enumerate(_MARKERS.items()):
            s = b[b.method == method]
            ax.scatter(100 * s.forget_acc, 100 * s.retain_acc, s=46, marker=marker, color=colors[(k + 1) % 7],
                       edgecolor="black", linewidth=0.5, label=method, zorder=2, alpha=0.8)
        for cond, color, label in (("control", colors[7], "sampled, control condition"),
                                   ("forget", colors[0], "sampled, forget condition")):
            s = m[m.condition == cond]  # drawn over the baselines: one small dot per sampled model
            ax.scatter(100 * s.forget_acc, 100 * s.retain_acc, s=12, alpha=0.5, color=color, label=label,
                       edgecolor="white", linewidth=0.3, zorder=4)
        if retain_margin is not None:
            orig = b[b.method == "original"].retain_acc.mean()
            ax.axhline(100 * (orig - retain_margin), color="grey", ls=":", lw=1, label="original − retain margin")
        n_cls = m[["seed", "cls"]].drop_duplicates().shape[0]
        ax.set_title(("held-out class (never forgotten in the weight dataset)" if held
                      else "classes in the training conditions") + f", {n_cls} seed×class", fontsize=10)
        ax.set_xlabel("forget accuracy (%)")
        ax.set_xlim(-3, 103)
    axes[0][0].set_ylabel("retain accuracy (%)")
    low = min(models.retain_acc.min(), baselines.retain_acc.min())
    axes[0][0].set_ylim(max(0, 100 * low - 3), 100.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_relearn(relearn: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Forget accuracy before and after fine-tuning on the retained classes only, by model and class group."""
    long = relearn.melt(id_vars=["model", "held_out"], value_vars=["forget_before", "forget_after"],
                        var_name="when", value_name="forget_acc")
    long["when"] = long["when"].map({"forget_before": "before", "forget_after": "after retain-only fine-tuning"})
    long["group"] = np.where(long.held_out, "held-out class", "trained classes")
    long["forget_acc"] *= 100
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True, squeeze=False)
    for ax, group in zip(axes[0], ("trained classes", "held-out class")):
        sns.barplot(data=long[long.group == group], x="model", y="forget_acc", hue="when", ax=ax,
                    order=["sampled", "ascent", "retrain"], errorbar=("ci", 95), palette="deep")
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("forget accuracy (%)" if group == "trained classes" else "")
        if group == "held-out class":
            ax.get_legend().remove()
        else:
            ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    return finish_figure(fig, path)
