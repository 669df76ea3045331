"""Finding 10: after example-level unlearning, fine-tuning on the retain set alone brings the forgotten examples back,
except for the model retrained from scratch; weight-space distance to the original predicts how much comes back.

Setting: scikit-learn's bundled digits, a 2-hidden-layer MLP, a forget set of the training examples that need
memorising (lowest held-out consistency, or flipped labels). Models and procedures: `f10_relearning_train`; figures:
`f10_relearning_plots`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_write_json, cache_dir, stable_hash
from ..core.stats import bootstrap_ci
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, FindingParams, ParamError, Verdict, combine, param
from .f10_relearning_train import (
    METHODS, RETRAIN, accuracy, consistency_scores, flat, interpolation_losses, l2_distance, load_flat, load_split,
    loss_barrier, make_mlp, make_split, train, unlearn,
)

__all__ = [
    "STEM", "VERSION", "ORIGINAL", "STANDARD", "EFFECTIVE_MARGIN", "UTILITY_MARGIN", "RECOVERY_MIN", "RETRAIN_RISE_MAX",
    "MIN_TESTABLE", "MIN_SETTINGS", "Params", "MethodOutcome", "Result", "spearman", "run", "summarize",
    "method_outcomes", "verdict_a", "verdict_b", "verdict",
]

STEM = "10_relearning_after_unlearning"
VERSION = "f10-v1"  # cache salt: bump when training, unlearning or measuring changes
ORIGINAL = "original"
# (a) is about the standard methods; the weight-space ones are the paper's remedy, expected to resist
STANDARD = ("gradient_ascent", "retain_finetune", "random_relabel")
# the verdict's rule, fixed before any run (see `verdict`)
EFFECTIVE_MARGIN = 0.15  # a setting unlearned: forget accuracy at most the retrain's + 15 points (seed means) ...
UTILITY_MARGIN = 0.05  # ... and test accuracy at least the retrain's - 5 points
RECOVERY_MIN = 0.20  # recovered: the CI of (forget acc after relearning - the retrain's) lies above 20 points
RETRAIN_RISE_MAX = 0.10  # the null holds: the CI of the retrain's own rise under relearning lies below 10 points
MIN_TESTABLE = 2  # standard methods with an effective strength needed to call (a) reproduced
MIN_SETTINGS = 4  # effective settings needed for a Spearman rho
COLUMNS = ("seed", "method", "strength", "forget_before", "forget_after", "retain_before", "retain_after",
           "test_before", "test_after", "l2", "barrier")


_STRENGTH_PARAMS = dict(zip(METHODS, ("GA_STRENGTHS", "FINETUNE_STRENGTHS", "RELABEL_STRENGTHS", "NOISE_STRENGTHS",
                                      "DISTANCE_STRENGTHS")))


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    seed: int = param(0, min=0)
    n_seeds: int = param(5, min=2)
    forget_set: str = param("low_consistency", choices=("low_consistency", "flipped"))
    n_forget: int = param(60, min=1)
    test_fraction: float = param(0.25, gt=0, max=0.5)
    hidden: int = param(256, min=1)
    epochs: int = param(80, min=1)
    lr: float = param(1e-3, gt=0)
    batch_size: int = param(128, min=1)
    consistency_reps: int = param(3, min=1)
    consistency_folds: int = param(4, min=2)
    consistency_epochs: int = param(30, min=1)
    unlearn_epochs: int = param(10, min=1)
    unlearn_lr: float = param(3e-4, gt=0)
    ga_strengths: list[float] = param([0.03, 0.1, 0.3], gt=0)
    finetune_strengths: list[float] = param([10.0, 30.0, 100.0], gt=0)
    relabel_strengths: list[float] = param([1.0, 3.0, 10.0], gt=0)
    noise_strengths: list[float] = param([1.5, 2.0, 2.5], gt=0)
    distance_strengths: list[float] = param([10.0, 30.0, 100.0], gt=0)
    relearn_epochs: int = param(5, min=1)
    relearn_lr: float = param(3e-4, gt=0)
    barrier_points: int = param(11, min=3)
    n_boot: int = param(2000, min=100)

    def check(self) -> None:
        """Every method needs at least one strength."""
        for method, values in self.strengths().items():
            if not values:
                raise ParamError(f"parameter {_STRENGTH_PARAMS[method]}: give at least one strength")

    def strengths(self) -> dict[str, list[float]]:
        """Each unlearning method's strengths, weakest first."""
        lists = (self.ga_strengths, self.finetune_strengths, self.relabel_strengths, self.noise_strengths,
                 self.distance_strengths)
        return {m: sorted(s) for m, s in zip(METHODS, lists)}

    def train_seeds(self) -> list[int]:
        """The training seeds: seed, seed + 1, ..., seed + n_seeds - 1 (the data split and forget set use `seed`)."""
        return list(range(self.seed, self.seed + self.n_seeds))


