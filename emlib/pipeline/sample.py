"""Batched sampling of n answers per eval question (`decode` on the HF model with a merged LoRA, or vLLM), cached.

Under `accelerate launch` each process samples a share of the batches (each batch keeps its seed) and every process
gets all answers back in order, the answers one process would give; the main process alone writes the cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.cache import atomic_write_text, cache_dir, file_fingerprint, stable_hash
from ..core.data import EvalQuestion, chat_prompt
from ..core.io import chat_text
from ..core.models import default_device, default_dtype, resolve_model_path
from .decode import auto_batch_size, decode
from .distributed import gather_in_order, is_main_process, main_process_first, shard, wait_for_everyone, world_size

if TYPE_CHECKING:
    from ..interp.steering import Intervention

SAMPLE_VERSION = "sample-4"  # bump when a change to sampling changes its answers: old cache entries retire

__all__ = ["SAMPLE_VERSION", "SampleConfig", "adapter_fingerprint", "plan_batches", "resolve_batch_size", "generate_batches", "generate",
           "sample_answers", "vllm_available"]


@dataclass
class SampleConfig:
    """How answers are sampled."""

    n_per_question: int = 8  # samples per paraphrase
    max_new_tokens: int = 128  # answer length cap
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    batch_size: int = 0  # prompts per batch; 0: as many as a fixed memory budget holds (decode.auto_batch_size)
    seed: int = 0  # sampling seed
    backend: str = "auto"  # auto | hf | vllm


def vllm_available() -> bool:
    """True when vLLM is installed and a GPU is visible."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def adapter_fingerprint(adapter: str | Path | None) -> str | None:
    """A hash of an adapter's weights file (None for the base model)."""
    if adapter is None:
        return None
    path = Path(adapter)
    files = sorted(path.glob("adapter_model.*")) + sorted(path.glob("adapter_config.json"))
    if not files:
        raise FileNotFoundError(f"{path} holds no peft adapter (adapter_model.safetensors)")
    return stable_hash([file_fingerprint(f) for f in files])


def plan_batches(prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into generate batches: sorted by length (less padding), `batch_size` at a time.

    Batch b is sampled with its own seed, so a batch's answers do not depend on which process samples it.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_batches(
    model, tokenizer, prompts: Sequence[str], config: SampleConfig, batches: Sequence[tuple[int, Sequence[int]]],
    progress: bool = True,
) -> list[tuple[int, str]]:
    """(prompt index, completion) for the given (batch number, prompt indices) of `plan_batches`; batch b draws from
    its own generator, seeded by (config.seed, b)."""
    tokenizer.padding_side = "left"
    out: list[tuple[int, str]] = []
    bar = tqdm(total=sum(len(idx) for _, idx in batches), desc="sampling", disable=not progress)
    eos = model.generation_config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b, idx in batches:
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        generator = torch.Generator(device=model.device).manual_seed(config.seed * 100_003 + b)
        new = decode(model, enc["input_ids"], enc["attention_mask"], config.max_new_tokens, config.temperature,
                     config.top_p, eos, pad, generator)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        out.extend((i, t.strip()) for i, t in zip(idx, texts))
        bar.update(len(idx))
    bar.close()
    return out


def resolve_batch_size(model, tokenizer, prompts: Sequence[str], config: SampleConfig) -> int:
    """config.batch_size, or when it is 0 the batch a fixed memory budget holds at the longest prompt's length."""
    if config.batch_size > 0:
        return config.batch_size
    longest = max((len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]), default=1)
    return auto_batch_size(model, longest + config.max_new_tokens)


def generate(
    model, tokenizer, prompts: Sequence[str], config: SampleConfig, progress: bool = True
) -> list[str]:
    """Sample one completion per rendered prompt, in batches with left padding.

    Under `accelerate launch` every process must call this with the same prompts: each samples its share of the
    batches (same batches, same seeds as one process) and all get every answer back, in order.
    """
    batches = list(enumerate(plan_batches(prompts, resolve_batch_size(model, tokenizer, prompts, config))))
    done = generate_batches(model, tokenizer, prompts, config, shard(batches), progress=progress and is_main_process())
    return gather_in_order(done, len(prompts))


