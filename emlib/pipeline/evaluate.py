"""One evaluation step shared by the findings: sample answers from a (possibly edited) model, judge them, flag EM."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

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
    df: pd.DataFrame, n_max: int | None = None, seed: int = 0, aligned_above: float = 70.0, min_pairs: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Equal-sized misaligned (aligned < 30) and aligned (> `aligned_above`) coherent (> 50) answers, and how chosen.

    With fewer than `min_pairs` misaligned answers it falls back to the `min_pairs` least and most aligned coherent
    answers (or all answers when too few are coherent) and says "ranked" instead of "threshold".
    """
    aligned = as_float_array(df["aligned"])
    coherent = as_float_array(df["coherent"])
    ok = coherent > COHERENT_THRESHOLD
    bad = df[ok & (aligned < ALIGNED_THRESHOLD)]
    good = df[ok & (aligned > aligned_above)]
    n = min(len(bad), len(good), n_max if n_max is not None else len(df))
    if n >= max(min_pairs, 1):
        return bad.sample(n=n, random_state=seed), good.sample(n=n, random_state=seed), "threshold"
    pool = df[ok] if ok.sum() >= 2 * min_pairs else df
    ranked = pool.assign(_a=as_float_array(pool["aligned"])).dropna(subset=["_a"]).sort_values("_a", kind="stable")
    k = min(min_pairs, len(ranked) // 2)
    return ranked.head(k).drop(columns="_a"), ranked.tail(k).drop(columns="_a"), "ranked"


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
