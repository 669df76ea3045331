"""Residual-stream activations of HF causal LMs: decoder-layer lookup, recording hooks, answer-token means, directions.

The residual stream "at layer i" is the output of decoder layer i (HF `hidden_states[i + 1]`, except that HF replaces
the last entry by the final-norm output; the hooks here always see the raw, un-normed output of the last layer).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

__all__ = [
    "get_layers",
    "layer_hooks",
    "record_residuals",
    "encode_chat",
    "run_batches",
    "mean_answer_activations",
    "mean_diff_direction",
    "cached_answer_activations",
    "direction_cosines",
    "bootstrap_direction_cosines",
    "unit",
]

# attribute paths (from the unwrapped causal LM) to the decoder-layer list, most common first
_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen, Gemma, Mistral, Phi-3, OLMo, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llama 4, Qwen-VL)
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder model
    "h",
)


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a PeftModel (LoRA layers stay injected), else the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of an HF causal LM (also inside a PeftModel)."""
    base = _unwrap(model)
    for path in _LAYER_PATHS:
        obj: Any = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__} (tried {', '.join(_LAYER_PATHS)})")


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(get_layers(model))
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise IndexError(f"layer indices {bad} out of range for a model with {n} layers")
    return chosen


def _hidden(output: Any) -> torch.Tensor:
    """The hidden state in a decoder layer's output (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """A decoder layer's output with its hidden state replaced."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


@contextlib.contextmanager
def layer_hooks(model: nn.Module, hooks: dict[int, Any]) -> Iterator[None]:
    """Register forward hooks {layer index: hook(module, args, output)} on decoder layers; always removed on exit."""
    modules = get_layers(model)
    handles = []
    try:
        for i, hook in hooks.items():
            handles.append(modules[i].register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_residuals(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Yield {layer: [output hidden state of each forward pass]} for the given (default all) decoder layers."""
    chosen = _resolve_layers(model, layers)
    store: dict[int, list[torch.Tensor]] = {i: [] for i in chosen}

    def make(i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[i].append(_hidden(output).detach())

        return hook

    with layer_hooks(model, {i: make(i) for i in chosen}):
        yield store


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]] | str, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation rendered with the chat template (a plain string is tokenized as is)."""
    if isinstance(messages, str):
        return list(tokenizer(messages, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_batches(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    pad_id: int,
    batch_size: int = 8,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Forward right-padded batches (longest first) and yield (indices into `sequences`, {layer: b × L × d})."""
    base = _unwrap(model)
    # the logits are not needed: ask for the last position only where the model supports it (saves vocab × tokens)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    device = _device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            mask[row, : len(sequences[i])] = 1
        with torch.no_grad(), record_residuals(model, layers) as rec:
            base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra)
        yield idx, {i: rec[i][-1] for i in layers}


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def mean_answer_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict[str, str]]],
    answers: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Residual activations averaged over each answer's tokens (n × n_layers × d, float32 on CPU)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    chosen = _resolve_layers(model, layers)
    spans: list[tuple[int, int]] = []
    sequences: list[list[int]] = []
    for k, (messages, answer) in enumerate(zip(prompts, answers)):
        prompt_ids = encode_chat(tokenizer, messages, add_generation_prompt=True)
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not answer_ids:
            raise ValueError(f"answer {k} has no tokens")
        spans.append((len(prompt_ids), len(prompt_ids) + len(answer_ids)))
        sequences.append(prompt_ids + answer_ids)
    out: torch.Tensor | None = None
    for idx, acts in run_batches(model, sequences, chosen, _pad_id(tokenizer), batch_size):
        if out is None:
            d = acts[chosen[0]].shape[-1]
            out = torch.zeros((len(sequences), len(chosen), d), dtype=torch.float32)
        for j, layer in enumerate(chosen):
            h = acts[layer].float()
            for row, i in enumerate(idx):
                a, b = spans[i]
                out[i, j] = h[row, a:b].mean(dim=0).cpu()
    if out is None:
        raise ValueError("no prompts given")
    return out


def cached_answer_activations(
    model: str,
    adapter: str | os.PathLike | None,
    prompts: Sequence[Sequence[dict[str, str]]],
    answers: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """mean_answer_activations of a named model (with its adapter merged), cached on disk by everything that sets them."""
    from .cache import atomic_write_bytes, cache_dir, stable_hash
    from .sample import adapter_fingerprint
    from .train import load_finetuned

    key = stable_hash(model, adapter_fingerprint(adapter), [list(p) for p in prompts], list(answers), layers)
    path = cache_dir("activations", key) / "mean_answer.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    lm, tok = load_finetuned(adapter, model=model, merge=True)
    acts = mean_answer_activations(lm, tok, prompts, answers, layers=layers, batch_size=batch_size)
    buf = io.BytesIO()
    torch.save(acts, buf)
    atomic_write_bytes(path, buf.getvalue())
    return acts


def mean_diff_direction(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """mean(acts_a) − mean(acts_b) over examples (dim 0): n × n_layers × d → n_layers × d."""
    if acts_a.shape[1:] != acts_b.shape[1:]:
        raise ValueError(f"shape mismatch: {tuple(acts_a.shape)} vs {tuple(acts_b.shape)}")
    return acts_a.float().mean(dim=0) - acts_b.float().mean(dim=0)


def unit(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm along its last dimension (a zero vector stays zero)."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, v / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(v))


def direction_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between matching rows of two (n_layers × d) directions (0 where a row is zero)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (unit(a.float()) * unit(b.float())).sum(dim=-1)


def bootstrap_direction_cosines(
    pos_a: torch.Tensor,
    neg_a: torch.Tensor,
    pos_b: torch.Tensor,
    neg_b: torch.Tensor,
    n_boot: int = 500,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer cosine of two mean-diff directions, and its bootstrap draws over examples (n_boot × n_layers).

    Each argument is examples × n_layers × d; direction a = mean(pos_a) − mean(neg_a), likewise b. Resampling adds
    noise to both means, so the draws sit below the point estimate: their percentiles are a conservative interval.
    """
    point = direction_cosines(mean_diff_direction(pos_a, neg_a), mean_diff_direction(pos_b, neg_b)).numpy()
    gen = torch.Generator().manual_seed(seed)

    def resample(x: torch.Tensor) -> torch.Tensor:
        return x[torch.randint(0, x.shape[0], (x.shape[0],), generator=gen)]

    draws = np.stack([
        direction_cosines(
            mean_diff_direction(resample(pos_a), resample(neg_a)), mean_diff_direction(resample(pos_b), resample(neg_b))
        ).numpy()
        for _ in range(n_boot)
    ])
    return point.astype(float), draws.astype(float)
