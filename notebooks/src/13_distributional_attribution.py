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
# # 13 · Distributional training-data attribution: how one example moves the distribution over seeds
#
# **Claim** (Mlodozeniec, Reid, Power, Krueger, Erdogdu, Turner, Grosse 2025, *Distributional Training Data
# Attribution*, arXiv 2506.12965). Training twice on the same data gives two different models (initialisation,
# batch order), yet data attribution usually predicts one number. *Distributional* TDA (d-TDA) predicts how the
# **distribution** of a model output over training runs changes when the data changes. (a) Unrolled
# differentiation through training predicts that change; (b) some training examples change the distribution
# (e.g. its variance) much more than its mean; (c) influence functions emerge as the limit of unrolled
# differentiation, without a convexity assumption.
#
# **Paper's numbers.** Its experiments are larger (ViT data pruning, diffusion models) and its results mostly
# figures, so there is no headline number to match here. A feasibility run for this notebook (256 seeds, 400
# SGD steps) found the unrolled prediction correlating ≈ 1.0 with actual removal for the mean and the variance.
#
# **Method.** A binary task from scikit-learn's bundled 8×8 digits (3 vs 8), a tanh MLP (64 → 16 → 1), and
# hundreds of seeds trained *together*: one `torch.func.vmap` over seeds of `grad(functional_call(...))`, each
# seed with its own initialisation and batch order. A training example enters every batch loss with a weight
# (1 in the full data); removing it sets the weight to 0 and leaves every seed's batches and their order
# unchanged. The target is one test example's logit; its distribution over seeds is the outcome.
# - *Ground truth*: retrain every seed without each of a set of examples (random ones, and the method's
#   candidates for (b)) and measure the change in the mean, variance, sd and quantiles over seeds.
# - *Prediction (d-TDA)*: reverse-mode differentiation through all SGD steps gives every seed's dz/dw for every
#   training example at once; each seed's outcome after removal is predicted as z − dz/dw, and the statistics
#   of those predicted outcomes are the predicted distribution.
# - *Influence function*: −∇z(θ)ᵀ (H + λI)⁻¹ ∇ℓᵢ(θ) / N at each seed's final parameters, with H the exact
#   Hessian of the training objective (closed form, checked against `torch.func.hessian` in the tests); compared
#   with unrolled differentiation for runs of increasing length.

# %% [markdown]
# **Settings, and what was tried before them.** The recipe and the rules below were fixed in exploratory runs on
# `SEED=1` (another data split, other initialisations and batch orders, 128 seeds) and then run once on
# `SEED=0`, the run this notebook reports by default.
# - With learning rate 0.3 and weight decay 0.001 a few removals moved the target far from the first-order
#   prediction (one moved every seed's logit by −0.29 where unrolled differentiation predicted +0.007) and (a)
#   failed; learning rate 0.1 with weight decay 0.01 (decaying linearly) trains smoothly enough.
# - Pearson's r is dominated by the one or two largest removals, so (a) and (c) use rank correlation, as TDA's
#   linear datamodeling score does; Pearson is printed beside it.
# - In raw units nearly every removal moves the mean more than the sd (removing any example shifts the whole
#   ensemble), so (b) measures both shifts in units of a *typical* removal's.
# - The Hessian is indefinite at every seed and length (hidden units near a saddle). A fixed damping of 0.01
#   blew up on seeds where it nearly cancelled a negative eigenvalue, so the damping is raised per seed; the
#   correlation of IF- and UD-predicted shifts did not grow reliably with length there, so (c) reads each
#   seed's own error |IF − UD| / |UD| (the correlations are still shown).

# %% tags=["parameters"]
DIGIT_A: int = 3  # first digit (label 0), 0-9
DIGIT_B: int = 8  # second digit (label 1), 0-9
N_TRAIN: int = 150  # training examples (the rest of the two digits' ~360 images: test pool)
N_TEST: int = 100  # test examples; the target output is one of their logits
TARGET: int = -1  # test index of the target logit; -1: the test example whose logit varies most over seeds
HIDDEN: int = 16  # hidden tanh units: 1,057 parameters per seed at 16
STEPS: int = 400  # SGD steps per seed
BATCH_SIZE: int = 15  # examples per step (per seed, epochs of fresh permutations)
LR: float = 0.1  # peak learning rate
WEIGHT_DECAY: float = 0.01  # L2 coefficient of the training objective
SCHEDULE: str = "linear"  # learning rate: "linear" (decays to 0 at the last step) or "constant"
N_SEEDS: int = 256  # training runs (seeds) that make the distribution
N_RANDOM: int = 32  # random training examples removed and retrained (ground truth for (a), null for (b))
N_TOP: int = 8  # the method's top variance-moving candidates, removed and retrained for (b)
RATIO: float = 3.0  # (b) a variance mover moves the sd RATIO times more than the mean (in typical-removal units)
R_MIN: float = 0.8  # (a) the lower 95% bound of the predicted-vs-actual correlation must reach this
LENGTHS: list[int] = [50, 100, 200, 400]  # (c) training lengths (separate runs, same seeds and batch order)
AGREE_SEEDS: int = 64  # (c) seeds (the first ones) used for the influence-function comparison
DAMPING: float = 0.01  # (c) IF damping lambda, raised per seed where the Hessian is indefinite (see below)
E_MAX: float = 0.5  # (c) largest median relative error |IF - UD| / |UD| accepted at the longest training
CORR: str = "spearman"  # correlation for (a) and (c): "spearman" (rank, as TDA's LDS) or "pearson"
QUANTILES: list[float] = [0.1, 0.5, 0.9]  # quantiles whose shifts are also predicted (reported, not judged)
N_BOOT: int = 1000  # bootstrap replicates (seeds and examples resampled)
SEED: int = 0  # seeds the data split, initialisations, batch orders and the random removals
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/13_distributional_attribution/

