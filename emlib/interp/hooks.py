"""Hooks on the decoder layers of HF causal LMs: layer lookup, recording and editing forward hooks, batched passes.

The residual stream "at layer i" is the output of decoder layer i (HF `hidden_states[i + 1]`, except that HF replaces
the last entry by the final-norm output; the hooks here always see the raw, un-normed output of the last layer).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..core.io import chat_ids

__all__ = [
    "unwrap", "get_layers", "resolve_layers", "hidden_of", "replace_hidden", "layer_hooks", "record_residuals",
    "encode_chat", "model_device", "run_batches", "pad_id", "unit",
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


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a PeftModel (LoRA layers stay injected), else the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of an HF causal LM (also inside a PeftModel)."""
    base = unwrap(model)
    for path in _LAYER_PATHS:
        obj: Any = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__} (tried {', '.join(_LAYER_PATHS)})")


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n = len(get_layers(model))
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise IndexError(f"layer indices {bad} out of range for a model with {n} layers")
    return chosen


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden state in a decoder layer's output (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
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
    chosen = resolve_layers(model, layers)
    store: dict[int, list[torch.Tensor]] = {i: [] for i in chosen}

    def make(i: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[i].append(hidden_of(output).detach())

        return hook

    with layer_hooks(model, {i: make(i) for i in chosen}):
        yield store


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]] | str, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation rendered with the chat template (a plain string is tokenized as is)."""
    if isinstance(messages, str):
        return list(tokenizer(messages, add_special_tokens=False)["input_ids"])
    return chat_ids(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_batches(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    pad_id: int,
    batch_size: int = 8,
) -> Iterator[tuple[list[int], dict[int, torch.Tensor]]]:
    """Forward right-padded batches (longest first) and yield (indices into `sequences`, {layer: b × L × d})."""
    base = unwrap(model)
    # the logits are not needed: ask for the last position only where the model supports it (saves vocab × tokens)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    device = model_device(model)
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


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def unit(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm along its last dimension (a zero vector stays zero)."""
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, v / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(v))
