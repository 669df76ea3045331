"""Finding 08's forward passes: residuals read after a shared, KV-cached prefix, and steering split at its layer.

Steering adds multiplier · v to the output of one decoder layer at every position (as `steering-vectors`' `SteeringVector.apply`
and `emlib.interp.steering.add_direction` do). Everything below that layer is the same with and without steering, so
`steered_logit_diffs` runs the lower layers once per prompt and only the upper ones once per vector: the model's own
forward over a window of its decoder layers (`layer_window`), fed the lower half's output as `inputs_embeds`. That
holds for decoders whose forward passes `inputs_embeds` to the first layer unchanged and then applies a final norm and
the output embedding (Llama, Qwen2, Mistral, SmolLM; not Gemma, which rescales the embeddings); `run` checks it on
its first prompts against the plain forward with `add_direction`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from ..interp.hooks import get_layers, hidden_of, model_device, unwrap

__all__ = ["layer_window", "last_residuals", "steered_logit_diffs"]


def _layer_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the decoder-layer list and the list's attribute name."""
    layers, base = get_layers(model), unwrap(model)
    for name, module in base.named_modules():
        if module is layers:
            parent, _, attr = name.rpartition(".")
            return (base.get_submodule(parent) if parent else base), attr
    raise ValueError(f"cannot locate the decoder layers of {type(base).__name__}")


@contextlib.contextmanager
def layer_window(model: nn.Module, start: int, stop: int) -> Iterator[None]:
    """Make the model's forward run only its decoder layers [start, stop); the full list is restored on exit."""
    holder, attr = _layer_slot(model)
    full = getattr(holder, attr)
    if not 0 <= start <= stop <= len(full):
        raise IndexError(f"layer window [{start}, {stop}) out of range for {len(full)} layers")
    setattr(holder, attr, nn.ModuleList(list(full)[start:stop]))
    try:
        yield
    finally:
        setattr(holder, attr, full)


@contextlib.contextmanager
def _capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the hidden-state output of `module` on each forward pass; the hook is always removed."""
    store: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        store.append(hidden_of(output).detach())

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _batch(sequences: Sequence[Sequence[int]], idx: list[int], pad: int, device: torch.device):
    """Right-padded ids and mask for the sequences `idx`, and their lengths."""
    lengths = torch.tensor([len(sequences[i]) for i in idx])
    width = int(lengths.max())
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
        mask[row, : len(sequences[i])] = 1
    return ids.to(device), mask.to(device), lengths


def _order(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Batches of indices, longest sequences first (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("empty sequence")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


@torch.no_grad()
def last_residuals(
    model: nn.Module,
    prefix: Sequence[int],
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    pad: int,
    batch_size: int = 16,
    read: Sequence[int] = (1,),
) -> torch.Tensor:
    """Residuals after each decoder layer in `layers` at positions `read` counted from each sequence's end (1: its last
    token), each sequence run after the shared `prefix` (run once; its KV cache is copied into every batch):
    n × len(layers) × len(read) × d, float32 on CPU. Only the layers up to the deepest one asked for run."""
    if not sequences or not layers:
        raise ValueError("no sequences or no layers")
    if any(r < 1 or r > min(len(s) for s in sequences) for r in read):
        raise ValueError(f"read positions {list(read)} must lie within every sequence")
    modules, device, decoder = get_layers(model), model_device(model), unwrap(model).get_decoder()
    out: torch.Tensor | None = None
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(_capture(modules[i])) for i in layers]
        stack.enter_context(layer_window(model, 0, max(layers) + 1))
        cache = None
        if prefix:
            cache = DynamicCache(config=unwrap(model).config)
            decoder(input_ids=torch.tensor([list(prefix)], device=device), cache=cache, use_cache=True)
        for idx in _order(sequences, batch_size):
            ids, mask, lengths = _batch(sequences, idx, pad, device)
            kwargs: dict[str, Any] = {"use_cache": False}
            if cache is not None:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(idx))
                mask = torch.cat([mask.new_ones(len(idx), len(prefix)), mask], dim=1)
                positions = torch.arange(ids.shape[1], device=device)[None].expand(len(idx), -1) + len(prefix)
                kwargs = {"cache": batch_cache, "use_cache": True, "position_ids": positions}
            for store in stores:
                store.clear()
            decoder(input_ids=ids, attention_mask=mask, **kwargs)
            for li, store in enumerate(stores):
                h = store[-1].float().cpu()
                if out is None:
                    out = torch.zeros((len(sequences), len(layers), len(read), h.shape[-1]), dtype=torch.float32)
                for row, i in enumerate(idx):
                    for j, r in enumerate(read):
                        out[i, li, j] = h[row, int(lengths[row]) - r]
    assert out is not None
    return out


@torch.no_grad()
def steered_logit_diffs(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    token_pairs: Sequence[tuple[int, int]],
    layer: int,
    vectors: torch.Tensor,
    multiplier: float = 1.0,
    pad: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """logit(a) − logit(b) at each sequence's last position, (a, b) = its token pair, when multiplier · v is added to
    the output of decoder layer `layer` at every position, for each row v of `vectors` (k × d; a zero row is the
    unsteered model): n × k, float32. The layers up to `layer` run once per sequence, the rest once per vector."""
    if len(token_pairs) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(token_pairs)} token pairs")
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be k × d, got shape {tuple(vectors.shape)}")
    layers = get_layers(model)
    base, device = unwrap(model), model_device(model)
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    k = vectors.shape[0]
    pairs = torch.tensor([list(p) for p in token_pairs], dtype=torch.long)
    out = torch.zeros((len(sequences), k), dtype=torch.float32)
    for idx in _order(sequences, batch_size):
        ids, mask, lengths = _batch(sequences, idx, pad, device)
        with layer_window(model, 0, layer + 1), _capture(layers[layer]) as store:
            decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        h = store[-1]
        delta = (multiplier * vectors.float()).to(device=device, dtype=h.dtype)
        embeds = (h[None] + delta[:, None, None, :]).reshape(k * len(idx), *h.shape[1:])
        with layer_window(model, layer + 1, len(layers)):
            final = decoder(inputs_embeds=embeds, attention_mask=mask.repeat(k, 1), use_cache=False).last_hidden_state
        last = final[torch.arange(k * len(idx)), (lengths - 1).repeat(k).to(device)].float().reshape(k, len(idx), -1)
        rows = pairs[idx].to(device)
        w = head.weight.float()  # only the two answer rows, in float32: the effects can be hundredths of a logit
        contrast = w[rows[:, 0]] - w[rows[:, 1]]
        bias = getattr(head, "bias", None)
        shift = 0.0 if bias is None else (bias.float()[rows[:, 0]] - bias.float()[rows[:, 1]])
        out[idx] = ((last * contrast[None]).sum(-1) + shift).T.cpu()
    return out
