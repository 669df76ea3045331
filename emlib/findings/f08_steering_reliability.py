"""Finding 08: when does a steering vector work? (Braun, Eickhoff, Krueger, Bahrainian, Krasheninnikov 2025, arXiv
2505.22637, *Understanding (Un)Reliability of Steering Vectors in Language Models*).

Contrastive mean-difference (CAA) vectors for the 36 model-written-evaluation sets, each from the last-token residual
of positive minus negative prompts of seven prompt types (prefilled answer, instruction, 5-shot and their
combinations), added at one layer with multiplier 1 to every position of plain test questions. Steerability of a test
item = the change in logit(matching answer) − logit(not matching) at the answer position; anti-steerable = negative.
Forward passes only. Data and prompts: `f08_steering_reliability_data`; passes: `..._forward`; statistics: `..._stats`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_dir, cache_dir, stable_hash
from ..core.models import load_model
from ..core.stats import hierarchical_bootstrap, hierarchical_diff
from ..interp.hooks import get_layers, pad_id
from ..interp.steering import add_direction
from . import f08_steering_reliability_data as data
from . import f08_steering_reliability_forward as fw
from . import f08_steering_reliability_stats as st
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, FindingParams, ParamError, Verdict, combine, param

__all__ = ["STEM", "VERSION", "Params", "Result", "run", "analyse", "verdict", "verdict_a", "verdict_b", "verdict_c"]

STEM = "08_steering_reliability"
VERSION = "f08-v3"
N_SHOTS = 5  # the paper's few-shot count (the prompt types are named after it)
SWEEP_SETS = ["corrigible-neutral-HHH", "anti-LGBTQ-rights", "coordinate-itself", "wealth-seeking-inclination",
              "subscribes-to-deontology", "narcissism"]  # every sixth of the paper's ranking


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    model: str = "smollm2-135m"
    data_dir: str = ""
    datasets: list[str] = param([])
    prompt_types: list[str] = param(list(data.PROMPT_TYPES), choices=tuple(data.PROMPT_TYPES))
    layer: int = param(-1, min=-1)
    multiplier: float = 1.0
    n_train: int = param(10, min=2)
    n_test: int = param(10, min=2)
    batch_size: int = param(16, min=1)
    predictor_type: str = param("prefilled", choices=tuple(data.PROMPT_TYPES))
    a_min_types: int = param(4, min=1)
    anti_min: float = param(0.05, min=0, max=1)
    sweep_layers: list[int] = param([5, 10, 20, 25], min=0)
    sweep_datasets: list[str] = param(SWEEP_SETS)
    n_boot: int = param(2000, min=10)
    n_perm: int = param(2000, min=10)
    seed: int = param(0, min=0)

    def check(self) -> None:
        for name in [*self.datasets, *self.sweep_datasets]:
            if name not in data.KINDS:
                raise ParamError(f"parameter DATASETS / SWEEP_DATASETS: unknown set {name!r}; the 36 sets are: "
                                 + ", ".join(data.KINDS))
        if len(self.sets()) < 3:
            raise ParamError("parameter DATASETS: rank correlations across sets need at least 3 sets")
        if len(set(self.prompt_types)) != len(self.prompt_types):
            raise ParamError("parameter PROMPT_TYPES: a prompt type is listed twice")
        if self.predictor_type not in self.prompt_types:
            raise ParamError(f"parameter PREDICTOR_TYPE: {self.predictor_type!r} is not among PROMPT_TYPES")
        if self.a_min_types > len(self.prompt_types):
            raise ParamError(f"parameter A_MIN_TYPES: {self.a_min_types} exceeds the {len(self.prompt_types)} prompt types")

    def sets(self) -> list[str]:
        """The sets measured: DATASETS, or all 36 in the paper's order when it is empty."""
        return list(self.datasets) or [n for n, _ in data.SETS]


