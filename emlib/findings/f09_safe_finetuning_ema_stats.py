"""Finding 09's statistics: unsafe rates over held-out prompts and training seeds, best vs worst setting chosen on one
half of the prompts and measured on the other (so the choice cannot inflate the difference), its shuffled-label null,
and paired run-vs-run differences."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.stats import hierarchical_diff
from .base import Effect

__all__ = ["split_prompts", "unsafe_table", "select_best_worst", "crossfit_effect", "shuffled_null", "paired_effect"]


def split_prompts(prompt_ids, seed: int) -> tuple[list[str], list[str]]:
    """(selection half, estimation half) of the prompt ids: a seeded shuffle of the sorted ids, cut in two."""
    ids = sorted({str(q) for q in prompt_ids})
    order = np.random.default_rng(seed).permutation(len(ids))
    half = len(ids) // 2
    return [ids[i] for i in order[:half]], [ids[i] for i in order[half:]]


def unsafe_table(answers: pd.DataFrame, runs: list[str], prompts: list[str]) -> np.ndarray:
    """Array [run, prompt, seed] of unsafe flags (1 = not a refusal) from answers with columns run, question_id, seed,
    refusal; every run must answer every prompt with every seed."""
    seeds = sorted(answers["seed"].unique())
    index = answers.set_index(["run", "question_id", "seed"])["refusal"]
    full = pd.MultiIndex.from_product([runs, prompts, seeds])
    values = index.reindex(full)
    if values.isna().any():
        raise ValueError("every run needs an answer to every prompt with every seed")
    return (~values.to_numpy(bool)).astype(float).reshape(len(runs), len(prompts), len(seeds))


def select_best_worst(rates: np.ndarray, eligible: np.ndarray) -> tuple[int, int]:
    """(index of the lowest rate, index of the highest rate) among the eligible runs; ties go to the earlier run."""
    idx = np.flatnonzero(eligible)
    if len(idx) < 2:
        raise ValueError("best vs worst needs at least two eligible runs")
    sub = rates[idx]
    return int(idx[np.argmin(sub)]), int(idx[np.argmax(sub)])


def crossfit_effect(answers: pd.DataFrame, runs: list[str], eligible: np.ndarray, seed: int,
                    n_boot: int = 2000) -> tuple[str, str, Effect]:
    """Best and worst eligible run by unsafe rate on the selection half of the prompts; the effect is unsafe(worst) −
    unsafe(best) on the estimation half, with the clustered bootstrap CI (training seeds, prompts, paired by prompt)."""
    sel, est = split_prompts(answers["question_id"], seed)
    table = unsafe_table(answers, runs, sel)
    best, worst = select_best_worst(table.mean(axis=(1, 2)), eligible)
    held = answers[answers["question_id"].isin(est)]
    return runs[best], runs[worst], paired_effect("unsafe(worst) - unsafe(best), held-out half of the prompts",
                                                  held[held["run"] == runs[worst]], held[held["run"] == runs[best]],
                                                  seed, n_boot)


def shuffled_null(answers: pd.DataFrame, runs: list[str], eligible: np.ndarray, seed: int, n_perm: int = 1000,
                  quantile: float = 0.95) -> float:
    """The `quantile` of the cross-fitted best-vs-worst effect when each prompt's (and seed's) answers are shuffled
    across the runs: what choosing and measuring gives when the runs do not differ."""
    sel, est = split_prompts(answers["question_id"], seed)
    table = unsafe_table(answers, runs, sel + est)
    rng = np.random.default_rng(seed)
    out = np.empty(n_perm)
    for i in range(n_perm):
        shuffled = rng.permuted(table, axis=0)
        best, worst = select_best_worst(shuffled[:, : len(sel)].mean(axis=(1, 2)), eligible)
        out[i] = shuffled[worst, len(sel):].mean() - shuffled[best, len(sel):].mean()
    return float(np.quantile(out, quantile))


def paired_effect(name: str, a: pd.DataFrame, b: pd.DataFrame, seed: int, n_boot: int = 2000,
                  alpha: float = 0.05) -> Effect:
    """unsafe(a) − unsafe(b) over the prompts both answered, with the (1 − alpha) clustered bootstrap CI: training
    seeds and prompts resampled, one draw for both (paired by prompt and seed)."""
    est = hierarchical_diff((~a["refusal"].astype(bool)).astype(float).to_numpy(),
                            (~b["refusal"].astype(bool)).astype(float).to_numpy(),
                            a["question_id"].astype(str).to_numpy(), b["question_id"].astype(str).to_numpy(),
                            a["seed"].astype(int).to_numpy(), b["seed"].astype(int).to_numpy(),
                            n_boot=n_boot, seed=seed, alpha=alpha)
    return Effect(name, est.value, est.ci_low, est.ci_high, est.ci_method, est.n_seeds, est.n_questions, est.n_answers)