@dataclass(frozen=True)
class MethodOutcome:
    """One unlearning method at its verdict strength: the weakest effective one (else its strongest, not effective)."""

    method: str
    strength: float
    effective: bool
    forget_before: float  # forget accuracy after unlearning, mean over seeds
    forget_after: float  # ... and after relearning on the retain set
    gap: Effect  # forget accuracy after relearning: this method - the retrain (paired over seeds)
    rise: Effect  # forget accuracy after relearning - after unlearning

    @property
    def recovered(self) -> bool:
        """Effective, and the gap's CI lies above RECOVERY_MIN."""
        return self.effective and self.gap.ci_low > RECOVERY_MIN


@dataclass
class Result:
    """What run() measured: the numbers the verdict reads, and the tables the notebook shows."""

    methods: list[MethodOutcome]
    retrain_rise: Effect  # the retrain's forget accuracy after relearning - before (the null)
    rho_l2: Effect  # Spearman of L2 distance with forget accuracy after relearning, effective settings, mean over seeds
    rho_barrier: Effect  # the same for the linear-path loss barrier
    effect: Effect  # headline: forget acc after relearning, mean of the standard methods at their verdict strengths - retrain
    n_settings: int = 0  # effective settings in the rho's
    n_seeds: int = 0
    table: pd.DataFrame | None = None  # one row per seed and model (original, retrain, method x strength)
    summary: pd.DataFrame | None = None  # seed means per model with an `effective` column
    curves: pd.DataFrame | None = None  # retain loss along the straight path original -> each model (first seed)
    forget_consistency: np.ndarray | None = None  # held-out consistency of the forget examples (low_consistency only)


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant or n < 3."""
    xs, ys = pd.Series(np.asarray(x, dtype=float)), pd.Series(np.asarray(y, dtype=float))
    if len(xs) < 3 or xs.nunique() < 2 or ys.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(xs.rank().to_numpy(), ys.rank().to_numpy())[0, 1])


def _forget_indices(p: Params, data: tuple) -> tuple[np.ndarray, np.ndarray | None]:
    """The forget set's training indices and (for low_consistency) the consistency scores of all training examples."""
    x_tr, _, y_tr, _ = data
    if p.forget_set == "flipped":
        return np.sort(np.random.default_rng(p.seed).choice(len(y_tr), size=p.n_forget, replace=False)), None
    key = stable_hash("consistency", p.seed, p.test_fraction, p.hidden, p.consistency_reps, p.consistency_folds,
                      p.consistency_epochs, p.lr, p.batch_size, VERSION)
    path = cache_dir("f10_relearning", key) / "consistency.json"
    if path.exists():
        scores = np.array(json.loads(path.read_text()))
    else:
        scores = consistency_scores(x_tr, y_tr, hidden=p.hidden, reps=p.consistency_reps, folds=p.consistency_folds,
                                    epochs=p.consistency_epochs, lr=p.lr, batch_size=p.batch_size, seed=p.seed)
        atomic_write_json(path, scores.tolist())
    return np.sort(np.argsort(scores, kind="stable")[: p.n_forget]), scores


def _measure(model: torch.nn.Module, split, prefix: str) -> dict[str, float]:
    return {f"forget_{prefix}": accuracy(model, split.x_forget, split.y_forget),
            f"retain_{prefix}": accuracy(model, split.x_retain, split.y_retain),
            f"test_{prefix}": accuracy(model, split.x_test, split.y_test)}


