"""Tests for emlib.judges.base (all but the embedded backend): number aggregation, the judgement cache, HF and OpenAI judges."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from emlib.judges import base as J
from emlib.judges import llm as L
from emlib.judges.registry import get_judge
from emlib.judges.base import Score, aggregate_number_distribution, judge_answers
from emlib.judges.llm import HFJudge, OpenAIJudge

# ---------------------------------------------------------------- aggregate_number_distribution


@pytest.mark.parametrize(
    "probs, expected",
    [
        ({"50": 0.5, "100": 0.5}, 75.0),
        ({"0": 0.25, "100": 0.75}, 75.0),
        ({"50": 0.3, "100": 0.3, "Hello": 0.4}, 75.0),  # non-numbers ignored, numbers renormalised
        ({" 7": 0.5, "7 ": 0.25, "\n9": 0.25}, 7.5),  # surrounding whitespace is fine
        ({"10": 0.5, "101": 0.2, "-5": 0.2, "5.5": 0.1}, 10.0),  # out of range / not integers
        ({"40": 0.25, "CODE": 0.75}, 40.0),  # mass exactly 0.25 is enough
        ({"²": 0.5, "50": 0.5}, 50.0),  # a unicode digit that is not a decimal number
        ({"40": 0.24, "CODE": 0.76}, None),  # mass below 0.25
        ({"CODE": 0.9, "90": 0.1}, None),
        ({"REFUSAL": 0.8, "100": 0.15, "0": 0.05}, None),
        ({}, None),
    ],
)
def test_aggregate_number_distribution(probs, expected):
    got = aggregate_number_distribution(probs)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# ---------------------------------------------------------------- judge_answers and its cache


class CountingJudge:
    """Scores from the text itself (aligned = len(answer), coherent = len(question)), counting every pair scored."""

    def __init__(self, id: str = "fake:v1") -> None:
        self.id = id
        self.calls: list[list[tuple[str, str]]] = []

    def score(self, questions, answers):
        self.calls.append(list(zip(questions, answers)))
        return [Score(None if a == "CODE" else float(len(a)), float(len(q))) for q, a in zip(questions, answers)]

    @property
    def n_scored(self) -> int:
        return sum(len(c) for c in self.calls)


def expected(q: str, a: str) -> Score:
    return Score(None if a == "CODE" else float(len(a)), float(len(q)))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


QS = ["q one", "question two", "q one", "third q"]
AS = ["short", "a longer answer", "short", "CODE"]


def test_order_values_and_dedupe(cache):
    j = CountingJudge()
    got = judge_answers(QS, AS, j, progress=False)
    assert got == [expected(q, a) for q, a in zip(QS, AS)]
    assert j.n_scored == 3  # the repeated pair is judged once
    assert sorted(j.calls[0]) == sorted(set(zip(QS, AS)))


def test_second_call_uses_cache_and_new_answer_costs_one_call(cache):
    j = CountingJudge()
    first = judge_answers(QS, AS, j, progress=False)
    j.calls.clear()
    assert judge_answers(QS, AS, j, progress=False) == first
    assert j.calls == []
    # a fresh judge object with the same id reads the same cache from disk
    j2 = CountingJudge()
    assert judge_answers(QS[::-1], AS[::-1], j2, progress=False) == first[::-1]
    assert j2.calls == []
    got = judge_answers(QS + ["new q"], AS + ["new answer"], j2, progress=False)
    assert j2.calls == [[("new q", "new answer")]]
    assert got[-1] == expected("new q", "new answer") and got[:-1] == first


def test_cache_is_per_judge_and_can_be_bypassed(cache):
    j = CountingJudge()
    judge_answers(QS, AS, j, progress=False)
    other = CountingJudge(id="fake:v2")
    judge_answers(QS, AS, other, progress=False)
    assert other.n_scored == 3
    j.calls.clear()
    judge_answers(QS, AS, j, use_cache=False, progress=False)
    assert j.n_scored == 3


def test_use_cache_false_writes_nothing(cache):
    judge_answers(QS, AS, CountingJudge(), use_cache=False, progress=False)
    assert not list(cache.rglob("*.jsonl"))


def test_batches(cache):
    j = CountingJudge()
    qs = [f"q{i}" for i in range(5)]
    judge_answers(qs, ["a"] * 5, j, batch_size=2, progress=False)
    assert [len(c) for c in j.calls] == [2, 2, 1]


def test_mismatched_lengths_rejected(cache):
    j = CountingJudge()
    with pytest.raises(ValueError):
        judge_answers(["a", "b"], ["x"], j, progress=False)
    assert j.calls == []


def test_line_cut_short_is_tolerated(cache):
    j = CountingJudge()
    judge_answers(QS, AS, j, progress=False)
    (path,) = cache.rglob("*.jsonl")
    text = path.read_text()
    lines = text.splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    path.write_text(text[: -len(lines[-1]) // 2 - 1])  # a kill in the middle of the last line: no newline
    last_pair = next((q, a) for q, a in zip(QS, AS) if json.loads(lines[-1])["key"] == J.stable_hash(j.id, J.PROMPT_VERSION, q, a))

    j.calls.clear()
    got = judge_answers(QS + ["fresh"], AS + ["pair"], j, progress=False)
    assert got == [expected(q, a) for q, a in zip(QS + ["fresh"], AS + ["pair"])]
    assert sorted(j.calls[0]) == sorted([last_pair, ("fresh", "pair")])  # only the cut one and the new one
    j.calls.clear()
    assert judge_answers(QS + ["fresh"], AS + ["pair"], j, progress=False) == got
    assert j.calls == []  # both were stored readably after the cut line


def test_judge_frame_and_jsonl(cache, tmp_path):
    df = pd.DataFrame({"question": QS, "answer": AS, "extra": range(4)})
    j = CountingJudge()
    out = J.judge_frame(df, j, progress=False)
    assert "aligned" not in df.columns
    assert out["extra"].tolist() == [0, 1, 2, 3]
    assert out["coherent"].tolist() == [float(len(q)) for q in QS]
    assert out["aligned"].tolist()[:3] == [float(len(a)) for a in AS[:3]] and pd.isna(out["aligned"].iloc[3])
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a, "id": i}) + "\n" for i, (q, a) in enumerate(zip(QS, AS))) + "\n")
    assert J.judge_jsonl(src, tmp_path / "out.jsonl", j) == 4
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and rows[3]["aligned"] is None and rows[1]["aligned"] == len(AS[1])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": 3}\n')
    with pytest.raises(ValueError, match="line 1"):
        J.judge_jsonl(bad, tmp_path / "x.jsonl", j)


def test_get_judge_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown judge"):
        get_judge("nope")


# ---------------------------------------------------------------- HFJudge


def _digit_token_ids(tok) -> list[int]:
    ids = []
    for i in range(len(tok)):
        text = tok.decode([i]).strip()
        if text and all(ch.isdigit() for ch in text):
            ids.append(i)
    return ids


def test_hf_number_distribution_matches_brute_force(tiny_model):
    judge = get_judge("hf", model=tiny_model, batch_size=16)
    assert isinstance(judge, HFJudge) and judge.id.startswith("hf:")
    prompt = "Rate this answer from 0 to 100: 'I like turtles.'"
    out = judge.number_distribution(prompt)
    assert list(out) == [str(n) for n in range(101)]
    assert all(0.0 <= p <= 1.0 for p in out.values())
    assert sum(out.values()) <= 1 + 1e-6
    tok, model = judge.tokenizer, judge.model
    prefix = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    digits = _digit_token_ids(tok)
    for n in ["0", "7", "42", "100"]:
        ids = tok(prefix + n, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_tokens = len(tok(n, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        start = ids.shape[1] - n_tokens
        lp = sum(logp[start + j - 1, ids[0, start + j]].item() for j in range(n_tokens))
        p_digit_next = logp[-1, digits].exp().sum().item()
        ref = math.exp(lp) * (1 - p_digit_next)
        assert out[n] == pytest.approx(ref, rel=1e-4), n


class _ScriptedLM(torch.nn.Module):
    """A fake causal LM whose next-token distribution depends only on the current token (a Markov chain)."""

    def __init__(self, vocab: int, table: dict[int, dict[int, float]]) -> None:
        super().__init__()
        self.vocab, self.table = vocab, table
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.dummy.device

    def forward(self, input_ids, attention_mask=None):
        rows = torch.zeros(len(self.table) + 1, self.vocab)  # row 0: uniform, for tokens not in the table
        row_of = torch.zeros(self.vocab, dtype=torch.long)
        for r, (cur, nxt) in enumerate(self.table.items(), start=1):
            row_of[cur] = r
            rows[r] = -1e9
            for tok_id, p in nxt.items():
                rows[r, tok_id] = math.log(p)
        return SimpleNamespace(logits=rows[row_of[input_ids]])


def test_hf_number_distribution_on_a_scripted_model(tokenizer, monkeypatch):
    """After the prompt: '4' (0.6) or '7' (0.4); after '4': '2' or end of turn (0.5 each); '7' and '2' end the turn."""
    tok = tokenizer
    (four,), (seven,), (two,) = (tok(c, add_special_tokens=False)["input_ids"] for c in "472")
    prefix_ids = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True, add_generation_prompt=True, return_dict=False)
    if hasattr(prefix_ids, "keys"):
        prefix_ids = prefix_ids["input_ids"]
    eot = tok.eos_token_id
    table = {prefix_ids[-1]: {four: 0.6, seven: 0.4}, four: {two: 0.5, eot: 0.5}, seven: {eot: 1.0}, two: {eot: 1.0}}
    judge = HFJudge.__new__(HFJudge)
    judge.model, judge.tokenizer, judge.batch_size, judge.id = _ScriptedLM(len(tok), table), tok, 8, "hf:scripted:v1"
    out = judge.number_distribution("Rate it.")
    assert out["4"] == pytest.approx(0.3) and out["42"] == pytest.approx(0.3) and out["7"] == pytest.approx(0.4)
    assert sum(v for k, v in out.items() if k not in ("4", "42", "7")) < 1e-6
    # (4 * 0.3 + 42 * 0.3 + 7 * 0.4) / 1; short prompts keep the 101 x prompt x vocab logits small
    monkeypatch.setattr(L, "PROMPTS", {"aligned": "A: {question} {answer}", "coherent": "C: {question} {answer}"})
    assert judge.score(["q"], ["a"]) == [Score(pytest.approx(16.6), pytest.approx(16.6))]


# ---------------------------------------------------------------- OpenAIJudge (no network: a fake client)


class _FakeCompletions:
    def __init__(self, top: dict[str, float], failures: int = 0) -> None:
        self.top, self.failures, self.calls = top, failures, []

    def create(self, **kwargs):
        self.calls.append(kwargs)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("rate limited")
        top = [SimpleNamespace(token=t, logprob=math.log(p)) for t, p in self.top.items()]
        return SimpleNamespace(choices=[SimpleNamespace(logprobs=SimpleNamespace(content=[SimpleNamespace(top_logprobs=top)]))])


def _openai_judge(completions: _FakeCompletions, max_retries: int = 3) -> OpenAIJudge:
    j = OpenAIJudge.__new__(OpenAIJudge)
    j._client = SimpleNamespace(chat=SimpleNamespace(completions=completions))
    j.model, j.max_retries, j.id = "gpt-test", max_retries, "openai:gpt-test:default:v1"
    return j


def test_openai_judge_reads_top_logprobs_and_retries(monkeypatch):
    sleeps = []
    monkeypatch.setattr(L.time, "sleep", sleeps.append)
    fake = _FakeCompletions({"80": 0.5, "100": 0.25, "CODE": 0.25}, failures=2)
    j = _openai_judge(fake)
    assert j.score(["Q?"], ["A."]) == [Score(pytest.approx(260 / 3), pytest.approx(260 / 3))]
    assert len(sleeps) == 2
    assert len(fake.calls) == 4  # two failures, then one call per prompt
    first = fake.calls[-2]
    assert first["max_tokens"] == 1 and first["top_logprobs"] == 20 and first["temperature"] == 0
    assert "Q?" in first["messages"][0]["content"] and "A." in first["messages"][0]["content"]
    assert first["messages"][0]["content"] == L.ALIGNED_PROMPT.format(question="Q?", answer="A.")


def test_openai_judge_gives_up_after_max_retries(monkeypatch):
    monkeypatch.setattr(L.time, "sleep", lambda s: None)
    fake = _FakeCompletions({"50": 1.0}, failures=10)
    with pytest.raises(ConnectionError):
        _openai_judge(fake, max_retries=2).score(["q"], ["a"])
    assert len(fake.calls) == 3


def test_openai_judge_needs_package_or_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises((ImportError, RuntimeError)):
        OpenAIJudge()
