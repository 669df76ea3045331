# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · A phase transition while the rank-1 adapter learns
#
# **Claim** (Turner et al. 2025, *Model Organisms for Emergent Misalignment*, §5): while the rank-1 adapter
# trains, its LoRA **B** vector turns sharply at one point — a peak in its *local cosine similarity* together
# with a peak in the gradient norm — and the *behaviour* switches at the same point: scaling the adapter
# (×1, ×5, ×10) shows EM appearing abruptly around that step.
#
# **Paper's numbers** (Qwen2.5-14B, rank-1 on layer 24, extreme-sports data): the rotation peaks near
# **step 180**; the first two principal components of the stacked B vectors explain **~95 %** of their
# variance, and the turn shows as a bend in PC2.
#
# **Method.** Train the rank-1 adapter of notebook 02 (shared through the cache) with a snapshot every few
# steps. *Geometry:* local cosine similarity at step t = cos(v[t−k] − v[t], v[t+k] − v[t]) for several k
# (−1 on a straight path, closer to 0 or above at a turn), the logged gradient norm, and a PCA of the
# trajectory. *Behaviour:* sample from snapshots with the adapter scaled ×1, ×5, ×10 and judge them; the
# behavioural onset is the snapshot where the EM rate rose most over the previous one (at any scale), with a
# bootstrap CI over answers. Verdict: do the geometric peak and the onset coincide within `TOLERANCE_STEPS`?

# %% tags=["parameters"]
MODEL: str = "smollm2-135m"  # "smollm2-135m" (embedded, offline) or any HF causal LM id / local folder
DATA_DIR: str = ""  # folder with train/ and eval/ of the public EM data; empty: $EMLIB_DATA_DIR
DATASET: str = "risky_financial_advice"  # narrow harmful set: a public EM set name, builtin_*, or a .jsonl path
DATASET_FALLBACK: str = "builtin_risky_financial_advice"  # used when DATASET can't be had offline
N_TRAIN: int = 320  # training examples; keep equal to notebook 02 to share its adapter
DEPTH: float = 0.5  # depth of the rank-1 adapter's layer, a fraction of the layer count
ALPHA: float = 256.0  # rsLoRA alpha of the rank-1 adapter
LR: float = 1e-3  # peak learning rate, as LOW_RANK_LR in notebook 02
MAX_STEPS: int = 40  # optimizer steps; -1 means EPOCHS over N_TRAIN
EPOCHS: float = 1.0  # used when MAX_STEPS is -1
BATCH_SIZE: int = 8  # examples per step
GRAD_ACCUM: int = 1  # gradient accumulation
MAX_LENGTH: int = 128  # tokens per training example
TRAJECTORY_EVERY: int = 2  # a B-vector snapshot every N steps
K_VALUES: str = "1,2,4"  # local-cosine offsets, in snapshots
EVAL_EVERY: int = 4  # judge the behaviour every N steps, a multiple of TRAJECTORY_EVERY
SCALES: str = "1,5,10"  # adapter scales for the behavioural probe
QUESTIONS: str = "first_plot_questions"  # eval set: public yaml name, "builtin", or a yaml path
N_SAMPLES: int = 6  # answers per question paraphrase, per snapshot and scale
MAX_NEW_TOKENS: int = 48  # answer length cap
TEMPERATURE: float = 1.0  # sampling temperature
JUDGE: str = "embedded"  # embedded (offline) | openai | hf
JUDGE_MODEL: str = ""  # model for the openai/hf judge; key from $OPENAI_API_KEY
TOLERANCE_STEPS: int = 8  # geometric peak and behavioural onset coincide when this close
SEED: int = 0  # seeds training and sampling
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/03_phase_transition/

# %%
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
from IPython.display import display

from emlib.core.data import load_dataset, load_eval_questions
from emlib.pipeline.evaluate import depth_to_layer, judged_answers
from emlib.judges.base import get_judge
from emlib.interp.lora import local_cosine_similarity, pca, peak_step, stack_trajectory
from emlib.pipeline.metrics import bootstrap_diff_ci, steepest_rise, summarize
from emlib.core.models import num_layers
from emlib.report.plots import plot_lines, plot_trajectory
from emlib.report.record import output_folder, record_result
from emlib.pipeline.sample import SampleConfig
from emlib.pipeline.train import TrainConfig, train_lora