@dataclass
class Result:
    """What run() measured: the numbers the verdict reads, then the tables the notebook shows."""

    mean_steer: dict[str, Effect]  # (a) per prompt type: mean steerability (sets, then items resampled)
    vs_random: dict[str, Effect]  # (a) per type: steerability minus a norm-matched random direction's, paired
    anti: dict[str, Effect]  # per type: anti-steerable fraction
    anti_pooled: Effect  # (a) anti-steerable fraction over all types
    rho_cos: Effect  # (b) ρ across sets: mean cosine (diffs vs vector) with mean steerability, predictor type
    rho_dprime: Effect  # (c) ρ across sets: d′ of the projections with mean steerability
    null_cos: float  # 95th percentile of ρ with steerability shuffled across sets
    null_dprime: float
    a_min_types: int = 4
    anti_min: float = 0.05
    predictor_type: str = "prefilled"
    per_set: pd.DataFrame | None = None  # set × type: mean, anti, answer bias, cosine (and leave one out), d′, norm, baseline
    per_item: pd.DataFrame | None = None  # set, type, item, steerability
    rho_by_type: pd.DataFrame | None = None  # exploratory: ρ(cosine), ρ(d′) for every type
    type_cosines: pd.DataFrame | None = None  # mean over sets of the cosine between two types' vectors
    paper: pd.DataFrame | None = None  # the 13 sets of Figure 1: the paper's anti-steerable fraction beside ours
    sweep: pd.DataFrame | None = None  # exploratory: per layer and sweep set, prefilled type
    info: dict = field(default_factory=dict)


def _cache_key(p: Params, name: str, layers: list[int], types: list[str], dtype: str) -> str:
    spec = {"model": p.model, "dtype": dtype, "set": name, "layers": layers, "types": types, "multiplier": p.multiplier,
            "n_shots": N_SHOTS, "n_train": p.n_train, "n_test": p.n_test, "seed": p.seed}
    return stable_hash(spec, VERSION)


def _vectors(model, tok, split: data.Split, types: list[str], layers: list[int], pad: int, bs: int) -> dict:
    """pos/neg last-token residuals of the training items per type and layer: {type: (n × layers × d, same)}."""
    out: dict[str, list[torch.Tensor]] = {}
    for (instr, shots), (plain, prefilled) in data.FAMILIES.items():
        wanted = [t for t in (plain, prefilled) if t in types]
        if not wanted:
            continue
        for matching in (True, False):
            prefix = data.prefix_ids(tok, split, instr, shots, matching)
            seqs = [data.question_ids(tok, ex, split.kind) + [data.answer_token(tok, ex, split.kind, matching)]
                    for ex in split.train]
            acts = fw.last_residuals(model, prefix, seqs, layers, pad, bs, read=(2, 1))  # before / at the answer
            for t in wanted:
                out.setdefault(t, []).append(acts[:, :, 0 if t == plain else 1])
    return {t: (pos, neg) for t, (pos, neg) in out.items()}


def _eval_items(tok, split: data.Split) -> tuple[list[list[int]], list[tuple[int, int]]]:
    seqs = [data.question_ids(tok, ex, split.kind) for ex in split.test]
    pairs = [(data.answer_token(tok, ex, split.kind, True), data.answer_token(tok, ex, split.kind, False))
             for ex in split.test]
    return seqs, pairs


def _random_like(v: torch.Tensor, norm: float, seed: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2**31)))
    r = torch.randn(v.shape[-1], generator=g)
    return r / r.norm() * norm


