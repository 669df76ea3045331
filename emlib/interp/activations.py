"""Residual-stream activations averaged over answer tokens, mean-difference directions and their cosines."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .hooks import encode_chat, pad_id, resolve_layers, run_batches, unit

__all__ = [
    "mean_answer_activations", "last_prompt_activations", "mean_diff_direction", "direction_cosines",
    "bootstrap_direction_cosines", "split_half_cosines", "shuffled_label_cosines",
]

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
    chosen = resolve_layers(model, layers)
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
    for idx, acts in run_batches(model, sequences, chosen, pad_id(tokenizer), batch_size):
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


def last_prompt_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[dict[str, str]]],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Residual activations at each chat prompt's final token, generation prompt included (n × n_layers × d)."""
    chosen = resolve_layers(model, layers)
    sequences = [encode_chat(tokenizer, messages, add_generation_prompt=True) for messages in prompts]
    out: torch.Tensor | None = None
    for idx, acts in run_batches(model, sequences, chosen, pad_id(tokenizer), batch_size):
        if out is None:
            out = torch.zeros((len(sequences), len(chosen), acts[chosen[0]].shape[-1]), dtype=torch.float32)
        for j, layer in enumerate(chosen):
            for row, i in enumerate(idx):
                out[i, j] = acts[layer][row, len(sequences[i]) - 1].float().cpu()
    if out is None:
        raise ValueError("no prompts given")
    return out


def mean_diff_direction(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """mean(acts_a) − mean(acts_b) over examples (dim 0): n × n_layers × d → n_layers × d."""
    if acts_a.shape[1:] != acts_b.shape[1:]:
        raise ValueError(f"shape mismatch: {tuple(acts_a.shape)} vs {tuple(acts_b.shape)}")
    return acts_a.float().mean(dim=0) - acts_b.float().mean(dim=0)


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


def split_half_cosines(pos: torch.Tensor, neg: torch.Tensor, n_splits: int = 50, seed: int = 0) -> np.ndarray:
    """Per-layer cosine between the mean-diff directions of two random halves of the same examples (n_splits ×
    n_layers): how well a direction can agree with itself at this many examples, a ceiling for comparing two."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_splits):
        p, n = torch.randperm(pos.shape[0], generator=gen), torch.randperm(neg.shape[0], generator=gen)
        hp, hn = pos.shape[0] // 2, neg.shape[0] // 2
        out.append(direction_cosines(mean_diff_direction(pos[p[:hp]], neg[n[:hn]]),
                                     mean_diff_direction(pos[p[hp:2 * hp]], neg[n[hn:2 * hn]])).numpy())
    return np.stack(out).astype(float)


def shuffled_label_cosines(
    pos: torch.Tensor, neg: torch.Tensor, other: torch.Tensor, n_shuffles: int = 200, seed: int = 0
) -> np.ndarray:
    """Per-layer cosine between `other` (n_layers × d) and mean-diff directions of pos/neg with the labels shuffled
    (n_shuffles × n_layers): the null for a shared direction, keeping what the answers have in common."""
    gen = torch.Generator().manual_seed(seed)
    both = torch.cat([pos, neg])
    out = []
    for _ in range(n_shuffles):
        perm = torch.randperm(both.shape[0], generator=gen)
        out.append(direction_cosines(mean_diff_direction(both[perm[: pos.shape[0]]], both[perm[pos.shape[0] :]]),
                                     other).numpy())
    return np.stack(out).astype(float)
