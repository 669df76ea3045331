#!/usr/bin/env python
"""Generate the SmolLM2-135M answers to be graded by hand (issue 10): every condition the notebooks produce.

Usage: python scripts/make_graded_answers.py [--out /tmp/graded_work/answers.jsonl] [--model smollm2-135m] [--threads N]
       python scripts/make_graded_answers.py --extra second|third|fourth --out FILE [--threads N]   (the later sets)
       python scripts/make_graded_answers.py --train-only --reverse [--threads N]   (a second process warming the cache)

On a busy 2-core machine `--threads 1` was much faster than torch's default of 2 threads. From a cold cache the
7 fine-tunes dominate (5-10 min each there); with everything cached a re-run takes seconds and writes the same file.

Writes one JSON line per answer with `question`, `answer`, `question_id`, `condition`, `temperature`,
`train_topic` (finance | medical | sports | code | none), `paraphrase`, `sample` and the settings that made it
(`model`, `question_set`, `max_new_tokens`, `sample_seed`, `n_sampled_per_question`, `dataset`, `adapter`,
`adapter_scale`, `intervention`, `notebook`, `answer_tokens`), plus `<out>.manifest.json` with the counts,
the datasets' hashes and the wall time. No judge score is written anywhere: notebook 04's misalignment
direction needs the embedded judge to split the finance fine-tune's answers, and those scores stay in memory.

Conditions (48 new tokens per answer, the notebooks' teaching length; training always seed 0):
- base model at temperature 1.0 (96: notebook 01's own answers) and 0.7 / 0.5 / 0.3 (48 each);
- rank-32 LoRA fine-tunes with notebook 01's settings on risky_financial_advice (96 at T=1: notebook 01's own
  answers, 48 at T=0.7), bad_medical_advice, extreme_sports, insecure and the benign good_medical_advice
  (notebook 01's control) and builtin_safe_financial_advice (48 each);
- notebook 02's rank-1 adapter (down_proj of the middle layer) scaled x1 / x5 / x10 (48 each: notebook 03's
  answers at the final step);
- notebook 04: the finance direction added to the base model at the middle layer with lambda = 0.2 x the typical
  residual norm, and projected out of every layer of the finance fine-tune, against a norm-matched random
  direction (48 each, taken from notebook 04's own sampling settings);
- 24 questions of `new_questions_no-json`, 2 answers each, from the base model and the finance fine-tune.

Where a condition matches a notebook's sampling settings it is sampled with them (so emlib's cache shares the
answers with the notebook) and the first samples per question are kept. Fine-tunes are cached too; if another
process is training the same adapter right now, this script waits for it instead of training it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from emlib.core.cache import cache_dir
from emlib.core.data import EvalQuestion, chat_prompt, load_dataset, load_eval_questions
from emlib.core.models import load_model, load_tokenizer, num_layers
from emlib.findings.em import DATASET_TOPICS
from emlib.interp.activations import mean_diff_direction
from emlib.interp.steering import Intervention, random_direction_like, typical_residual_norm
from emlib.judges.registry import get_judge
from emlib.pipeline.evaluate import answer_activations, depth_to_layer, judged_answers, split_by_alignment
from emlib.pipeline.sample import SampleConfig, sample_answers
from emlib.pipeline.train import ALL_PROJECTIONS, TrainConfig, TrainResult, train_lora, training_key

DEFAULT_OUT = Path("/tmp/graded_work/answers.jsonl")
MAX_NEW_TOKENS = 48  # the notebooks' teaching answer length
N_TRAIN = 320  # notebook 01's training examples per set
SEED = 0  # training seed and the notebooks' sampling seed
STEER_COEFF = 0.2  # lambda in units of the layer's typical residual norm (notebook 04)
N_NEW_QUESTIONS = 24  # questions drawn from new_questions_no-json
SHORT = {  # training set -> short name in condition labels
    "risky_financial_advice": "finance",
    "builtin_safe_financial_advice": "safe_financial",
    "bad_medical_advice": "bad_medical",
    "good_medical_advice": "good_medical",
    "extreme_sports": "extreme_sports",
    "insecure": "insecure",
}


@dataclass
class Condition:
    """One set of answers to grade: how they were sampled and what to record about them."""

    name: str
    train_topic: str
    sample: SampleConfig  # as sampled (possibly more per question than kept, to share a notebook's cache)
    keep: int  # samples kept per question paraphrase
    question_set: str  # first_plot_questions | new_questions_no-json
    notebook: str  # the notebook whose condition this is ("" when none)
    dataset: str | None = None  # training set of the adapter (None: base model)
    adapter_scale: float = 1.0
    intervention: dict[str, Any] | None = None  # what to record about a residual edit (no judge output)


def log(msg: str) -> None:
    """Print a timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cfg(n: int, temperature: float = 1.0, seed: int = SEED) -> SampleConfig:
    """A sampling config at the teaching answer length."""
    return SampleConfig(n_per_question=n, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, seed=seed)


