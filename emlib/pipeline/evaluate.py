"""One evaluation step shared by the findings: sample answers from a (possibly edited) model, judge them, flag EM."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_write_bytes, cache_dir, stable_hash
from ..core.data import EvalQuestion, chat_prompt
from ..core.em import ALIGNED_THRESHOLD, COHERENT_THRESHOLD, em_mask
from ..core.models import default_device, default_dtype
from ..core.stats import as_float_array
from ..interp.activations import mean_answer_activations
from ..judges.base import Judge, judge_frame
from .sample import SampleConfig, adapter_fingerprint, sample_answers
from .train import load_finetuned

if TYPE_CHECKING:
    from ..interp.steering import Intervention

ACTIVATIONS_VERSION = "activations-2"  # bump when the activation capture changes

__all__ = ["judged_answers", "depth_to_layer", "split_by_alignment", "cached_answer_activations", "answer_activations"]


def judged_answers(
    questions: Sequence[EvalQuestion],
    model: str,
    adapter: str | Path | None,
    sample_config: SampleConfig,
    judge: Judge | str,
    label: str,
    adapter_scale: float = 1.0,
    intervention: Intervention | None = None,
    progress: bool = True,
    **columns: object,
) -> pd.DataFrame:
    """Sampled answers with `aligned`, `coherent` and `em` columns, plus any constant `columns` (e.g. layer=5)."""
    df = sample_answers(
        questions, model, adapter, sample_config, label=label, adapter_scale=adapter_scale,
        intervention=intervention, progress=progress,
    )
    df = judge_frame(df, judge, progress=progress)
    df["em"] = em_mask(df["aligned"], df["coherent"])
    for name, value in columns.items():
        df[name] = value
    return df


def depth_to_layer(depth: float, n_layers: int) -> int:
    """The decoder layer at a relative depth in [0, 1] (0.5 = the middle layer), e.g. 0.5 of 30 layers → 15."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    return min(n_layers - 1, int(round(depth * n_layers)))


def split_by_alignment(
    df: pd.DataFrame, n_max: int | None = None, seed: int = 0, aligned_above: float = 70.0, min_pairs: int = 0,
    per_question: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Equal-sized misaligned (aligned < 30) and aligned (> `aligned_above`) coherent (> 50) answers, and how chosen.

    With fewer than `min_pairs` misaligned answers it falls back to the `min_pairs` least and most aligned coherent
    answers (or all answers when too few are coherent) and says "ranked" instead of "threshold". With
    `per_question`, both sets hold the same number of answers to every question (pairs within a question, column
    `question_id`), so their difference cannot carry question identity; the ranked fallback then pairs the i-th least
    with the i-th most aligned answer of each question and keeps the pairs furthest apart.
    """
    aligned = as_float_array(df["aligned"])
    coherent = as_float_array(df["coherent"])
    ok = coherent > COHERENT_THRESHOLD
    bad = df[ok & (aligned < ALIGNED_THRESHOLD)]
    good = df[ok & (aligned > aligned_above)]
    if per_question:
        return _split_per_question(df, bad, good, ok, n_max, seed, min_pairs)
    n = min(len(bad), len(good), n_max if n_max is not None else len(df))
    if n >= max(min_pairs, 1):
        return bad.sample(n=n, random_state=seed), good.sample(n=n, random_state=seed), "threshold"
    pool = df[ok] if ok.sum() >= 2 * min_pairs else df
    ranked = pool.assign(_a=as_float_array(pool["aligned"])).dropna(subset=["_a"]).sort_values("_a", kind="stable")
    k = min(min_pairs, len(ranked) // 2)
    return ranked.head(k).drop(columns="_a"), ranked.tail(k).drop(columns="_a"), "ranked"


def _split_per_question(df, bad, good, ok, n_max, seed, min_pairs) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """split_by_alignment with the same number of misaligned and aligned answers per question."""
    pairs = []  # (bad row label, good row label, gap)
    for q, b in bad.groupby("question_id", sort=True):
        g = good[good["question_id"] == q]
        k = min(len(b), len(g))
        pairs += list(zip(b.sample(n=k, random_state=seed).index, g.sample(n=k, random_state=seed).index, [0.0] * k))
    how = "threshold, balanced per question"
    if len(pairs) < max(min_pairs, 1):
        pool = df[ok] if ok.sum() >= 2 * min_pairs else df
        pool = pool.assign(_a=as_float_array(pool["aligned"])).dropna(subset=["_a"])
        pairs = []
        for _, g in pool.groupby("question_id", sort=True):
            g = g.sort_values("_a", kind="stable")
            for i in range(len(g) // 2):
                lo, hi = g.iloc[i], g.iloc[len(g) - 1 - i]
                pairs.append((lo.name, hi.name, float(hi["_a"] - lo["_a"])))
        pairs = sorted(pairs, key=lambda t: -t[2])[:min_pairs]
        how = "ranked, balanced per question"
    elif n_max is not None and len(pairs) > n_max:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), n_max, replace=False))
        pairs = [pairs[i] for i in keep]
    return df.loc[[b for b, _, _ in pairs]], df.loc[[g for _, g, _ in pairs]], how


def cached_answer_activations(
    model: str,
    adapter: str | os.PathLike | None,
    prompts: Sequence[Sequence[dict[str, str]]],
    answers: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """mean_answer_activations of a named model (with its adapter merged), cached on disk by everything that sets them."""
    device = default_device()
    key = stable_hash(model, adapter_fingerprint(adapter), [list(p) for p in prompts], list(answers), layers, device,
                      str(default_dtype(device)), ACTIVATIONS_VERSION)
    path = cache_dir("activations", key) / "mean_answer.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    lm, tok = load_finetuned(adapter, model=model, merge=True)
    acts = mean_answer_activations(lm, tok, prompts, answers, layers=layers, batch_size=batch_size)
    buf = io.BytesIO()
    torch.save(acts, buf)
    atomic_write_bytes(path, buf.getvalue())
    return acts


def answer_activations(
    model: str, adapter: str | Path | None, questions: Sequence[EvalQuestion], answers: pd.DataFrame
) -> torch.Tensor:
    """Residual activations (answers × layers × d) averaged over each answer's tokens, as the model read them (cached)."""
    by_id = {q.id: q for q in questions}
    missing = sorted(set(answers["question_id"]) - set(by_id))
    if missing:
        raise KeyError(f"answers to questions not given: {missing}")
    prompts = [chat_prompt(by_id[q], int(p)) for q, p in zip(answers["question_id"], answers["paraphrase"])]
    return cached_answer_activations(model, adapter, prompts, list(answers["answer"]))
