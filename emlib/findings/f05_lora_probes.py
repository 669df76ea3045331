"""Finding 05: the scalars of a 9-adapter rank-1 EM organism can be read: probes on them separate misaligned from
aligned and domain from off-domain answers, and their coefficients split the adapters into general and domain ones,
which steer as such when scaled (Soligo et al. 2025, arXiv 2506.11618)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..core.cache import cache_dir, stable_hash
from ..core.data import DatasetInfo, EvalQuestion, chat_prompt
from ..core.em import COHERENT_THRESHOLD
from ..core.models import num_layers
from ..core.stats import hierarchical_bootstrap
from ..interp.lora import save_scaled_adapter
from ..pipeline.evaluate import depth_to_layer, judged_answers
from ..pipeline.metrics import drift_mask, em_diff
from ..pipeline.sample import adapter_fingerprint
from ..pipeline.train import TrainResult, load_finetuned, train_lora
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError, Verdict, combine, param
from .em import EMParams, FinetuneParams, SeedParams, em_effect, fallback_notes, load_questions, make_judge, sample_config
from .f05_lora_probes_probe import (
    DOMAIN_PROBE, GENERAL_PROBE, PROBES, ProbeFit, answer_scalars, choose_cutoff, coefficient_shares, fit_probe,
    members, split_adapters,
)

__all__ = ["STEM", "CONDITIONS", "MEASURES", "Params", "Result", "run", "verdict", "verdict_probes", "verdict_split",
           "split_exists"]

STEM = "05_lora_probes"
TOPICS = ("finance", "medical", "sports", "code")
CONDITIONS = ("general up", "domain up", "domain up, general down")  # the steering conditions, other adapters zeroed
MEASURES = {"em": "EM", "em_off": "off-domain EM", "domain": "on the domain (of coherent)", "coherent_ok": "coherent"}


@dataclass
class Params(SeedParams, EMParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    n_train: int = param(160, min=1)
    max_steps: int = param(20, min=-1)
    block_depths: list[float] = param([0.3125, 0.4375, 0.5625], min=0, max=1)
    block_size: int = param(3, min=1)
    alpha: float = param(256.0, gt=0)
    lr: float = param(1e-3, gt=0)
    topic: str = param("finance", choices=TOPICS)
    n_samples: int = param(48, min=1)
    n_steer_samples: int = param(12, min=1)
    min_class: int = param(5, min=2)  # at 135M: ~75 coherent answers per seed, 5-15 of them misaligned (aligned ≤ 50)
    n_splits: int = param(50, min=1)
    probe_c: float = param(0.01, gt=0)
    explore_c: float = param(1.0, gt=0)  # exploratory: the probes again with a weaker L1 penalty (not in the verdict)
    test_share: float = param(0.2, gt=0, max=0.5)
    steer_general: float = 2.0  # the paper's 20 / 30 / -10, divided by 10: the adapters here train at 50x its lr
    steer_domain: float = 3.0
    steer_general_down: float = -1.0
    replicate: bool = True

    def layers(self, n_layers: int) -> list[int]:
        """BLOCK_SIZE consecutive layers from each block depth; ParamError when they overlap or leave the model."""
        out = [depth_to_layer(d, n_layers) + i for d in self.block_depths for i in range(self.block_size)]
        if len(set(out)) != len(out) or max(out) >= n_layers:
            raise ParamError(f"parameters BLOCK_DEPTHS, BLOCK_SIZE: the blocks give layers {out} on a model with "
                             f"{n_layers} layers; they must be distinct and below {n_layers}")
        return out

    def organism(self, layers: list[int], seed: int) -> FinetuneParams:
        """The rank-1 rsLoRA adapters on `down_proj` of `layers`, trained together with one seed."""
        return FinetuneParams(
            model=self.model, dataset=self.dataset, fallback=self.dataset_fallback, data_dir=self.data_dir,
            n_train=self.n_train, rank=1, alpha=self.alpha, lr=self.lr, max_steps=self.max_steps, epochs=self.epochs,
            batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length, seed=seed,
            target_modules=("down_proj",), layers=tuple(layers), use_rslora=True,
        )

    def steer_scales(self, condition: str, split: list[str], modules: list[str]) -> dict[str, float]:
        """The scale of each module in one steering condition (modules not named are zeroed)."""
        want = {CONDITIONS[0]: {"general": self.steer_general}, CONDITIONS[1]: {"domain": self.steer_domain},
                CONDITIONS[2]: {"domain": self.steer_domain, "general": self.steer_general_down}}[condition]
        return {m: want[kind] for m, kind in zip(modules, split) if kind in want}


@dataclass
class Result:
    """What run() measured: the organism against the base, the probes against their null, the split and steering."""

    organism: Effect  # EM(organism) - EM(base)
    probes: dict[str, Effect]  # per probe run: AUC - shuffled-label AUC (median, 95 % interval over seeds × splits)
    steering: Effect | None  # off-domain EM(general up) - off-domain EM(domain up)
    split: dict[int, list[str]]  # per seed: "general" / "domain" / "neither" per adapter (layer order)
    layers: list[int] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    cutoffs: dict[str, object] = field(default_factory=dict)  # per probe: (aligned ≥, misaligned ≤), "ranked" or None
    fits: dict[tuple[str, int], ProbeFit] = field(default_factory=dict)  # (probe, seed)
    auc_table: pd.DataFrame | None = None  # per probe: AUC and null with their intervals, class sizes, cut-offs
    coefficients: pd.DataFrame | None = None  # per seed, probe and adapter: mean coefficient and share
    explore_table: pd.DataFrame | None = None  # exploratory: auc_table with C = EXPLORE_C (not in the verdict)
    explore_split: dict[int, list[str]] = field(default_factory=dict)  # exploratory: the split read at EXPLORE_C
    summary: pd.DataFrame | None = None  # per condition and measure: rate with its CI
    vs_organism: pd.DataFrame | None = None  # per steering condition and measure: difference to the organism
    answers: pd.DataFrame | None = None  # one row per judged answer (condition, seed, em, em_off, domain, ...)
    seeds: list[int] = field(default_factory=list)
    runs: dict[int, TrainResult] = field(default_factory=dict)
    data: DatasetInfo | None = None
    questions: list[EvalQuestion] = field(default_factory=list)
    judge_id: str = ""
    fallbacks: list[str] = field(default_factory=list)


def _measures(df: pd.DataFrame, topic: str, judge) -> pd.DataFrame:
    """em, coherent_ok, domain (the topic classifier on coherent answers; NaN for the others) and em_off."""
    df = df.copy()
    df["coherent_ok"] = (pd.to_numeric(df["coherent"], errors="coerce") > COHERENT_THRESHOLD).astype(float)
    ok = df["coherent_ok"].to_numpy(bool)
    domain = np.full(len(df), np.nan)
    if ok.any():
        domain[ok] = drift_mask(df["question"][ok], df["answer"][ok], topic, judge).astype(float)
    df["domain"] = domain
    df["em_off"] = (df["em"].astype(bool) & (domain == 0)).astype(float)
    return df


def _probe_frame(p: Params, run: TrainResult, answers: pd.DataFrame, questions: list[EvalQuestion]) -> pd.DataFrame:
    """The coherent, scored answers of one organism with their per-token scalars (column `scalars`)."""
    df = answers[(answers["coherent_ok"] == 1) & answers["aligned"].notna()].reset_index(drop=True)
    by_id = {q.id: q for q in questions}
    model, tok = load_finetuned(run.adapter_path, model=p.model)
    prompts = [chat_prompt(by_id[q], int(i)) for q, i in zip(df["question_id"], df["paraphrase"])]
    scalars, _ = answer_scalars(model, tok, prompts, list(df["answer"]))
    df["scalars"] = scalars
    df["domain"] = df["domain"].astype(bool)
    return df[df["scalars"].map(len) > 0].reset_index(drop=True)


def _interval(x: np.ndarray) -> tuple[float, float, float]:
    x = np.asarray(x, float)
    return (float(x.mean()), *map(float, np.quantile(x, [0.025, 0.975]))) if x.size else (np.nan,) * 3


def _probes(p: Params, frames: dict[int, pd.DataFrame], layers: list[int]):
    """Every probe on every seed's organism (cut-offs chosen on all seeds at once); effects, fits, tables, split."""
    fits, effects, cutoffs, rows, coef_rows = {}, {}, {}, [], []
    for probe in PROBES:
        cutoff = cutoffs[probe.name] = choose_cutoff(list(frames.values()), probe, p.min_class)
        if cutoff is None:
            rows.append({"probe": probe.name, "paper_auc": probe.paper_auc, "cutoff": None})
            continue
        for s, f in frames.items():
            ia, ib = members(f, probe.a, cutoff, p.min_class), members(f, probe.b, cutoff, p.min_class)
            x = [f["scalars"][i] for i in np.r_[ia, ib]]
            fits[probe.name, s] = fit_probe(x, [0] * len(ia) + [1] * len(ib), p.n_splits, p.probe_c, p.test_share, s)
            mean = fits[probe.name, s].coefs.mean(axis=0)
            share = coefficient_shares(fits[probe.name, s].coefs, len(layers))
            coef_rows += [{"seed": s, "probe": probe.name, "layer": layer, "coef": float(c), "share": float(sh)}
                          for layer, c, sh in zip(layers, mean, share)]
        mine = [fits[probe.name, s] for s in frames]
        diff = np.concatenate([f.auc - f.auc_null for f in mine])
        lo, median, hi = map(float, np.quantile(diff, [0.025, 0.5, 0.975]))
        effects[probe.name] = Effect(f"AUC - shuffled-label AUC, {probe.name}", median, lo, hi,
                                     f"median and 2.5-97.5 percentiles over {len(mine)} seeds × {p.n_splits} splits "
                                     "(the same split with the answers' labels shuffled)",
                                     len(mine), None, sum(f.n_a + f.n_b for f in mine))
        auc, null = _interval(np.concatenate([f.auc for f in mine])), _interval(np.concatenate([f.auc_null for f in mine]))
        rows.append({"probe": probe.name, "paper_auc": probe.paper_auc, "cutoff": cutoff, "auc": auc[0], "auc_low": auc[1], "auc_high": auc[2],
                     "null": null[0], "null_low": null[1], "null_high": null[2],
                     "token_auc": float(np.mean(np.concatenate([f.token_auc for f in mine]))),
                     "n_a": sum(f.n_a for f in mine), "n_b": sum(f.n_b for f in mine),
                     "tokens": sum(f.n_tokens for f in mine)})
    split = {s: split_adapters(coefficient_shares(fits[GENERAL_PROBE, s].coefs if (GENERAL_PROBE, s) in fits else None,
                                                  len(layers)),
                               coefficient_shares(fits[DOMAIN_PROBE, s].coefs if (DOMAIN_PROBE, s) in fits else None,
                                                  len(layers)))
             for s in frames}
    return effects, fits, cutoffs, pd.DataFrame(rows), pd.DataFrame(coef_rows), split


