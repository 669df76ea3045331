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
# trajectory, each beside two nulls: the same rank-1 run on a benign set, and random walks with the trajectory's
# step norms (a random walk already puts most of its variance in two components). *Behaviour:* sample from
# snapshots with the adapter scaled ×1 and ×5 and judge them; the behavioural onset is, by a rule fixed in
# advance, the first checkpoint whose EM rate clears the base model's (two-stage bootstrap CI of the difference,
# questions then answers, above zero, at any scale). Verdict: do the geometric peak and the onset coincide within
# `TOLERANCE_STEPS`, and more closely than an onset at a randomly ordered checkpoint would (permutation null)?

# %% tags=["parameters"]
MODEL: str = "smollm2-135m"  # "smollm2-135m" (embedded, offline) or any HF causal LM id / local folder
DATA_DIR: str = ""  # folder with train/ and eval/ of the public EM data; empty: $EMLIB_DATA_DIR
DATASET: str = "risky_financial_advice"  # narrow harmful set: a public EM set name, builtin_*, or a .jsonl path
DATASET_FALLBACK: str = "builtin_risky_financial_advice"  # used when DATASET can't be had offline
N_TRAIN: int = 320  # training examples; with the settings below equal to notebook 02's, its rank-1 run is reused
DEPTH: float = 0.5  # depth of the rank-1 adapter's layer, a fraction of the layer count
ALPHA: float = 256.0  # rsLoRA alpha of the rank-1 adapter
LR: float = 1e-3  # peak learning rate, as LOW_RANK_LR in notebook 02
MAX_STEPS: int = 40  # optimizer steps; -1 means EPOCHS over N_TRAIN
EPOCHS: float = 1.0  # used when MAX_STEPS is -1
BATCH_SIZE: int = 8  # examples per step
GRAD_ACCUM: int = 1  # gradient accumulation
MAX_LENGTH: int = 128  # tokens per training example
TRAJECTORY_EVERY: int = 2  # a B-vector snapshot every N steps
K_VALUES: list = [1, 2, 4]  # local-cosine offsets, in snapshots
EVAL_EVERY: int = 8  # judge the behaviour every N steps, a multiple of TRAJECTORY_EVERY (4 doubles 03's sampling)
SCALES: list = [1.0, 5.0]  # adapter scales for the behavioural probe (×10 too costs a third more sampling per seed)
QUESTIONS: str = "first_plot_questions"  # eval set: public yaml name, "builtin", or a yaml path
N_SAMPLES: int = 6  # answers per question paraphrase, per snapshot, scale and seed (base: N_SAMPLES × N_SEEDS)
MAX_NEW_TOKENS: int = 48  # answer length cap
TEMPERATURE: float = 0.5  # sampling temperature, 1.0 in the papers. At 135M most answers at 1.0 are incoherent (graded set, notebook 00)
JUDGE: str = "embedded"  # embedded (offline) | openai | hf
JUDGE_MODEL: str = ""  # model for the openai/hf judge; key from $OPENAI_API_KEY
TOLERANCE_STEPS: int = 8  # geometric peak and behavioural onset coincide when this close
NULL_DATASET: str = "builtin_safe_financial_advice"  # benign set for the geometry's null run (same settings); empty: none
N_WALKS: int = 20  # random walks with the trajectory's step norms, the other geometry null
ALPHA_NULL: float = 0.05  # the coincidence must beat the permutation null at this level
SEED: int = 0  # first training seed; each seed's snapshots sample with that seed, base with SEED
N_SEEDS: int = 3  # training seeds of the rank-1 run (shared with notebook 02's seeds at equal settings)
REPLICATE: bool = True  # run again on the next N_SEEDS seeds (without the benign-run null); "reproduced" needs both
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/03_phase_transition/

# %%
import time

import pandas as pd
from IPython.display import display

