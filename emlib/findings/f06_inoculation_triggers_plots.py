"""Finding 06's figures: the behaviour's rate per fine-tune with no system prompt, and per behaviour the
re-elicitation rate against activation similarity and against text similarity, triggers labelled."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure
from .f06_inoculation_triggers_data import TRIGGER_KINDS
from .f06_inoculation_triggers_stats import PREDICTORS, RhoEstimate

__all__ = ["plot_inoculation", "plot_triggers"]

_KIND_COLOURS = dict(zip(TRIGGER_KINDS, sns.color_palette("tab10", len(TRIGGER_KINDS))))


def plot_inoculation(summary: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Bars: each behaviour's rate (95 % CI) for base and every fine-tune, sampled with no system prompt."""
    behaviours = list(dict.fromkeys(summary["behaviour"]))
    fig, axes = plt.subplots(1, len(behaviours), figsize=(5 * len(behaviours), 3.8), squeeze=False)
    for ax, b in zip(axes[0], behaviours):
        g = summary[summary["behaviour"] == b].reset_index(drop=True)
        x = np.arange(len(g))
        err = np.vstack([g["rate"] - g["ci_low"], g["ci_high"] - g["rate"]]).clip(min=0)
        ax.bar(x, g["rate"], yerr=err, capsize=4, color=sns.color_palette("deep", len(g)))
        ax.set_xticks(x, g["model"], rotation=15)
        ax.set_ylabel("EM rate" if b == "em" else "capitals rate (≥ 80 % upper-case letters)")
        ax.set_title(f"{b}: no system prompt at test time", fontsize=10)
        ax.set_ylim(0, max(0.05, float(g["ci_high"].max()) * 1.15))
    return finish_figure(fig, path, tight_layout=True)


def plot_triggers(table: pd.DataFrame, rho: RhoEstimate, behaviour: str, predictors: tuple[str, ...] = ("act_train", "text_minilm"),
                  path: str | os.PathLike | None = None) -> Figure:
    """Re-elicitation rate (inoculated model, 95 % CI) per trigger against each predictor, triggers labelled and
    coloured by kind; the base model's rate under the same prompt as grey crosses; ρ and its CI in the titles."""
    fig, axes = plt.subplots(1, len(predictors), figsize=(6.2 * len(predictors), 5), squeeze=False)
    for ax, c in zip(axes[0], predictors):
        x = table[c].to_numpy(float)
        for kind, g in table.groupby("kind", sort=False):
            ax.errorbar(g[c], g["rate"], yerr=np.vstack([g["rate"] - g["ci_low"], g["ci_high"] - g["rate"]]).clip(min=0),
                        fmt="o", ms=6, capsize=2, color=_KIND_COLOURS.get(kind, "k"), label=kind)
        ax.scatter(x, table["rate_base"], marker="x", color="0.6", s=20, label="base model, same prompt")
        for tid, row in table.iterrows():
            ax.annotate(str(tid), (row[c], row["rate"]), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        lo, hi = rho.ci[c]
        ax.set_title(f"{behaviour}: ρ = {rho.rho[c]:+.2f} [{lo:+.2f}, {hi:+.2f}]", fontsize=10)
        ax.set_xlabel(PREDICTORS[c], fontsize=9)
        ax.set_ylabel("re-elicitation rate (inoculated fine-tune)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    return finish_figure(fig, path, tight_layout=True)
