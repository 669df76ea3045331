"""Finding 11: COAR component attribution with a KAN surrogate, on a small CNN over scikit-learn's digits.

COAR (Shah, Ilyas, Madry 2024) predicts an example's margin after ablating a random subset of components with a
linear model of the ablation mask. This finding fits, per example and on the same masks, a Kolmogorov–Arnold
network instead (`f11_coar_kan_surrogate`), compares held-out correlations, and reads pairwise interactions off
the KAN by mixed finite differences, checked against the network's own m(both) − m(a) − m(b) + m(none).
The network and its perturbations are in `f11_coar_kan_model`, the per-seed work in `f11_coar_kan_seed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..core.stats import hierarchical_bootstrap
from .base import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Effect,
    FindingParams,
    ParamError,
    Verdict,
    combine,
    param,
)
from .f11_coar_kan_seed import SeedRun, run_seed

__all__ = ["STEM", "Params", "Result", "run", "verdict", "verdict_a", "verdict_b", "effect_of", "summaries"]

STEM = "11_coar_kan"


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    conv1_filters: int = param(16, min=1)
    conv2_filters: int = param(32, min=1)
    epochs: int = param(15, min=1)
    n_examples: int = param(40, min=3)
    alphas: list[float] = param([0.05, 0.1, 0.3], gt=0.0, max=0.9)
    n_train_masks: int = param(1000, min=10)
    n_heldout_masks: int = param(500, min=10)
    kan_hidden: int = param(4, min=1)
    kan_grid: int = param(3, min=1)
    kan_steps: int = param(300, min=1)
    kan_lr: float = param(0.02, gt=0.0)
    focus_alpha: float = param(0.1, gt=0.0, max=0.9)
    top_k: int = param(10, min=1)
    n_seeds: int = param(3, min=1)
    n_boot: int = param(2000, min=100)
    seed: int = param(0, min=0)

    def check(self) -> None:
        if self.focus_alpha not in self.alphas:
            raise ParamError(f"parameter FOCUS_ALPHA: {self.focus_alpha} is not one of ALPHAS {self.alphas}")
        n = self.conv1_filters + self.conv2_filters
        if self.top_k > n * (n - 1) // 2:
            raise ParamError(f"parameter TOP_K: at most {n * (n - 1) // 2} pairs for {n} components, got {self.top_k}")

    @property
    def seeds(self) -> list[int]:
        """The CNN training seeds."""
        return list(range(self.seed, self.seed + self.n_seeds))


@dataclass
class Result:
    """What run() measured: per-α effects for verdict (a), the interaction effects for (b), and per-example frames."""

    gain: dict[float, Effect]  # per α: mean over examples of corr(KAN) − corr(linear) on held-out masks
    gain_vs_null: dict[float, Effect]  # per α: that gain minus the same gain on additive (linear + noise) data
    top_vs_random: Effect  # mean |I_net| over the KAN's top-k pairs − over all pairs (a random pair's expectation)
    top_vs_important: Effect  # the same against the top-k pairs by |β_a β_b| of linear COAR (context)
    per_example: pd.DataFrame | None = None  # seed, example, alpha, corr_linear, corr_kan, corr_*_null
    interactions: pd.DataFrame | None = None  # seed, example: |I| of top/random/important pairs, rank corr, hits
    networks: pd.DataFrame | None = None  # seed, test accuracy, final training loss, times
    runs: list[SeedRun] = field(default_factory=list)
    focus_alpha: float = 0.1
    top_k: int = 10


def effect_of(name: str, values: np.ndarray, examples: np.ndarray, seeds: np.ndarray, n_boot: int, seed: int) -> Effect:
    """Mean of per-(seed, example) values with a bootstrap CI over seeds and examples (crossed: every seed
    explains the same examples), via emlib.core.stats.hierarchical_bootstrap."""
    est = hierarchical_bootstrap(values, examples, seeds, n_boot=n_boot, seed=seed)
    method = (f"bootstrap over {est.n_seeds} CNN seed(s) and {est.n_questions} examples (crossed), paired within "
              f"example ({n_boot} draws, percentile 95% CI)")
    return Effect(name, est.value, est.ci_low, est.ci_high, method)


def run(p: Params) -> Result:
    """Train the CNN per seed, perturb, fit linear and KAN surrogates per example, measure interactions, bootstrap."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster than two here
    try:
        runs = [run_seed(p, s) for s in p.seeds]
    finally:
        torch.set_num_threads(threads)
    per_example = pd.concat([r.per_example for r in runs], ignore_index=True)
    interactions = pd.concat([r.interactions for r in runs], ignore_index=True)
    networks = pd.DataFrame([r.network for r in runs])
    gain, gain_null = {}, {}
    for a in p.alphas:
        rows = per_example[np.isclose(per_example["alpha"], a)]
        d = (rows["corr_kan"] - rows["corr_linear"]).to_numpy()
        d_null = (rows["corr_kan_null"] - rows["corr_linear_null"]).to_numpy()
        ex, sd = rows["example"].to_numpy(), rows["seed"].to_numpy()
        gain[a] = effect_of(f"corr(KAN) - corr(linear), alpha={a:g}", d, ex, sd, p.n_boot, p.seed)
        gain_null[a] = effect_of(f"gain - gain on additive data, alpha={a:g}", d - d_null, ex, sd, p.n_boot, p.seed)
    ex, sd = interactions["example"].to_numpy(), interactions["seed"].to_numpy()
    top_random = effect_of(f"mean |I| of KAN top-{p.top_k} pairs - random pair", (interactions["top_abs"]
                           - interactions["random_abs"]).to_numpy(), ex, sd, p.n_boot, p.seed)
    top_important = effect_of(f"mean |I| of KAN top-{p.top_k} pairs - linear-importance pairs", (
        interactions["top_abs"] - interactions["important_abs"]).to_numpy(), ex, sd, p.n_boot, p.seed)
    return Result(gain, gain_null, top_random, top_important, per_example, interactions, networks, runs,
                  p.focus_alpha, p.top_k)