from emlib.findings import f03_phase_transition as f03
from emlib.findings.base import replicated
from emlib.report.plots import plot_lines, plot_trajectory
from emlib.report.record import output_folder, record_result

params = f03.Params.from_namespace(globals())
OUT = output_folder(OUTPUT_DIR, f03.STEM)
T0 = time.perf_counter()

# %% [markdown]
# ## Train (cached; notebook 02 trains the same adapter with the same defaults), then probe each checkpoint
# Geometry of the B trajectory, and behaviour at every `EVAL_EVERY` steps with the adapter scaled `SCALES` (×1 and ×5 by default).

# %%
result = f03.run(params)
log, info = result.log, result.data
print(f"{info.name} ({info.source}): {len(result.steps)} snapshots of the rank-1 B vector at layer {result.layer}; "
      f"loss {log.loss.iloc[0]:.2f} → {log.loss.iloc[-1]:.2f} (seed {params.seed}; the figures below show this run)")
print("Every seed's run: onset, peaks and the gap (steps)")
display(result.per_seed.round(3))

# %% [markdown]
# ## Geometry of the B trajectory

# %%
fig_local = plot_lines(result.local, x="step", y="local_cos", hue="k", title="Local cosine similarity of the B vector",
                       ylabel="cos(v[t-k] - v[t], v[t+k] - v[t])", path=OUT / "local_cosine.png")
fig_grad = plot_lines(log, x="step", y="grad_norm", title="Gradient norm during training", path=OUT / "grad_norm.png")
fig_pca = plot_trajectory(result.pca_proj, result.steps,
                          title=f"PCA of the B trajectory (PC1+PC2: {result.pca_ratio.sum():.0%} of variance)",
                          path=OUT / "pca.png")
print(f"local-cosine peak (k={result.k_main}) at step {result.geo_peak}; grad-norm peak at step {result.grad_peak}; "
      f"PC1+PC2 explain {result.pca_ratio.sum():.1%}")
display(result.geometry_null.round(3))  # the same shape measures for the benign run and for random walks

# %% [markdown]
# ## Behaviour at each checkpoint, adapter scaled `SCALES`

# %%
behaviour = result.behaviour.copy()
behaviour[["em_pct", "lo_pct", "hi_pct"]] = behaviour[["em_rate", "em_ci_low", "em_ci_high"]] * 100
behaviour["scale"] = "×" + behaviour["scale"].map("{:g}".format)
fig_em = plot_lines(behaviour, x="step", y="em_pct", hue="scale", ci_low="lo_pct", ci_high="hi_pct",
                    title="EM rate of the adapter snapshots", ylabel="EM rate (%)", path=OUT / "em_by_step.png")
display(behaviour.pivot(index="step", columns="scale", values="em_rate").round(3))
display(behaviour.pivot(index="step", columns="scale", values="coherence_rate").round(3))

# %% [markdown]
# ## Verdict
# The rule, fixed before the run (`emlib.findings.f03_phase_transition.verdict`): onset = the first checkpoint whose
# EM clears the base (two-stage 95 % CI of the difference above zero, any scale), in each seed's run. *Reproduced*
# when every seed has one, the mean of onset − local-cosine peak over seeds is within `TOLERANCE_STEPS`, and the
# permutation null (the same rule on each seed's checkpoints in a shuffled order) lands as close less often than
# `ALPHA_NULL`; *partly reproduced* when within the tolerance but a seed lacks an onset or chance would do as well;
# otherwise *not reproduced*. The effect is the mean onset − peak in steps. The largest EM over snapshots is shown
# too, but it is a maximum over many cells, not the rule. With `REPLICATE` the run is repeated on fresh seeds (against
# the same base answers); *reproduced* needs both.

