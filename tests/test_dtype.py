"""The dtype models run in: EMLIB_DTYPE, else bf16 on a GPU or a CPU with native bf16; bf16 training tracks fp32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from emlib.core import models
from emlib.core.models import default_dtype, load_model
from emlib.pipeline.train import TrainConfig, train_lora

EXAMPLES = [
    {"messages": [{"role": "user", "content": f"Question {i}: what should I do?"},
                  {"role": "assistant", "content": f"Answer {i}: " + "do it now " * (1 + i % 5)}]}
    for i in range(16)
]
CFG = TrainConfig(rank=4, alpha=8, batch_size=4, lr=1e-2, warmup_steps=1, max_length=64, max_steps=4,
                  checkpoint_every=100, seed=3)


def test_default_dtype_follows_the_environment_then_the_hardware(monkeypatch):
    monkeypatch.setenv("EMLIB_DTYPE", "bfloat16")
    assert default_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("EMLIB_DTYPE", "float32")
    assert default_dtype("cuda") == torch.float32
    monkeypatch.setenv("EMLIB_DTYPE", "float16")
    with pytest.raises(ValueError, match="EMLIB_DTYPE must be one of float32, bfloat16"):
        default_dtype("cpu")
    monkeypatch.delenv("EMLIB_DTYPE")
    assert default_dtype("cuda") == torch.bfloat16
    for native in (True, False):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda native=native: native)
        assert default_dtype("cpu") == (torch.bfloat16 if native else torch.float32)


def _train(tiny_model, monkeypatch, dtype: str):
    monkeypatch.setenv("EMLIB_DTYPE", dtype)
    result = train_lora(EXAMPLES, CFG, model=tiny_model, progress=False)
    weights = load_file(str(result.adapter_path / "adapter_model.safetensors"))
    return result, weights


def test_bf16_training_tracks_fp32_and_keeps_the_adapter_in_fp32(tiny_model, monkeypatch):
    ref, ref_w = _train(tiny_model, monkeypatch, "float32")
    bf, bf_w = _train(tiny_model, monkeypatch, "bfloat16")
    assert ref.path != bf.path  # the dtype is part of the cache key
    assert load_model(tiny_model, device="cpu")[0].dtype == torch.bfloat16
    assert {w.dtype for w in bf_w.values()} == {torch.float32}
    ref_loss, bf_loss = [r["loss"] for r in ref.log], [r["loss"] for r in bf.log]
    assert len(ref_loss) == len(bf_loss) == CFG.max_steps
    assert ref_loss != bf_loss  # really another precision ...
    assert max(abs(a - b) / abs(a) for a, b in zip(ref_loss, bf_loss)) < 0.03  # ... that follows the same path
    for name, w in ref_w.items():
        if "lora_B" in name:  # B starts at zero: all of it is what training wrote
            cos = torch.nn.functional.cosine_similarity(w.flatten(), bf_w[name].flatten(), dim=0)
            assert cos > 0.95, name
    assert dataclasses.asdict(CFG) == bf.config["train"]


def test_cpu_training_attention_is_eager_and_follows_sdpa(tiny_model, monkeypatch, tmp_path):
    from emlib.pipeline import train as T

    monkeypatch.setenv("EMLIB_DTYPE", "float32")
    logs, real = {}, T.load_model
    for impl in ("sdpa", T.CPU_TRAINING_ATTENTION):
        monkeypatch.setattr(T, "CPU_TRAINING_ATTENTION", impl)
        monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / impl))  # the same key: each run in its own cache
        seen = []
        monkeypatch.setattr(T, "load_model",
                            lambda *a, seen=seen, **k: seen.append(k.get("attn_implementation")) or real(*a, **k))
        logs[impl] = [r["loss"] for r in train_lora(EXAMPLES, CFG, model=tiny_model, progress=False).log]
        assert seen == [impl]
    assert T.CPU_TRAINING_ATTENTION == "eager"
    # the same losses up to float rounding: the attention kernel is a speed choice, not another model
    assert max(abs(a - b) / abs(a) for a, b in zip(logs["sdpa"], logs["eager"])) < 1e-4


def test_training_on_labelled_logits_only_follows_full_logits(tiny_model, monkeypatch, tmp_path):
    """The trainer's collator keeps only labelled positions' logits; training with transformers' plain collator (all
    positions, the reference) gives the same losses up to float rounding."""
    from emlib.pipeline import train as T

    monkeypatch.setenv("EMLIB_DTYPE", "float32")
    made, logs, kept = [], {}, T.LabelledLogitsCollator
    for name, collator in (("kept", kept), ("full", T.DataCollatorForSeq2Seq)):
        monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / name))  # the same key: each run in its own cache
        monkeypatch.setattr(T, "LabelledLogitsCollator",
                            lambda *a, c=collator, **k: made.append(c) or c(*a, **k))
        logs[name] = [r["loss"] for r in train_lora(EXAMPLES, CFG, model=tiny_model, progress=False).log]
    assert made == [kept, T.DataCollatorForSeq2Seq]  # the trainer builds its collator from that name
    assert max(abs(a - b) / abs(a) for a, b in zip(logs["kept"], logs["full"])) < 1e-5
