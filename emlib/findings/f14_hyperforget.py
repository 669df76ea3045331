"""Finding 14 (HyperForget, Lara Rangel et al. 2024): sample unlearned models from a diffusion hypernetwork.

A conditional diffusion model over the weights of a small MLP, trained on training and unlearning checkpoints
labelled with their per-class losses, is asked for models with a high loss on one class and the original's losses
on the others. The verdict reads the sampled models' forget and retain accuracy over seeds (see `verdict`). The
per-seed pipeline is in `f14_hyperforget_seed`, the networks in `f14_hyperforget_mlp`, the DDPM in
`f14_hyperforget_diffusion`, the figures in `f14_hyperforget_plots`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, FindingParams, ParamError, Verdict, param
from .f14_hyperforget_mlp import N_CLASSES, load_split, n_params, retain_forget
from .f14_hyperforget_seed import BASELINES, SeedConfig, run_seed

__all__ = ["STEM", "Params", "Result", "run", "verdict", "nested_bootstrap", "part_label"]

STEM = "14_hyperforget"


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    dataset: str = param("digits", choices=("digits", "mnist"))
    n_max: int = param(0, min=0)
    test_frac: float = param(0.5, gt=0, max=0.9)
    hidden: int = param(32, min=1)
    train_steps: int = param(300, min=1)
    train_lr: float = param(1e-2, gt=0)
    train_ckpt_every: int = param(20, min=1)
    unlearn_lrs: list[float] = param([1e-3, 3e-3], gt=0)
    unlearn_steps: int = param(30, min=1)
    ckpt_every: int = param(3, min=1)
    held_out_class: int = param(8, min=0, max=9)
    n_components: int = param(32, min=0)
    cond_loss_floor: float = param(0.05, gt=0)
    target_quantile: float = param(0.5, min=0, max=1)
    diffusion_steps: int = param(100, min=1)
    diffusion_iters: int = param(2000, min=1)
    denoiser_width: int = param(128, min=1)
    denoiser_depth: int = param(3, min=1)
    diffusion_lr: float = param(1e-3, gt=0)
    diffusion_batch: int = param(128, min=1)
    predict: str = param("x0", choices=("x0", "eps"))
    p_uncond: float = param(0.1, min=0, max=1)
    guidance: float = param(0.0, min=0)
    n_samples: int = param(32, min=1)
    n_relearn: int = param(4, min=0)
    relearn_steps: int = param(30, min=0)
    relearn_lr: float = param(1e-3, gt=0)
    forget_tol: float = param(0.05, min=0, max=1)
    retain_margin: float = param(0.05, min=0, max=1)
    n_seeds: int = param(5, min=1)
    n_boot: int = param(2000, min=10)
    seed: int = param(0, min=0)

    def check(self) -> None:
        if self.n_relearn > self.n_samples:
            raise ParamError(f"parameter N_RELEARN: at most N_SAMPLES ({self.n_samples}), got {self.n_relearn}")
        if not self.unlearn_lrs:
            raise ParamError("parameter UNLEARN_LRS: give at least one learning rate")

    def seed_config(self, i: int) -> SeedConfig:
        """Seed number i (0-based): training seed SEED + i, held-out class (HELD_OUT_CLASS + i) mod 10."""
        return SeedConfig(
            dataset=self.dataset, n_max=self.n_max, test_frac=self.test_frac, split_seed=self.seed, hidden=self.hidden,
            train_steps=self.train_steps, train_lr=self.train_lr, train_ckpt_every=self.train_ckpt_every,
            unlearn_lrs=tuple(self.unlearn_lrs), unlearn_steps=self.unlearn_steps, ckpt_every=self.ckpt_every,
            held_out=(self.held_out_class + i) % N_CLASSES, n_components=self.n_components,
            cond_loss_floor=self.cond_loss_floor, target_quantile=self.target_quantile,
            diffusion_steps=self.diffusion_steps, diffusion_iters=self.diffusion_iters,
            denoiser_width=self.denoiser_width, denoiser_depth=self.denoiser_depth, diffusion_lr=self.diffusion_lr,
            diffusion_batch=self.diffusion_batch, predict=self.predict, p_uncond=self.p_uncond, guidance=self.guidance,
            n_samples=self.n_samples, n_relearn=self.n_relearn, relearn_steps=self.relearn_steps,
            relearn_lr=self.relearn_lr, seed=self.seed + i,
        )


@dataclass
class Result:
    """What run() measured: the Effects the verdict reads (a: classes in the training conditions, b: held out)."""

    forget: Effect  # mean forget accuracy of the sampled models
    retain_drop: Effect  # original retain accuracy - sampled retain accuracy (paired by seed and class)
    conditioned: Effect  # forget accuracy under the control condition - under the forget condition (the null)
    heldout_forget: Effect
    heldout_retain_drop: Effect
    heldout_conditioned: Effect
    forget_tol: float = 0.05
    retain_margin: float = 0.05
    models: pd.DataFrame | None = None  # one row per sampled model: seed, class, condition, held_out, forget/retain acc
    baselines: pd.DataFrame | None = None  # one row per seed, class and baseline method
    relearn: pd.DataFrame | None = None  # one row per relearned model: forget acc before / after
    seeds: pd.DataFrame | None = None  # per seed: held-out class, checkpoints, basis, forget target, wall time
    curves: list[np.ndarray] = field(default_factory=list)  # the DDPM's loss curve per seed
    n_params: int = 0


def nested_bootstrap(a: np.ndarray, b: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its percentile CI, resampling seeds and then, within each drawn seed and class,
    the sampled models. a (S, C, N) and b (S, C, Nb) hold per-model values by seed and class; b's seeds are drawn
    together with a's (paired by seed), its models independently."""
    a = np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    s, c = a.shape[:2]
    pick_s = rng.integers(0, s, size=(n_boot, s))

    def boot_means(v: np.ndarray) -> np.ndarray:
        n = v.shape[2]
        pick_n = rng.integers(0, n, size=(n_boot, s, c, n))
        return v[pick_s[:, :, None, None], np.arange(c)[None, None, :, None], pick_n].mean(axis=(1, 2, 3))

    boots, value = boot_means(a), float(a.mean())
    if b is not None:
        b = np.asarray(b, dtype=float)
        boots, value = boots - boot_means(b), value - float(b.mean())
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)


