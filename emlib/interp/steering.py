"""Activation steering and directional ablation on the residual stream (decoder-layer outputs) of HF causal LMs.

All edits act on the *output* of decoder layers (the residual stream after layer i). Directional ablation projects
the direction out of every chosen layer's output, so every later layer reads a residual stream orthogonal to it.
The embedding output is not projected unless `embeddings=True` (then layer 0's input is orthogonal as well).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Literal, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .hooks import encode_chat, get_layers, hidden_of, layer_hooks, pad_id, replace_hidden, resolve_layers, run_batches
from .hooks import unit, unwrap

__all__ = ["add_direction", "ablate_direction", "Intervention", "random_direction_like", "typical_residual_norm"]


def _check_vector(direction: torch.Tensor, d: int | None = None) -> None:
    if direction.ndim != 1:
        raise ValueError(f"expected a (d,) direction, got shape {tuple(direction.shape)}")
    if d is not None and direction.shape[0] != d:
        raise ValueError(f"direction has dimension {direction.shape[0]}, the model's residual has {d}")


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(unwrap(model), "config", None)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "hidden_size", None)


@contextlib.contextmanager
def add_direction(
    model: nn.Module,
    direction: torch.Tensor,
    layer: int,
    coeff: float,
    positions: Literal["all", "last"] | Sequence[int] = "all",
) -> Iterator[None]:
    """Add coeff · unit(direction) to the output of one decoder layer at the given token positions."""
    _check_vector(direction, _hidden_size(model))
    (layer,) = resolve_layers(model, [layer])
    v = unit(direction.detach().float())
    if not (positions == "all" or positions == "last" or not isinstance(positions, str)):
        raise ValueError(f"positions must be 'all', 'last' or a list of indices, got {positions!r}")

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        h = hidden_of(output)
        delta = (coeff * v).to(device=h.device, dtype=h.dtype)
        if positions == "all":
            new = h + delta
        else:
            new = h.clone()  # never edit in place: other hooks may hold the original tensor
            index = [-1] if positions == "last" else list(positions)
            new[:, index] = new[:, index] + delta
        return replace_hidden(output, new)

    with layer_hooks(model, {layer: hook}):
        yield


def _project_out(h: torch.Tensor, v_hat: torch.Tensor) -> torch.Tensor:
    """h − (h·v̂) v̂, computed in float32 and returned in h's dtype."""
    h32 = h.float()
    v = v_hat.to(device=h.device, dtype=torch.float32)
    return (h32 - (h32 @ v).unsqueeze(-1) * v).to(h.dtype)


@contextlib.contextmanager
def ablate_direction(
    model: nn.Module,
    direction: torch.Tensor,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
) -> Iterator[None]:
    """Project unit(direction) out of the output of every (given) decoder layer, and optionally of the embeddings.

    `direction` is one (d,) vector for all layers, or (n_layers × d) with row i used at layer i (row 0 for the
    embeddings). A zero direction is a no-op.
    """
    n = len(get_layers(model))
    chosen = resolve_layers(model, layers)
    d = _hidden_size(model)
    if direction.ndim == 2:
        if direction.shape[0] != n:
            raise ValueError(f"a per-layer direction needs {n} rows (one per layer), got {direction.shape[0]}")
        rows = unit(direction.detach().float())
        per_layer = {i: rows[i] for i in chosen}
        first = rows[0]
    else:
        _check_vector(direction, d)
        v = unit(direction.detach().float())
        per_layer = {i: v for i in chosen}
        first = v
    if d is not None and direction.shape[-1] != d:
        raise ValueError(f"direction has dimension {direction.shape[-1]}, the model's residual has {d}")

    def make(v_hat: torch.Tensor):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            return replace_hidden(output, _project_out(hidden_of(output), v_hat))

        return hook

    hooks = {i: make(v) for i, v in per_layer.items() if bool(v.any())}  # zero direction: no hook at all
    handle = None
    try:
        if embeddings and bool(first.any()):
            handle = unwrap(model).get_input_embeddings().register_forward_hook(make(first))
        with layer_hooks(model, hooks):
            yield
    finally:
        if handle is not None:
            handle.remove()


@dataclass(frozen=True, eq=False)
class Intervention:
    """A residual-stream edit to hold while generating: add coeff·v̂ after one layer, or ablate v̂ at layers."""

    kind: Literal["add", "ablate"]
    direction: torch.Tensor  # (d,), or (n_layers × d) per-layer rows for "ablate"
    layer: int | None = None  # "add": the decoder layer whose output is steered
    coeff: float = 0.0  # "add": the multiple of unit(direction) added at every position
    layers: tuple[int, ...] | None = None  # "ablate": the layers projected (None: all)

    def __post_init__(self) -> None:
        if self.kind not in ("add", "ablate"):
            raise ValueError(f"kind must be 'add' or 'ablate', got {self.kind!r}")
        if self.kind == "add" and self.layer is None:
            raise ValueError("an 'add' intervention needs a layer")

    def apply(self, model: nn.Module) -> ContextManager[None]:
        """The context manager that holds this edit on `model`."""
        if self.kind == "add":
            return add_direction(model, self.direction, int(self.layer), float(self.coeff))  # type: ignore[arg-type]
        return ablate_direction(model, self.direction, None if self.layers is None else list(self.layers))

    def fingerprint(self) -> dict[str, Any]:
        """What determines this edit, for cache keys (the direction by the hash of its float32 bytes)."""
        raw = self.direction.detach().float().cpu().contiguous().numpy().tobytes()
        return {
            "kind": self.kind,
            "direction": hashlib.sha256(raw).hexdigest()[:16],
            "shape": list(self.direction.shape),
            "layer": self.layer,
            "coeff": float(self.coeff),
            "layers": None if self.layers is None else [int(i) for i in self.layers],
        }


def random_direction_like(v: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random Gaussian direction with the shape, dtype, device and (per-row) norm of v."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(tuple(v.shape), generator=gen, dtype=torch.float32)
    r = unit(r) * v.detach().float().cpu().norm(dim=-1, keepdim=True)
    return r.to(device=v.device, dtype=v.dtype)


def typical_residual_norm(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict[str, str]] | str],
    layer: int,
    batch_size: int = 8,
    skip_first: bool = True,
) -> float:
    """Mean L2 norm of the residual stream after `layer` over the prompts' tokens (chat-rendered, generation prompt on).

    The first token of each prompt is skipped by default: it is usually an attention sink with an outsized norm.
    """
    (layer,) = resolve_layers(model, [layer])
    sequences = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    total, count = 0.0, 0
    start = 1 if skip_first else 0
    for idx, acts in run_batches(model, sequences, [layer], pad_id(tokenizer), batch_size):
        norms = acts[layer].float().norm(dim=-1)
        for row, i in enumerate(idx):
            seg = norms[row, start : len(sequences[i])]
            total += float(seg.sum())
            count += seg.numel()
    if count == 0:
        raise ValueError("no prompt tokens to measure")
    return total / count
