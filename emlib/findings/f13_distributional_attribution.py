"""Finding 13 (beyond EM): distributional training-data attribution (Mlodozeniec et al. 2025, arXiv 2506.12965).

Hundreds of seeds of a tiny MLP on scikit-learn's digits (3 vs 8) are trained together; a target output (one test
example's logit) then has a distribution over seeds. Removing one training example moves that distribution. Unrolled
differentiation through training predicts each seed's change, and so the change of the whole distribution (mean,
variance, quantiles); retraining every seed without the example (same init, same batch order) gives the truth.
The classic damped-Hessian influence function at the end of training should approach unrolled differentiation as
training lengthens. Machinery: `f13_distributional_attribution_train`; statistics: `..._stats`; figures: `..._plots`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_dir, cache_dir, stable_hash
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, FindingParams, ParamError, Verdict, combine, param
from . import f13_distributional_attribution_stats as st
from . import f13_distributional_attribution_train as tr

__all__ = ["STEM", "VERSION", "Params", "Result", "run", "verdict", "verdict_a", "verdict_b", "verdict_c"]

STEM = "13_distributional_attribution"
VERSION = "f13-v3"
_ANALYSIS_ONLY = ("ratio", "r_min", "e_max", "corr", "quantiles", "n_boot")  # fields that never change the cached runs


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    digit_a: int = param(3, min=0, max=9)
    digit_b: int = param(8, min=0, max=9)
    n_train: int = param(150, min=4)
    n_test: int = param(100, min=1)
    target: int = param(-1, min=-1)
    hidden: int = param(16, min=1)
    steps: int = param(400, min=1)
    batch_size: int = param(15, min=1)
    lr: float = param(0.1, gt=0)
    weight_decay: float = param(0.01, min=0)
    schedule: str = param("linear", choices=("linear", "constant"))
    n_seeds: int = param(256, min=4)
    n_random: int = param(32, min=3)
    n_top: int = param(8, min=1)
    ratio: float = param(3.0, gt=0)
    r_min: float = param(0.8, min=-1, max=1)
    lengths: list[int] = param([50, 100, 200, 400], min=1)
    agree_seeds: int = param(64, min=4)
    damping: float = param(0.01, min=0)
    e_max: float = param(0.5, gt=0)
    corr: str = param("spearman", choices=("spearman", "pearson"))
    quantiles: list[float] = param([0.1, 0.5, 0.9], gt=0, max=0.99)
    n_boot: int = param(1000, min=10)
    seed: int = param(0, min=0)

    def check(self) -> None:
        if self.digit_a == self.digit_b:
            raise ParamError("parameters DIGIT_A and DIGIT_B: need two different digits")
        if self.batch_size > self.n_train:
            raise ParamError(f"parameter BATCH_SIZE: {self.batch_size} exceeds N_TRAIN {self.n_train}")
        if self.n_random + self.n_top > self.n_train:
            raise ParamError("parameters N_RANDOM + N_TOP: more examples than N_TRAIN")
        if self.agree_seeds > self.n_seeds:
            raise ParamError(f"parameter AGREE_SEEDS: {self.agree_seeds} exceeds N_SEEDS {self.n_seeds}")
        if len(self.lengths) < 2 or self.lengths != sorted(set(self.lengths)):
            raise ParamError("parameter LENGTHS: at least two training lengths, increasing")
        if self.target >= self.n_test:
            raise ParamError(f"parameter TARGET: {self.target} is not a test index (N_TEST is {self.n_test})")

    def train_config(self, steps: int | None = None) -> tr.TrainConfig:
        """The training recipe shared by every seed (float32: the removal effects are ~1e3 x float32 round-off)."""
        return tr.TrainConfig(hidden=self.hidden, steps=steps or self.steps, batch_size=self.batch_size, lr=self.lr,
                              weight_decay=self.weight_decay, schedule=self.schedule, dtype="float32")


@dataclass
class Result:
    """What run() measured: the numbers the verdict reads, then the tables and arrays the notebook shows."""

    corr_mean: Effect  # (a) r(predicted, actual) change of the mean over random examples
    corr_var: Effect  # (a) the same for the variance
    null_mean: float  # 95th percentile of r with predictions shuffled across examples
    null_var: float
    r_min: float
    confirmed_top: int  # (b) method's candidates whose retraining shows |d sd| > ratio |d mean|
    n_top: int
    confirmed_random: int  # (b) null: random examples that show it
    n_random: int
    err_drop: Effect  # (c) median per-seed |IF - UD| / |UD| at the shortest length minus at the longest
    err_final: float  # (c) that median error at the longest length
    err_null_final: float  # (c) the same with another seed's IF (the null)
    e_max: float
    examples: pd.DataFrame | None = None  # retrained examples: predicted and actual shifts, CIs, group
    predicted: pd.DataFrame | None = None  # every training example: UD-predicted shifts (the method's ranking)
    agreement: pd.DataFrame | None = None  # per length: per-seed error and r(IF, UD) of the shifts, CIs, nulls
    quantile_corr: dict[str, Effect] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # base [S], actual/pred [K, S], target image...
    info: dict = field(default_factory=dict)  # target, accuracies, timings, cache


def _cache_key(p: Params) -> str:
    d = {k: v for k, v in p.to_dict().items() if k not in _ANALYSIS_ONLY}
    return stable_hash(d, VERSION)


def _compute(p: Params) -> tuple[dict[str, np.ndarray], dict]:
    """The expensive part: train, unrolled gradients, removal retraining, influence functions (cached on disk)."""
    folder = cache_dir("f13_dtda", _cache_key(p))
    if (folder / "arrays.npz").exists():
        with np.load(folder / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads((folder / "info.json").read_text())
        return arrays, {**info, "from_cache": True}
    t0 = time.perf_counter()
    data = tr.load_digits_pair(p.digit_a, p.digit_b, p.n_train, p.n_test, p.seed, "float32")
    cfg, d_in = p.train_config(), data.x_train.shape[1]
    theta0 = tr.init_params(d_in, cfg, p.n_seeds, p.seed)
    order = tr.batch_order(p.n_train, dataclasses.replace(cfg, steps=max(p.steps, *p.lengths)), p.n_seeds, p.seed)
    final = tr.train(theta0, order[:, : p.steps], data, cfg)
    z_test = tr.logits(final, data.x_test, p.hidden).double().numpy()  # [S, M]
    target = int(z_test.std(0).argmax()) if p.target < 0 else p.target
    x_t = data.x_test[target]
    t1 = time.perf_counter()
    grads, _ = tr.unrolled_grad(theta0, order[:, : p.steps], data, cfg, x_t, [p.steps])
    g = grads[p.steps].double().numpy()  # [S, N] d z_s / d w_i
    t2 = time.perf_counter()
    # the method's ranking: predicted shifts of every example from the first-order per-seed outcome z_s - g_s,i
    base_ud = z_test[:, target]
    pred_all = base_ud[None] - g.T
    d_mean, d_sd = st.shift(base_ud, pred_all, "mean"), st.shift(base_ud, pred_all, "sd")
    u, m = np.abs(d_sd) / np.median(np.abs(d_sd)), np.abs(d_mean) / np.median(np.abs(d_mean))  # typical example: 1
    score = np.where(u >= 1.0, u / np.maximum(m, 1e-12), 0.0)
    top = [int(i) for i in np.argsort(-score, kind="stable")[: p.n_top]]
    rand = [int(i) for i in np.random.default_rng([p.seed, 13]).choice(p.n_train, p.n_random, replace=False)]
    removed = list(dict.fromkeys(top + rand))
    out = tr.retrain_without(theta0, order[:, : p.steps], data, cfg, removed, x_t[None])[..., 0].double().numpy()
    t3 = time.perf_counter()
    arrays = {"g": g, "base": out[0], "actual": out[1:], "removed": np.array(removed), "top": np.array(top),
              "random": np.array(rand), "z_test": z_test, "y_train": data.y_train.double().numpy(),
              "images_train": data.images_train, "image_target": data.images_test[target],
              "lengths": np.array(p.lengths)}
    c = p.agree_seeds
    for length in p.lengths:  # (c): separate runs of each length (the lr schedule spans the run), first c seeds
        cfg_l = p.train_config(length)
        th0 = {k: v[:c] for k, v in theta0.items()}
        gl, states = tr.unrolled_grad(th0, order[:c, :length], data, cfg_l, x_t, [length])
        arrays[f"ud_{length}"] = gl[length].double().numpy()
        inf, lam = tr.influence(states[length], data, cfg_l, x_t, p.damping)
        arrays[f"if_{length}"], arrays[f"lambda_{length}"] = inf.numpy(), lam.numpy()
        arrays[f"z_{length}"] = tr.logits(states[length], x_t[None], p.hidden)[:, 0].double().numpy()
    t4 = time.perf_counter()
    info = {"target": target, "target_label": float(data.y_test[target]), "n_params": tr.n_params(d_in, p.hidden),
            "test_accuracy": float(((z_test > 0) == (data.y_test.numpy()[None] > 0.5)).mean()),
            "time_train_s": t1 - t0, "time_unrolled_s": t2 - t1, "time_retrain_s": t3 - t2, "time_influence_s": t4 - t3,
            "n_retrained": len(removed)}
    with atomic_dir(folder) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
    return arrays, {**info, "from_cache": False}


def _standardised(b: np.ndarray, m: np.ndarray, typical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|d sd| and |d mean| of each removal in units of a typical removal's (their medians over the rows `typical`)."""
    dsd, dm = np.abs(st.shift(b, m, "sd")), np.abs(st.shift(b, m, "mean"))
    return dsd / np.median(dsd[typical]), dm / np.median(dm[typical])


