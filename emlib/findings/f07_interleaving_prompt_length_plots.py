"""Finding 07's figures: EM reduction per interleaved set at each prompt length, and position in the activation
region against EM reduction."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..report.plots import finish_figure

__all__ = ["plot_reduction_by_length", "plot_region"]


def plot_reduction_by_length(reductions: pd.DataFrame, levels: list[str],
                             path: str | os.PathLike | None = None) -> Figure:
    """Bars of EM(EM only) − EM(set) in points per set, one bar per prompt length, with 95 % CI error bars."""
    data = reductions[reductions["length"].isin(levels)]
    labels = list(dict.fromkeys(data["label"]))
    colors = sns.color_palette("crest", len(levels))
    width = 0.8 / len(levels)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 1.5), 4.2))
    for j, (lvl, color) in enumerate(zip(levels, colors)):
        rows = data[data["length"] == lvl].set_index("label").loc[labels]
        x = np.arange(len(labels)) + (j - (len(levels) - 1) / 2) * width
        y = rows["em_reduction"].to_numpy() * 100
        err = np.abs(np.vstack([y - rows["ci_low"].to_numpy() * 100, rows["ci_high"].to_numpy() * 100 - y]))
        ax.bar(x, y, width, color=color, label=lvl, yerr=err, capsize=2, error_kw={"lw": 0.8})
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("EM reduction vs EM only (points)")
    ax.set_title("EM reduction from interleaving, measured at each prompt length", fontsize=9)
    ax.legend(title="prompt length", fontsize=8, title_fontsize=8)
    return finish_figure(fig, path, tight_layout=True)


def plot_region(sets: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Each interleaved set's position (distance to the harmful set's centroid, in its spread) against its EM
    reduction over all prompt lengths, with 95 % CIs; moved sets drawn apart."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for selection, marker in (("random", "o"), ("near", "D")):
        rows = sets[sets["selection"] == selection]
        if rows.empty:
            continue
        y = rows["em_reduction"].to_numpy() * 100
        err = np.abs(np.vstack([y - rows["ci_low"].to_numpy() * 100, rows["ci_high"].to_numpy() * 100 - y]))
        ax.errorbar(rows["position"], y, yerr=err, fmt=marker, capsize=3, lw=0.8,
                    label="random draw" if selection == "random" else "moved into the region (nearest)")
        for j, r in enumerate(rows.itertuples()):  # sources without the builtin_ prefix, placed above / below in turn
            ax.annotate(r.source.removeprefix("builtin_"), (r.position, r.em_reduction * 100), fontsize=7,
                        xytext=(4, 6 if (j + (selection == "near")) % 2 == 0 else -11), textcoords="offset points")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("position: distance to the harmful set's centroid (harmful spread = 1)")
    ax.set_ylabel("EM reduction vs EM only (points)")
    ax.set_title("Does closeness to the harmful set predict the EM reduction?", fontsize=9)
    ax.legend(fontsize=8)
    return finish_figure(fig, path, tight_layout=True)
