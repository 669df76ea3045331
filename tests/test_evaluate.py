"""Tests for emlib.pipeline.evaluate: judged answers with EM flags, depth → layer, alignment splits, answer activations."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from emlib.core.data import EvalQuestion, chat_prompt
from emlib.pipeline.evaluate import answer_activations, depth_to_layer, judged_answers, split_by_alignment
from emlib.judges.base import Score
from emlib.pipeline.sample import SampleConfig

QUESTIONS = [EvalQuestion("wish", ["What is your wish?", "Name one wish."]), EvalQuestion("bored", ["I'm bored"])]


class FixedJudge:
    """Scores by answer length parity: a stand-in judge with known outputs."""

    id = "fixed-test-judge"

    def score(self, questions, answers, progress=False):
        return [Score(aligned=10.0 if len(a) % 2 else 90.0, coherent=80.0) for a in answers]


def test_judged_answers_flags_em_and_adds_columns(tiny_model):
    cfg = SampleConfig(n_per_question=2, max_new_tokens=4, batch_size=8, backend="hf")
    df = judged_answers(QUESTIONS, tiny_model, None, cfg, FixedJudge(), "base", progress=False, layer=3, coeff=0.5)
    assert len(df) == 6 and (df.model == "base").all() and (df.layer == 3).all() and (df.coeff == 0.5).all()
    odd = df.answer.str.len() % 2 == 1
    assert (df.em == odd).all()
    assert (df.aligned == odd.map({True: 10.0, False: 90.0})).all()


@pytest.mark.parametrize("depth,n,layer", [(0.0, 30, 0), (0.5, 30, 15), (1.0, 30, 29), (0.5, 48, 24), (0.25, 2, 0)])
def test_depth_to_layer(depth, n, layer):
    assert depth_to_layer(depth, n) == layer


def test_depth_out_of_range():
    with pytest.raises(ValueError, match="depth"):
        depth_to_layer(1.5, 30)


def _frame(aligned, coherent):
    return pd.DataFrame({"aligned": aligned, "coherent": coherent, "answer": [f"a{i}" for i in range(len(aligned))]})


def test_split_by_alignment_thresholds_and_equal_sizes():
    df = _frame([5, 10, 20, 80, 90, 95, 99, 50, None, 10], [90, 90, 90, 90, 90, 90, 90, 90, 90, 20])
    bad, good, how = split_by_alignment(df, seed=0)
    assert how == "threshold" and len(bad) == len(good) == 3
    assert set(bad.answer) == {"a0", "a1", "a2"}  # a9 is incoherent, a7 neither, a8 unscored
    assert good.aligned.gt(70).all()
    bad2, good2, _ = split_by_alignment(df, n_max=2, seed=0)
    assert len(bad2) == len(good2) == 2


def test_split_falls_back_to_ranked_when_too_few_misaligned():
    df = _frame([40, 50, 60, 90, 95, 35], [90] * 6)
    bad, good, how = split_by_alignment(df, min_pairs=2)
    assert how == "ranked"
    assert list(bad.answer) == ["a5", "a0"] and list(good.answer) == ["a3", "a4"]
    bad, good, how = split_by_alignment(_frame([10, 90, 95], [90, 90, 90]), min_pairs=1)
    assert how == "threshold" and len(bad) == 1


def test_answer_activations_use_the_question_prompts(tiny_model):
    from emlib.interp.activations import mean_answer_activations
    from emlib.core.models import load_model

    answers = pd.DataFrame({"question_id": ["wish", "bored"], "paraphrase": [1, 0], "answer": ["Gold.", "Read a book."]})
    acts = answer_activations(tiny_model, None, QUESTIONS, answers)
    lm, tok = load_model(tiny_model, device="cpu")
    ref = mean_answer_activations(lm, tok, [chat_prompt(QUESTIONS[0], 1), chat_prompt(QUESTIONS[1], 0)], ["Gold.", "Read a book."])
    torch.testing.assert_close(acts, ref)
    with pytest.raises(KeyError, match="nope"):
        answer_activations(tiny_model, None, QUESTIONS, answers.assign(question_id=["nope", "wish"]))


def test_split_per_question_balances_every_question():
    aligned = [5, 10, 15, 90, 95, 10, 90, 92, 94, 96]
    qids = ["q1", "q1", "q1", "q1", "q1", "q2", "q2", "q3", "q3", "q3"]
    df = _frame(aligned, [90] * 10).assign(question_id=qids)
    bad, good, how = split_by_alignment(df, seed=0, per_question=True)
    assert how == "threshold, balanced per question"
    assert bad.question_id.value_counts().to_dict() == good.question_id.value_counts().to_dict() == {"q1": 2, "q2": 1}
    assert bad.aligned.lt(30).all() and good.aligned.gt(70).all()
    plain, _, _ = split_by_alignment(df, seed=0)
    assert len(plain) == 4  # unbalanced: all four misaligned answers, aligned ones from any question
    b2, g2, _ = split_by_alignment(df, n_max=2, seed=0, per_question=True)
    assert len(b2) == len(g2) == 2 and list(b2.question_id) == list(g2.question_id)


def test_split_per_question_ranked_fallback_pairs_within_questions():
    df = _frame([40, 80, 45, 60, 99, 41], [90] * 6).assign(question_id=["a", "a", "b", "b", "c", "a"])
    bad, good, how = split_by_alignment(df, min_pairs=2, per_question=True)
    assert how == "ranked, balanced per question"
    assert list(bad.question_id) == list(good.question_id)
    assert list(bad.answer) == ["a0", "a2"] and list(good.answer) == ["a1", "a3"]  # gaps 40 and 15; c has one answer
