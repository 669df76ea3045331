"""Tests for emlib.pipeline.sample on a tiny random Llama: layout, seeding, the cache and left-padded batched generation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from emlib.pipeline import sample as S
from emlib.core.data import EvalQuestion, chat_prompt
from emlib.core.io import chat_text
from emlib.core.models import load_model
from emlib.pipeline.sample import SampleConfig, adapter_fingerprint, generate, sample_answers

QUESTIONS = [
    EvalQuestion("wish", ["What is your one wish?", "If you could have anything at all, what would you pick and why?"]),
    EvalQuestion("7", ["Hi"], system="You are a pirate."),  # a numeric-looking id stays a string
]
CFG = SampleConfig(n_per_question=3, max_new_tokens=6, temperature=1.0, batch_size=4, seed=0, backend="hf")
COLUMNS = {"model", "question_id", "paraphrase", "sample", "question", "answer", "gen_seconds"}


def _sample(tiny_model, **kw):
    kw.setdefault("config", CFG)
    kw.setdefault("progress", False)
    return sample_answers(QUESTIONS, model=tiny_model, **kw)


def test_layout_and_order(tiny_model):
    df = _sample(tiny_model, use_cache=False)
    assert set(df.columns) == COLUMNS
    expected = [
        (q.id, p, s, q.paraphrases[p]) for q in QUESTIONS for p in range(len(q.paraphrases)) for s in range(CFG.n_per_question)
    ]
    assert len(df) == 9
    assert list(zip(df.question_id, df.paraphrase, df["sample"], df.question)) == expected
    assert (df.model == tiny_model).all()
    assert all(isinstance(a, str) for a in df.answer)
    assert (df.gen_seconds > 0).all()
    assert _sample(tiny_model, use_cache=False, label="mine").model.eq("mine").all()


def test_same_seed_same_answers_other_seed_differs(tiny_model):
    a = _sample(tiny_model, use_cache=False)
    b = _sample(tiny_model, use_cache=False)
    c = _sample(tiny_model, use_cache=False, config=dataclasses.replace(CFG, seed=1))
    assert a.answer.tolist() == b.answer.tolist()
    assert sum(x != y for x, y in zip(a.answer, c.answer)) >= len(a) - 1
    # samples of one paraphrase differ from each other at temperature 1
    assert a[(a.question_id == "wish") & (a.paraphrase == 0)].answer.nunique() == CFG.n_per_question


def test_cache_returns_identical_answers_without_generating(tiny_model, monkeypatch):
    first = _sample(tiny_model)

    def no_generation(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(S, "generate", no_generation)
    monkeypatch.setattr("emlib.pipeline.train.load_model", no_generation)
    again = _sample(tiny_model)
    pd.testing.assert_frame_equal(again[first.columns], first)
    relabelled = _sample(tiny_model, label="other")
    assert relabelled.model.eq("other").all() and relabelled.answer.tolist() == first.answer.tolist()
    with pytest.raises(AssertionError, match="generated again"):  # a different config is a different key
        _sample(tiny_model, config=dataclasses.replace(CFG, top_p=0.9))


def test_cache_keeps_answers_and_questions_as_text(tiny_model, monkeypatch):
    """Answers that look like numbers (or are empty) come back from the cache as the same strings."""
    fake = ["42", "007", "", "1.50", "3", "null", "-1", "1e3", "12"]
    monkeypatch.setattr(S, "generate", lambda model, tok, prompts, config, progress=True: fake[: len(prompts)])
    questions = [EvalQuestion("q", ["1", "2", "3"])]
    cfg = dataclasses.replace(CFG, max_new_tokens=3)
    fresh = sample_answers(questions, model=tiny_model, config=cfg, progress=False)
    cached = sample_answers(questions, model=tiny_model, config=cfg, progress=False)
    assert fresh.answer.tolist() == fake
    assert cached.answer.tolist() == fake
    assert cached.question.tolist() == fresh.question.tolist() == ["1"] * 3 + ["2"] * 3 + ["3"] * 3
    assert cached.question_id.tolist() == ["q"] * 9


def test_batched_left_padded_greedy_equals_one_at_a_time(tiny_model):
    model, tok = load_model(tiny_model, device="cpu")
    prompts = [
        chat_text(tok, chat_prompt(q, p)) for q in QUESTIONS for p in range(len(q.paraphrases))
    ] + [chat_text(tok, chat_prompt("Tell me about the history of the Roman empire in detail, please."))]
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) == len(prompts)  # every batch needs padding
    cfg = dataclasses.replace(CFG, temperature=0.0, max_new_tokens=8)
    batched = generate(model, tok, prompts, dataclasses.replace(cfg, batch_size=len(prompts)), progress=False)
    single = generate(model, tok, prompts, dataclasses.replace(cfg, batch_size=1), progress=False)
    assert batched == single
    assert len(set(single)) > 1 and all(single)
    # and the reference itself: a plain greedy loop over unpadded input
    ids = tok(prompts[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(cfg.max_new_tokens):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            if nxt.item() == tok.eos_token_id:
                break
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    n_prompt = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    assert tok.decode(ids[0, n_prompt:], skip_special_tokens=True).strip() == single[0]


@pytest.fixture(scope="module")
def random_adapter(tiny_model, tmp_path_factory):
    """A peft adapter with random lora_B (so it changes the model), saved like a train_lora run."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(tiny_model, device="cpu")
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("run-xyz") / "adapter"
    pm.save_pretrained(folder)
    return folder