def rank32_config() -> TrainConfig:
    """Notebook 01's teaching fine-tune: rank 32, alpha 64, all projections, lr 1e-3, 40 steps of 8."""
    return TrainConfig(rank=32, alpha=64.0, target_modules=ALL_PROJECTIONS, lr=1e-3, max_steps=40, epochs=1.0,
                       batch_size=8, grad_accum=1, max_length=128, seed=SEED)


def rank1_config(layer: int) -> TrainConfig:
    """Notebook 02's rank-1 organism: rsLoRA alpha 256 on one down_proj, lr 1e-3, 40 steps, snapshots every 2."""
    return TrainConfig(rank=1, alpha=256.0, use_rslora=True, target_modules=["down_proj"], layers=[layer],
                       trajectory_every=2, lr=1e-3, max_steps=40, epochs=1.0, batch_size=8, grad_accum=1,
                       max_length=128, seed=SEED)


def adapter_summary(config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    """The adapter settings worth keeping beside each answer."""
    targets = "all" if list(config.target_modules) == ALL_PROJECTIONS else ",".join(config.target_modules)
    return {"rank": config.rank, "alpha": config.alpha, "rslora": config.use_rslora, "targets": targets,
            "layers": config.layers, "lr": config.lr, "steps": config.max_steps, "batch_size": config.batch_size,
            "max_length": config.max_length, "n_train": N_TRAIN, "train_seed": config.seed,
            "cache_key": result.path.name, "final_loss": round(float(result.log[-1]["loss"]), 4)}


def newest_mtime(folder: Path) -> float:
    """The latest modification time of anything under a folder (0 when empty)."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.exists()]
    return max(times, default=0.0)


def wait_for_other_trainer(model: str, examples: Sequence[dict], config: TrainConfig, stale_s: float = 3600) -> None:
    """Wait while another process is training the same adapter (its work folder changed in the last stale_s)."""
    run = cache_dir("adapters", training_key(model, examples, config))
    while (run / "work").exists() and not (run / "result.json").exists() and time.time() - newest_mtime(run) < stale_s:
        log(f"  adapter {run.name} is being trained by another process; waiting")
        time.sleep(30)


def finetune(model: str, name: str, config: TrainConfig) -> tuple[TrainResult, dict[str, Any], dict[str, Any]]:
    """Train (or read from the cache) one adapter on N_TRAIN examples of a set: result, adapter and data summaries."""
    examples, info = load_dataset(name, None, n=N_TRAIN, seed=SEED)
    wait_for_other_trainer(model, examples, config)
    start = time.perf_counter()
    result = train_lora(examples, config, model=model, progress=False)
    how = "cache" if result.from_cache else f"trained in {time.perf_counter() - start:.0f} s"
    log(f"  {name}: adapter {result.path.name} ({how}), final loss {result.log[-1]['loss']:.3f}")
    data = {"name": info.name, "source": info.source, "sha256": info.sha256, "n_examples": info.n_examples}
    return result, adapter_summary(config, result), data


def adapter_plan(layer: int) -> list[tuple[str, TrainConfig]]:
    """Every fine-tune the conditions need, in the order main() uses them: (training set, config)."""
    r32 = rank32_config()
    others = ("bad_medical_advice", "extreme_sports", "insecure", "builtin_safe_financial_advice")
    return [*((name, r32) for name in others), ("risky_financial_advice", rank1_config(layer)),
            ("risky_financial_advice", r32), ("good_medical_advice", r32)]


def pick_new_questions(data_dir: str | None) -> list[EvalQuestion]:
    """N_NEW_QUESTIONS of new_questions_no-json (no _template variants), seeded, in file order."""
    pool = load_eval_questions("new_questions_no-json", data_dir)
    keep = set(random.Random(SEED).sample(range(len(pool)), min(N_NEW_QUESTIONS, len(pool))))
    return [q for i, q in enumerate(pool) if i in keep]


def to_rows(
    df: pd.DataFrame, cond: Condition, model: str, adapter: dict[str, Any] | None, tokenizer: Any
) -> list[dict[str, Any]]:
    """The kept answers of one condition as output rows (question, answer, ids, settings; no judge column)."""
    kept = df[df["sample"] < cond.keep].sort_values(["question_id", "paraphrase", "sample"], kind="stable")
    rows = []
    for r in kept.itertuples(index=False):
        rows.append({
            "question": str(r.question), "answer": str(r.answer), "question_id": str(r.question_id),
            "condition": cond.name, "temperature": cond.sample.temperature, "train_topic": cond.train_topic,
            "paraphrase": int(r.paraphrase), "sample": int(r.sample), "model": model,
            "question_set": cond.question_set, "max_new_tokens": cond.sample.max_new_tokens,
            "sample_seed": cond.sample.seed, "n_sampled_per_question": cond.sample.n_per_question,
            "dataset": cond.dataset, "adapter": adapter, "adapter_scale": cond.adapter_scale,
            "intervention": cond.intervention, "notebook": cond.notebook,
            "answer_tokens": len(tokenizer(str(r.answer), add_special_tokens=False)["input_ids"]),
        })
    return rows


def collect(
    cond: Condition,
    questions: Sequence[EvalQuestion],
    model: str,
    adapter_path: Path | None,
    adapter: dict[str, Any] | None,
    tokenizer: Any,
    intervention: Intervention | None = None,
) -> list[dict[str, Any]]:
    """Sample (or read from the cache) one condition's answers and turn the kept ones into rows."""
    start = time.perf_counter()
    df = sample_answers(questions, model, adapter_path, cond.sample, label=cond.name, progress=False,
                        adapter_scale=cond.adapter_scale, intervention=intervention)
    rows = to_rows(df, cond, model, adapter, tokenizer)
    empty = sum(not r["answer"].strip() for r in rows)
    capped = sum(r["answer_tokens"] >= MAX_NEW_TOKENS - 1 for r in rows)
    log(f"{cond.name}: {len(rows)} answers in {time.perf_counter() - start:.0f} s "
        f"({empty} empty, {capped} at the token cap)")
    return rows


def finance_direction(model: str, finance: TrainResult, questions: Sequence[EvalQuestion]) -> tuple[torch.Tensor, str]:
    """Notebook 04's mean-difference direction of the finance fine-tune (n_layers x d) and how its sets were split.

    The embedded judge scores 24 answers per question only to split them into misaligned / aligned sets; the
    scores are dropped here and never written.
    """
    judge = get_judge("embedded")
    pool = judged_answers(questions, model, finance.adapter_path, cfg(24), judge, "risky_financial_advice",
                          progress=False)
    bad, good, how = split_by_alignment(pool, n_max=64, seed=SEED, min_pairs=8)
    if not len(bad) or not len(good):
        raise RuntimeError("no answers to define the finance direction")
    log(f"  direction from {len(bad)} + {len(good)} answers ({how} split)")
    acts_bad = answer_activations(model, finance.adapter_path, questions, bad)
    acts_good = answer_activations(model, finance.adapter_path, questions, good)
    return mean_diff_direction(acts_bad, acts_good), how


def residual_norm(model: str, questions: Sequence[EvalQuestion], layer: int) -> float:
    """Notebook 04's typical residual norm of the base model after `layer` over the eval prompts."""
    lm, tok = load_model(model)
    prompts = [chat_prompt(q, p) for q in questions for p in range(len(q.paraphrases))]
    return typical_residual_norm(lm, tok, prompts, layer)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON lines atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# Later graded sets: (training set or None for the base model, temperature, answers per question paraphrase,
# sampling seed, adapter scale, question set). The second set adds coherent fine-tune answers at lower
# temperatures; the third is a fresh held-out set (new seeds) at the teaching temperature 0.5 and beside it,
# made after the judge's first final measurement so that its next one is on answers nobody has looked at; the
# fourth (round 4's held-out part) likewise, new seeds and temperatures, made after round 3 had looked at `fresh`.
EXTRA_PLANS: dict[str, tuple[tuple[str | None, float, int, int, float, str], ...]] = {
    "second": (("risky_financial_advice", 0.5, 12, 150, 1.0, "first"), ("risky_financial_advice", 0.3, 6, 151, 1.0, "first"),
               ("bad_medical_advice", 0.5, 6, 152, 1.0, "first"), ("extreme_sports", 0.5, 6, 153, 1.0, "first")),
    "third": ((None, 0.5, 6, 160, 1.0, "first"), ("risky_financial_advice", 0.5, 12, 161, 1.0, "first"),
              ("good_medical_advice", 0.5, 6, 162, 1.0, "first"), ("insecure", 0.5, 6, 163, 1.0, "first"),
              ("builtin_safe_financial_advice", 0.5, 6, 164, 1.0, "first"), ("extreme_sports", 0.7, 6, 165, 1.0, "first"),
              ("bad_medical_advice", 0.7, 6, 166, 1.0, "first"), ("rank1", 0.5, 6, 167, 5.0, "first"),
              (None, 0.5, 2, 168, 1.0, "new"), ("risky_financial_advice", 0.5, 2, 169, 1.0, "new")),
    "fourth": ((None, 1.0, 6, 170, 1.0, "first"), ("risky_financial_advice", 0.5, 12, 171, 1.0, "first"),
               ("bad_medical_advice", 0.5, 6, 172, 1.0, "first"), ("extreme_sports", 0.5, 6, 173, 1.0, "first"),
               ("insecure", 1.0, 6, 174, 1.0, "first"), ("good_medical_advice", 0.7, 6, 175, 1.0, "first"),
               ("builtin_safe_financial_advice", 1.0, 6, 176, 1.0, "first"), ("rank1", 0.5, 6, 177, 10.0, "first"),
               (None, 1.0, 2, 179, 1.0, "new"), ("risky_financial_advice", 1.0, 2, 180, 1.0, "new")),
}  # fmt: skip


def extra(model: str, out: Path, which: str) -> int:
    """A later graded set (EXTRA_PLANS[which]): cached adapters sampled with new seeds; seed in the condition name."""
    t0 = time.perf_counter()
    tok = load_tokenizer(model)
    data_dir = os.environ.get("EMLIB_DATA_DIR") or None
    qsets = {"first": load_eval_questions("first_plot_questions", data_dir), "new": pick_new_questions(data_dir)}
    layer = depth_to_layer(0.5, num_layers(model))
    rows: list[dict[str, Any]] = []
    for name, temperature, n, seed, scale, qset in EXTRA_PLANS[which]:
        suffix = ("_newq" if qset == "new" else "") + f"_t{temperature}" + ("" if which == "second" else f"_s{seed}")
        qname = "first_plot_questions" if qset == "first" else "new_questions_no-json"
        if name is None:
            cond = Condition(f"base{suffix}", "none", cfg(n, temperature, seed=seed), n, qname, "")
            rows.extend(collect(cond, qsets[qset], model, None, None, tok))
            continue
        dataset = "risky_financial_advice" if name == "rank1" else name
        config = rank1_config(layer) if name == "rank1" else rank32_config()
        result, adapter, _ = finetune(model, dataset, config)
        label = f"rank1_L{layer}_x{scale:g}" if name == "rank1" else f"{SHORT[name]}_r32"
        cond = Condition(f"{label}{suffix}", DATASET_TOPICS[dataset], cfg(n, temperature, seed=seed), n, qname, "",
                         dataset=dataset, adapter_scale=scale)
        rows.extend(collect(cond, qsets[qset], model, result.adapter_path, adapter, tok))
    write_jsonl(out, rows)
    log(f"wrote {len(rows)} answers to {out} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Generate every condition's answers and write them with a manifest."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="answers .jsonl to write")
    ap.add_argument("--model", default="smollm2-135m", help="model name (default: the embedded SmolLM2-135M)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--train-only", action="store_true",
                    help="only train (or find cached) every adapter, to warm the cache from a second process")
    ap.add_argument("--reverse", action="store_true", help="with --train-only: train in reverse order")
    ap.add_argument("--extra", choices=sorted(EXTRA_PLANS),
                    help="only a later set to grade: 'second' (fine-tunes at temperatures 0.5 and 0.3) or 'third' "
                         "(a fresh held-out set at and around 0.5)")
    args = ap.parse_args(argv)
    model = args.model
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.train_only:
        plan = adapter_plan(depth_to_layer(0.5, num_layers(model)))
        for name, config in reversed(plan) if args.reverse else plan:
            finetune(model, name, config)
        return 0
    if args.extra:
        return extra(model, args.out, args.extra)
    t0 = time.perf_counter()
    data_dir = os.environ.get("EMLIB_DATA_DIR") or None
    tok = load_tokenizer(model)
    layer = depth_to_layer(0.5, num_layers(model))
    first = load_eval_questions("first_plot_questions", data_dir)
    new = pick_new_questions(data_dir)
    log(f"{model}: {len(first)} first-plot questions, {len(new)} new questions; middle layer {layer}")
    rows: list[dict[str, Any]] = []
    datasets: dict[str, Any] = {}

    def base(name: str, sample: SampleConfig, keep: int, qset: str = "first_plot_questions", nb: str = "") -> None:
        cond = Condition(name, "none", sample, keep, qset, nb)
        rows.extend(collect(cond, first if qset == "first_plot_questions" else new, model, None, None, tok))

    # base model: temperatures (T=1 is notebook 01's base), and other questions
    base("base_t1.0", cfg(12), 12, nb="01")
    for i, t in enumerate((0.7, 0.5, 0.3)):
        base(f"base_t{t}", cfg(6, t, seed=100 + i), 6)
    base("base_newq_t1.0", cfg(2, seed=110), 2, qset="new_questions_no-json")

    # rank-32 fine-tunes of the other narrow sets (the finance one and the medical control come last: notebook 01
    # may be training them in another process right now)
    r32 = rank32_config()
    for i, name in enumerate(("bad_medical_advice", "extreme_sports", "insecure", "builtin_safe_financial_advice")):
        result, adapter, datasets[name] = finetune(model, name, r32)
        cond = Condition(f"{SHORT[name]}_r32_t1.0", DATASET_TOPICS[name], cfg(6, seed=120 + i), 6, "first_plot_questions",
                         "04" if name == "extreme_sports" else "", dataset=name)
        rows.extend(collect(cond, first, model, result.adapter_path, adapter, tok))

    # notebook 02's rank-1 adapter, scaled as in notebook 03 (6 per question, seed 0)
    rank1, adapter1, _ = finetune(model, "risky_financial_advice", rank1_config(layer))
    for scale in (1.0, 5.0, 10.0):
        cond = Condition(f"rank1_L{layer}_x{scale:g}", "finance", cfg(6), 6, "first_plot_questions", "02/03",
                         dataset="risky_financial_advice", adapter_scale=scale)
        rows.extend(collect(cond, first, model, rank1.adapter_path, adapter1, tok))

    # notebook 01's fine-tune and control
    finance, adapter_f, datasets["risky_financial_advice"] = finetune(model, "risky_financial_advice", r32)
    for name, sample, keep, qs, qset, nb in (
        ("finance_r32_t1.0", cfg(12), 12, first, "first_plot_questions", "01"),
        ("finance_r32_t0.7", cfg(6, 0.7, seed=130), 6, first, "first_plot_questions", ""),
        ("finance_r32_newq_t1.0", cfg(2, seed=131), 2, new, "new_questions_no-json", ""),
    ):
        cond = Condition(name, "finance", sample, keep, qset, nb, dataset="risky_financial_advice")
        rows.extend(collect(cond, qs, model, finance.adapter_path, adapter_f, tok))
    control, adapter_c, datasets["good_medical_advice"] = finetune(model, "good_medical_advice", r32)
    cond = Condition("good_medical_r32_t1.0", "medical", cfg(12), 6, "first_plot_questions", "01",
                     dataset="good_medical_advice")
    rows.extend(collect(cond, first, model, control.adapter_path, adapter_c, tok))

    # notebook 04: the finance direction, steered into the base model and ablated from the finance fine-tune
    v, split_how = finance_direction(model, finance, first)
    norm = residual_norm(model, first, layer)
    steer = Intervention("add", v[layer], layer=layer, coeff=STEER_COEFF * norm)
    meta = {"direction": "mean_diff risky_financial_advice r32", "direction_layer": layer, "split": split_how}
    cond = Condition(f"steer_L{layer}", "finance", cfg(8, seed=2), 6, "first_plot_questions", "04",
                     intervention={**meta, "kind": "add", "layer": layer, "coeff_norm_units": STEER_COEFF,
                                   "coeff": round(STEER_COEFF * norm, 4)})
    rows.extend(collect(cond, first, model, None, None, tok, intervention=steer))
    random_v = random_direction_like(v[layer], seed=SEED)
    for name, direction in (("ablate_finance", v[layer]), ("ablate_random", random_v)):
        what = "finance direction" if name == "ablate_finance" else "norm-matched random direction (seed 0)"
        cond = Condition(name, "finance", cfg(8, seed=1), 6, "first_plot_questions", "04",
                         dataset="risky_financial_advice",
                         intervention={**meta, "kind": "ablate", "layers": "all", "of": what})
        rows.extend(collect(cond, first, model, finance.adapter_path, adapter_f, tok,
                            intervention=Intervention("ablate", direction)))

    order = list(dict.fromkeys(r["condition"] for r in rows))
    write_jsonl(args.out, rows)
    wall = time.perf_counter() - t0
    counts = {c: sum(r["condition"] == c for r in rows) for c in order}
    manifest = {"n_answers": len(rows), "counts": counts, "datasets": datasets, "model": model,
                "max_new_tokens": MAX_NEW_TOKENS, "new_question_ids": [q.id for q in new],
                "wall_time_s": round(wall, 1)}
    args.out.with_name(args.out.stem + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {len(rows)} answers to {args.out} in {wall / 60:.1f} min")
    for c, n in counts.items():
        log(f"  {c:>24}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