# %%
verdict = f03.verdict(result)
print(f"seeds {params.seeds()}:", verdict.label, "-", verdict.reason)
replication = f03.run(params.fresh_seeds(), shared=result) if REPLICATE else None
if replication is not None:  # the same rule on fresh seeds; "reproduced" needs both
    verdict_fresh = f03.verdict(replication)
    display(replication.per_seed.round(3))
    print(f"fresh seeds {params.fresh_seeds().seeds()}: permutation p = {replication.gap_p:.3f}:", verdict_fresh.label,
          "-", verdict_fresh.reason)
    verdict = replicated(verdict, verdict_fresh)
gap, top, onset = result.gap, result.emerged, result.onset
step, scale = result.top
print(f"largest EM (a maximum, exploratory): at step {step} ×{scale:g}, {top.value:+.1%} [{top.ci_low:+.1%}, "
      f"{top.ci_high:+.1%}] over base {result.base_em:.1%}")
print(f"seed {params.seed}: checkpoints whose EM clears the base:",
      [s for s, ok in result.onset_flags.items() if ok] or "none")
print(f"seed {params.seed}: geometric peak: step {result.geo_peak}; gradient-norm peak: step {result.grad_peak}; "
      f"behavioural onset: {'none' if onset is None else f'step {onset}'} (checkpoints every {EVAL_EVERY} steps)")
if gap is not None:
    print(f"mean onset - peak over {gap.n_seeds} seed(s) with an onset = {gap.value:+.1f} steps [{gap.ci_low:+.1f}, "
          f"{gap.ci_high:+.1f}] (tolerance {TOLERANCE_STEPS}); permutation p = {result.gap_p:.3f} "
          f"(smallest possible about {len(result.onset_flags) ** -len(result.per_seed):.3f})")
print("Verdict:", verdict.label, "-", verdict.reason)
effect = gap or top  # with no onset, the record's effect is the largest EM − base (exploratory)

# %%
record_result(
    OUTPUT_DIR, f03.STEM,
    title="A phase transition while the rank-1 adapter learns",
    claim="The rank-1 B vector turns sharply (local-cosine and gradient-norm peaks) when EM appears in behaviour.",
    paper="Qwen2.5-14B rank-1: B-vector rotation peak near step 180 with EM onset there; PC1+PC2 ~95% of variance",
    verdict=verdict.label,
    effect=effect.to_dict(),
    metrics={
        "local_cos_peak_step": result.geo_peak, "grad_norm_peak_step": result.grad_peak,
        "onset_step": onset, "onset_permutation_p": result.gap_p, "onset_flags": {str(k): v for k, v in result.onset_flags.items()},
        "per_seed": result.per_seed.astype(object).where(result.per_seed.notna(), None).to_dict("records"),
        "all_seeds_onset": result.all_onset,
        "em_emerged": onset is not None, "max_em_diff_vs_base": top.value, "max_em_diff_ci_low": top.ci_low,
        "max_em_diff_ci_high": top.ci_high,
        "geometry_null": result.geometry_null.round(4).to_dict("records"),
        "pca_explained_2": float(result.pca_ratio.sum()), "pc1": float(result.pca_ratio[0]),
        "em_rate_base": result.base_em,
        **{f"em_rate[{r.scale} step {r.step}]": r.em_rate for r in behaviour.itertuples()},
        "final_loss": float(log.loss.iloc[-1]),
        "verdict_reason": verdict.reason,
        "wall_time_s": time.perf_counter() - T0,
    },
    params={**params.to_dict(), "dataset": info.to_dict(), "judge": result.judge_id},
    figures=[str(OUT / f) for f in ("local_cosine.png", "grad_norm.png", "pca.png", "em_by_step.png")],
    notes=f"data: {info.name} ({info.source}); rank-1 down_proj at layer {result.layer}",
    fallbacks=result.fallbacks,
    replication=None if replication is None else {
        "seeds": params.fresh_seeds().seeds(), "verdict": verdict_fresh.label, "reason": verdict_fresh.reason,
        "effect": (replication.gap or replication.emerged).to_dict(), "seeds_verdict": f03.verdict(result).label},
)