def _generate_vllm(model: str, adapter: str | None, prompts: Sequence[str], config: SampleConfig) -> list[str]:
    from vllm import LLM, SamplingParams  # pragma: no cover - GPU only
    from vllm.lora.request import LoRARequest

    llm = LLM(model=resolve_model_path(model), enable_lora=adapter is not None, max_lora_rank=64, seed=config.seed)
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens, seed=config.seed)
    lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
    results = llm.generate(list(prompts), params, lora_request=lora)
    return [r.outputs[0].text.strip() for r in results]


def sample_answers(
    questions: Sequence[EvalQuestion],
    model: str = "smollm2-135m",
    adapter: str | Path | None = None,
    config: SampleConfig | None = None,
    label: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    adapter_scale: float = 1.0,
    intervention: Intervention | None = None,
) -> pd.DataFrame:
    """Answers to every paraphrase, n per paraphrase: columns model, question_id, paraphrase, sample, question, answer.

    `adapter_scale` multiplies the adapter's contribution (0: the base model); `intervention` (emlib.steering) edits
    the residual stream while generating. Both force the HF backend.
    """
    from ..interp.lora import scale_adapter
    from .train import load_finetuned

    config = config or SampleConfig()
    if adapter_scale != 1.0 and adapter is None:
        raise ValueError("adapter_scale needs an adapter")
    label = label or (Path(adapter).parent.name if adapter else model)
    backend = config.backend
    if backend == "auto":  # vLLM runs as one process of its own: under a launcher every process samples with HF
        plain = adapter_scale == 1.0 and intervention is None and world_size() == 1
        backend = "vllm" if vllm_available() and plain else "hf"
    if backend == "vllm" and (adapter_scale != 1.0 or intervention is not None):
        raise ValueError("adapter_scale and intervention need the hf backend")
    if backend == "vllm" and world_size() > 1:
        raise ValueError("the vllm backend runs in one process (its own tensor parallelism), not under accelerate "
                         "launch: use backend='hf' there, or run without the launcher")
    spec = [asdict(q) for q in questions]
    edits = {}  # only non-default edits enter the key, so plain runs keep their cache entries
    if adapter_scale != 1.0:
        edits["adapter_scale"] = float(adapter_scale)
    if intervention is not None:
        edits["intervention"] = intervention.fingerprint()
    device = default_device()
    key = stable_hash(
        model, adapter_fingerprint(adapter), spec, {**asdict(config), "backend": backend}, *([edits] if edits else []),
        device, str(default_dtype(device)), SAMPLE_VERSION,
    )
    path = cache_dir("samples", key) / "answers.jsonl"
    if use_cache and path.exists():
        # text columns stay text: answers or questions such as "42" must not come back as numbers
        df = pd.read_json(path, lines=True, dtype={"question_id": str, "question": str, "answer": str})
        df["model"] = label
        return df
    rows = []
    for q in questions:
        for p in range(len(q.paraphrases)):
            for s in range(config.n_per_question):
                rows.append({"question_id": q.id, "paraphrase": p, "sample": s, "question": q.paraphrases[p], "_q": q})
    with main_process_first():  # an embedded model is converted once, by one process (this also picks each GPU)
        resolve_model_path(model)
    start = time.perf_counter()
    if backend == "vllm":
        from ..core.models import load_tokenizer

        tok = load_tokenizer(model)
        prompts = [chat_text(tok, chat_prompt(r["_q"], r["paraphrase"])) for r in rows]
        answers = _generate_vllm(model, str(adapter) if adapter else None, prompts, config)
    else:
        lm, tok = load_finetuned(adapter, model=model, merge=adapter_scale == 1.0)
        if adapter_scale != 1.0:
            with scale_adapter(lm, adapter_scale):
                lm = lm.merge_and_unload()
        if default_device().startswith("cuda"):
            lm = lm.to("cuda")
        prompts = [chat_text(tok, chat_prompt(r["_q"], r["paraphrase"])) for r in rows]
        with intervention.apply(lm) if intervention is not None else contextlib.nullcontext():
            answers = generate(lm, tok, prompts, config, progress=progress)
    elapsed = time.perf_counter() - start
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "_q"} for r in rows])
    df["answer"] = answers
    df["gen_seconds"] = elapsed / max(1, len(rows))
    if use_cache and is_main_process():  # every process holds all answers; one writes them
        atomic_write_text(path, df.to_json(orient="records", lines=True, force_ascii=False))
    wait_for_everyone()
    df["model"] = label
    return df
