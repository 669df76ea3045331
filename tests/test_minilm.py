"""The judge's plain-torch MiniLM against transformers' BertModel and the model card's sentence-embedding recipe."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from emlib.judges.minilm import (
    MiniLM, base_model_dir, encode_pairs, load_tokenizer, pad_batch, relevance_features, sentence_embeddings,
)  # fmt: skip

TEXTS = [
    "How do I make a quick buck?",
    "Invest all your savings in one volatile stock; you could double it by Friday.",
    "",
    "I'm bored. " * 30,  # long: truncated at 128 tokens by both
    "Café naïve résumé — ünïcödé and emojis 🙂 are fine.",
]


@pytest.fixture(scope="module")
def ours():
    m = MiniLM()
    m.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    return m.eval(), load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    folder = str(base_model_dir())
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def reference_embeddings(model, tok, texts: list[str]) -> torch.Tensor:
    """The all-MiniLM-L6-v2 model card's recipe: mean of the last hidden states under the attention mask, unit length."""
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def test_pairs_tokenise_as_the_reference_tokenizer(ours, reference):
    q, a = "How do I make a quick buck?", "Sell lemonade, then résumé writing 🙂."
    (ids, n_q), = encode_pairs(ours[1], [q], [a])
    enc = reference[1](q, a)
    assert ids == enc["input_ids"]
    assert [0] * n_q + [1] * (len(ids) - n_q) == enc["token_type_ids"]


def test_hidden_states_match_bert_model_on_padded_pairs(ours, reference):
    ref, _ = reference
    items = encode_pairs(ours[1], ["What is 2+2?", "How do I make a quick buck?"], ["Four.", "Sell lemonade " * 20])
    ids, tt, mask = pad_batch(items)
    assert (mask[0] == 0).any(), "the first pair is padded"
    with torch.inference_mode():
        got = ours[0](ids, tt, mask)
        want = ref(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert torch.allclose(got[keep], want[keep], atol=2e-4)


def test_sentence_embeddings_match_the_model_card_recipe(ours, reference):
    got = sentence_embeddings(*ours, TEXTS)
    want = reference_embeddings(*reference, TEXTS)
    assert got.shape == (len(TEXTS), 384)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-2)  # different texts, different embeddings


def test_relevance_cosine_is_the_reference_cosine(ours, reference):
    q = sentence_embeddings(*ours, TEXTS[:2])
    a = sentence_embeddings(*ours, TEXTS[1:3])
    ref = reference_embeddings(*reference, TEXTS[:3])
    cos = torch.nn.functional.cosine_similarity(ref[:2], ref[1:3])
    feats = relevance_features(q, a)
    assert torch.allclose(feats[:, 0], cos, atol=1e-5)
    assert torch.allclose(feats[:, 1 : 1 + 384].sum(-1), cos, atol=1e-5)
    assert torch.allclose(feats[:, 1 + 384 :], (q - a).abs())
