"""Finding 13's figures: predicted vs actual shifts, how one removal moves the outcome distribution, and the
agreement of influence functions with unrolled differentiation against training length."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..report.plots import finish_figure

__all__ = ["plot_shifts", "plot_mover", "plot_agreement", "pick_examples"]



def plot_shifts(examples: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Predicted (unrolled differentiation) vs actual (retraining) change of the mean and of the variance."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, name, label in zip(axes, ("mean", "var"), ("mean", "variance")):
        for mask, color, what in ((examples["random"], "tab:blue", "random removals"),
                                  (examples["candidate"] & ~examples["random"], "tab:orange", "method's candidates")):
            ax.scatter(examples.loc[mask, f"pred_d{name}"], examples.loc[mask, f"act_d{name}"], s=22, alpha=0.8,
                       color=color, label=what)
        values = np.abs(examples[[f"pred_d{name}", f"act_d{name}"]].to_numpy())
        lim = values.max() * 1.1
        ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=1, ls="--", label="y = x")
        ax.axhline(0, color="0.85", lw=0.8)
        ax.axvline(0, color="0.85", lw=0.8)
        linthresh = float(np.median(values[values > 0])) if (values > 0).any() else 1.0
        ax.set_xscale("symlog", linthresh=linthresh)  # linear near zero, logarithmic for the few large removals
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_xlabel(f"predicted change of the {label}")
        ax.set_ylabel(f"actual change of the {label} (retrained)")
        ax.set_title(f"Removing one example: {label} of the target logit over seeds (symlog axes)", fontsize=9)
    axes[0].legend(fontsize=8)
    return finish_figure(fig, path, tight_layout=True)


def pick_examples(examples: pd.DataFrame) -> tuple[int, int]:
    """(variance mover, mean mover): the confirmed mover with the largest sd shift in typical units (else the
    candidate with the largest), and the random removal that moves the mean most."""
    movers = examples[examples["confirmed"]]
    pool = movers if len(movers) else examples[examples["candidate"]]
    var_mover = int(pool.sort_values("act_u", ascending=False)["example"].iloc[0])
    rand = examples[examples["random"]]
    mean_mover = int(rand.loc[rand["act_dmean"].abs().idxmax(), "example"])
    return var_mover, mean_mover


def plot_mover(base: np.ndarray, actual: np.ndarray, pred: np.ndarray, examples: pd.DataFrame, chosen: list[int],
               images: np.ndarray, target_image: np.ndarray, path: str | os.PathLike | None = None) -> Figure:
    """One row per chosen removal: each seed's change against how far that seed's outcome sits from the mean
    (a mean shift is flat, a variance change slopes), the shift of every quantile, and the removed image."""
    fig, axes = plt.subplots(len(chosen), 3, figsize=(12, 3.6 * len(chosen)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 3, 1]})
    rows = examples.reset_index(drop=True)
    qs = np.linspace(0.05, 0.95, 19)
    for (left, mid, img), k, color in zip(axes, chosen, ("tab:red", "tab:blue", "tab:green")):
        i = int(np.flatnonzero(rows["example"].to_numpy() == k)[0])
        r = rows.iloc[i]
        dev = base - base.mean()
        left.scatter(dev, actual[i] - base, s=8, alpha=0.5, color=color, label="retrained")
        left.scatter(dev, pred[i] - base, s=10, marker="x", lw=0.6, alpha=0.6, color="0.3", label="predicted")
        left.axhline(0, color="0.7", lw=0.8)
        left.set_xlabel("seed's outcome minus the mean over seeds (full data)")
        left.set_ylabel("seed's change on removal")
        left.set_title(f"removing #{k}: d mean {r.act_dmean:+.1e}, d sd {r.act_dsd:+.1e} "
                       f"({r.act_m:.2f} and {r.act_u:.2f} x a typical removal)", fontsize=8)
        left.legend(fontsize=7)
        mid.plot(qs, np.quantile(actual[i], qs) - np.quantile(base, qs), "o-", ms=3, color=color, label="retrained")
        mid.plot(qs, np.quantile(pred[i], qs) - np.quantile(base, qs), "--", color="0.3", label="predicted")
        mid.axhline(0, color="0.7", lw=0.8)
        mid.set_xlabel("quantile of the outcome over seeds")
        mid.set_ylabel("shift of that quantile")
        mid.legend(fontsize=7)
        for ax in (left, mid):
            ax.ticklabel_format(style="sci", axis="y", scilimits=(-2, 2))
        img.imshow(np.concatenate([target_image, np.full((8, 1), np.nan), images[k]], 1), cmap="gray_r")
        img.set_title(f"target | #{k}", fontsize=8)
        img.axis("off")
    return finish_figure(fig, path, tight_layout=True)


def plot_agreement(agreement: pd.DataFrame, path: str | os.PathLike | None = None) -> Figure:
    """Left: median per-seed error |IF - UD| / |UD| against training length, 95 % CI, and the other-seed null;
    right: the correlation over training examples of IF- and UD-predicted shifts of mean and sd."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    x = agreement["length"]
    left.plot(x, agreement["err"], "o-", color="tab:purple", label="same seed")
    left.fill_between(x, agreement["err_ci_low"], agreement["err_ci_high"], color="tab:purple", alpha=0.2, lw=0)
    left.plot(x, agreement["err_null"], "--", color="0.4", label="another seed's IF (null)")
    left.set_ylabel("median over seeds of |IF - UD| / |UD|")
    left.set_ylim(bottom=0)
    for name, color in (("mean", "tab:blue"), ("sd", "tab:red")):
        right.plot(x, agreement[f"r_{name}"], "o-", color=color, label=f"change of the {name}")
        right.fill_between(x, agreement[f"r_{name}_ci_low"], agreement[f"r_{name}_ci_high"], color=color, alpha=0.2, lw=0)
    right.set_ylabel("correlation of IF- and UD-predicted shifts")
    right.set_ylim(min(0.0, float(np.nanmin(agreement["r_sd_ci_low"])) - 0.05), 1.02)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel("training length (SGD steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Influence function vs unrolled differentiation as training lengthens", fontsize=10)
    return finish_figure(fig, path, tight_layout=True)
