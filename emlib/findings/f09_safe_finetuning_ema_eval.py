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
from ..pipeline.train import LabelledLogitsCollator, load_finetuned, tokenize_chat
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
    collate = LabelledLogitsCollator(tok, padding=True, label_pad_token_id=-100)  # training's padding and positions
    out = []
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(lm.device) for k, v in collate(rows[start:start + batch_size]).items()}
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=batch["logits_to_keep"]).logits.float()  # the output layer where a token is labelled
        target = batch["shift_labels"]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        labelled = (target != -100).float()
        per = (nll * labelled).sum(1) / labelled.sum(1)  # NaN for an example truncated to no assistant token
        out += per.tolist()
    atomic_write_json(path, out)
    return np.array(out)
