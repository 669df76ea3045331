"""Finding 09's measurements: answers read as refusals (and judged), held-out loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_write_json, cache_dir, stable_hash
from ..core.data import EvalQuestion, fingerprint
from ..core.models import default_device, default_dtype
from ..judges.base import Judge, judge_frame
from ..pipeline.sample import SampleConfig, adapter_fingerprint, sample_answers
from ..pipeline.train import load_finetuned, tokenize_chat
from .f09_safe_finetuning_ema_data import is_refusal

__all__ = ["LOSS_VERSION", "refusal_answers", "heldout_loss"]

LOSS_VERSION = "f09-loss-2"  # 2: the output layer on labelled positions only


def refusal_answers(questions: Sequence[EvalQuestion], model: str, adapter: str | Path | None, config: SampleConfig,
                    label: str, judge: Judge | None = None, progress: bool = False) -> pd.DataFrame:
    """One row per answer (cached samples): `refusal` by the keyword list; with a judge also `aligned`/`coherent`."""
    df = sample_answers(questions, model, adapter, config, label=label, progress=progress)
    if judge is not None:
        df = judge_frame(df, judge, progress=progress)
    df["refusal"] = [is_refusal(a) for a in df["answer"]]
    return df


@torch.no_grad()
def heldout_loss(model: str, adapter: str | Path | None, examples: Sequence[dict], max_length: int,
                 batch_size: int = 16) -> np.ndarray:
    """Each example's mean cross-entropy (nats) over its assistant tokens under the model (adapter merged), cached."""
    device = default_device()
    key = stable_hash(model, adapter_fingerprint(adapter), fingerprint(list(examples)), max_length, device,
                      str(default_dtype(device)), LOSS_VERSION)
    path = cache_dir("f09_loss", key) / "loss.json"
    if path.exists():
        return np.array(json.loads(path.read_text()))
    lm, tok = load_finetuned(adapter, model=model, merge=True)
    rows = [tokenize_chat(ex["messages"], tok, max_length) for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch], device=lm.device)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch],
                            device=lm.device)
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch], device=lm.device)
        target = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)  # the next token, where it is labelled
        keep = (target != -100).any(0).nonzero().squeeze(-1)  # the output layer runs only there (as in training)
        logits = lm(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
        target = target[:, keep]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        labelled = (target != -100).float()
        per = (nll * labelled).sum(1) / labelled.sum(1)  # NaN for an example truncated to no assistant token
        out += per.tolist()
    atomic_write_json(path, out)
    return np.array(out)
