"""Finding 12's figures: the policy drawn in its 2-D layout by community, modularity vs penalty, ablation bars.

Each function returns a closed matplotlib Figure (show it as a cell's last expression) and saves a PNG at `path`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..core.stats import bootstrap_ci
from ..report.plots import finish_figure
from .f12_modular_rl_env import ACTIONS, input_axes

__all__ = ["plot_networks", "plot_penalty_sweep", "plot_interventions", "plot_training"]

_AXIS_COLOURS = {"X": plt.cm.Blues, "Y": plt.cm.Oranges}
_ARROWS = {"left": "←", "right": "→", "up": "↑", "down": "↓"}



def _community_colours(labels: list[str]) -> list:
    """A colour per community: blues for X communities, oranges for Y, greys for the rest."""
    seen = {"X": 0, "Y": 0, "": 0}
    out = []
    for a in labels:
        shade = 0.85 - 0.2 * seen[a]
        seen[a] += 1
        out.append(_AXIS_COLOURS[a](max(shade, 0.35)) if a else plt.cm.Greys(max(0.55 - 0.1 * seen[a], 0.25)))
    return out


def _draw_network(ax, policy, communities: list[set], labels: list[str], grid_size: int, prune: float, title: str) -> None:
    colours = _community_colours(labels)
    where = {n: i for i, c in enumerate(communities) for n in c}
    weights = policy.weights()
    top = max(float(np.abs(w).max()) for w in weights)
    for k, w in enumerate(weights):
        for j, i in zip(*np.nonzero(np.abs(w) > prune * top)):
            a, b = policy.pos[k][i], policy.pos[k + 1][j]
            ca, cb = where.get((k, i)), where.get((k + 1, j))
            colour = colours[ca] if ca == cb and ca is not None else (0.8, 0.8, 0.8, 1.0)
            ax.plot([a[0], b[0]], [a[1], b[1]], color=colour, lw=2.5 * abs(w[j, i]) / top, zorder=1)
    for k, pos in enumerate(policy.pos):
        c = [colours[where[(k, i)]] if (k, i) in where else "white" for i in range(len(pos))]
        ax.scatter(pos[:, 0], pos[:, 1], s=18 if k == 0 else 30, c=c, edgecolors="black", linewidths=0.4, zorder=2)
    axes_in, last = input_axes(grid_size), len(policy.pos) - 1
    for axis in ("X", "Y"):
        xs = [policy.pos[0][i, 0] for i, a in enumerate(axes_in) if a == axis]
        ax.text(float(np.mean(xs)), -0.09, f"{axis} offset inputs", ha="center", va="top", fontsize=8)
    for j, name in enumerate(ACTIONS):
        ax.text(policy.pos[last][j, 0], policy.pos[last][j, 1] + 0.05, _ARROWS[name], ha="center", va="bottom", fontsize=11)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.2, policy.pos[last][0, 1] + 0.2)
    ax.axis("off")


def _name(kind: str, pen: float) -> str:
    return "no penalty" if pen == 0 else f"locality penalty {pen:g}" if kind == "local" else f"plain L1 {pen:g}"


def plot_networks(result, seed: int, panels: list[tuple[str, float]], prune: float,
                  path: str | os.PathLike | None = None) -> Figure:
    """The policies of one seed for each (kind, penalty), in their 2-D layout: edge width ∝ |w|, colour = community
    (blues: X communities, oranges: Y, greys: neither; grey edges join two communities)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    runs = result.runs.set_index(["kind", "penalty", "seed"])
    for ax, (kind, pen) in zip(axes[0], panels):
        comms, labels = result.partitions[(kind, pen, seed)]
        q = runs.loc[(kind, pen, seed), "modularity"]
        n = sum(len(c) > 1 for c in comms)
        _draw_network(ax, result.policies[(kind, pen, seed)], comms, labels, result.grid_size, prune,
                      f"{_name(kind, pen)} (seed {seed}): Q = {q:.2f}, {n} communities")
    return finish_figure(fig, path, tight_layout=True)


def _mean_ci(ax, xs: np.ndarray, frame: pd.DataFrame, col: str, colour, label: str, offset: float = 0.0) -> None:
    groups = [frame.loc[frame.penalty == pen, col].to_numpy(dtype=float) for pen in sorted(frame.penalty.unique())]
    means = np.array([g.mean() for g in groups])
    cis = np.array([bootstrap_ci(g, n_boot=1000) for g in groups])
    for x, g in zip(xs, groups):
        ax.scatter(np.full(g.size, x + offset), g, s=12, color=colour, alpha=0.45, zorder=2)
    ax.errorbar(xs + offset, means, yerr=[means - cis[:, 0], cis[:, 1] - means], color=colour, marker="o", capsize=3,
                label=label, zorder=3)