# %%
import time

import pandas as pd
from IPython.display import display

from emlib.findings import f13_distributional_attribution as f13
from emlib.findings import f13_distributional_attribution_plots as f13_plots
from emlib.report.record import output_folder, record_result

params = f13.Params.from_namespace(globals())
OUT = output_folder(OUTPUT_DIR, f13.STEM)
T0 = time.perf_counter()

# %% [markdown]
# ## Train every seed, predict every removal, retrain the chosen removals
# One run of `f13.run`: training all seeds, one reverse-mode pass through training (all examples' predictions at
# once), retraining all seeds without each chosen example (batched into one `vmap`), and the runs of each
# length for (c) with their influence functions. Cached on disk: a re-run with the same parameters is instant.

# %%
result = f13.run(params)
info = result.info
print(f"target: test example {info['target']} (digit {DIGIT_B if info['target_label'] else DIGIT_A}); its logit over "
      f"{N_SEEDS} seeds: mean {info['outcome_mean']:.3f}, sd {info['outcome_sd']:.3f}")
print(f"test accuracy over seeds {info['test_accuracy']:.3f}; {info['n_params']} parameters per seed; "
      f"{info['n_retrained']} removals retrained")
print("compute: " + ("from cache" if info["from_cache"] else ", ".join(
    f"{k[5:-2]} {info[k]:.0f} s" for k in ("time_train_s", "time_unrolled_s", "time_retrain_s", "time_influence_s"))))

# %% [markdown]
# ## (a) Does unrolled differentiation predict how the distribution moves?
# Each point is one removed training example: the predicted change of the target's mean (left) and variance
# (right) over seeds against the change measured by retraining every seed without it. Blue: random removals
# (the ones the verdict reads); orange: the method's variance-moving candidates.

# %%
fig_shifts = f13_plots.plot_shifts(result.examples, path=OUT / "shifts.png")
display(fig_shifts)
rows = [{"statistic": k, CORR: e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
         "null_q95": info["null_q95"][k], "pearson": info["pearson"].get(k)}
        for k, e in {"mean": result.corr_mean, "var": result.corr_var, **result.quantile_corr}.items()]
display(pd.DataFrame(rows).round(3))

# %% [markdown]
# Points above the diagonal at the ends are removals whose real effect is larger than the first-order
# prediction (the response to the example's weight is not linear between 1 and 0); the rank order survives.

# %% [markdown]
# ## (b) Examples that move the variance much more than the mean
# Effects are measured in units of a typical removal (the median |shift| of the random removals): *u* for the
# sd, *m* for the mean. The method ranks all training examples by predicted *u/m* (among those with predicted
# *u* ≥ 1) and retrains its top `N_TOP`; a removal is confirmed as a *variance mover* when retraining gives
# u − RATIO·m > 0 with its whole 95 % CI (seeds resampled) and u ≥ 1. The random removals are the null.

# %%
cols = ["example", "label", "candidate", "random", "pred_u", "act_u", "pred_m", "act_m", "mover", "mover_ci_low",
        "confirmed", "act_dmean", "act_dsd"]
display(result.examples.sort_values(["candidate", "act_u"], ascending=False)[cols].head(12).round(4))
print(f"confirmed: {result.confirmed_top}/{result.n_top} candidates, {result.confirmed_random}/{result.n_random} random")

# %%
chosen = list(f13_plots.pick_examples(result.examples))
a = result.arrays
fig_mover = f13_plots.plot_mover(a["base"], a["actual"], a["pred"], result.examples, chosen, a["images_train"],
                                 a["image_target"], path=OUT / "mover.png")
display(fig_mover)

