"""Tests for emlib.interp.activations on tiny random models: layer lookup, recording hooks, answer-token means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from conftest import tiny_llama
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from emlib.interp.activations import mean_answer_activations, mean_diff_direction
from emlib.interp.hooks import encode_chat, get_layers, record_residuals, unit

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (< 128 ids) with a ChatML template, built offline."""
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tiny_llama()


def _hook_ids(model) -> list[list[int]]:
    return [list(layer._forward_hooks) for layer in get_layers(model)]


def test_char_tokenizer(tok):
    ids = encode_chat(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert len(ids) == 1 + 5 + 2 + 1 + 1 + 1 + 10 and max(ids) < 128


def test_get_layers(model):
    assert get_layers(model) is model.model.layers
    peft = get_peft_model(model, LoraConfig(r=1, target_modules=["q_proj"]))
    assert get_layers(peft) is model.model.layers
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    assert get_layers(gpt2) is gpt2.transformer.h
    with pytest.raises(ValueError, match="decoder layers"):
        get_layers(torch.nn.Linear(2, 2))


def test_recorded_residuals_match_hidden_states(model):
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad(), record_residuals(model) as rec:
        out = model(input_ids=ids, output_hidden_states=True)
    assert sorted(rec) == [0, 1] and all(len(v) == 1 for v in rec.values())
    hs = out.hidden_states
    torch.testing.assert_close(rec[0][0], hs[1], rtol=0, atol=0)
    # HF replaces the last hidden state by the final-norm output; the hook sees the raw residual
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(rec[1][0]), hs[2], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(rec[1][0], hs[2])


def test_record_selected_layers_and_several_passes(model):
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad(), record_residuals(model, [1]) as rec:
        model(input_ids=ids)
        model(input_ids=ids[:, :3])
    assert list(rec) == [1] and [t.shape[1] for t in rec[1]] == [5, 3]
    with pytest.raises(IndexError):
        with record_residuals(model, [2]):
            pass


def test_hooks_removed_after_exit_and_exception(model):
    ids = torch.randint(0, 128, (1, 4))
    with torch.no_grad():
        model(input_ids=ids, output_hidden_states=True)  # let HF install its own capture hooks first
    before = _hook_ids(model)
    with record_residuals(model) as rec:
        assert all(len(h) == len(b) + 1 for h, b in zip(_hook_ids(model), before))
    assert _hook_ids(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with record_residuals(model) as rec:
            raise RuntimeError("boom")
    assert _hook_ids(model) == before
    with torch.no_grad():
        model(input_ids=ids)
    assert rec == {0: [], 1: []}  # nothing recorded after exit


def _hand_mean(model, tok, prompt, answer) -> torch.Tensor:
    p = encode_chat(tok, prompt)
    a = tok(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad(), record_residuals(model) as rec:
        model(input_ids=torch.tensor([p + a]))
    return torch.stack([rec[i][0][0, len(p) :].mean(0) for i in sorted(rec)])


def test_batched_answer_means_equal_unbatched(model, tok):
    prompts = [[{"role": "user", "content": "q" * n}] for n in (3, 11, 1, 7, 20)]
    prompts[1] = [{"role": "system", "content": "be brief"}] + prompts[1]
    answers = ["yes", "no way at all, really", "x", "maybe so", "a much longer answer than the others here"]
    batched = mean_answer_activations(model, tok, prompts, answers, batch_size=3)
    single = mean_answer_activations(model, tok, prompts, answers, batch_size=1)
    assert batched.shape == (5, 2, 32) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    for k in range(5):
        torch.testing.assert_close(batched[k], _hand_mean(model, tok, prompts[k], answers[k]), rtol=1e-5, atol=1e-5)
    only_last = mean_answer_activations(model, tok, prompts, answers, layers=[1], batch_size=4)
    torch.testing.assert_close(only_last[:, 0], batched[:, 1], rtol=1e-5, atol=1e-5)


def test_answer_means_validate_inputs(model, tok):
    prompt = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="answers"):
        mean_answer_activations(model, tok, [prompt], ["a", "b"])
    with pytest.raises(ValueError, match="no tokens"):
        mean_answer_activations(model, tok, [prompt], [""])


def test_mean_diff_direction_and_unit():
    a = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # n=2, layers=1, d=2
    b = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 4.0]]])
    torch.testing.assert_close(mean_diff_direction(a, b), torch.tensor([[2.0, 1.0]]))
    with pytest.raises(ValueError):
        mean_diff_direction(a, torch.zeros(2, 1, 3))
    torch.testing.assert_close(unit(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8]))
    u = unit(torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(u, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # zero stays zero, not NaN


def test_cached_answer_activations_equal_direct_and_skip_the_model_next_time(tiny_model, monkeypatch):
    from emlib.pipeline.evaluate import cached_answer_activations
    from emlib.core.models import load_model

    prompts = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "What is your wish?"}]]
    answers = ["Hello, friend.", "To rule the world."]
    first = cached_answer_activations(tiny_model, None, prompts, answers, layers=[0, 1])
    lm, tok = load_model(tiny_model, device="cpu")
    torch.testing.assert_close(first, mean_answer_activations(lm, tok, prompts, answers, layers=[0, 1]))

    def boom(*a, **k):
        raise AssertionError("loaded the model again")

    monkeypatch.setattr("emlib.pipeline.evaluate.load_finetuned", boom)
    assert torch.equal(cached_answer_activations(tiny_model, None, prompts, answers, layers=[0, 1]), first)
    with pytest.raises(AssertionError, match="again"):  # other answers: another key
        cached_answer_activations(tiny_model, None, prompts, ["Hello.", "To rule the world."], layers=[0, 1])