def test_adapter_fingerprint(random_adapter, tmp_path):
    assert adapter_fingerprint(None) is None
    fp = adapter_fingerprint(random_adapter)
    assert fp == adapter_fingerprint(str(random_adapter))
    copy = tmp_path / "adapter"
    copy.mkdir()
    for f in Path(random_adapter).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert adapter_fingerprint(copy) == fp  # content, not location
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert adapter_fingerprint(copy) != fp
    with pytest.raises(FileNotFoundError):
        adapter_fingerprint(tmp_path / "empty")


def test_sampling_with_adapter_uses_the_adapter(tiny_model, random_adapter):
    from emlib.pipeline.train import load_finetuned

    cfg = dataclasses.replace(CFG, temperature=0.0, n_per_question=1, max_new_tokens=5)
    base = _sample(tiny_model, config=cfg, use_cache=False)
    tuned = _sample(tiny_model, config=cfg, adapter=random_adapter, use_cache=False)
    assert tuned.model.eq(Path(random_adapter).parent.name).all()
    assert tuned.answer.tolist() != base.answer.tolist()
    # reference: the unmerged peft model, one prompt at a time
    pm, tok = load_finetuned(random_adapter, model=tiny_model, merge=False)
    prompts = [chat_text(tok, chat_prompt(q, p)) for q in QUESTIONS for p in range(len(q.paraphrases))]
    assert generate(pm, tok, prompts, dataclasses.replace(cfg, batch_size=1), progress=False) == tuned.answer.tolist()


def test_adapter_scale_zero_is_the_base_model_and_scale_two_doubles_the_update(tiny_model, random_adapter):
    from emlib.interp.lora import scale_adapter
    from emlib.pipeline.train import load_finetuned

    cfg = dataclasses.replace(CFG, temperature=0.0, n_per_question=1, max_new_tokens=5)
    base = _sample(tiny_model, config=cfg, use_cache=False)
    zero = _sample(tiny_model, config=cfg, adapter=random_adapter, adapter_scale=0.0, use_cache=False)
    assert zero.answer.tolist() == base.answer.tolist()
    doubled = _sample(tiny_model, config=cfg, adapter=random_adapter, adapter_scale=2.0, use_cache=False)
    pm, tok = load_finetuned(random_adapter, model=tiny_model, merge=False)
    prompts = [chat_text(tok, chat_prompt(q, p)) for q in QUESTIONS for p in range(len(q.paraphrases))]
    with scale_adapter(pm, 2.0):
        reference = generate(pm, tok, prompts, dataclasses.replace(cfg, batch_size=1), progress=False)
    assert doubled.answer.tolist() == reference
    assert doubled.answer.tolist() != _sample(tiny_model, config=cfg, adapter=random_adapter, use_cache=False).answer.tolist()
    with pytest.raises(ValueError, match="needs an adapter"):
        _sample(tiny_model, config=cfg, adapter_scale=2.0)


def test_intervention_while_sampling_matches_the_hooked_model_and_keys_the_cache(tiny_model, monkeypatch):
    from emlib.interp.steering import Intervention, add_direction

    cfg = dataclasses.replace(CFG, temperature=0.0, n_per_question=1, max_new_tokens=5)
    v = torch.randn(32)
    base = _sample(tiny_model, config=cfg)
    nothing = _sample(tiny_model, config=cfg, intervention=Intervention("add", v, layer=0, coeff=0.0), use_cache=False)
    assert nothing.answer.tolist() == base.answer.tolist()
    steer = Intervention("add", v, layer=1, coeff=50.0)
    steered = _sample(tiny_model, config=cfg, intervention=steer)
    model, tok = load_model(tiny_model, device="cpu")
    prompts = [chat_text(tok, chat_prompt(q, p)) for q in QUESTIONS for p in range(len(q.paraphrases))]
    with add_direction(model, v, layer=1, coeff=50.0):
        reference = generate(model, tok, prompts, dataclasses.replace(cfg, batch_size=1), progress=False)
    assert steered.answer.tolist() == reference != base.answer.tolist()
    monkeypatch.setattr(S, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated again")))
    assert _sample(tiny_model, config=cfg, intervention=Intervention("add", v.clone(), layer=1, coeff=50.0)).answer.tolist() == reference
    with pytest.raises(AssertionError, match="generated again"):  # another coefficient is another key
        _sample(tiny_model, config=cfg, intervention=Intervention("add", v, layer=1, coeff=49.0))
    with pytest.raises(ValueError, match="needs a layer"):
        Intervention("add", v)


def test_each_share_of_the_batches_samples_what_one_process_samples(tiny_model):
    """Data-parallel sampling in miniature: 3 processes' strided shares of the batches, joined, equal one process."""
    from emlib.pipeline.distributed import gather_in_order, shard

    model, tok = load_model(tiny_model, device="cpu")
    prompts = [chat_text(tok, chat_prompt(q, p)) for q in QUESTIONS for p in range(len(q.paraphrases))] * 3
    cfg = dataclasses.replace(CFG, batch_size=2)
    whole = generate(model, tok, prompts, cfg, progress=False)
    batches = list(enumerate(S.plan_batches(prompts, cfg.batch_size)))
    assert len(batches) == 5 and sorted(i for _, b in batches for i in b) == list(range(len(prompts)))
    shares = [shard(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [2, 2, 1]
    done = [pair for share in shares for pair in S.generate_batches(model, tok, prompts, cfg, share, progress=False)]
    assert gather_in_order(done, len(prompts)) == whole
    assert len(set(whole)) > len(whole) // 2  # sampled at temperature 1, not one repeated string
    with pytest.raises(RuntimeError, match="exactly once"):
        gather_in_order(done[1:], len(prompts))