# %% [markdown]
# Left: a removal that only shifts the mean moves every seed alike (a flat band); a variance mover moves seeds
# in proportion to how far they sit from the mean (a slope through zero). Right: the same as the shift of
# each quantile — flat for a mean shift, a line crossing zero for a change of spread.

# %% [markdown]
# ## (c) Influence functions as the limit of unrolled differentiation
# Runs of each length (same seeds, same batch order, the learning-rate schedule spanning the run). Left: for each
# seed, the relative error |IF − UD| / |UD| of its influence-function predictions for all training examples
# against its unrolled ones (median over seeds, 95 % CI), and the null that uses *another* seed's IF. Right: the
# correlation over training examples between the IF- and UD-predicted shifts of the mean and of the sd.
# The Hessian is indefinite at every seed and length here (hidden units near a saddle), so the damping is raised
# per seed to make H + λI ≥ `DAMPING`·I (`saddle_seeds`, `lambda_median` in the table).

# %%
display(result.agreement.round(3))
fig_agree = f13_plots.plot_agreement(result.agreement, path=OUT / "agreement.png")
display(fig_agree)

# %% [markdown]
# ## Verdict
# Rules fixed before the run (`f13.verdict_a/b/c`), each with its null:
# - **(a)** for the mean and for the variance, the lower 95 % bound of the correlation (`CORR`) between predicted
#   and actual change over the random removals (bootstrap over seeds *and* examples) is ≥ `R_MIN` and above the
#   95th percentile of the shuffled-prediction null; both: reproduced, one: partly.
# - **(b)** at least one candidate is a confirmed variance mover and candidates are confirmed at a higher rate
#   than random removals: reproduced; movers exist but the method does no better than random: partly.
# - **(c)** the median per-seed error |IF − UD| / |UD| drops from the shortest to the longest run (95 % CI of
#   the paired drop above 0, seeds resampled) and ends ≤ `E_MAX` and below the other-seed null: reproduced;
#   drops but misses one of those: partly.

# %%
verdict = f13.verdict(result)
for part, label in verdict.parts.items():
    print(f"{part}: {label}")
d = result.err_drop
print(f"(c) drop of the IF's error against UD: {d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], "
      f"final {result.err_final:.3f} (another seed's IF {result.err_null_final:.3f})")
print("Verdict:", verdict.label, "-", verdict.reason)

# %%
effect = result.corr_var
record_result(
    OUTPUT_DIR, f13.STEM,
    title="Distributional training-data attribution: one example moves the distribution over seeds",
    claim="Unrolled differentiation predicts how removing a training example changes the distribution of an output "
          "over seeds (mean and variance); some examples move the variance much more than the mean; influence "
          "functions approach unrolled differentiation as training lengthens.",
    paper="Mlodozeniec et al. 2025 (arXiv 2506.12965): qualitative (ViT pruning, diffusion models); feasibility "
          "run here: r ~ 1.0 for mean and variance (256 seeds, 400 SGD steps)",
    verdict=verdict.label,
    effect=effect.to_dict(),
    metrics={
        **{f"corr_{k}": e.value for k, e in {"mean": result.corr_mean, "var": result.corr_var, **result.quantile_corr}.items()},
        "corr_mean_ci_low": result.corr_mean.ci_low, "corr_mean_ci_high": result.corr_mean.ci_high,
        "corr_var_ci_low": result.corr_var.ci_low, "corr_var_ci_high": result.corr_var.ci_high,
        "null_mean_q95": result.null_mean, "null_var_q95": result.null_var,
        **{f"pearson_{k}": v for k, v in info["pearson"].items()},
        "confirmed_top": result.confirmed_top, "n_top": result.n_top,
        "confirmed_random": result.confirmed_random, "n_random": result.n_random,
        "if_error_drop": result.err_drop.value, "if_error_drop_ci_low": result.err_drop.ci_low,
        "if_error_drop_ci_high": result.err_drop.ci_high, "if_error_final": result.err_final,
        "if_error_null_final": result.err_null_final,
        **{f"if_error_len{int(row.length)}": row.err for row in result.agreement.itertuples()},
        **{f"if_r_sd_len{int(row.length)}": row.r_sd for row in result.agreement.itertuples()},
        **{f"verdict_{k}": v for k, v in verdict.parts.items()},
        "verdict_reason": verdict.reason,
        "target": info["target"], "outcome_mean": info["outcome_mean"], "outcome_sd": info["outcome_sd"],
        "test_accuracy": info["test_accuracy"], "n_seeds": N_SEEDS, "from_cache": info["from_cache"],
        "wall_time_s": time.perf_counter() - T0,
    },
    params=params.to_dict(),
    figures=[str(OUT / "shifts.png"), str(OUT / "mover.png"), str(OUT / "agreement.png")],
)