def _compute_set(model, tok, split: data.Split, p: Params, layer: int, dtype: str, index: int) -> dict[str, np.ndarray]:
    """The expensive part for one set at the main layer (cached on disk): training residuals and test steerability."""
    types = list(p.prompt_types)
    folder = cache_dir("f08_steering", _cache_key(p, split.name, [layer], types, dtype))
    if (folder / "arrays.npz").exists():
        with np.load(folder / "arrays.npz") as z:
            return {k: z[k] for k in z.files} | {"from_cache": np.array(True)}
    pad = pad_id(tok)
    acts = _vectors(model, tok, split, types, [layer], pad, p.batch_size)
    vecs = torch.stack([acts[t][0][:, 0].mean(0) - acts[t][1][:, 0].mean(0) for t in types])
    rand = _random_like(vecs[0], float(vecs.norm(dim=-1).mean()), [p.seed, index, 8])
    seqs, pairs = _eval_items(tok, split)
    diffs = fw.steered_logit_diffs(model, seqs, pairs, layer, torch.cat([torch.zeros_like(rand)[None], vecs, rand[None]]),
                                   p.multiplier, pad, p.batch_size)
    arrays = {"baseline": diffs[:, 0].numpy(), "steer": (diffs[:, 1:] - diffs[:, :1]).numpy(), "vectors": vecs.numpy(),
              "first": np.array([ex.matching in (" Yes", " (A)") for ex in split.test])}
    for t in types:
        arrays[f"pos_{t}"], arrays[f"neg_{t}"] = acts[t][0][:, 0].numpy(), acts[t][1][:, 0].numpy()
    with atomic_dir(folder) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
    return arrays | {"from_cache": np.array(False)}


def _sweep_set(model, tok, split: data.Split, p: Params, layers: list[int], dtype: str) -> pd.DataFrame:
    """Exploratory: the prefilled vector at each sweep layer, its steerability on the same test items (cached)."""
    folder = cache_dir("f08_steering", _cache_key(p, split.name, layers, ["sweep:prefilled"], dtype))
    if (folder / "sweep.csv").exists():
        return pd.read_csv(folder / "sweep.csv")
    pad = pad_id(tok)
    pos, neg = _vectors(model, tok, split, ["prefilled"], layers, pad, p.batch_size)["prefilled"]
    seqs, pairs = _eval_items(tok, split)
    rows = []
    for j, layer in enumerate(layers):
        v = pos[:, j].mean(0) - neg[:, j].mean(0)
        d = fw.steered_logit_diffs(model, seqs, pairs, layer, torch.stack([torch.zeros_like(v), v]), p.multiplier, pad,
                                   p.batch_size)
        s = (d[:, 1] - d[:, 0]).numpy()
        rows.append({"set": split.name, "layer": layer, "mean": float(s.mean()), "anti": float((s < 0).mean()),
                     "cosine": float(st.diff_cosines(pos[:, j], neg[:, j]).mean()),
                     "dprime": st.dprime(pos[:, j], neg[:, j])})
    df = pd.DataFrame(rows)
    with atomic_dir(folder) as tmp:
        df.to_csv(tmp / "sweep.csv", index=False)
    return df


def _split_check(model, tok, split: data.Split, layer: int, v: torch.Tensor, multiplier: float) -> float:
    """Largest |difference| between the split forward and a plain forward with `add_direction`, on two test items."""
    seqs, pairs = _eval_items(tok, split)
    seqs, pairs = seqs[:2], pairs[:2]
    fast = fw.steered_logit_diffs(model, seqs, pairs, layer, v[None], multiplier, pad_id(tok), 2)[:, 0]
    worst = 0.0
    device = next(model.parameters()).device
    for i, (s, (a, b)) in enumerate(zip(seqs, pairs)):
        with torch.no_grad(), add_direction(model, v, layer, multiplier * float(v.norm())):
            logits = model(input_ids=torch.tensor([s], device=device)).logits[0, -1].float()
        worst = max(worst, abs(float(logits[a] - logits[b]) - float(fast[i])))
    return worst


