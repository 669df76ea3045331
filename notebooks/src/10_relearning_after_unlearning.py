# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Relearning after unlearning: fine-tuning on the retain set alone brings the forgotten back
#
# **Claim** (Siddiqui, Weller, Krueger, Dziugaite, Mozer, Triantafillou 2025, *From Dormant to Deleted:
# Tamper-Resistant Unlearning Through Weight-Space Regularization*; code: GitHub `shoaibahmed/vision_relearning`):
# after example-level unlearning in a vision classifier, fine-tuning on the **retain set only** — not one forget
# example — brings forget-set accuracy back from about 50 % to nearly 100 %, across a wide variety of unlearning
# methods, while a model retrained from scratch without the forget set (the gold standard) stays at about 50 %.
# How much comes back is predicted by weight space: the L2 distance between the original and the unlearned model
# and their linear mode connectivity (the loss barrier on the straight path between them). Methods that move far
# from the original in weight space resist relearning best.
#
# **Paper's numbers** (ResNet-18 on CIFAR-10, forget set = the 10 % most memorised training examples): forget
# accuracy ≈ 50 % after unlearning and for the retrain; ≈ 100 % after relearning on retain examples for most methods;
# the retrain stays ≈ 50 %.
#
# **Here** (offline, CPU, minutes): scikit-learn's bundled handwritten digits (1,797 8×8 images), a 64-256-256-10 MLP.
# The forget set is the training examples with the lowest *held-out consistency* (the probability of their label
# under MLPs that never saw them, over repeated cross-fitting): atypical digits that only memorisation fits. Five
# unlearning methods at three strengths each — three standard ones (gradient ascent, retain fine-tuning at a raised
# learning rate, random relabelling) and two that act in weight space (weight noise then retain repair; a regulariser
# that pushes the weights away from the original) — plus the retrain. Every model is then fine-tuned on the retain set
# alone with the same small budget, and we measure forget accuracy before and after, L2 distance and the loss barrier.

# %% tags=["parameters"]
SEED: int = 0  # data split, forget set, consistency scores; training seeds are SEED .. SEED + N_SEEDS - 1
N_SEEDS: int = 5  # training seeds (original, retrain, unlearning, relearning); CIs are bootstraps over them
FORGET_SET: str = "low_consistency"  # low_consistency (atypical digits, true labels) | flipped (random examples, wrong labels)
N_FORGET: int = 60  # forget-set size (of 1,347 training digits)
TEST_FRACTION: float = 0.25  # held-out test split (stratified)
HIDDEN: int = 256  # MLP width (two hidden layers)
EPOCHS: int = 80  # training epochs of the original (retain + forget) and of the retrain (retain only)
LR: float = 1e-3  # Adam learning rate for the original, the retrain and the consistency models
BATCH_SIZE: int = 128  # batch size everywhere
CONSISTENCY_REPS: int = 3  # repetitions of cross-fitting for the consistency scores
CONSISTENCY_FOLDS: int = 4  # folds per repetition (each example is held out once per repetition)
CONSISTENCY_EPOCHS: int = 30  # training epochs of each consistency model
UNLEARN_EPOCHS: int = 10  # epochs over the retain set during unlearning (every method also fits the retain set)
UNLEARN_LR: float = 3e-4  # Adam learning rate of unlearning
GA_STRENGTHS: list[float] = [0.03, 0.1, 0.3]  # gradient ascent: weight of minus the forget-set loss
FINETUNE_STRENGTHS: list[float] = [10.0, 30.0, 100.0]  # retain fine-tuning: its learning rate is strength x UNLEARN_LR
RELABEL_STRENGTHS: list[float] = [1.0, 3.0, 10.0]  # random relabelling: weight of the loss on random wrong labels
NOISE_STRENGTHS: list[float] = [1.5, 2.0, 2.5]  # weight noise: std as a multiple of each tensor's RMS, then retain repair
DISTANCE_STRENGTHS: list[float] = [10.0, 30.0, 100.0]  # weight distance: weight of minus the relative RMS distance to the original
RELEARN_EPOCHS: int = 5  # relearning: epochs of fine-tuning on the retain set only
RELEARN_LR: float = 3e-4  # relearning learning rate (as in the paper, equal to the unlearning one)
BARRIER_POINTS: int = 11  # points on the straight path original -> model for the loss barrier
N_BOOT: int = 2000  # bootstrap resamples over seeds
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/10_relearning_after_unlearning/