def _mover_stat(ratio: float, typical: np.ndarray):
    """u - ratio * m per removed example, u and m its sd and mean shifts in units of a typical (random) removal's:
    positive when the removal moves the variance `ratio` times more than the mean, relative to a typical example."""
    def fn(b: np.ndarray, m: np.ndarray) -> np.ndarray:
        u, v = _standardised(b, m, typical)
        return u - ratio * v
    return fn


def _examples(p: Params, a: dict[str, np.ndarray]) -> pd.DataFrame:
    base, actual, removed = a["base"], a["actual"], [int(i) for i in a["removed"]]
    pred = base[None] - a["g"].T[removed]
    rows = {"example": removed, "label": a["y_train"][removed].astype(int),
            "candidate": [k in set(a["top"].tolist()) for k in removed],
            "random": [k in set(a["random"].tolist()) for k in removed]}
    for name in ("mean", "var", "sd", *(f"q{q:g}" for q in p.quantiles)):
        rows[f"pred_d{name}"], rows[f"act_d{name}"] = st.shift(base, pred, name), st.shift(base, actual, name)
    typical = np.array(rows["random"])
    value, lo, hi = st.paired_stat_ci(base, actual, _mover_stat(p.ratio, typical), p.n_boot, p.seed)
    rows.update(mover=value, mover_ci_low=lo, mover_ci_high=hi)
    rows["act_u"], rows["act_m"] = _standardised(base, actual, typical)
    rows["pred_u"], rows["pred_m"] = _standardised(base, pred, typical)
    df = pd.DataFrame(rows)
    df["confirmed"] = (df["mover_ci_low"] > 0) & (df["act_u"] >= 1.0)
    return df