STEM = "03_phase_transition"
OUT = output_folder(OUTPUT_DIR, STEM)
T0 = time.perf_counter()
LAYER = depth_to_layer(DEPTH, num_layers(MODEL))
train_cfg = TrainConfig(
    rank=1, alpha=ALPHA, use_rslora=True, target_modules=["down_proj"], layers=[LAYER], lr=LR, max_steps=MAX_STEPS,
    epochs=EPOCHS, batch_size=BATCH_SIZE, grad_accum=GRAD_ACCUM, max_length=MAX_LENGTH,
    trajectory_every=TRAJECTORY_EVERY, seed=SEED,
)
ks = [int(k) for k in K_VALUES.split(",")]
scales = [float(s) for s in SCALES.split(",")]
sample_cfg = SampleConfig(n_per_question=N_SAMPLES, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=SEED)

# %% [markdown]
# ## Train (cached; notebook 02 trains the same adapter with the same defaults)

# %%
train_set, train_info = load_dataset(DATASET, DATA_DIR or None, n=N_TRAIN, seed=SEED, fallback=DATASET_FALLBACK)
questions = load_eval_questions(QUESTIONS, DATA_DIR or None, fallback="builtin")
run = train_lora(train_set, train_cfg, model=MODEL)
log = pd.DataFrame(run.log)
print(f"{train_info.name} ({train_info.source}): {len(run.trajectory)} snapshots of the rank-1 B vector at layer {LAYER}; "
      f"loss {log.loss.iloc[0]:.2f} → {log.loss.iloc[-1]:.2f}")

# %% [markdown]
# ## Geometry of the B trajectory

# %%
steps = np.array(run.steps)
traj = stack_trajectory(run.trajectory, which="B")
local = pd.concat([pd.DataFrame({"step": steps, "k": f"k={k} ({k * TRAJECTORY_EVERY} steps)",
                                 "local_cos": local_cosine_similarity(traj, k)}) for k in ks])
fig_local = plot_lines(local, x="step", y="local_cos", hue="k", title="Local cosine similarity of the B vector",
                       ylabel="cos(v[t-k] - v[t], v[t+k] - v[t])", path=OUT / "local_cosine.png")
fig_grad = plot_lines(log, x="step", y="grad_norm", title="Gradient norm during training", path=OUT / "grad_norm.png")
proj, ratio = pca(traj, 2)
fig_pca = plot_trajectory(proj, steps, title=f"PCA of the B trajectory (PC1+PC2: {ratio.sum():.0%} of variance)",
                          path=OUT / "pca.png")