# %%
import time

import pandas as pd
from IPython.display import display

from emlib.findings import f10_relearning as f10
from emlib.findings.f10_relearning_plots import plot_paths, plot_predictors, plot_relearning
from emlib.report.record import output_folder, record_result

params = f10.Params.from_namespace(globals())
OUT = output_folder(OUTPUT_DIR, f10.STEM)
T0 = time.perf_counter()

# %% [markdown]
# ## Train, unlearn, relearn
# Per training seed: the original (retain + forget), the retrain (retain only, same initialisation), and every
# method × strength applied to the original. Each model is measured, then fine-tuned on the retain set alone for
# `RELEARN_EPOCHS` and measured again. Results are cached per seed: re-running with the same parameters is instant.
# A setting is **effective** when, averaged over seeds, its forget accuracy after unlearning is within 15 points of
# the retrain's and its test accuracy within 5 points (rule fixed in `f10_relearning.summarize`).

# %%
result = f10.run(params)
summary = result.summary
if result.forget_consistency is not None:
    c = result.forget_consistency
    print(f"forget set: {len(c)} digits with held-out consistency {c.min():.2f}-{c.max():.2f} (median {pd.Series(c).median():.2f})")
cols = ["method", "strength", "effective", "forget_before", "forget_after", "test_before", "test_after", "l2", "barrier"]
display(summary[cols].round(3))

# %%
fig_relearn = plot_relearning(summary, path=OUT / "relearning.png")
fig_relearn

# %% [markdown]
# ## Weight space: distance and barrier against what comes back
# Each point is one method × strength (seed means); filled markers are the effective settings that the Spearman
# correlations use. The straight-path loss curves below show the retain loss between the original (t = 0) and each
# method at the strength the verdict reads, and the retrain.

# %%
fig_pred = plot_predictors(summary, path=OUT / "predictors.png")
fig_pred

# %%
fig_paths = plot_paths(result.curves, [(m.method, m.strength) for m in result.methods], path=OUT / "paths.png")
fig_paths

# %% [markdown]
# ## Verdict
# The rules, fixed before the run (`emlib.findings.f10_relearning.verdict_a` / `verdict_b`):
#
# **(a)** each standard method (gradient ascent, retain fine-tuning, random relabelling) is read at its weakest
# effective strength; it *recovered* when the 95 % CI over seeds of (its forget accuracy after relearning − the
# retrain's) lies above 20 points. The null: the retrain's own rise under the same relearning must have a CI below
# 10 points. *Reproduced* when the null holds and more than half of at least two testable standard methods recovered.
#
# **(b)** over the effective settings, the Spearman ρ of L2 distance (and of the loss barrier) with forget accuracy
# after relearning, per seed, averaged over seeds with a bootstrap CI: a predictor holds when its CI lies below
# zero. *Reproduced* when both hold. The overall verdict combines (a) and (b).

# %%
verdict = f10.verdict(result)
rows = [{"method": m.method, "strength": m.strength, "effective": m.effective, "forget_unlearned": m.forget_before,
         "forget_relearned": m.forget_after, "gap_vs_retrain": m.gap.value, "gap_ci_low": m.gap.ci_low,
         "gap_ci_high": m.gap.ci_high, "recovered": m.recovered, "standard": m.method in f10.STANDARD}
        for m in result.methods]
display(pd.DataFrame(rows).round(3))
ref = summary.set_index("method")
rr, e = result.retrain_rise, result.effect
print(f"original forget acc {ref.forget_before['original']:.1%}; retrain {ref.forget_before['retrain']:.1%} -> "
      f"{ref.forget_after['retrain']:.1%} after relearning (rise {rr.value:+.1%} [{rr.ci_low:+.1%}, {rr.ci_high:+.1%}])")
print(f"{e.name}: {e.value:+.1%} [95% CI {e.ci_low:+.1%}, {e.ci_high:+.1%}]")
for name, r in (("L2", result.rho_l2), ("barrier", result.rho_barrier)):
    print(f"Spearman rho {name}: {r.value:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] over {result.n_settings} effective settings")
print("Verdict:", verdict.label)
print(verdict.reason)

