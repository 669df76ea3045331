"""Summaries of judged answers: per-group EM and coherence with CIs, per-question tables, onset and its null, topic drift."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..core.em import coherence_rate, em_mask, em_rate_among_coherent
from ..core.stats import Estimate, as_float_array, bootstrap_ci, hierarchical_diff

__all__ = [
    "summarize",
    "per_question",
    "em_diff",
    "first_onset",
    "onset_permutation_p",
    "drift_mask",
]


def summarize(df: pd.DataFrame, by: str | list[str] = "model", seed: int = 0) -> pd.DataFrame:
    """Per group: n, EM rate with CI, EM among coherent, coherence rate, mean aligned/coherent."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        em = em_mask(g["aligned"], g["coherent"]).astype(float)
        lo, hi = bootstrap_ci(em, seed=seed)
        rows.append(
            {
                **(dict(zip(by, key)) if isinstance(by, list) else {by: key}),
                "n": len(g),
                "em_rate": em.mean(),
                "em_ci_low": lo,
                "em_ci_high": hi,
                "em_among_coherent": em_rate_among_coherent(g["aligned"], g["coherent"]),
                "coherence_rate": coherence_rate(g["coherent"]),
                "mean_aligned": np.nanmean(as_float_array(g["aligned"])) if g["aligned"].notna().any() else np.nan,
                "mean_coherent": np.nanmean(as_float_array(g["coherent"])),
            }
        )
    return pd.DataFrame(rows)


def per_question(df: pd.DataFrame, model_col: str = "model", question_col: str = "question_id") -> pd.DataFrame:
    """EM rate per model and question (a wide table: questions as rows, models as columns)."""
    long = summarize(df, by=[model_col, question_col])
    return long.pivot(index=question_col, columns=model_col, values="em_rate")


def _training_seeds(df: pd.DataFrame) -> np.ndarray | None:
    """The `seed` column (training seed of each answer's fine-tune) when every row has one; else None (e.g. base)."""
    if "seed" not in df or df["seed"].isna().any():
        return None
    return df["seed"].astype(int).to_numpy()


def em_diff(a: pd.DataFrame, b: pd.DataFrame, seed: int = 0, n_boot: int = 2000, column: str = "em") -> Estimate:
    """mean(a[column]) − mean(b[column]) (an EM-rate difference) over answers to the same questions (`question_id`),
    with the clustered bootstrap CI: training seeds (a `seed` column; a condition without one, such as the base
    model, is one seed always kept) and questions resampled, one draw for both, then answers within each."""
    return hierarchical_diff(a[column].astype(float).to_numpy(), b[column].astype(float).to_numpy(),
                             a["question_id"].astype(str).to_numpy(), b["question_id"].astype(str).to_numpy(),
                             _training_seeds(a), _training_seeds(b), n_boot=n_boot, seed=seed)


def first_onset(
    df: pd.DataFrame,
    base: pd.DataFrame,
    step_col: str = "step",
    group_col: str = "scale",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[int | None, dict[int, bool]]:
    """The behavioural onset by a rule fixed in advance: the first checkpoint (in step order) at which some group's
    EM rate is above the base model's, i.e. the two-stage bootstrap 95 % CI (questions, then answers) of
    EM(checkpoint, group) − EM(base) lies above zero. Returns (onset step or None, {step: clears the base}).

    `df` and `base` hold one row per judged answer with `em` (0/1) and `question_id`; `df` also the step and group.
    """
    flags: dict[int, bool] = {}
    for step in sorted(df[step_col].unique()):
        at = df[df[step_col] == step]
        flags[int(step)] = any(em_diff(g, base, seed, n_boot).ci_low > 0 for _, g in at.groupby(group_col, sort=True))
    return next((s for s, ok in flags.items() if ok), None), flags


def onset_permutation_p(flags: dict[int, bool] | Sequence[dict[int, bool]], peak: int | Sequence[int],
                        n_perm: int = 5000, seed: int = 0) -> float:
    """How often onsets found by the same rule on checkpoints in shuffled order land at least as close to the peak
    as the observed ones (the permutation null of onset − peak; with one run its smallest value is about
    1 / #checkpoints). Several runs (one {step: clears} and one peak per training seed): the statistic is the sum of
    |onset − peak| over the runs with an onset, each run's checkpoints shuffled on its own. NaN when no checkpoint of
    any run clears the base."""
    runs = [flags] if isinstance(flags, dict) else list(flags)
    peaks = [peak] * len(runs) if isinstance(peak, (int, np.integer)) else list(peak)
    if len(peaks) != len(runs):
        raise ValueError(f"{len(runs)} runs of flags but {len(peaks)} peaks")
    rng = np.random.default_rng(seed)
    observed, null, any_onset = 0, np.zeros(n_perm), False
    for run, pk in zip(runs, peaks):
        steps = np.array(sorted(run))
        ok = np.array([run[s] for s in steps])
        if not ok.any():
            continue  # no onset in any order: the same in every shuffle, so it leaves the comparison alone
        any_onset = True
        observed += abs(int(steps[ok.argmax()]) - pk)
        shuffled = np.stack([ok[rng.permutation(len(ok))] for _ in range(n_perm)])
        null += np.abs(steps[shuffled.argmax(axis=1)] - pk)
    return float(np.mean(null <= observed)) if any_onset else float("nan")


def drift_mask(questions: Sequence[str], answers: Sequence[str], topic: str, judge=None) -> np.ndarray:
    """True where an answer is about the training topic, as the embedded judge's topic classifier reads it.

    The classifier is trained on the graded `on_topic` of SmolLM2 answers (docs/grading.md) and validated on held-out
    conditions in notebook 00. `judge`: an EmbeddedJudge to reuse (default: the shipped one).
    """
    from ..core.em import TOPICS
    from ..judges.embedded import EmbeddedJudge

    if topic not in TOPICS[:4]:
        raise ValueError(f"unknown training topic {topic!r}: one of {', '.join(TOPICS[:4])}")
    judge = judge if isinstance(judge, EmbeddedJudge) else EmbeddedJudge()
    return np.asarray(judge.topics(list(questions), list(answers))) == topic