def _agreement(p: Params, a: dict[str, np.ndarray]) -> tuple[pd.DataFrame, Effect]:
    """Per length: each seed's relative error |IF_s - UD_s| / |UD_s| over all training examples (median over seeds,
    bootstrap CI over seeds, the same replicates at every length so the drop is paired), the null that uses another
    seed's IF, and the correlation over examples of the IF- and UD-predicted shifts of mean and sd (CI: seeds and
    examples resampled)."""
    lengths = [int(x) for x in a["lengths"]]
    c, n = a[f"ud_{lengths[0]}"].shape
    si, ei = st.two_way_indices(c, n, p.n_boot, p.seed)
    perm = np.roll(np.arange(c), 1)  # seed s paired with seed s-1's influence function
    rows, err_boot = [], {}
    for length in lengths:
        z, ud, inf, lam = a[f"z_{length}"], a[f"ud_{length}"], a[f"if_{length}"], a[f"lambda_{length}"]
        err = np.linalg.norm(inf - ud, axis=1) / np.linalg.norm(ud, axis=1)
        err_null = np.linalg.norm(inf[perm] - ud, axis=1) / np.linalg.norm(ud, axis=1)
        err_boot[length] = np.median(err[si], axis=1)
        row = {"length": length, "err": float(np.median(err)), "err_ci_low": float(np.quantile(err_boot[length], 0.025)),
               "err_ci_high": float(np.quantile(err_boot[length], 0.975)), "err_null": float(np.median(err_null)),
               "saddle_seeds": float((lam > p.damping).mean()), "lambda_median": float(np.median(lam))}
        for name in ("mean", "sd"):
            def f(zz, u, i):
                return st.correlation(st.shift(zz, zz[None] - u.T, name), st.shift(zz, zz[None] - i.T, name), p.corr)

            bs = np.array([f(z[s], ud[s][:, e], inf[s][:, e]) for s, e in zip(si, ei)])
            lo, hi = np.nanquantile(bs, [0.025, 0.975])
            row.update({f"r_{name}": float(f(z, ud, inf)), f"r_{name}_ci_low": lo, f"r_{name}_ci_high": hi})
        rows.append(row)
    df = pd.DataFrame(rows)
    drop = err_boot[lengths[0]] - err_boot[lengths[-1]]
    lo, hi = np.quantile(drop, [0.025, 0.975])
    effect = Effect(f"median per-seed |IF - UD| / |UD|: length {lengths[0]} minus {lengths[-1]}",
                    float(df["err"].iloc[0] - df["err"].iloc[-1]), float(lo), float(hi), "bootstrap over seeds, paired")
    return df, effect