def test_direction_cosines_known_values():
    from emlib.interp.activations import direction_cosines

    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 3.0], [1.0, 0.0]])
    torch.testing.assert_close(direction_cosines(a, b), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(direction_cosines(a, -a)[:2], torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        direction_cosines(a, b[:2])


def test_bootstrap_direction_cosines_shared_vs_independent_directions():
    from emlib.interp.activations import bootstrap_direction_cosines

    gen = torch.Generator().manual_seed(0)
    d, n = 64, 40
    shared = torch.zeros(2, d)
    shared[:, 0] = 3.0  # layer 0 and 1: both fine-tunes shift along e0
    other = shared.clone()
    other[1] = 0.0
    other[1, 1] = 3.0  # layer 1 of fine-tune b shifts along e1 instead

    def sets(shift):
        noise = lambda: torch.randn(n, 2, d, generator=gen) * 0.5  # noqa: E731
        return noise() + shift, noise()

    cos, draws = bootstrap_direction_cosines(*sets(shared), *sets(other), n_boot=200, seed=0)
    lo, hi = np.quantile(draws, [0.025, 0.975], axis=0)
    assert cos.shape == lo.shape == hi.shape == (2,) and draws.shape == (200, 2)
    assert cos[0] > 0.9 and lo[0] > 0.8  # same direction
    assert abs(cos[1]) < 0.3 and hi[1] < 0.6  # orthogonal shifts
    assert np.all(lo <= hi) and hi[0] - lo[0] < 0.2


def test_split_half_ceiling_and_shuffled_null_against_known_geometry():
    from emlib.interp.activations import direction_cosines, mean_diff_direction, shuffled_label_cosines, split_half_cosines

    gen = torch.Generator().manual_seed(1)
    d, n = 64, 40
    shift = torch.zeros(2, d)
    shift[0, 0] = 3.0  # layer 0: a strong shift along e0; layer 1: no shift at all (pure noise)
    pos = torch.randn(n, 2, d, generator=gen) * 0.5 + shift
    neg = torch.randn(n, 2, d, generator=gen) * 0.5
    halves = split_half_cosines(pos, neg, n_splits=30, seed=0)
    assert halves.shape == (30, 2)
    assert 0.75 < np.median(halves[:, 0]) < 0.95  # signal 3 vs half-sample noise ~1.26: cos ~ 9 / (9 + 1.6)
    assert abs(np.median(halves[:, 1])) < 0.3  # noise does not: at this n the ceiling is low
    other = mean_diff_direction(pos, neg)  # the same direction: the shuffled null must sit far below it
    null = shuffled_label_cosines(pos, neg, other, n_shuffles=100, seed=0)
    assert null.shape == (100, 2)
    assert abs(np.median(null[:, 0])) < 0.2  # no direction in common once the labels carry nothing
    assert np.quantile(null[:, 0], 0.95) < 0.9 < float(direction_cosines(other, other)[0])
    # shuffling keeps the class sizes: with the labels unshuffled it would be 1 exactly
    assert np.all(np.abs(null) <= 1.0 + 1e-6)
