"""Summaries of judged answers: per-group EM and coherence with CIs, per-question tables, onset, topic drift."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..core.em import coherence_rate, em_mask, em_rate_among_coherent
from ..core.stats import as_float_array, bootstrap_ci

__all__ = [
    "summarize",
    "per_question",
    "steepest_rise",
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


def steepest_rise(
    df: pd.DataFrame,
    base_em: Sequence[float] | np.ndarray,
    step_col: str = "step",
    group_col: str = "scale",
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[int, float, float]:
    """The checkpoint where EM rose most over the previous one (any group; the base model precedes the first),
    with a percentile bootstrap 95% CI of that step over answers.

    `df` holds one row per judged answer with an `em` column (0/1) and the step and group columns.
    """
    steps = sorted(df[step_col].unique())
    if not steps:
        raise ValueError("no checkpoints")
    base = np.asarray(base_em, dtype=float)
    cells = {
        (g, s): grp["em"].astype(float).to_numpy() for (g, s), grp in df.groupby([group_col, step_col], sort=True)
    }
    groups = sorted({g for g, _ in cells})

    def jump(rate: Callable[[np.ndarray], float]) -> int:
        best_step, best_rise = steps[0], -np.inf
        for g in groups:
            prev = rate(base)
            for s in steps:
                if (g, s) not in cells:
                    continue
                cur = rate(cells[(g, s)])
                if cur - prev > best_rise:
                    best_step, best_rise = s, cur - prev
                prev = cur
        return int(best_step)

    point = jump(lambda x: float(x.mean()))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        resampled: dict[int, np.ndarray] = {}

        def rate(x: np.ndarray) -> float:
            key = id(x)
            if key not in resampled:
                resampled[key] = x[rng.integers(0, x.size, x.size)] if x.size else x
            return float(resampled[key].mean()) if x.size else float("nan")

        draws.append(jump(rate))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return point, float(lo), float(hi)


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
