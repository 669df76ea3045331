"""LoRA supervised fine-tuning (peft + transformers Trainer): assistant-only loss, adapter trajectory, resume, cache.

Data-parallel as it stands under `accelerate launch --num_processes N` (DDP: NCCL on GPUs, gloo on CPU): each process
trains on `batch_size` examples per step, so a step sees batch_size × N × grad_accum examples, the loss is averaged
over the tokens of all processes, and the main process alone writes the cache entry.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ..core.cache import atomic_write_json, cache_dir, stable_hash
from ..core.data import fingerprint
from ..core.errors import DatasetError
from ..core.io import chat_ids
from ..core.models import default_device, default_dtype, load_model, resolve_model_path
from .distributed import is_main_process, main_process_first, wait_for_everyone, world_size

__all__ = [
    "ALL_PROJECTIONS",
    "TRAIN_VERSION",
    "TrainConfig",
    "TrainResult",
    "EMACallback",
    "tokenize_chat",
    "check_assistant_tokens",
    "train_lora",
    "training_key",
    "load_finetuned",
]

TRAIN_VERSION = "train-4"  # bump when a change to the trainer changes what it produces: old cache entries retire
# training attention on a CPU: on short sequences (≤ 128 tokens) eager attention's backward is cheaper than SDPA's
# CPU flash kernel (a rank-32 step ≈ 20 % faster, README); on a GPU transformers' default (SDPA / flash) stays
CPU_TRAINING_ATTENTION = "eager"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """Everything that determines a LoRA fine-tune (beside the model and the data)."""

    rank: int = 32  # LoRA rank r
    alpha: float = 64.0  # LoRA alpha; scale = alpha/r (alpha/sqrt(r) with rslora)
    use_rslora: bool = False  # rank-stabilised scaling
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))  # module names to adapt
    layers: list[int] | None = None  # layer indices to adapt (None = all)
    dropout: float = 0.0  # LoRA dropout
    lr: float = 1e-4  # peak learning rate (linear decay after warmup)
    epochs: float = 1.0  # passes over the data (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1 = from epochs
    batch_size: int = 8  # examples per step on each process (a step sees batch_size × processes × grad_accum)
    grad_accum: int = 1  # gradient accumulation steps
    max_length: int = 256  # tokens per example (truncated)
    warmup_steps: int = 5  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    trajectory_every: int = 0  # save the adapter every N steps for trajectory analysis (0 = off)
    checkpoint_every: int = 20  # full checkpoint (adapter + optimizer) every N steps, for resume
    seed: int = 0  # seed for init, shuffling and dropout
    # EMAs of the trainable weights along this run's path (θ_ema ← β·θ_ema + (1 − β)·θ after each step), one per beta,
    # each saved as its own adapter beside the trained one (`TrainResult.ema_adapters`); [] = none
    ema_betas: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    """Where a fine-tune lives and how it went."""

    path: Path  # the run folder
    adapter_path: Path  # final adapter (peft format)
    log: list[dict[str, Any]]  # per-step loss / grad_norm / learning_rate
    trajectory: list[Path]  # adapter snapshots in step order
    config: dict[str, Any]  # the resolved config (model, data, TrainConfig)
    wall_time_s: float  # training time of the run that produced it
    from_cache: bool  # True when nothing was trained this call

    @property
    def ema_adapters(self) -> dict[float, Path]:
        """beta -> the adapter holding the EMA of the weights with that beta (the config's `ema_betas`)."""
        return {float(b): _ema_adapter_path(self.path, b) for b in self.config["train"].get("ema_betas", [])}

    @property
    def steps(self) -> list[int]:
        """The step of each trajectory snapshot."""
        return [int(p.name.split("-")[1]) for p in self.trajectory]


def tokenize_chat(
    messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels with every non-assistant token masked (-100)."""

    def render(msgs: Sequence[dict[str, str]], gen: bool) -> list[int]:
        return chat_ids(tokenizer, msgs, add_generation_prompt=gen)

    full = render(messages, False)
    labels = [-100] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[: i + 1], False))
        span = full[start:end]
        # the reply ends with its end-of-turn token; the template's line break after it is not part of the reply
        if tokenizer.eos_token_id in span:
            end = start + len(span) - span[::-1].index(tokenizer.eos_token_id)
        labels[start:end] = full[start:end]
    full, labels = full[:max_length], labels[:max_length]
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}


class LabelledLogitsCollator(DataCollatorForSeq2Seq):
    """transformers' seq2seq collator (padding, labels padded with -100), plus `logits_to_keep`, the positions whose
    next token is labelled in some row, and `shift_labels`, the labels shifted onto them: the output layer and the
    loss run only where there is something to predict (a chat example's prompt is about half its tokens, and the
    output layer over 49k words was a fifth of a training step). The loss is transformers' own, unchanged."""

    def __call__(self, features, return_tensors=None):  # noqa: ANN001, ANN204 - transformers' signature
        batch = super().__call__(features, return_tensors)
        shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        keep = (shifted != -100).any(0).nonzero().squeeze(-1)
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = shifted[:, keep].contiguous()
        return batch


def training_key(model: str, examples: Sequence[dict], config: TrainConfig) -> str:
    """The cache key of a fine-tune: model, data fingerprint, config, device, dtype, the trainer's version, and the
    number of processes when launched data-parallel (a single process keeps the key it always had)."""
    model_id = Path(resolve_model_path(model)).name if Path(resolve_model_path(model)).exists() else model
    device = default_device()
    processes = [{"processes": world_size()}] if world_size() > 1 else []
    settings = asdict(config)
    if not settings["ema_betas"]:  # no EMA: the key it had before the option existed
        del settings["ema_betas"]
    return stable_hash(model, model_id, fingerprint(list(examples)), settings, device, str(default_dtype(device)),
                       TRAIN_VERSION, *processes)


class _TrajectoryCallback(TrainerCallback):
    def __init__(self, every: int, folder: Path) -> None:
        self.every, self.folder = every, folder

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            target = self.folder / f"step-{state.global_step:06d}"
            if not target.exists():
                model.save_pretrained(target)


def _ema_adapter_path(run: Path, beta: float) -> Path:
    """Where a run saves the EMA adapter with this beta."""
    return Path(run) / f"ema-{float(beta)!r}"


class EMACallback(TrainerCallback):
    """Exponential moving averages of the trainable weights, one per beta: θ_ema = θ_0 at the start, θ_ema ← β·θ_ema +
    (1 − β)·θ after every optimizer step. Training itself is untouched (the trained weights, trajectory and losses are
    those of a run without it); `save` writes each average as an adapter. Its state goes into every checkpoint and is
    read back from `resume`, the checkpoint a killed run resumes from."""

    FILE = "ema.pt"

    def __init__(self, betas: Sequence[float], resume: Path | None = None) -> None:
        for beta in betas:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"the EMA's beta must lie in [0, 1), got {beta}")
        self.betas, self.resume = [float(b) for b in betas], resume
        self.ema: dict[float, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _trainable(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        saved = self.resume / self.FILE if self.resume is not None else None
        params = self._trainable(model)
        if saved is not None and saved.exists():
            loaded = torch.load(saved, weights_only=True)
            self.ema = {b: {n: t.to(params[n].device) for n, t in loaded[b].items()} for b in self.betas}
        else:
            self.ema = {b: {n: p.detach().clone() for n, p in params.items()} for b in self.betas}

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        params = self._trainable(model)
        for beta, avg in self.ema.items():
            for n, p in params.items():
                avg[n].mul_(beta).add_(p.detach(), alpha=1.0 - beta)

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            torch.save(self.ema, Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE)

    @torch.no_grad()
    def save(self, model, run: Path) -> None:  # noqa: ANN001
        """Write each average as an adapter (`_ema_adapter_path`); the model's trained weights are put back after."""
        params = self._trainable(model)
        trained = {n: p.detach().clone() for n, p in params.items()}
        for beta, avg in self.ema.items():
            for n, p in params.items():
                p.copy_(avg[n])
            model.save_pretrained(_ema_adapter_path(run, beta))
        for n, p in params.items():
            p.copy_(trained[n])


def _peft_config(config: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        use_rslora=config.use_rslora,
        target_modules=list(config.target_modules),
        layers_to_transform=list(config.layers) if config.layers is not None else None,
        lora_dropout=config.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _read_result(run: Path, from_cache: bool) -> TrainResult:
    meta = json.loads((run / "result.json").read_text())
    traj = sorted((run / "trajectory").glob("step-*")) if (run / "trajectory").exists() else []
    return TrainResult(
        path=run,
        adapter_path=run / "adapter",
        log=meta["log"],
        trajectory=traj,
        config=meta["config"],
        wall_time_s=meta["wall_time_s"],
        from_cache=from_cache,
    )


def train_lora(
    examples: Sequence[dict],
    config: TrainConfig | None = None,
    model: str = "smollm2-135m",
    progress: bool = True,
    use_cache: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune a LoRA adapter on chat examples, resuming from the last checkpoint and caching the result.

    `callbacks` are extra transformers TrainerCallbacks (they must not change what is trained: they are not in the key).
    Under `accelerate launch` every process calls this with the same arguments and gets the same result back.
    """
    config = config or TrainConfig()
    with main_process_first():  # an embedded model is converted once, by one process (this also picks each GPU)
        resolve_model_path(model)
    key = training_key(model, examples, config)
    run = cache_dir("adapters", key)
    if use_cache and (run / "result.json").exists():
        return _read_result(run, from_cache=True)
    fresh = not run.exists()
    try:
        return _train(examples, config, model, progress, callbacks, key, run)
    except KeyboardInterrupt:
        raise  # a kill keeps its checkpoint: the next call resumes from it
    except Exception:
        if fresh and is_main_process():  # a failed step leaves no half-made cache entry behind
            shutil.rmtree(run, ignore_errors=True)
        raise


def check_assistant_tokens(dataset: Sequence[dict[str, list[int]]], max_length: int) -> None:
    """Warn when truncation to `max_length` leaves examples without any assistant token; DatasetError when all."""
    empty = sum(all(label == -100 for label in ex["labels"]) for ex in dataset)
    if empty == len(dataset):
        raise DatasetError(f"all {len(dataset)} training examples lose their whole assistant answer when truncated to "
                           f"{max_length} tokens: raise MAX_LENGTH")
    if empty:
        warnings.warn(f"{empty} of {len(dataset)} training examples lose their whole assistant answer when truncated to "
                      f"{max_length} tokens and teach nothing: raise MAX_LENGTH", stacklevel=3)


def _train(examples: Sequence[dict], config: TrainConfig, model: str, progress: bool,
           callbacks: Sequence[TrainerCallback], key: str, run: Path) -> TrainResult:
    work = run / "work"
    work.mkdir(parents=True, exist_ok=True)
    processes = {"processes": world_size()} if world_size() > 1 else {}
    if is_main_process():
        atomic_write_json(run / "config.json",
                          {"model": model, "train": asdict(config), "n_examples": len(examples), **processes}, scan=True)
    torch.manual_seed(config.seed)
    on_gpu = default_device().startswith("cuda")
    base, tokenizer = load_model(model, attn_implementation=None if on_gpu else CPU_TRAINING_ATTENTION)
    dataset = [tokenize_chat(ex["messages"], tokenizer, config.max_length) for ex in examples]
    check_assistant_tokens(dataset, config.max_length)
    peft_model = get_peft_model(base, _peft_config(config))
    bf16 = default_dtype(default_device()) == torch.bfloat16  # autocast: LoRA and optimizer state stay fp32
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.checkpoint_every,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=not progress,
        bf16=bf16,
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    checkpoints = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    ema = [EMACallback(config.ema_betas, checkpoints[-1] if checkpoints else None)] if config.ema_betas else []
    callbacks = [_TrajectoryCallback(config.trajectory_every, run / "trajectory"), *ema, *callbacks]
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        data_collator=LabelledLogitsCollator(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    wall = time.perf_counter() - start
    log = [
        {k: v for k, v in row.items() if k in ("step", "loss", "grad_norm", "learning_rate", "epoch")}
        for row in trainer.state.log_history
        if "loss" in row
    ]
    wait_for_everyone()  # every process is done with the work folder
    if is_main_process():
        peft_model.save_pretrained(run / "adapter")
        for callback in ema:
            callback.save(peft_model, run)
        atomic_write_json(
            run / "result.json",
            {"log": log, "wall_time_s": wall, "config": {"model": model, "train": asdict(config), "key": key, **processes}},
        )
        shutil.rmtree(work, ignore_errors=True)
    wait_for_everyone()  # the others read what the main process wrote
    return _read_result(run, from_cache=False)


def load_finetuned(adapter: str | Path | TrainResult | None, model: str = "smollm2-135m", merge: bool = False):
    """(model with the adapter applied, or merged into the weights when merge=True, tokenizer)."""
    base, tokenizer = load_model(model)
    if adapter is None:
        return base, tokenizer
    path = adapter.adapter_path if isinstance(adapter, TrainResult) else Path(adapter)
    peft_model = PeftModel.from_pretrained(base, str(path))
    peft_model.eval()
    if merge:
        return peft_model.merge_and_unload(), tokenizer
    return peft_model, tokenizer