def summaries(r: Result) -> pd.DataFrame:
    """Per α: mean held-out correlation of each surrogate, share of examples where the KAN wins, gain with CI,
    and the same gain on additive null data."""
    rows = []
    for a, g in r.gain.items():
        d = r.per_example[np.isclose(r.per_example["alpha"], a)]
        rows.append({
            "alpha": a, "corr_linear": d["corr_linear"].mean(), "corr_kan": d["corr_kan"].mean(),
            "kan_wins": (d["corr_kan"] > d["corr_linear"]).mean(), "gain": g.value, "gain_ci_low": g.ci_low,
            "gain_ci_high": g.ci_high, "null_gain": (d["corr_kan_null"] - d["corr_linear_null"]).mean(),
            "gain_vs_null_ci_low": r.gain_vs_null[a].ci_low, "gain_vs_null_ci_high": r.gain_vs_null[a].ci_high,
        })
    return pd.DataFrame(rows)


def verdict_a(r: Result) -> str:
    """(a) At one α the KAN *passes* when the 95 % CI of its gain in held-out correlation over linear COAR lies
    above zero and so does the CI of that gain minus its gain on additive null data (the linear fit plus noise of
    the linear residuals' size, where a linear model is right by construction). *Reproduced* when it passes at
    every α, *partly* when at some, otherwise *not reproduced at this scale*."""
    passed = [r.gain[a].ci_low > 0 and r.gain_vs_null[a].ci_low > 0 for a in r.gain]
    if passed and all(passed):
        return REPRODUCED
    return PARTLY if any(passed) else NOT_REPRODUCED


def verdict_b(r: Result) -> str:
    """(b) *Reproduced* when the 95 % CI of mean |I_net| over the KAN's top-k pairs minus that of a random pair
    (the mean over all pairs), measured in the network itself, lies above zero; else *not reproduced*."""
    return REPRODUCED if r.top_vs_random.ci_low > 0 else NOT_REPRODUCED


def verdict(r: Result) -> Verdict:
    """Parts (a) counterfactual prediction (`verdict_a`) and (b) interactions (`verdict_b`), combined with
    base.combine: reproduced when both are, not reproduced when neither is even partly, else partly."""
    parts = {"a_counterfactuals": verdict_a(r), "b_interactions": verdict_b(r)}
    passed = [f"{a:g}" for a in r.gain if r.gain[a].ci_low > 0 and r.gain_vs_null[a].ci_low > 0]
    reason = (f"(a) KAN beats linear COAR beyond the additive null at alpha {', '.join(passed) or 'none'} of "
              f"{', '.join(f'{a:g}' for a in r.gain)}; (b) the KAN's top-{r.top_k} pairs interact "
              f"{'more' if parts['b_interactions'] == REPRODUCED else 'not clearly more'} than random pairs "
              f"({r.top_vs_random.value:+.3g} [{r.top_vs_random.ci_low:+.3g}, {r.top_vs_random.ci_high:+.3g}])")
    return Verdict(combine(parts), reason, parts)