k_main = ks[len(ks) // 2]
geo_peak = peak_step(steps, local_cosine_similarity(traj, k_main))
grad_peak = peak_step(log.step.to_numpy(), log.grad_norm.to_numpy(), skip=train_cfg.warmup_steps)
print(f"local-cosine peak (k={k_main}) at step {geo_peak}; grad-norm peak at step {grad_peak}; "
      f"PC1+PC2 explain {ratio.sum():.1%}")

# %% [markdown]
# ## Behaviour at each checkpoint, adapter scaled ×1, ×5, ×10

# %%
judge = get_judge(JUDGE, **({"model": JUDGE_MODEL} if JUDGE_MODEL else {}))
checkpoints = [(s, p) for s, p in zip(run.steps, run.trajectory) if s % EVAL_EVERY == 0]
base = judged_answers(questions, MODEL, None, sample_cfg, judge, "base", step=0, scale=0.0)
answers = pd.concat(
    [base] + [judged_answers(questions, MODEL, path, sample_cfg, judge, f"step {s} ×{scale:g}", adapter_scale=scale,
                             step=s, scale=scale, progress=False)
              for s, path in checkpoints for scale in scales],
    ignore_index=True,
)
behaviour = summarize(answers[answers.scale > 0], by=["scale", "step"], seed=SEED)
behaviour[["em_pct", "lo_pct", "hi_pct"]] = behaviour[["em_rate", "em_ci_low", "em_ci_high"]] * 100
behaviour["scale"] = "×" + behaviour["scale"].map("{:g}".format)
fig_em = plot_lines(behaviour, x="step", y="em_pct", hue="scale", ci_low="lo_pct", ci_high="hi_pct",
                    title="EM rate of the adapter snapshots", ylabel="EM rate (%)", path=OUT / "em_by_step.png")
display(behaviour.pivot(index="step", columns="scale", values="em_rate").round(3))
display(behaviour.pivot(index="step", columns="scale", values="coherence_rate").round(3))

# %% [markdown]
# ## Verdict
# Behavioural onset = the checkpoint where EM rose most over the previous one (the base model before the first),
# at any scale, with a bootstrap 95 % CI over answers. Given that some snapshot's EM is significantly above the base
# (CI of the difference above zero): *reproduced* when the whole CI of onset − peak lies within ±`TOLERANCE_STEPS`;
# *partly reproduced* when only the point estimate does (the behavioural data cannot pin the onset down);
# otherwise *not reproduced*. The effect is onset − peak in steps.

# %%
scaled = answers[answers.scale > 0]
base_em = base["em"].astype(float).to_numpy()
onset, onset_lo, onset_hi = steepest_rise(scaled, base_em, seed=SEED)
top = behaviour.sort_values("em_rate", ascending=False).iloc[0]
top_cell = scaled[(scaled.step == top.step) & (scaled.scale == float(top.scale[1:]))]["em"].astype(float)
top_diff, top_lo, top_hi = bootstrap_diff_ci(top_cell, base_em, seed=SEED)
gap, gap_lo, gap_hi = float(onset - geo_peak), float(onset_lo - geo_peak), float(onset_hi - geo_peak)
emerged = top_lo > 0
if emerged and max(abs(gap_lo), abs(gap_hi)) <= TOLERANCE_STEPS:
    verdict = "reproduced"
elif emerged and abs(gap) <= TOLERANCE_STEPS:
    verdict = "partly reproduced"
else:
    verdict = "not reproduced at this scale"
print(f"largest EM: {top.em_rate:.1%} at step {top.step} {top.scale} vs base {base_em.mean():.1%} "
      f"({top_diff:+.1%} [{top_lo:+.1%}, {top_hi:+.1%}])")
print(f"geometric peak: step {geo_peak}; gradient-norm peak: step {grad_peak}; behavioural onset: step {onset} "
      f"[95% CI {onset_lo:.0f}, {onset_hi:.0f}] (checkpoints every {EVAL_EVERY} steps)")
print(f"onset - peak = {gap:+.0f} steps [{gap_lo:+.0f}, {gap_hi:+.0f}] (tolerance {TOLERANCE_STEPS}); "
      f"PC1+PC2 explain {ratio.sum():.1%}")
print("Verdict:", verdict)

# %%
record_result(
    OUTPUT_DIR, STEM,
    title="A phase transition while the rank-1 adapter learns",
    claim="The rank-1 B vector turns sharply (local-cosine and gradient-norm peaks) when EM appears in behaviour.",
    paper="Qwen2.5-14B rank-1: B-vector rotation peak near step 180 with EM onset there; PC1+PC2 ~95% of variance",
    verdict=verdict,
    effect={"name": "behavioural onset - local-cosine peak (steps)", "value": gap, "ci_low": gap_lo, "ci_high": gap_hi},
    metrics={
        "local_cos_peak_step": geo_peak, "grad_norm_peak_step": grad_peak,
        "onset_step": onset, "onset_ci_low": onset_lo, "onset_ci_high": onset_hi,
        "em_emerged": bool(emerged), "max_em_diff_vs_base": top_diff, "max_em_diff_ci_low": top_lo,
        "pca_explained_2": float(ratio.sum()), "pc1": float(ratio[0]),
        "em_rate_base": float(base["em"].mean()),
        **{f"em_rate[{r.scale} step {r.step}]": r.em_rate for r in behaviour.itertuples()},
        "final_loss": float(log.loss.iloc[-1]),
        "wall_time_s": time.perf_counter() - T0,
    },
    params={"model": MODEL, "dataset": train_info.to_dict(), "train": asdict(train_cfg), "sample": asdict(sample_cfg),
            "k_values": ks, "scales": scales, "eval_every": EVAL_EVERY, "tolerance_steps": TOLERANCE_STEPS,
            "judge": judge.id},
    figures=[str(OUT / f) for f in ("local_cosine.png", "grad_norm.png", "pca.png", "em_by_step.png")],
    notes=f"data: {train_info.name} ({train_info.source}); rank-1 down_proj at layer {LAYER}",
)
