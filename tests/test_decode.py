"""Tests for emlib.pipeline.decode against transformers' own generate and against exact distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from emlib.core.models import load_model
from emlib.pipeline.decode import auto_batch_size, decode, draw, kv_bytes_per_token

from conftest import tiny_llama


def test_draw_follows_the_distribution_and_never_picks_a_zero_entry():
    p = torch.tensor([0.0, 0.1, 0.0, 0.25, 0.05, 0.6, 0.0])
    n = 200_000
    picks = draw(p.repeat(n, 1) * 3.0, torch.Generator().manual_seed(0))  # any positive total: rows need not sum to 1
    counts = np.bincount(picks.numpy(), minlength=len(p))
    assert counts[p.numpy() == 0].sum() == 0
    nonzero = p.numpy() > 0
    expected = p.double().numpy()[nonzero]
    chi2 = stats.chisquare(counts[nonzero], n * expected / expected.sum())
    assert chi2.pvalue > 1e-3
    # one-hot rows and a row whose only mass is the last entry
    assert draw(torch.eye(5)).tolist() == [0, 1, 2, 3, 4]
    assert draw(torch.tensor([[0.0, 0.0, 1e-30]])).item() == 2


def test_draw_is_seeded_by_its_generator():
    p = torch.softmax(torch.randn(64, 100), -1)
    a, b = draw(p, torch.Generator().manual_seed(5)), draw(p, torch.Generator().manual_seed(5))
    c = draw(p, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.fixture(scope="module")
def lm_and_batch(tiny_model):
    model, tok = load_model(tiny_model, device="cpu")
    tok.padding_side = "left"
    prompts = ["Hi", "Tell me a long story about a dragon and a knight", "What is two plus two?"]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc["attention_mask"] == 0).any()  # left padding is exercised
    return model, tok, enc


def test_greedy_decode_equals_transformers_generate(lm_and_batch):
    model, tok, enc = lm_and_batch
    ours = decode(model, enc["input_ids"], enc["attention_mask"], 12, temperature=0.0, pad_token_id=tok.pad_token_id)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1]:])
    # an end-of-sequence token: pads that row afterwards, as generate does
    eos = int(ours[0, 3])
    ours = decode(model, enc["input_ids"], enc["attention_mask"], 12, 0.0, eos_token_id=eos, pad_token_id=999)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=999)
    ref = ref[:, enc["input_ids"].shape[1]:]
    assert torch.equal(ours, ref[:, : ours.shape[1]])
    assert (ours[0, 4:] == 999).all()


def test_rows_sharing_a_prompt_are_prefilled_once_and_decode_as_if_alone(lm_and_batch):
    model, tok, enc = lm_and_batch
    order = torch.tensor([1, 0, 1, 2, 0, 1])  # duplicates, interleaved, of three left-padded prompts
    ids, mask = enc["input_ids"][order], enc["attention_mask"][order]
    rows = []
    handle = model.register_forward_pre_hook(lambda mod, args, kw: rows.append(kw["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        ours = decode(model, ids, mask, 10, temperature=0.0, pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    assert rows[0] == 3 and set(rows[1:]) == {6}  # one prompt pass per distinct prompt, then every row
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, ref[:, ids.shape[1]:])
    sampled = decode(model, ids, mask, 10, 1.0, pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    assert len({tuple(sampled[i].tolist()) for i in (0, 2, 5)}) == 3  # one prompt's rows draw apart


def test_tiny_top_p_is_greedy_and_sampling_matches_the_next_token_distribution(tiny_model):
    model = tiny_llama(vocab_size=16)
    ids = torch.tensor([[3, 5, 7]])
    greedy = decode(model, ids, torch.ones_like(ids), 6, temperature=0.0)
    assert torch.equal(decode(model, ids, torch.ones_like(ids), 6, 1.0, top_p=1e-9,
                              generator=torch.Generator().manual_seed(1)), greedy)
    n, temperature = 20_000, 0.7
    first = decode(model, ids.repeat(n, 1), torch.ones(n, 3, dtype=torch.long), 1, temperature,
                   generator=torch.Generator().manual_seed(2))[:, 0]
    with torch.no_grad():
        expected = torch.softmax(model(ids).logits[0, -1].double() / temperature, -1).numpy()
    counts = np.bincount(first.numpy(), minlength=16)
    assert stats.chisquare(counts, n * expected / expected.sum()).pvalue > 1e-3


def test_auto_batch_size_fits_the_budget(lm_and_batch):
    model, *_ = lm_and_batch
    config = model.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * 4
    assert kv_bytes_per_token(model) == per_token
    per_sequence = per_token * 100 + 12 * config.vocab_size
    assert auto_batch_size(model, 100, budget_bytes=10 * per_sequence) == 10
    assert auto_batch_size(model, 100, budget_bytes=10 * per_sequence - 1) == 9
    assert auto_batch_size(model, 100, budget_bytes=1) == 1
    assert auto_batch_size(model, 100) == 128  # the cap