def run(p: Params) -> Result:
    """Train every seed, predict removals by unrolled differentiation, retrain without examples, compare with IFs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny models: one thread measured faster than two here
    try:
        t0 = time.perf_counter()
        arrays, info = _compute(p)
    finally:
        torch.set_num_threads(threads)
    ex = _examples(p, arrays)
    base, actual = arrays["base"], arrays["actual"]
    pred = base[None] - arrays["g"].T[ex["example"].to_numpy()]
    rand = ex["random"].to_numpy()
    effects, nulls = {}, {}
    for name in ("mean", "var", "sd", *(f"q{q:g}" for q in p.quantiles)):
        r, lo, hi = st.corr_ci(base, pred[rand], actual[rand], name, p.n_boot, p.seed, method=p.corr)
        effects[name] = Effect(f"{p.corr} r(predicted, actual) change of the {name} over {int(rand.sum())} random "
                               "removals", r, lo, hi, "two-way bootstrap over seeds and examples")
        nulls[name] = st.permutation_null(ex.loc[rand, f"pred_d{name}"].to_numpy(),
                                          ex.loc[rand, f"act_d{name}"].to_numpy(), p.n_boot, p.seed, method=p.corr)
    pearson = {name: float(st.pearson(ex.loc[rand, f"pred_d{name}"], ex.loc[rand, f"act_d{name}"])) for name in effects}
    agreement, err_drop = _agreement(p, arrays)
    predicted = pd.DataFrame({"example": np.arange(p.n_train), "label": arrays["y_train"].astype(int)})
    pred_all = base[None] - arrays["g"].T
    for name in ("mean", "var", "sd"):
        predicted[f"pred_d{name}"] = st.shift(base, pred_all, name)
    info = {**info, "wall_time_compute_s": time.perf_counter() - t0,
            "outcome_mean": float(base.mean()), "outcome_sd": float(base.std(ddof=1))}
    return Result(
        corr_mean=effects["mean"], corr_var=effects["var"], null_mean=nulls["mean"], null_var=nulls["var"],
        r_min=p.r_min, confirmed_top=int((ex["candidate"] & ex["confirmed"]).sum()), n_top=int(ex["candidate"].sum()),
        confirmed_random=int((ex["random"] & ex["confirmed"]).sum()), n_random=int(rand.sum()),
        err_drop=err_drop, err_final=float(agreement["err"].iloc[-1]), err_null_final=float(agreement["err_null"].iloc[-1]),
        e_max=p.e_max, examples=ex, predicted=predicted,
        agreement=agreement, quantile_corr={k: v for k, v in effects.items() if k.startswith("q")},
        arrays={**arrays, "pred": pred}, info={**info, "null_q95": nulls, "pearson": pearson},
    )


def verdict_a(r: Result) -> str:
    """(a) For the mean and for the variance: the lower 95 % bound of r(predicted, actual change) over the random
    removals is at least R_MIN and above the shuffled-prediction null's 95th percentile. Both: reproduced; one:
    partly; neither: not reproduced."""
    ok = [e.ci_low >= r.r_min and e.ci_low > null for e, null in ((r.corr_mean, r.null_mean), (r.corr_var, r.null_var))]
    return REPRODUCED if all(ok) else PARTLY if any(ok) else NOT_REPRODUCED


def verdict_b(r: Result) -> str:
    """(b) A removal is a *variance mover* when retraining shows |d sd| - RATIO |d mean| > 0 with its whole 95 % CI
    (paired bootstrap over seeds) and |d sd| at least the median |d sd| of the random removals. Reproduced: at least
    one of the method's N_TOP candidates is a mover and the candidates' rate beats the random removals' rate (the
    null); partly: some retrained example is a mover but the method does no better than random; else not."""
    rate_top = r.confirmed_top / r.n_top if r.n_top else 0.0
    rate_random = r.confirmed_random / r.n_random if r.n_random else 0.0
    if r.confirmed_top >= 1 and rate_top > rate_random:
        return REPRODUCED
    if r.confirmed_top + r.confirmed_random >= 1:
        return PARTLY
    return NOT_REPRODUCED


def verdict_c(r: Result) -> str:
    """(c) Agreement of the influence function with unrolled differentiation, per seed: the relative error
    |IF_s - UD_s| / |UD_s| over all training examples, median over seeds. Reproduced when it drops from the shortest
    to the longest training (95 % CI of the paired drop above zero) and, at the longest, is at most E_MAX and below
    the null that uses another seed's IF; partly when it drops but misses one of those; else not reproduced."""
    if r.err_drop.ci_low <= 0:
        return NOT_REPRODUCED
    if r.err_final <= r.e_max and r.err_final < r.err_null_final:
        return REPRODUCED
    return PARTLY


def verdict(r: Result) -> Verdict:
    """Parts (a), (b), (c) as in verdict_a/b/c; overall: reproduced when all three are, not reproduced when none is
    even partly, else partly (base.combine)."""
    parts = {"a_prediction": verdict_a(r), "b_variance_movers": verdict_b(r), "c_if_limit": verdict_c(r)}
    reason = (f"(a) r mean {r.corr_mean.value:.2f} [CI low {r.corr_mean.ci_low:.2f}], r var {r.corr_var.value:.2f} "
              f"[CI low {r.corr_var.ci_low:.2f}] vs R_MIN {r.r_min}; (b) {r.confirmed_top}/{r.n_top} candidates and "
              f"{r.confirmed_random}/{r.n_random} random removals move the sd much more than the mean; (c) the IF's "
              f"error against UD drops by {r.err_drop.value:.2f} [CI low {r.err_drop.ci_low:.2f}] to "
              f"{r.err_final:.2f} (another seed's IF: {r.err_null_final:.2f})")
    return Verdict(combine(parts), reason, parts)
