"""The decoding loop behind `sample.generate`: a KV-cached forward per token and a cheap exact draw.

`transformers`' `generate` draws each token with `torch.multinomial`, which on CPU fills an exponential variate
for every vocabulary entry of every row (96 rows × 49,152 entries: ~95 ms a step, a fifth of all sampling time at
the notebooks' shape). `draw` instead inverts the cumulative distribution with one uniform per row (~2 ms): the
same distribution, exactly. Temperature and top-p are transformers' own logits warpers; the model, its KV cache
(`DynamicCache`), left-padding positions and forward hooks (steering, ablation) are the model's own, so greedy
decoding here equals `model.generate` token for token (tested). The prompt pass runs once per distinct prompt
in a batch (the notebooks sample n answers per paraphrase: 64 rows hold 8 prompts), each row then continuing from a
copy of its prompt's cache: at the notebooks' shape the prompt pass was a third of all sampling time.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from ..core.models import decoder_dims

__all__ = ["draw", "warpers", "decode", "kv_bytes_per_token", "auto_batch_size"]


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (rows ≥ 0, any positive sum), by inverting the cumulative sum at a uniform draw."""
    cum = probs.float().cumsum(-1)
    total = cum[:, -1:]
    u = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator) * total
    index = torch.searchsorted(cum, u, right=True)  # the first entry whose cumulative sum exceeds u: never a zero one
    last = (cum < total).sum(-1, keepdim=True)  # the last entry with mass, in case rounding lands u on the total
    return torch.minimum(index, last).squeeze(-1)


def warpers(temperature: float, top_p: float = 1.0) -> LogitsProcessorList:
    """transformers' temperature and top-p warpers, as `generate` applies them (none at temperature 0: greedy)."""
    out = LogitsProcessorList()
    if temperature > 0 and temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if temperature > 0 and top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           top_p: float = 1.0, eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """New tokens (batch × ≤ max_new_tokens) after left-padded prompts; a row is padded after its end-of-sequence token
    and the loop stops when every row has ended. Temperature 0 is greedy. Rows with the same prompt are prefilled
    once and continue from copies of its KV cache."""
    batch, length = input_ids.shape
    eos = torch.tensor([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id,
                       device=input_ids.device)
    process = warpers(temperature, top_p)
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
    position = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    # rows with the same (padded) prompt share one prefill: the n samples of a paraphrase need its KV cache once
    _, inverse = torch.unique(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), batch, device=input_ids.device).scatter_reduce(
        0, inverse, torch.arange(batch, device=input_ids.device), "amin")  # one batch row per distinct prompt
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids[first], attention_mask=attention_mask[first], position_ids=position[first],
                cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_select_indices(inverse)  # row i continues from its prompt's cache (unique rows come sorted)
    logits = out.logits[inverse, -1, :]
    position = position[:, -1:]
    ended = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = logits.float()
        if temperature > 0:
            nxt = draw(torch.softmax(process(input_ids, logits), dim=-1), generator)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(ended, torch.full_like(nxt, pad_token_id), nxt)
        tokens.append(nxt)
        ended |= torch.isin(nxt, eos)
        if bool(ended.all()) or step == max_new_tokens - 1:
            break
        position = position + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask[:, : length + step + 1], position_ids=position,
                       cache=cache, use_cache=True).logits[:, -1, :]
    return torch.stack(tokens, dim=1) if tokens else input_ids.new_empty(batch, 0)


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token of one sequence holds (keys and values of every layer, in the model's dtype)."""
    _, layers, _, kv, head_dim, _, _ = decoder_dims(model.config)
    return 2 * layers * kv * head_dim * next(model.parameters()).element_size()


def auto_batch_size(model, tokens_per_sequence: int, budget_bytes: int = 2 << 30, cap: int = 128) -> int:
    """Sequences per batch whose KV cache and float32 logits (with their softmax and cumulative sum) fit in
    `budget_bytes`, at most `cap`. The budget is fixed, not the free memory, so a batch plan (and with it every
    sampled answer) is the same on every machine."""
    per_sequence = kv_bytes_per_token(model) * tokens_per_sequence + 3 * 4 * decoder_dims(model.config)[-1]
    return max(1, min(cap, budget_bytes // per_sequence))