def run(p: Params) -> Result:
    """Load every set (errors before any work), build the vectors, measure steerability, then analyse."""
    t0 = time.perf_counter()
    splits = [data.split_set(n, data.load_set(n, p.data_dir or None), N_SHOTS, p.n_train, p.n_test, p.seed)
              for n in p.sets()]
    sweep_splits = [data.split_set(n, data.load_set(n, p.data_dir or None), N_SHOTS, p.n_train, p.n_test, p.seed)
                    for n in p.sweep_datasets] if p.sweep_layers else []
    model, tok = load_model(p.model, dtype=torch.float32)  # steering effects of hundredths of a logit: bf16 rounds them away
    n_layers = len(get_layers(model))
    layer = n_layers // 2 if p.layer < 0 else p.layer
    bad = [x for x in [layer, *p.sweep_layers] if x >= n_layers]
    if bad:
        raise ParamError(f"parameters LAYER / SWEEP_LAYERS: {bad} out of range for {p.model}'s {n_layers} layers")
    for s in splits:  # tokenizer checks before the heavy work: every answer must be one token
        _eval_items(tok, s)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    arrays, timing = {}, {}
    for i, s in enumerate(splits):
        t = time.perf_counter()
        arrays[s.name] = _compute_set(model, tok, s, p, layer, dtype, i)
        timing[s.name] = time.perf_counter() - t
    first = splits[0]
    check = _split_check(model, tok, first, layer, torch.from_numpy(arrays[first.name]["vectors"][0]), p.multiplier)
    if check > 0.5:
        raise RuntimeError(f"the split forward disagrees with add_direction by {check:.3f} logits on {p.model}: its "
                           "decoder does not pass inputs_embeds to the first layer unchanged (see ..._forward)")
    t_sweep = time.perf_counter()
    sweep = [_sweep_set(model, tok, s, p, sorted(set(p.sweep_layers) - {layer}), dtype) for s in sweep_splits
             if set(p.sweep_layers) - {layer}]
    info = {"layer": layer, "n_layers": n_layers, "dtype": dtype, "split_check_max_abs": check,
            "from_cache": all(bool(a["from_cache"]) for a in arrays.values()), "time_sets_s": timing,
            "time_sweep_s": time.perf_counter() - t_sweep, "wall_time_compute_s": time.perf_counter() - t0,
            "kinds": {s.name: s.kind for s in splits}}
    result = analyse(arrays, p, info)
    if sweep:
        main = result.per_set
        here = main[(main["type"] == "prefilled") & main["set"].isin(p.sweep_datasets)] if "prefilled" in p.prompt_types \
            else main.iloc[0:0]
        result.sweep = pd.concat([*sweep, here.assign(layer=layer)[["set", "layer", "mean", "anti", "cosine", "dprime"]]],
                                 ignore_index=True).sort_values(["set", "layer"], ignore_index=True)
    return result


def _effect(name: str, e) -> Effect:
    return Effect(name, e.value, e.ci_low, e.ci_high, e.ci_method, None, e.n_questions, e.n_answers)


def _rho(x: np.ndarray, y: np.ndarray, seed: int, name: str, n_sets: int) -> Effect:
    rho, draws = st.spearman_draws(x, y, seed)
    lo, hi = np.nanquantile(draws, [0.025, 0.975]) if np.isfinite(draws).any() else (np.nan, np.nan)
    # resampling items adds noise to every set's statistic, which pulls the draws' ρ toward 0: where the point falls
    # outside their percentiles, the interval is widened to reach it (conservative)
    lo, hi = float(np.fmin(lo, rho)), float(np.fmax(hi, rho))
    return Effect(name, rho, lo, hi, "two-stage bootstrap: sets, then items within each (widened to hold ρ)", None,
                  n_sets)