def plot_penalty_sweep(runs: pd.DataFrame, verdict_penalty: float, path: str | os.PathLike | None = None) -> Figure:
    """Against penalty strength: Louvain modularity Q; dissociation of module vs random ablations; greedy success.
    Dots are seeds, lines the mean with a bootstrap 95 % CI over seeds."""
    l1, runs = runs[runs.kind == "L1"], runs[runs.kind == "local"]
    pens = sorted(runs.penalty.unique())
    xs = np.arange(len(pens), dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    _mean_ci(axes[0], xs, runs, "modularity", "C0", "locality penalty")
    axes[0].set_ylabel("modularity Q")
    _mean_ci(axes[1], xs, runs, "dissociation", "C2", "modules: D", -0.08)
    _mean_ci(axes[1], xs, runs, "random_dissociation", "C7", "random sets: D₀", 0.08)
    axes[1].set_ylabel("axis-specificity of ablation")
    _mean_ci(axes[2], xs, runs, "success", "C3", "locality penalty")
    if len(l1):  # the plain-L1 control at the verdict's strength, beside it
        x_l1 = xs[pens.index(verdict_penalty)] + 0.25
        for ax, col in zip(axes, ("modularity", "dissociation", "success")):
            v = l1[col].to_numpy(dtype=float)
            ax.scatter(np.full(v.size, x_l1), v, s=12, color="black", alpha=0.4)
            ax.scatter([x_l1], [v.mean()], marker="D", s=40, facecolors="none", edgecolors="black",
                       label=f"plain L1 {verdict_penalty:g}")
        axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    axes[2].set_ylabel("greedy success rate")
    axes[2].set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xticks(xs, [f"{p:g}" + (" *" if p == verdict_penalty else "") for p in pens])
        ax.set_xlabel("locality penalty (* = verdict)")
        ax.grid(alpha=0.3)
    return finish_figure(fig, path, tight_layout=True)


_ORDER = ["none", "X module", "Y module", "random (X size)", "random (Y size)"]


def plot_interventions(ablations: pd.DataFrame, panels: list[tuple[str, float]],
                       path: str | os.PathLike | None = None) -> Figure:
    """X and Y error of the policy after each ablation (mean over seeds, 95 % CI; dots are seeds), per (kind,
    penalty). 0.5 is chance: the policy no longer knows which way to go along that axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 3.8), squeeze=False, sharey=True)
    xs = np.arange(len(_ORDER), dtype=float)
    for ax, (kind, pen) in zip(axes[0], panels):
        sub = ablations[(ablations.kind == kind) & (ablations.penalty == pen)]
        for off, col, colour, name in ((-0.2, "x_error", "C0", "X error"), (0.2, "y_error", "C1", "Y error")):
            vals = [sub.loc[sub.ablation == a, col].to_numpy(dtype=float) for a in _ORDER]
            means = np.array([v.mean() for v in vals])
            cis = np.array([bootstrap_ci(v, n_boot=1000) for v in vals])
            ax.bar(xs + off, means, 0.4, color=colour, label=name,
                   yerr=[means - cis[:, 0], cis[:, 1] - means], capsize=3)
            for x, v in zip(xs, vals):
                ax.scatter(np.full(v.size, x + off), v, s=8, color="black", alpha=0.5, zorder=3)
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_xticks(xs, ["none", "X module", "Y module", "random\n(X size)", "random\n(Y size)"], fontsize=8)
        ax.set_title(_name(kind, pen), fontsize=10)
    axes[0, 0].set_ylabel("P(step away from goal | move on that axis)")
    axes[0, 0].legend(fontsize=8)
    return finish_figure(fig, path, tight_layout=True)


def plot_training(curves: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Training success rate (episodes finished in each rollout) against environment steps, mean over seeds."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for i, ((kind, pen), sub) in enumerate(curves.groupby(["kind", "penalty"], sort=False)):
        mean = sub.groupby("steps").success.mean()
        ax.plot(mean.index, mean.values, color=f"C{i}", ls="--" if kind == "L1" else "-", label=_name(kind, pen))
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate (sampled actions)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig, path, tight_layout=True)