def _tables(p: Params, outs: list[dict[str, np.ndarray]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    models, baselines, relearn = [], [], []
    for i, o in enumerate(outs):
        counts, held = o["test_counts"], int(o["held_out"])
        for c in range(N_CLASSES):
            for cond, row in (("forget", c), ("control", N_CLASSES)):
                f, r = retain_forget(o["sampled_acc"][row], counts, c)
                models += [dict(seed=p.seed + i, cls=c, condition=cond, held_out=c == held, sample=j,
                                forget_acc=f[j], retain_acc=r[j]) for j in range(len(f))]
            for k, method in enumerate(BASELINES):
                f, r = retain_forget(o["baseline_acc"][k, c], counts, c)
                baselines.append(dict(seed=p.seed + i, cls=c, held_out=c == held, method=method,
                                      forget_acc=float(f), retain_acc=float(r)))
        n_r = p.n_relearn * N_CLASSES
        kinds = ["sampled"] * n_r + ["ascent"] * N_CLASSES + ["retrain"] * N_CLASSES
        for j, (kind, c) in enumerate(zip(kinds, o["relearn_class"])):
            fb, rb = retain_forget(o["relearn_before"][j], counts, int(c))
            fa, ra = retain_forget(o["relearn_after"][j], counts, int(c))
            relearn.append(dict(seed=p.seed + i, cls=int(c), held_out=int(c) == held, model=kind, forget_before=fb,
                                forget_after=fa, retain_before=rb, retain_after=ra))
    return pd.DataFrame(models), pd.DataFrame(baselines), pd.DataFrame(relearn)


def _effects(p: Params, models: pd.DataFrame, baselines: pd.DataFrame, held: bool) -> tuple[Effect, Effect, Effect]:
    """Forget accuracy, retain drop and the control-condition gap for the held-out (or the trained) classes."""
    sub = models[models.held_out == held]
    seeds = sorted(sub.seed.unique())

    def cube(cond: str, col: str) -> np.ndarray:
        rows = sub[sub.condition == cond].sort_values(["seed", "cls", "sample"])
        return rows[col].to_numpy(float).reshape(len(seeds), -1, p.n_samples)

    orig = baselines[(baselines.method == "original") & (baselines.held_out == held)].sort_values(["seed", "cls"])
    orig_retain = orig.retain_acc.to_numpy(float).reshape(len(seeds), -1, 1)
    forget, retain, control = cube("forget", "forget_acc"), cube("forget", "retain_acc"), cube("control", "forget_acc")
    which = "held-out" if held else "trained"
    how = f"nested bootstrap: {len(seeds)} seeds, then sampled models"
    return (Effect(f"forget accuracy of sampled models ({which} classes)", *nested_bootstrap(forget, None, p.n_boot, p.seed), how),
            Effect(f"retain accuracy drop vs original ({which} classes)",
                   *nested_bootstrap(orig_retain - retain, None, p.n_boot, p.seed + 1), how),
            Effect(f"forget accuracy: control condition - forget condition ({which} classes)",
                   *nested_bootstrap(control, forget, p.n_boot, p.seed + 2), how))


def run(p: Params) -> Result:
    """Every seed's pipeline (cached), then the tables and the Effects the verdict reads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on shared cores: one thread is much faster
    try:
        split = load_split(p.dataset, p.test_frac, p.seed, p.n_max)
        outs, info = [], []
        for i in range(p.n_seeds):
            t0 = time.perf_counter()
            o = run_seed(p.seed_config(i), split)
            outs.append(o)
            info.append(dict(seed=p.seed + i, held_out=int(o["held_out"]), n_checkpoints=int(o["n_checkpoints"]),
                             basis_dim=len(o["explained"]), explained=float(o["explained"].sum()),
                             forget_target=float(o["forget_target"]),
                             original_acc=float((o["original_acc"] * o["test_counts"]).sum() / o["test_counts"].sum()),
                             recon_acc=float((o["recon_acc"] * o["test_counts"]).sum() / o["test_counts"].sum()),
                             final_diffusion_loss=float(o["diffusion_curve"][-1]) if len(o["diffusion_curve"]) else float("nan"),
                             wall_time_s=time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    models, baselines, relearn = _tables(p, outs)
    a, b = _effects(p, models, baselines, False), _effects(p, models, baselines, True)
    return Result(*a, *b, forget_tol=p.forget_tol, retain_margin=p.retain_margin, models=models, baselines=baselines,
                  relearn=relearn, seeds=pd.DataFrame(info), curves=[o["diffusion_curve"] for o in outs],
                  n_params=n_params(split.n_in, p.hidden))


def part_label(forget: Effect, retain_drop: Effect, conditioned: Effect, forget_tol: float, retain_margin: float) -> str:
    """One part's label: see `verdict`."""
    forgets = forget.ci_high <= forget_tol
    keeps = retain_drop.ci_high <= retain_margin
    caused = conditioned.ci_low > 0
    if forgets and keeps and caused:
        return REPRODUCED
    if caused and (forgets or keeps):
        return PARTLY
    return NOT_REPRODUCED


def verdict(r: Result) -> Verdict:
    """Two parts, each judged by the same rule on 95 % CIs (nested bootstrap over seeds, then sampled models):
    *forgets*: the sampled models' mean forget accuracy has its CI's upper end at or below FORGET_TOL;
    *keeps*: the drop of retain accuracy from the original model (paired by seed and class) has its CI's upper end
    at or below RETAIN_MARGIN; *caused* (the null beside it): forget accuracy under the control condition (the
    original's own losses) minus under the forget condition has its CI's lower end above 0.
    A part is *reproduced* when all three hold, *partly reproduced* when *caused* and one of the other two hold,
    otherwise *not reproduced at this scale*.
    Part (a): the classes in the hypernetwork's training conditions (the paper's claim). Part (b): the held-out
    class of each seed, never forgotten in the weight dataset (beyond the paper). The finding's label is part (a)'s;
    part (b) is reported beside it in the parts and the reason."""
    a = part_label(r.forget, r.retain_drop, r.conditioned, r.forget_tol, r.retain_margin)
    b = part_label(r.heldout_forget, r.heldout_retain_drop, r.heldout_conditioned, r.forget_tol, r.retain_margin)
    say = {REPRODUCED: "forget {f:.1%} (CI high {fh:.1%}) with retain drop {d:+.1%} (CI high {dh:+.1%})",
           PARTLY: "only partly: forget {f:.1%} (CI high {fh:.1%}), retain drop {d:+.1%} (CI high {dh:+.1%})",
           NOT_REPRODUCED: "no: forget {f:.1%} (CI high {fh:.1%}), retain drop {d:+.1%} (CI high {dh:+.1%})"}
    fa = say[a].format(f=r.forget.value, fh=r.forget.ci_high, d=r.retain_drop.value, dh=r.retain_drop.ci_high)
    fb = say[b].format(f=r.heldout_forget.value, fh=r.heldout_forget.ci_high, d=r.heldout_retain_drop.value,
                       dh=r.heldout_retain_drop.ci_high)
    reason = f"(a) trained classes: {fa}; (b) held-out class: {fb}"
    return Verdict(a, reason, {"a_trained_classes": a, "b_held_out_class": b})