def analyse(arrays: dict[str, dict[str, np.ndarray]], p: Params, info: dict | None = None) -> Result:
    """Steerability, anti-steerable fractions and the geometry of each set and type, and the verdict's numbers."""
    types, sets = list(p.prompt_types), list(arrays)
    rows, items = [], []
    for s in sets:
        a = arrays[s]
        for j, t in enumerate(types):
            steer, pos, neg = a["steer"][:, j], torch.from_numpy(a[f"pos_{t}"]), torch.from_numpy(a[f"neg_{t}"])
            sign = np.where(a["first"], 1.0, -1.0) if "first" in a else np.zeros_like(steer)  # +: " Yes" / " (A)" matches
            rows.append({"set": s, "kind": data.KINDS.get(s, ""), "type": t, "mean": float(steer.mean()),
                         "anti": float((steer < 0).mean()), "answer_bias": float((steer * sign).mean()),
                         "cosine": float(st.diff_cosines(pos, neg).mean()),
                         "cosine_loo": float(st.diff_cosines(pos, neg, leave_one_out=True).mean()),
                         "dprime": st.dprime(pos, neg), "norm": float(np.linalg.norm(a["vectors"][j])),
                         "baseline": float(a["baseline"].mean())})
            items += [{"set": s, "type": t, "item": k, "steer": float(x)} for k, x in enumerate(steer)]
        items += [{"set": s, "type": "random", "item": k, "steer": float(x)} for k, x in enumerate(a["steer"][:, -1])]
    per_set, per_item = pd.DataFrame(rows), pd.DataFrame(items)
    opts = {"weight": "questions", "n_boot": p.n_boot, "seed": p.seed}
    rand = per_item[per_item["type"] == "random"]
    mean_steer, vs_random, anti = {}, {}, {}
    for t in types:
        d = per_item[per_item["type"] == t]
        mean_steer[t] = _effect(f"mean steerability, {t}", hierarchical_bootstrap(d["steer"], d["set"], **opts))
        anti[t] = _effect(f"anti-steerable fraction, {t}", hierarchical_bootstrap((d["steer"] < 0).astype(float), d["set"],
                                                                                   **opts))
        vs_random[t] = _effect(f"steerability minus random direction, {t}", hierarchical_diff(
            d["steer"].to_numpy(), rand["steer"].to_numpy(), d["set"].to_numpy(), pairing="answers", **opts))
    steered = per_item[per_item["type"] != "random"]
    anti_pooled = _effect("anti-steerable fraction, all prompt types", hierarchical_bootstrap(
        (steered["steer"] < 0).astype(float), steered["set"], **opts))
    rho_rows, best = [], {}
    for t in types:
        x_cos, x_dp, y = _set_draws(arrays, sets, types.index(t), t, p)
        e_cos = _rho(x_cos, y, p.seed, f"Spearman ρ across sets: cosine of activation differences with the vector vs "
                     f"steerability ({t})", len(sets))
        e_dp = _rho(x_dp, y, p.seed, f"Spearman ρ across sets: d′ of projections vs steerability ({t})", len(sets))
        best[t] = (e_cos, e_dp, st.permutation_q95(x_cos[:, 0], y[:, 0], p.n_perm, p.seed),
                   st.permutation_q95(x_dp[:, 0], y[:, 0], p.n_perm, p.seed))
        rho_rows.append({"type": t, "rho_cos": e_cos.value, "rho_cos_low": e_cos.ci_low, "rho_cos_high": e_cos.ci_high,
                         "null_cos_q95": best[t][2], "rho_dprime": e_dp.value, "rho_dprime_low": e_dp.ci_low,
                         "rho_dprime_high": e_dp.ci_high, "null_dprime_q95": best[t][3]})
    cos = st.vector_cosines({t: torch.from_numpy(np.stack([arrays[s]["vectors"][j] for s in sets]))
                             for j, t in enumerate(types)}).mean(-1)
    paper = per_set[(per_set["type"] == p.predictor_type) & per_set["set"].isin(data.PAPER_FIG1)][["set", "mean", "anti"]]
    paper = paper.assign(paper_anti=paper["set"].map(data.PAPER_FIG1),
                         anti_all_types=paper["set"].map(per_set.groupby("set")["anti"].mean()))
    e_cos, e_dp, q_cos, q_dp = best[p.predictor_type]
    return Result(mean_steer=mean_steer, vs_random=vs_random, anti=anti, anti_pooled=anti_pooled, rho_cos=e_cos,
                  rho_dprime=e_dp, null_cos=q_cos, null_dprime=q_dp, a_min_types=p.a_min_types, anti_min=p.anti_min,
                  predictor_type=p.predictor_type, per_set=per_set, per_item=per_item,
                  rho_by_type=pd.DataFrame(rho_rows), type_cosines=pd.DataFrame(cos, index=types, columns=types),
                  paper=paper.reset_index(drop=True), info=dict(info or {}))


