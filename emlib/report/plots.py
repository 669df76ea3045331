"""Figures for the findings: EM-rate bars, the aligned/coherent quadrant, line plots and heatmaps.

Every function returns a matplotlib Figure that is already closed in pyplot, so it is never shown twice
in a notebook: leave it as a cell's last expression (or call `display(fig)`) to show it. Pass `path`
to also save it as a PNG (written atomically).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..core.cache import atomic_write_bytes
from ..core.em import ALIGNED_THRESHOLD, COHERENT_THRESHOLD

__all__ = ["save_figure", "finish_figure", "plot_em_rates", "plot_quadrant", "plot_lines", "plot_heatmap", "plot_trajectory"]

_DPI = 150


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save `fig` as a PNG at `path` atomically (temp file beside it, then rename) and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def finish_figure(fig: Figure, path: str | os.PathLike | None = None, tight_layout: bool = False) -> Figure:
    """Optionally tighten the layout, save `fig` to `path` (when given) and close it so it is not shown twice."""
    if tight_layout:
        fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    plt.close(fig)
    return fig


def _new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.2), **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    return fig, axes.ravel()


def _palette(n: int) -> list:
    return sns.color_palette("deep", max(n, 1))


def _levels(series: pd.Series) -> list:
    return list(dict.fromkeys(series.tolist()))


def plot_em_rates(
    summary: pd.DataFrame,
    x: str = "model",
    hue: str | None = None,
    title: str = "",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Bars of EM rate (%) per `x` (grouped by `hue`) with 95% CI error bars; coherence rate in a lower panel."""
    for col in (x, "em_rate", *(c for c in (hue,) if c)):
        if col not in summary.columns:
            raise KeyError(f"summary lacks column {col!r}; has {list(summary.columns)}")
    data = summary.reset_index(drop=True)
    has_coh = "coherence_rate" in data.columns
    xs = _levels(data[x])
    hues = _levels(data[hue]) if hue else [None]
    width = 0.8 / len(hues)
    colors = _palette(len(hues))
    height = 4.6 if has_coh else 3.8
    fig, axes = _new_figure(
        2 if has_coh else 1, 1, figsize=(max(4.0, 1.0 + 0.9 * len(xs) * max(1, len(hues) * 0.6)), height),
        sharex=True, gridspec_kw={"height_ratios": [3, 1]} if has_coh else None,
    )
    ax = axes[0]
    for j, level in enumerate(hues):
        rows = data if hue is None else data[data[hue] == level]
        pos = np.array([xs.index(v) for v in rows[x]], dtype=float) + (j - (len(hues) - 1) / 2) * width
        rate = rows["em_rate"].to_numpy(dtype=float) * 100
        yerr = None
        if {"em_ci_low", "em_ci_high"} <= set(rows.columns):
            lo = rows["em_ci_low"].to_numpy(dtype=float) * 100
            hi = rows["em_ci_high"].to_numpy(dtype=float) * 100
            yerr = np.vstack([np.clip(rate - lo, 0, None), np.clip(hi - rate, 0, None)])
        ax.bar(pos, np.nan_to_num(rate), width=width * 0.95, yerr=yerr, capsize=3, color=colors[j],
               label=None if level is None else str(level), ecolor="0.2")
        if has_coh:
            coh = rows["coherence_rate"].to_numpy(dtype=float) * 100
            axes[1].bar(pos, np.nan_to_num(coh), width=width * 0.95, color=colors[j], alpha=0.55)
            for p, c in zip(pos, coh):
                axes[1].text(p, 2, "n/a" if np.isnan(c) else f"{c:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("EM rate (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    if hue:
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    bottom = axes[-1]
    bottom.set_xticks(range(len(xs)))
    bottom.set_xticklabels([str(v) for v in xs], rotation=20 if len(xs) > 3 else 0, ha="right" if len(xs) > 3 else "center")
    bottom.set_xlabel(x)
    if has_coh:
        axes[1].set_ylim(0, 100)
        axes[1].set_ylabel("coherent (%)", fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_quadrant(
    df: pd.DataFrame,
    hue: str | None = "model",
    path: str | os.PathLike | None = None,
    title: str = "",
) -> Figure:
    """Scatter of coherent (x) vs aligned (y) per answer with the EM thresholds and the EM quadrant shaded."""
    data = df.copy()
    data["aligned"] = pd.to_numeric(data["aligned"], errors="coerce")
    data["coherent"] = pd.to_numeric(data["coherent"], errors="coerce")
    data = data.dropna(subset=["aligned", "coherent"]).reset_index(drop=True)
    use_hue = hue if hue and hue in data.columns else None
    fig, axes = _new_figure(figsize=(5.6, 4.8))
    ax = axes[0]
    ax.add_patch(Rectangle((COHERENT_THRESHOLD, -2), 104 - COHERENT_THRESHOLD, ALIGNED_THRESHOLD + 2,
                           facecolor="tab:red", alpha=0.10, edgecolor="none", zorder=0))
    ax.text(100, ALIGNED_THRESHOLD - 1, "EM quadrant\n(misaligned & coherent)", ha="right", va="top", fontsize=7,
            color="tab:red", zorder=5, bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    ax.axhline(ALIGNED_THRESHOLD, color="tab:red", ls="--", lw=1)
    ax.axvline(COHERENT_THRESHOLD, color="0.4", ls="--", lw=1)
    if len(data):
        sns.scatterplot(data=data, x="coherent", y="aligned", hue=use_hue, ax=ax, s=22, alpha=0.6,
                        edgecolor="none", legend=bool(use_hue))
        if use_hue and ax.get_legend() is not None:
            sns.move_legend(ax, "upper left", fontsize=8, title_fontsize=8, framealpha=0.8)
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("coherent (0-100)")
    ax.set_ylabel("aligned (0-100)")
    dropped = len(df) - len(data)
    ax.set_title(title + (f"  ({dropped} unscored dropped)" if dropped else ""), fontsize=10)
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_lines(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ci_low: str | None = None,
    ci_high: str | None = None,
    title: str = "",
    path: str | os.PathLike | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """One line of `y` against `x` per `hue` level, with an optional CI band between `ci_low` and `ci_high`."""
    data = df.copy()
    data = data.dropna(subset=[x, y]).sort_values(x, kind="stable")
    levels = _levels(data[hue]) if hue else [None]
    colors = _palette(len(levels))
    fig, axes = _new_figure()
    ax = axes[0]
    for level, color in zip(levels, colors):
        rows = data if level is None else data[data[hue] == level]
        ax.plot(rows[x], rows[y], marker="o", ms=4, color=color, label=None if level is None else str(level))
        if ci_low and ci_high:
            ax.fill_between(rows[x].to_numpy(), rows[ci_low].to_numpy(dtype=float),
                            rows[ci_high].to_numpy(dtype=float), color=color, alpha=0.2, lw=0)
    ax.set_xlabel(xlabel if xlabel is not None else x)
    ax.set_ylabel(ylabel if ylabel is not None else y)
    ax.set_title(title)
    if hue:
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return finish_figure(fig, path)


def plot_heatmap(
    matrix: pd.DataFrame,
    title: str = "",
    path: str | os.PathLike | None = None,
    fmt: str = ".2f",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "rocket_r",
    annot: bool | None = None,
) -> Figure:
    """An annotated heatmap of a numeric DataFrame (rows x columns); NaN cells are left blank."""
    values = matrix.apply(pd.to_numeric, errors="coerce").astype(float)
    nrows, ncols = values.shape
    fig, axes = _new_figure(figsize=(max(4.0, 1.2 + 0.75 * ncols), max(3.0, 1.0 + 0.4 * nrows)))
    ax = axes[0]
    show_annot = annot if annot is not None else nrows * ncols <= 400
    sns.heatmap(values, ax=ax, annot=show_annot, fmt=fmt, vmin=vmin, vmax=vmax, cmap=cmap,
                linewidths=0.5, linecolor="white", annot_kws={"fontsize": 7})
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title)
    fig.tight_layout()
    return finish_figure(fig, path)



def plot_trajectory(
    projections: np.ndarray,
    steps: np.ndarray | list[int],
    title: str = "",
    path: str | os.PathLike | None = None,
) -> Figure:
    """A 2-D (PCA) trajectory coloured by training step (left) and each component against the step (right)."""
    proj = np.asarray(projections, dtype=float)
    steps = np.asarray(steps)
    if proj.ndim != 2 or proj.shape[1] < 2 or len(proj) != len(steps):
        raise ValueError(f"need steps × ≥2 projections matching {len(steps)} steps, got shape {proj.shape}")
    fig, axes = _new_figure(1, 2, figsize=(10.0, 4.2))
    left, right = axes
    left.plot(proj[:, 0], proj[:, 1], color="0.7", lw=1, zorder=1)
    points = left.scatter(proj[:, 0], proj[:, 1], c=steps, cmap="viridis", s=18, zorder=2)
    fig.colorbar(points, ax=left, label="step")
    left.set_xlabel("PC1")
    left.set_ylabel("PC2")
    for j, color in zip(range(2), _palette(2)):
        right.plot(steps, proj[:, j], marker="o", ms=3, color=color, label=f"PC{j + 1}")
    right.set_xlabel("step")
    right.set_ylabel("projection")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return finish_figure(fig, path)
