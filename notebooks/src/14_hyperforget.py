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
# # 14 · HyperForget: sampling unlearned models from a diffusion hypernetwork
#
# **Claim** (Lara Rangel, Schoepf, Foster, Krueger & Anwar 2024, *Learning to Forget using Hypernetworks*,
# arXiv 2412.00761): instead of editing one model until it forgets, train a *hypernetwork* — a diffusion model
# over network weights, conditioned on the behaviour wanted (per-class losses) — and **sample** models that lack
# the targeted knowledge.
#
# **Paper's numbers** (proof of concept on MNIST, diffusion over the raw parameters of a small MLP): the sampled
# unlearned models reach **0 % accuracy on the forget set** while keeping **good accuracy on the retain set**.
#
# **Method here** (offline, CPU, minutes). A 64→32→10 MLP on scikit-learn's bundled 8×8 digits (half for training,
# half for testing). Per training seed:
# 1. train the original model; its training checkpoints start the **weight dataset**;
# 2. for every class but one (the *held-out* class), unlearn it from the original, recording checkpoints:
#    fine-tuning on the retained classes, gradient ascent on the forgotten class, and fine-tuning on the retained
#    classes after that ascent; every checkpoint is labelled with its 10 per-class training losses;
# 3. fit a **conditional DDPM** over the checkpoints (predicting the clean weights, as G.pt does), conditioned on
#    those losses;
# 4. sample models for each class *c* with the condition "the original's losses, with class *c*'s loss at the
#    forget target" — the held-out class included, the harder test — and with the original's own losses (the
#    control condition: the null);
# 5. compare forget / retain test accuracy with the original, a **retrain** without the class, **gradient-ascent**
#    unlearning (stopped at 0 % training accuracy on the class), and the dataset's own trajectories; and fine-tune
#    sampled models on the retain set only, to see whether the class comes back (the relearning test of finding 10).
#
# **Deviations from the paper**, all for the 2-core CPU budget: 8×8 digits, not MNIST; the diffusion runs in a
# **32-dimensional principal-component basis of the checkpoints**, not the raw 2,410 parameters; the denoiser is a
# residual MLP, not G.pt's transformer; training is full-batch Adam.
#
# **Design choices, from exploratory runs on seed 0** (labelled so: the verdict uses the settings fixed below).
# The raw parameter space (`N_COMPONENTS = 0`) also forgot (0.4 % forget accuracy, retain −0.9 points, 3,000
# iterations) but took about 4× longer. Without the *ascent + repair* trajectories every checkpoint that had
# forgotten had also lost retain accuracy, and samples forgot only part of the class (23 % forget accuracy on
# average, 4–59 % per class).
# Per-class losses below `COND_LOSS_FLOOR` count as "learned" (they are clamped there): conditioning on the
# original's exact tiny losses (floor 10⁻⁴) asks for a combination no checkpoint has, and samples kept 10 % forget
# accuracy on average (up to 32 % for one class). Predicting the noise (`PREDICT = "eps"`) forgot too but lost
# 3 points of retain accuracy, with some broken samples.