def _steered(p: Params, run: TrainResult, split: list[str], modules: list[str], questions, judge, seed: int):
    """Each steering condition of one organism: its adapters scaled (the others zeroed), sampled and judged."""
    out = []
    for condition in CONDITIONS:
        scales = p.steer_scales(condition, split, modules)
        folder = cache_dir("adapters-scaled", stable_hash(adapter_fingerprint(run.adapter_path), scales))
        if not (folder / "adapter_model.safetensors").exists():
            save_scaled_adapter(run.adapter_path, folder, scales, default=0.0)
        out.append(judged_answers(questions, p.model, folder, sample_config(p.n_steer_samples, p.max_new_tokens,
                                                                             p.temperature, seed),
                                  judge, condition, progress=False).assign(seed=seed))
    return out


def _summaries(answers: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per condition and measure: the rate with its CI (seeds, questions, answers); per steering condition and
    measure: the difference to the organism."""
    rows, diffs = [], []
    for condition, g in answers.groupby("model", sort=False):
        seeds = None if g["seed"].isna().any() else g["seed"].astype(int).to_numpy()
        for col in MEASURES:
            e = hierarchical_bootstrap(g[col].astype(float).to_numpy(), g["question_id"].astype(str).to_numpy(),
                                       seeds, seed=seed)
            rows.append({"condition": condition, "measure": col, "rate": e.value, "ci_low": e.ci_low,
                         "ci_high": e.ci_high, "n": e.n_answers})
        if condition in CONDITIONS:
            organism = answers[answers["model"] == "organism"]
            for col in MEASURES:
                e = em_diff(g, organism, seed, column=col)
                diffs.append({"condition": condition, "measure": col, "diff": e.value, "ci_low": e.ci_low,
                              "ci_high": e.ci_high})
    return pd.DataFrame(rows), pd.DataFrame(diffs)


def run(p: Params) -> Result:
    """Train the organism once per seed (cached), sample and judge it and the base, read each answer's scalars, fit the
    four probes beside their null, split the adapters by their coefficients, and steer by scaling each set."""
    n_layers = num_layers(p.model)
    layers = p.layers(n_layers)
    seeds = p.seeds()
    questions, notes = load_questions(p.questions, p.data_dir)
    specs = {s: p.organism(layers, s) for s in seeds}
    loaded = {s: spec.load() for s, spec in specs.items()}
    runs = {s: train_lora(loaded[s][0], specs[s].train_config(), model=p.model) for s in seeds}
    judge = make_judge(p.judge, p.judge_model)
    modules = [f"model.layers.{layer}.mlp.down_proj" for layer in layers]
    base = judged_answers(questions, p.model, None, sample_config(p.n_steer_samples * len(seeds), p.max_new_tokens,
                                                                  p.temperature, p.seed), judge, "base")
    parts = [_measures(base.assign(seed=pd.NA), p.topic, judge)]
    frames = {}
    for s in seeds:
        org = judged_answers(questions, p.model, runs[s].adapter_path,
                             sample_config(p.n_samples, p.max_new_tokens, p.temperature, s), judge, "organism")
        parts.append(_measures(org.assign(seed=s), p.topic, judge))
        frames[s] = _probe_frame(p, runs[s], parts[-1], questions)
    effects, fits, cutoffs, auc_table, coefficients, split = _probes(p, frames, layers)
    explore = _probes(replace(p, probe_c=p.explore_c), frames, layers)  # exploratory: steering keeps the rule's split
    for s in seeds:
        parts += [_measures(df, p.topic, judge) for df in _steered(p, runs[s], split[s], modules, questions, judge, s)]
    answers = pd.concat(parts, ignore_index=True)
    answers["seed"] = answers["seed"].astype("Int64")
    by = {m: answers[answers["model"] == m] for m in answers["model"].unique()}
    organism = em_effect("EM(organism) - EM(base)", by["organism"], by["base"], p.seed)
    steering = em_effect("off-domain EM(general up) - off-domain EM(domain up)", by[CONDITIONS[0]], by[CONDITIONS[1]],
                         p.seed, column="em_off")
    summary, vs_organism = _summaries(answers, p.seed)
    info = loaded[seeds[0]][1]
    return Result(organism, effects, steering, split, layers, modules, cutoffs, fits, auc_table, coefficients,
                  explore[3].assign(effect_low=[explore[0][n].ci_low if n in explore[0] else np.nan for n in explore[3]["probe"]]),
                  explore[5], summary, vs_organism, answers, seeds, runs, info, questions, judge.id,
                  notes + fallback_notes([info]))


def verdict_probes(r: Result) -> str:
    """(a) *Reproduced* when every one of the four probes beats its shuffled-label null (the 95 % interval of AUC −
    null AUC over seeds × splits lies above zero); *partly* when some do; a probe that could not be run does not."""
    beats = [name for name, e in r.probes.items() if e.above]
    return REPRODUCED if len(beats) == len(PROBES) else PARTLY if beats else NOT_REPRODUCED


def split_exists(r: Result) -> bool:
    """The general probe and the domain probe both beat their nulls and every seed has a general and a domain adapter."""
    probes_ok = all(name in r.probes and r.probes[name].above for name in (GENERAL_PROBE, DOMAIN_PROBE))
    return probes_ok and bool(r.split) and all("general" in s and "domain" in s for s in r.split.values())


def verdict_split(r: Result) -> str:
    """(b) *Reproduced* when a general/domain split exists (`split_exists`) and scaling the general set raises
    off-domain EM more than scaling the domain set (CI of the difference above zero); *partly* when one of the two
    holds; otherwise *not reproduced at this scale*."""
    steer_ok = r.steering is not None and r.steering.above
    return REPRODUCED if split_exists(r) and steer_ok else PARTLY if split_exists(r) or steer_ok else NOT_REPRODUCED


def verdict(r: Result) -> Verdict:
    """The organism (EM(organism) − EM(base), CI above zero: the rest means little without EM), (a) the probes and
    (b) the split and its steering, combined: *reproduced* when all three are, *not reproduced at this scale* when
    none is even partly, else *partly reproduced*."""
    parts = {"organism EM": REPRODUCED if r.organism.above else NOT_REPRODUCED, "(a) probes": verdict_probes(r),
             "(b) split and steering": verdict_split(r)}
    beats = [name for name, e in r.probes.items() if e.above]
    reason = (f"organism EM {'above' if r.organism.above else 'not clearly above'} the base; "
              f"{len(beats)} of {len(PROBES)} probes beat their null; general/domain split "
              f"{'found' if split_exists(r) else 'not found'}; general-up vs domain-up off-domain EM "
              f"{'clearly higher' if r.steering is not None and r.steering.above else 'not clearly higher'}")
    return Verdict(combine(parts), reason, parts)