# %% [markdown]
# **Reading the teaching run** (these defaults, 5 training seeds). Gradient ascent and random relabelling push the
# atypical digits down to about the retrain's level (46 %, 62 % vs 51 %); five epochs of fine-tuning on the retain
# digits alone bring them back to 83 % and 98 %, while the retrain moves by 2 points. Retain fine-tuning unlearns
# only at 100× the learning rate, which throws the weights about 48 (L2) away from the original, and then it resists
# relearning like weight noise does. Across the effective settings, the farther from the original and the higher the
# barrier, the less comes back. Three caveats. The recovery is 80-98 %, short of the paper's ~100 %. The distance
# regulariser gets as far from the original in L2 as the retrain does (≈ 8 vs 9) and still recovers most of the
# forget set, so distance alone is not the whole story; the retrain shares the original's initialisation and has
# no barrier on the retain loss, yet does not relearn. And the CIs are over training seeds only: `SEED` fixes the
# data split and the forget set.
#
# **What was tried before fixing these defaults** (exploratory runs, training seeds 0-2, the same rules; seeds 3
# and 4 of the teaching run are fresh):
# - unlearning and relearning both at learning rate 1e-3: relearning brought gradient ascent back only from 39 % to
#   73 % and random relabelling from 64 % to 85 % (retrain 51 % → 53 %);
# - both at 1e-4: relearning brought gradient ascent, random relabelling and the distance regulariser back to
#   97-100 %, but at that budget random relabelling never came within 15 points of the retrain and the distance
#   regulariser moved only ≈ 2.6 (L2) from the original;
# - unlearning 30 epochs at 1e-4, relearning 10 epochs at 1e-4 (2 seeds): gradient ascent 49 % → 80 %, random
#   relabelling 69 % → 97 %.
#
# 3e-4 for both (the paper, too, uses one learning rate for unlearning and relearning) lies between. A forget set of
# flipped labels was tried first: at 60 epochs (batch 64) the MLP fitted only 24 % of 100 flipped labels, and retain
# fine-tuning at 1e-3 erased them all, so the forget set is the atypical digits; `FORGET_SET = "flipped"` remains an
# option, not studied here.

# %%
methods = {m.method: m for m in result.methods}
record_result(
    OUTPUT_DIR, f10.STEM,
    title="Relearning after unlearning: the retain set alone brings the forgotten back",
    claim="After unlearning, fine-tuning on the retain set only restores forget-set accuracy for most methods but not "
          "for a model retrained without the forget set; L2 distance and the linear-path loss barrier to the original "
          "predict how much comes back.",
    paper="ResNet-18 / CIFAR-10: forget acc ~50% after unlearning -> ~100% after retain-only relearning for most "
          "methods; retrain stays ~50%",
    verdict=verdict.label,
    effect=e.to_dict(),
    metrics={
        "forget_acc_original": ref.forget_before["original"],
        "forget_acc_retrain": ref.forget_before["retrain"], "forget_acc_retrain_relearned": ref.forget_after["retrain"],
        "test_acc_original": ref.test_before["original"], "test_acc_retrain": ref.test_before["retrain"],
        "retrain_rise": rr.value, "retrain_rise_ci_low": rr.ci_low, "retrain_rise_ci_high": rr.ci_high,
        **{f"{k}_{m}": v for m, o in methods.items() for k, v in (
            ("strength", o.strength), ("effective", o.effective), ("forget_unlearned", o.forget_before),
            ("forget_relearned", o.forget_after), ("gap", o.gap.value), ("gap_ci_low", o.gap.ci_low),
            ("gap_ci_high", o.gap.ci_high), ("recovered", o.recovered))},
        "rho_l2": result.rho_l2.value, "rho_l2_ci_low": result.rho_l2.ci_low, "rho_l2_ci_high": result.rho_l2.ci_high,
        "rho_barrier": result.rho_barrier.value, "rho_barrier_ci_low": result.rho_barrier.ci_low,
        "rho_barrier_ci_high": result.rho_barrier.ci_high,
        "n_effective_settings": result.n_settings, "n_seeds": result.n_seeds,
        "verdict_a": verdict.parts["a_relearning"], "verdict_b": verdict.parts["b_predictors"],
        "verdict_reason": verdict.reason,
        "wall_time_s": time.perf_counter() - T0,
    },
    params=params.to_dict(),
    figures=[str(OUT / "relearning.png"), str(OUT / "predictors.png"), str(OUT / "paths.png")],
    notes=f"digits (sklearn, bundled), MLP {HIDDEN}x2, forget set {FORGET_SET} ({N_FORGET})",
)