# %% tags=["parameters"]
DATASET: str = "digits"  # digits (scikit-learn's bundled 8x8 set, offline) | mnist (OpenML download, the paper's set)
N_MAX: int = 0  # keep at most this many examples before splitting (0: all)
TEST_FRAC: float = 0.5  # fraction of examples held out for the test split (stratified)
HIDDEN: int = 32  # hidden units of the MLP n_in -> HIDDEN -> 10
TRAIN_STEPS: int = 300  # full-batch Adam steps for the original model and for each retrain baseline
TRAIN_LR: float = 1e-2  # learning rate of the original and the retrains
TRAIN_CKPT_EVERY: int = 20  # a training checkpoint every this many steps goes into the weight dataset
UNLEARN_LRS: list[float] = [1e-3, 3e-3]  # learning rates of the unlearning trajectories (the largest: the ascent baseline)
UNLEARN_STEPS: int = 30  # steps of each unlearning stage (fine-tune, ascent, repair after ascent)
CKPT_EVERY: int = 3  # an unlearning checkpoint every this many steps
HELD_OUT_CLASS: int = 8  # seed i holds out class (HELD_OUT_CLASS + i) mod 10 from the weight dataset's unlearning runs
N_COMPONENTS: int = 32  # dimensions of the principal-component basis the DDPM runs in; 0: the raw parameters
COND_LOSS_FLOOR: float = 0.05  # per-class losses are clamped to [floor, 50] and log-scaled for the condition
TARGET_QUANTILE: float = 0.5  # forget target: this quantile of the forget loss over the dataset's successful unlearning checkpoints
DIFFUSION_STEPS: int = 100  # DDPM noise levels (cosine schedule)
DIFFUSION_ITERS: int = 2000  # denoiser training iterations
DENOISER_WIDTH: int = 128  # hidden width of the residual-MLP denoiser
DENOISER_DEPTH: int = 3  # residual blocks
DIFFUSION_LR: float = 1e-3  # Adam learning rate of the denoiser (cosine decay)
DIFFUSION_BATCH: int = 128  # checkpoints per denoiser iteration
PREDICT: str = "x0"  # the denoiser predicts the clean coordinates (x0, as G.pt) or the noise (eps)
P_UNCOND: float = 0.1  # probability of dropping the condition in training (classifier-free guidance)
GUIDANCE: float = 0.0  # classifier-free guidance weight when sampling (0: plain conditional sampling)
N_SAMPLES: int = 32  # sampled models per class and condition, per seed
N_RELEARN: int = 4  # sampled models per class fine-tuned on the retain set only
RELEARN_STEPS: int = 30  # full-batch Adam steps of that fine-tune
RELEARN_LR: float = 1e-3  # its learning rate
FORGET_TOL: float = 0.05  # verdict: the forget accuracy's 95% CI must end at or below this
RETAIN_MARGIN: float = 0.05  # verdict: the retain-accuracy drop's 95% CI must end at or below this
N_SEEDS: int = 5  # training seeds (each: its own original model, weight dataset and hypernetwork)
N_BOOT: int = 2000  # bootstrap resamples
SEED: int = 0  # first training seed; also the train/test split's seed
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/14_hyperforget/

# %%
import time

import pandas as pd
from IPython.display import display

from emlib.findings import f14_hyperforget as f14
from emlib.findings.f14_hyperforget_plots import plot_forget_retain, plot_relearn
from emlib.report.record import output_folder, record_result

params = f14.Params.from_namespace(globals())
OUT = output_folder(OUTPUT_DIR, f14.STEM)
T0 = time.perf_counter()

# %% [markdown]
# ## Weight datasets, hypernetworks, samples
# Each seed's pipeline is cached on disk: re-running with the same parameters reuses it. Below, per seed: the
# held-out class, the number of checkpoints in the weight dataset, the share of their variance the basis keeps,
# the original's test accuracy and that of its projection onto the basis (what the basis can represent), the forget
# target (a training loss, in nats) and the denoiser's final loss.

# %%
result = f14.run(params)
print(f"MLP with {result.n_params:,} parameters; {N_SEEDS} seeds")
display(result.seeds.round(4))

# %% [markdown]
# ## Forget vs retain accuracy
# Every dot is one sampled model (test accuracy on the forgotten class vs on the other classes); markers are the
# baselines, one per seed and class. A perfect unlearner sits at the top left, where the retrain is.

# %%
fig_scatter = plot_forget_retain(result.models, result.baselines, RETAIN_MARGIN, path=OUT / "forget_vs_retain.png")
fig_scatter

# %%
models, baselines = result.models, result.baselines
sampled = (models.assign(method=lambda d: "sampled, " + d.condition + " condition")
           .groupby(["held_out", "method"])[["forget_acc", "retain_acc"]].mean())
base = baselines.groupby(["held_out", "method"])[["forget_acc", "retain_acc"]].mean()
display((pd.concat([sampled, base]).sort_index() * 100).round(1).rename(columns=lambda c: c + " (%)"))
per_class = models[models.condition == "forget"].groupby(["cls", "held_out"])[["forget_acc", "retain_acc"]].mean()
display((per_class * 100).round(1).unstack("held_out"))

# %% [markdown]
# ## Relearning: does the class come back after fine-tuning on the retain set alone?
# The first `N_RELEARN` sampled models of each class, the gradient-ascent and the retrain baselines are fine-tuned
# on the retained classes only. A model that merely hides the class could recover it; one that never learned it
# (the retrain) cannot.