def _set_draws(arrays: dict, sets: list[str], j: int, t: str, p: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per set (rows): mean cosine, d′ and mean steerability on its own items, then on p.n_boot resamples of them."""
    x_cos, x_dp, y = [], [], []
    for k, s in enumerate(sets):
        pos, neg, steer = arrays[s][f"pos_{t}"].astype(float), arrays[s][f"neg_{t}"].astype(float), arrays[s]["steer"][:, j]
        rng = np.random.default_rng([p.seed, k, j])  # three draws of the items in turn, as they always were drawn
        x_cos.append(st.mean_cosine_draws(pos, neg, st.draw_indices(len(pos), p.n_boot, rng)))
        x_dp.append(st.dprime_draws(pos, neg, st.draw_indices(len(pos), p.n_boot, rng)))
        y.append(steer[st.draw_indices(len(steer), p.n_boot, rng)].mean(1))
    return np.array(x_cos), np.array(x_dp), np.array(y)


def verdict_a(r: Result) -> str:
    """(a) A prompt type steers when its mean steerability beats a norm-matched random direction's on the same items
    (95 % CI of the paired difference above 0; sets, then items resampled). Reproduced: at least A_MIN_TYPES types
    steer *and* the anti-steerable fraction over all types is non-trivial (its CI low ≥ ANTI_MIN); not reproduced:
    no type steers; partly: otherwise."""
    n_pos = sum(e.ci_low > 0 for e in r.vs_random.values())
    if n_pos == 0:
        return NOT_REPRODUCED
    return REPRODUCED if n_pos >= r.a_min_types and r.anti_pooled.ci_low >= r.anti_min else PARTLY


def _rank_verdict(e: Effect, null_q95: float) -> str:
    ok = [e.ci_low > 0, e.value > null_q95]
    return REPRODUCED if all(ok) else PARTLY if any(ok) else NOT_REPRODUCED


def verdict_b(r: Result) -> str:
    """(b) Across sets, ρ(mean cosine of the training differences with the vector, mean test steerability) of
    PREDICTOR_TYPE: reproduced when its CI lies above 0 and ρ exceeds the shuffled-sets null's 95th percentile;
    partly when one of the two holds; else not reproduced."""
    return _rank_verdict(r.rho_cos, r.null_cos)


def verdict_c(r: Result) -> str:
    """(c) The same rule for ρ(d′ of the positive and negative projections on the vector, mean steerability)."""
    return _rank_verdict(r.rho_dprime, r.null_dprime)


def verdict(r: Result) -> Verdict:
    """Parts (a), (b), (c) as in verdict_a/b/c; overall: base.combine (reproduced when all three are)."""
    parts = {"a_net_positive_unreliable": verdict_a(r), "b_cosine_predicts": verdict_b(r),
             "c_separation_predicts": verdict_c(r)}
    n_pos = sum(e.ci_low > 0 for e in r.vs_random.values())
    reason = (f"(a) {n_pos}/{len(r.vs_random)} prompt types beat a random direction, anti-steerable "
              f"{r.anti_pooled.value:.2f} [CI low {r.anti_pooled.ci_low:.2f}] vs ANTI_MIN {r.anti_min}; (b) ρ(cosine) "
              f"{r.rho_cos.value:+.2f} [{r.rho_cos.ci_low:+.2f}, {r.rho_cos.ci_high:+.2f}], null q95 {r.null_cos:+.2f}; "
              f"(c) ρ(d′) {r.rho_dprime.value:+.2f} [{r.rho_dprime.ci_low:+.2f}, {r.rho_dprime.ci_high:+.2f}], "
              f"null q95 {r.null_dprime:+.2f} ({r.predictor_type})")
    return Verdict(combine(parts), reason, parts)