def _one_seed(p: Params, split, train_seed: int) -> tuple[list[dict], list[dict]]:
    """Original, retrain (same initialisation, retain set only) and every method x strength for one training seed,
    each measured, then relearned on the retain set and measured again: rows and path curves."""
    common = dict(lr=p.lr, batch_size=p.batch_size)
    original = train(make_mlp(p.hidden, train_seed), split.x_train, split.y_train, epochs=p.epochs, seed=train_seed,
                     **common)
    theta0 = flat(original)
    retrain = train(make_mlp(p.hidden, train_seed), split.x_retain, split.y_retain, epochs=p.epochs, seed=train_seed,
                    **common)
    scratch = make_mlp(p.hidden, 0)
    models = [(ORIGINAL, 0.0, original), (RETRAIN, 0.0, retrain)]
    for method, strengths in p.strengths().items():
        for s in strengths:
            model = load_flat(make_mlp(p.hidden, train_seed), theta0)
            models.append((method, s, unlearn(model, theta0, method, s, split, epochs=p.unlearn_epochs,
                                              lr=p.unlearn_lr, batch_size=p.batch_size, seed=train_seed)))
    rows, curves = [], []
    for method, s, model in models:
        theta = flat(model)
        ts, losses = interpolation_losses(scratch, theta0, theta, split.x_retain, split.y_retain, p.barrier_points)
        row = {"seed": train_seed, "method": method, "strength": s, **_measure(model, split, "before"),
               "l2": l2_distance(theta0, theta), "barrier": loss_barrier(ts, losses)}
        train(model, split.x_retain, split.y_retain, epochs=p.relearn_epochs, lr=p.relearn_lr,
              batch_size=p.batch_size, seed=train_seed + 104729)
        rows.append({**row, **_measure(model, split, "after")})
        curves += [{"seed": train_seed, "method": method, "strength": s, "t": t, "retain_loss": v}
                   for t, v in zip(ts.tolist(), losses.tolist())]
    return rows, curves


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Seed means per (method, strength) with `effective`: the forget accuracy after unlearning is at most the
    retrain's + EFFECTIVE_MARGIN and the test accuracy at least the retrain's - UTILITY_MARGIN (the retrain and the
    original are never effective)."""
    cols = [c for c in table.columns if c not in ("seed", "method", "strength")]
    summary = table.groupby(["method", "strength"], sort=False)[cols].mean().reset_index()
    ref = summary[summary["method"] == RETRAIN].iloc[0]
    unlearned = ~summary["method"].isin([ORIGINAL, RETRAIN])
    summary["effective"] = (unlearned & (summary["forget_before"] <= ref["forget_before"] + EFFECTIVE_MARGIN + 1e-9)
                            & (summary["test_before"] >= ref["test_before"] - UTILITY_MARGIN - 1e-9))
    return summary


def _per_seed(table: pd.DataFrame, method: str, strength: float, col: str) -> np.ndarray:
    rows = table[(table["method"] == method) & (table["strength"] == strength)].sort_values("seed")
    return rows[col].to_numpy(dtype=float)


def _effect(name: str, values: np.ndarray, n_boot: int, seed: int) -> Effect:
    """Mean over seeds of a per-seed value with its percentile bootstrap CI over seeds (NaN seeds dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return Effect(name, float("nan"), float("nan"), float("nan"), "bootstrap over seeds")
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return Effect(name, float(v.mean()), lo, hi, "bootstrap over seeds")


def method_outcomes(table: pd.DataFrame, summary: pd.DataFrame, n_boot: int, seed: int) -> list[MethodOutcome]:
    """Each method at its verdict strength: the weakest effective one, else its strongest (marked not effective)."""
    retrain_after = _per_seed(table, RETRAIN, 0.0, "forget_after")
    out = []
    for method in [m for m in summary["method"].unique() if m not in (ORIGINAL, RETRAIN)]:
        rows = summary[summary["method"] == method].sort_values("strength")
        hits = rows[rows["effective"]]
        row = hits.iloc[0] if len(hits) else rows.iloc[-1]
        after = _per_seed(table, method, row["strength"], "forget_after")
        before = _per_seed(table, method, row["strength"], "forget_before")
        out.append(MethodOutcome(
            method, float(row["strength"]), bool(len(hits)), float(before.mean()), float(after.mean()),
            _effect(f"forget acc after relearning: {method} - retrain", after - retrain_after, n_boot, seed),
            _effect(f"forget acc rise under relearning: {method}", after - before, n_boot, seed)))
    return out


def _rhos(table: pd.DataFrame, summary: pd.DataFrame, n_boot: int, seed: int) -> tuple[Effect, Effect, int]:
    """Spearman of L2 and of the barrier with forget accuracy after relearning over the effective settings, per seed,
    then the mean over seeds with its bootstrap CI; NaN with fewer than MIN_SETTINGS settings."""
    eff = summary[summary["effective"]][["method", "strength"]]
    n = len(eff)
    sub = table.merge(eff, on=["method", "strength"])
    out = []
    for predictor in ("l2", "barrier"):
        name = f"Spearman rho: {predictor} vs forget acc after relearning"
        if n < MIN_SETTINGS:
            out.append(Effect(name, float("nan"), float("nan"), float("nan"), "bootstrap over seeds"))
            continue
        per_seed = [spearman(g[predictor], g["forget_after"]) for _, g in sub.groupby("seed")]
        out.append(_effect(name, np.array(per_seed), n_boot, seed))
    return out[0], out[1], n


def run(p: Params) -> Result:
    """Train the original on digits (retain + forget), retrain on retain only, unlearn with every method x strength,
    relearn every model on the retain set alone; measure accuracies, L2 distance and the linear-path barrier."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_split(p.seed, p.test_fraction)
        forget, scores = _forget_indices(p, data)
        split = make_split(data, forget, flip_seed=p.seed if p.forget_set == "flipped" else None)
        rows, curves = [], []
        for s in p.train_seeds():
            key = stable_hash({k: v for k, v in p.to_dict().items() if k not in ("n_seeds", "n_boot", "seed")},
                              p.seed, s, VERSION)
            path = cache_dir("f10_relearning", key) / "seed.json"
            if path.exists():
                cached = json.loads(path.read_text())
            else:
                r, c = _one_seed(p, split, s)
                cached = {"rows": r, "curves": c}
                atomic_write_json(path, cached)
            rows += cached["rows"]
            curves += cached["curves"] if s == p.seed else []
    finally:
        torch.set_num_threads(previous_threads)
    table = pd.DataFrame(rows)[list(COLUMNS)]
    summary = summarize(table)
    methods = method_outcomes(table, summary, p.n_boot, p.seed)
    retrain = table[table["method"] == RETRAIN].sort_values("seed")
    retrain_rise = _effect("forget acc rise under relearning: retrain",
                           (retrain["forget_after"] - retrain["forget_before"]).to_numpy(), p.n_boot, p.seed)
    rho_l2, rho_barrier, n_settings = _rhos(table, summary, p.n_boot, p.seed)
    headline = [m for m in methods if m.method in STANDARD] or methods
    after = np.mean([_per_seed(table, m.method, m.strength, "forget_after") for m in headline], axis=0)
    effect = _effect("forget acc after relearning: standard methods (mean) - retrain",
                     after - retrain["forget_after"].to_numpy(), p.n_boot, p.seed)
    return Result(methods, retrain_rise, rho_l2, rho_barrier, effect, n_settings, p.n_seeds, table, summary,
                  pd.DataFrame(curves), None if scores is None else scores[forget])


def verdict_a(r: Result) -> Verdict:
    """(a) relearning on the retain set alone brings the forget set back for most standard methods (gradient ascent,
    retain fine-tuning, random relabelling) but not for the retrain. The weight-space methods (noise, distance) are
    the paper's remedy and are left out of the count.

    A standard method is *testable* when one of its strengths is effective (see `summarize`); it *recovered* when, at
    its weakest effective strength, the 95 % CI over seeds of (forget accuracy after relearning − the retrain's after
    relearning) lies above RECOVERY_MIN. The null holds when the CI of the retrain's own rise under the same
    relearning lies below RETRAIN_RISE_MAX. *Reproduced*: the null holds, at least MIN_TESTABLE standard methods are
    testable and more than half of them recovered; *partly*: the null holds and at least one recovered; otherwise
    *not reproduced*.
    """
    testable = [m for m in r.methods if m.method in STANDARD and m.effective]
    recovered = [m.method for m in testable if m.recovered]
    null = bool(r.retrain_rise.ci_high < RETRAIN_RISE_MAX)
    counts = (f"{len(recovered)} of {len(testable)} standard methods that unlearned recovered "
              f"({', '.join(recovered) or 'none'})")
    if not null:
        return Verdict(NOT_REPRODUCED, f"the retrain itself relearns (rise CI up to {r.retrain_rise.ci_high:+.2f}); {counts}")
    if len(testable) >= MIN_TESTABLE and len(recovered) > len(testable) / 2:
        return Verdict(REPRODUCED, f"{counts}; the retrain stays put")
    if recovered:
        return Verdict(PARTLY, f"{counts}; the retrain stays put")
    return Verdict(NOT_REPRODUCED, counts)


def verdict_b(r: Result) -> Verdict:
    """(b) weight-space distance predicts resistance: a predictor *holds* when the 95 % CI over seeds of its mean
    Spearman rho with the forget accuracy after relearning (effective settings only) lies below zero (farther from
    the original, less comes back). *Reproduced*: both L2 distance and the loss barrier hold; *partly*: one does."""
    holds = {name: bool(np.isfinite(e.ci_high) and e.ci_high < 0)
             for name, e in (("L2 distance", r.rho_l2), ("loss barrier", r.rho_barrier))}
    text = ", ".join(f"{n} rho {e.value:+.2f} [{e.ci_low:+.2f}, {e.ci_high:+.2f}]"
                     for n, e in (("L2", r.rho_l2), ("barrier", r.rho_barrier)))
    text += f" over {r.n_settings} effective settings"
    if all(holds.values()):
        return Verdict(REPRODUCED, f"both predict recovery: {text}")
    if any(holds.values()):
        return Verdict(PARTLY, f"only the {next(k for k, v in holds.items() if v)} predicts recovery: {text}")
    return Verdict(NOT_REPRODUCED, f"neither predictor's CI lies below zero: {text}")


def verdict(r: Result) -> Verdict:
    """`combine` of (a) `verdict_a` and (b) `verdict_b`: reproduced when both are, not reproduced when neither is even
    partly, else partly reproduced."""
    a, b = verdict_a(r), verdict_b(r)
    parts = {"a_relearning": a.label, "b_predictors": b.label}
    return Verdict(combine(parts), f"(a) {a.label}: {a.reason}. (b) {b.label}: {b.reason}", parts)