# %%
fig_relearn = plot_relearn(result.relearn, path=OUT / "relearn.png")
display((result.relearn.groupby(["held_out", "model"])[["forget_before", "forget_after", "retain_before", "retain_after"]]
         .mean() * 100).round(1))
fig_relearn

# %% [markdown]
# ## Reading the results
# - A sampler can only be as good as its weight dataset: compare the sampled models with the dataset's best
#   trajectory (*ascent+repair*) and with the retrain, the gold standard that never saw the class.
# - At the level of a whole class, fine-tuning on the retain set alone keeps pushing the forgotten class's logit
#   down, so the class is not expected to come back for any model here; finding 10 shows where relearning does
#   bite (example-level forgetting). A sampled model that merely hid the class could still show it.
# - The held-out class asks the hypernetwork to extrapolate to a loss profile it never saw; whatever it does is
#   reported as it is, part (b) below.

# %% [markdown]
# ## Verdict
# The rule, fixed before the run (`emlib.findings.f14_hyperforget.verdict`), applied to 95 % CIs from a nested
# bootstrap (seeds, then sampled models within each seed and class): a part is *reproduced* when the sampled
# models' forget accuracy CI ends at or below `FORGET_TOL`, the retain-accuracy drop from the original (paired by
# seed and class) ends at or below `RETAIN_MARGIN`, and — the null — forget accuracy under the control condition
# exceeds that under the forget condition (CI above 0); *partly* when the null and one of the other two hold.
# Part (a), the paper's claim: classes in the training conditions; its label is the finding's. Part (b): the
# held-out class of each seed (beyond the paper), reported beside it.

# %%
verdict = f14.verdict(result)
for e in (result.forget, result.retain_drop, result.conditioned,
          result.heldout_forget, result.heldout_retain_drop, result.heldout_conditioned):
    print(f"{e.name:75s} {e.value:+7.2%}  [95% CI {e.ci_low:+7.2%}, {e.ci_high:+7.2%}]")
print("parts:", verdict.parts)
print("Verdict:", verdict.label, "-", verdict.reason)

# %%
rl = result.relearn.groupby(["held_out", "model"])[["forget_before", "forget_after"]].mean()
bl = baselines.groupby(["held_out", "method"])[["forget_acc", "retain_acc"]].mean()
effects = {"a_forget": result.forget, "a_retain_drop": result.retain_drop, "a_control_gap": result.conditioned,
           "b_forget": result.heldout_forget, "b_retain_drop": result.heldout_retain_drop,
           "b_control_gap": result.heldout_conditioned}
record_result(
    OUTPUT_DIR, f14.STEM,
    title="HyperForget: sampling unlearned models from a diffusion hypernetwork",
    claim="Models sampled from a diffusion hypernetwork conditioned on per-class losses reach ~0% accuracy on the forgotten class while keeping the retain accuracy of the original.",
    paper="MNIST proof of concept: 0% forget-set accuracy with good retain-set accuracy",
    verdict=verdict.label,
    effect=result.forget.to_dict(),
    metrics={
        **{f"{k}{s}": getattr(e, a) for k, e in effects.items() for s, a in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))},
        **{f"{m.replace('+', '_')}_{'b' if h else 'a'}_{c}": bl.loc[(h, m), c] for h, m in bl.index for c in bl.columns},
        **{f"relearn_{m}_{'b' if h else 'a'}_{c}": rl.loc[(h, m), c] for h, m in rl.index for c in rl.columns},
        "verdict_a": verdict.parts["a_trained_classes"], "verdict_b": verdict.parts["b_held_out_class"],
        "verdict_reason": verdict.reason, "n_seeds": N_SEEDS, "n_samples_per_class": N_SAMPLES,
        "n_params": result.n_params, "n_checkpoints_mean": float(result.seeds.n_checkpoints.mean()),
        "basis_explained_mean": float(result.seeds.explained.mean()),
        "forget_target_mean": float(result.seeds.forget_target.mean()),
        "wall_time_s": time.perf_counter() - T0,
    },
    params=params.to_dict(),
    figures=[str(OUT / "forget_vs_retain.png"), str(OUT / "relearn.png")],
    notes=f"{DATASET}; diffusion in a {N_COMPONENTS}-dim principal-component basis of the checkpoints (0 = raw), a deviation from the paper",
)
