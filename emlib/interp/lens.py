"""TransformerLens 4 on emlib's models: a `TransformerBridge` for any model, with a LoRA adapter merged (or scaled ×k).

One call, offline:

    >>> from emlib.interp.lens import load_bridge
    >>> bridge = load_bridge("smollm2-135m", adapter="path/to/adapter")  # or a TrainResult, or None for the base
    >>> logits, cache = bridge.run_with_cache(ids, names_filter="blocks.15.hook_resid_post")

The adapter is merged into the weights once (scaled ×`scale` first) and saved in a cached folder keyed by the model,
a hash of the adapter's files, the scale, the dtype and `LENS_VERSION`; the bridge boots from that folder. The bridge
keeps the HF weights as they are (no LayerNorm folding), so `blocks.{L}.hook_resid_post` is the output of decoder
layer L, the residual that `emlib.interp.hooks.record_residuals` captures (HF `hidden_states[L + 1]` for L below the
last layer), and its logits are the HF model's (it runs eager attention: equal to sdpa up to ~1e-5 in fp32).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ..core.cache import atomic_dir, cache_dir, file_fingerprint, stable_hash
from ..core.models import default_device, default_dtype, load_model, load_tokenizer, resolve_model_path
from .hooks import encode_chat
from .lora import scale_adapter

if TYPE_CHECKING:  # transformer_lens is imported lazily: it takes seconds and only this module needs it
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["LENS_VERSION", "adapter_path_of", "adapter_files_fingerprint", "merged_model_path", "load_bridge",
           "answer_tokens"]

LENS_VERSION = "lens-v1"  # bump when the merged folders change (how they are merged or saved)


def adapter_path_of(adapter: str | os.PathLike | Any) -> Path:
    """The folder of a saved peft adapter: a path, or anything with an `adapter_path` (e.g. a pipeline TrainResult)."""
    return Path(getattr(adapter, "adapter_path", adapter))


def adapter_files_fingerprint(adapter: str | os.PathLike | Any) -> str:
    """A hash of a saved adapter's weights and config files (the recipe of emlib.pipeline.sample.adapter_fingerprint)."""
    path = adapter_path_of(adapter)
    files = sorted(path.glob("adapter_model.*")) + sorted(path.glob("adapter_config.json"))
    if not files:
        raise FileNotFoundError(f"{path} holds no peft adapter (adapter_model.safetensors)")
    return stable_hash([file_fingerprint(f) for f in files])


def _dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return dtype or default_dtype(device)


def merged_model_path(
    model: str = "smollm2-135m",
    adapter: str | os.PathLike | Any = None,
    scale: float = 1.0,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
) -> str:
    """A folder (or HF id) holding the model with the adapter ×`scale` merged into its weights, built once and cached.

    Without an adapter it is the model's own path (`resolve_model_path`); `scale` must then be 1.
    """
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if adapter is None:
        if float(scale) != 1.0:
            raise ValueError(f"scale={scale} needs an adapter to scale")
        return resolve_model_path(model)
    device = device or default_device()
    dtype = _dtype(dtype, device)
    source = resolve_model_path(model)
    key = stable_hash(model, source, adapter_files_fingerprint(adapter), float(scale), str(dtype), LENS_VERSION)
    target = cache_dir("merged", key)
    if (target / "config.json").exists():
        return str(target)
    from peft import PeftModel

    base, tokenizer = load_model(model, device=device, dtype=dtype)
    peft_model = PeftModel.from_pretrained(base, str(adapter_path_of(adapter)))
    peft_model.eval()
    with scale_adapter(peft_model, float(scale)):  # merge_and_unload merges with the (scaled) LoRA scalings
        merged = peft_model.merge_and_unload()
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return str(target)


def load_bridge(
    model: str = "smollm2-135m",
    adapter: str | os.PathLike | Any = None,
    scale: float = 1.0,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
) -> "TransformerBridge":
    """A TransformerLens 4 `TransformerBridge` for `model` (embedded name, HF id or folder), optionally with a LoRA adapter.

    `adapter` is a saved peft adapter folder or a TrainResult; it is merged ×`scale` into a cached folder
    (`merged_model_path`). The bridge's tokenizer is emlib's (`load_tokenizer`, pad token set); build inputs with
    `answer_tokens` or `emlib.interp.hooks.encode_chat` rather than `bridge.to_tokens`, which prepends a BOS token.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device = device or default_device()
    dtype = _dtype(dtype, device)
    path = merged_model_path(model, adapter, scale, device=device, dtype=dtype)
    bridge = TransformerBridge.boot_transformers(path, device=device, dtype=dtype, tokenizer=load_tokenizer(model))
    bridge.eval()
    return bridge


def answer_tokens(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]] | str,
    answer: str,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, int]:
    """(1 × n token ids of the chat prompt followed by the answer, on `device`; index of the answer's first token).

    The same tokens `emlib.interp.activations.mean_answer_activations` reads, so `cache[hook][0, start:].mean(0)` is
    the answer-token mean it computes.
    """
    prompt = encode_chat(tokenizer, messages, add_generation_prompt=True)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not answer_ids:
        raise ValueError("the answer has no tokens")
    return torch.tensor([prompt + answer_ids], dtype=torch.long, device=device), len(prompt)
