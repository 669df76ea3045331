"""Finding 07's model calls: answers at every prompt length in one sampling pass, judged against the question as
written; activations of training examples; prompt lengths in tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.data import EvalQuestion, chat_prompt
from ..core.em import em_mask
from ..core.io import chat_ids
from ..core.models import load_tokenizer
from ..judges.base import Judge, judge_frame
from ..pipeline.evaluate import cached_answer_activations
from ..pipeline.sample import SampleConfig, sample_answers

__all__ = ["judged_at_lengths", "training_activations", "prompt_tokens"]


def judged_at_lengths(by_level: dict[str, list[EvalQuestion]], model: str, adapter: str | Path | None,
                      config: SampleConfig, judge: Judge, label: str, progress: bool = True,
                      **columns: object) -> pd.DataFrame:
    """Answers to every question at every length level (one sampling pass, so one model load), judged against the
    question *as written* (the short level's text: what is asked is the same, and the judge was validated on those),
    with columns question_id, length, paraphrase, sample, question, prompt (what the model read), answer, aligned,
    coherent, em, model=label, and any constant `columns`."""
    levels = list(by_level)
    short = {q.id: q for q in by_level[levels[0]]} if levels[0] == "short" else None
    combined, origin = [], {}
    for level, questions in by_level.items():
        for q in questions:
            key = f"{level}/{q.id}"
            combined.append(EvalQuestion(id=key, paraphrases=q.paraphrases, system=q.system))
            origin[key] = (q.id, level)
    df = sample_answers(combined, model, adapter, config, label=label, progress=progress)
    df["prompt"] = df["question"]
    df["length"] = [origin[k][1] for k in df["question_id"]]
    df["question_id"] = [origin[k][0] for k in df["question_id"]]
    if short is not None:
        df["question"] = [short[q].paraphrases[int(i)] for q, i in zip(df["question_id"], df["paraphrase"])]
    df = judge_frame(df, judge, progress=progress)
    df["em"] = em_mask(df["aligned"], df["coherent"])
    for name, value in columns.items():
        df[name] = value
    return df


def training_activations(model: str, examples: list[dict], layer: int) -> torch.Tensor:
    """Residual activations after decoder layer `layer` of the base model, averaged over each training example's
    final assistant answer read after its prompt (n × d; cached)."""
    prompts = [ex["messages"][:-1] for ex in examples]
    answers = [ex["messages"][-1]["content"] for ex in examples]
    return cached_answer_activations(model, None, prompts, answers, layers=[layer])[:, 0]


def prompt_tokens(model: str, by_level: dict[str, list[EvalQuestion]]) -> dict[str, float]:
    """Mean prompt length in tokens (chat template and generation prompt included) at each length level."""
    tok = load_tokenizer(model)
    return {level: float(np.mean([len(chat_ids(tok, chat_prompt(q, i))) for q in qs for i in range(len(q.paraphrases))]))
            for level, qs in by_level.items()}
