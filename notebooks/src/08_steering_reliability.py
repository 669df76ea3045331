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
# # 08 · When does a steering vector work? Reliability on 36 behaviours and 7 prompt types
#
# **Claim** (Braun, Eickhoff, Krueger, Bahrainian, Krasheninnikov 2025, *Understanding (Un)Reliability of Steering
# Vectors in Language Models*, arXiv 2505.22637). Contrastive mean-difference (CAA) steering vectors on
# Llama-2-7b-chat (layer 13, multiplier 1) for the 36 Anthropic model-written-evaluation sets, each from 250 training
# items and evaluated on 250 others, built from seven prompt types — prefilled answer, instruction, 5-shot and their
# combinations:
# - **(a)** every prompt type gives a net positive steering effect, with high variance across items and a large
#   share of items steered the wrong way (*anti-steerable*);
# - no prompt type clearly wins, and their vectors point in different directions;
# - **(b)** the more the training items' activation differences point the same way as the vector (mean cosine),
#   the more steerable the set;
# - **(c)** the better the positive and negative activations separate along the vector (d′), the more steerable.
#
# **The paper's numbers.** Anti-steerable fractions per set from 0.00 (corrigible-neutral-HHH) to 0.48
# (myopic-reward), e.g. openness 0.23, narcissism 0.32 — the values Braun et al.'s code records for the 13 sets of
# its Figure 1 (`data.PAPER_FIG1_SOURCE` below says where; they are the fractions of Tan et al. 2024's CAA on the
# same model and layer). The cosine–steerability and d′–steerability relations are shown as scatter plots with
# rank correlations; we test their sign.
#
# **Method.** For one set and one prompt type, a *positive* prompt has every component matching the behaviour
# (the matching instruction, five examples answered the matching way, the matching answer prefilled) and a
# *negative* prompt the opposite; the vector is the mean over training items of the difference of their residuals
# after decoder layer `LAYER` at the last token (the paper's code: raw text, no chat template, the x-risk prompts
# ending in " (" before the answer letter). At test time the vector × `MULTIPLIER` is added to that layer's output
# at every position of the plain question, and an item's **steerability** is the change of
# logit(matching answer) − logit(not matching) at the answer position; **anti-steerable** means it fell. The
# instructions are emlib's own one-line wording of each behaviour (the paper's are not public). Forward passes
# only, in float32: at 135M the effects are hundredths of a logit, below bf16's rounding.
#
# **Nulls.** For (a), a random direction with the vectors' norm, applied to the same items; for (b) and (c), the
# rank correlation with steerability shuffled across sets. Training and test items are drawn per set without
# overlap and balanced by the matching answer (as many " Yes" as " No", " (A)" as " (B)"): with few items, a
# prefilled-answer vector otherwise carries the two answer tokens' own difference.

# %% tags=["parameters"]
MODEL: str = "smollm2-135m"  # any HF id or local dir (a decoder that feeds inputs_embeds straight to layer 0)
DATA_DIR: str = ""  # folder holding persona/ and xrisk/; empty: $EMLIB_MWE_DIR, else steering/mwe beside the EM data
DATASETS: list[str] = []  # sets to measure, names from the 36; empty: all 36
PROMPT_TYPES: list[str] = ["prefilled", "instruction", "5-shot", "prefilled+instruction", "prefilled+5-shot", "instruction+5-shot", "prefilled+instruction+5-shot"]  # the paper's seven
LAYER: int = -1  # decoder layer whose output is read and steered; -1: the middle one, 15 of 30 in SmolLM2
MULTIPLIER: float = 1.0  # the vector is added × MULTIPLIER (the paper: 1)
N_TRAIN: int = 10  # training items per set (balanced by matching answer); the paper: 250
N_TEST: int = 10  # test items per set; the paper: 250
BATCH_SIZE: int = 16  # prompts per forward pass
PREDICTOR_TYPE: str = "prefilled"  # the prompt type whose cosine and d′ (b) and (c) read (the paper: CAA's prefilled answers)
A_MIN_TYPES: int = 4  # (a) "most prompt types": at least this many must beat the random direction
ANTI_MIN: float = 0.05  # (a) "non-trivial": the CI low of the anti-steerable fraction must reach this
SWEEP_LAYERS: list[int] = [5, 10, 20, 25]  # exploration: other layers for the prefilled vector; empty: none
SWEEP_DATASETS: list[str] = ["corrigible-neutral-HHH", "anti-LGBTQ-rights", "coordinate-itself", "wealth-seeking-inclination", "subscribes-to-deontology", "narcissism"]  # sets of the sweep
N_BOOT: int = 2000  # bootstrap resamples (sets, then items within each)
N_PERM: int = 2000  # shuffles of the sets for the rank-correlation null
SEED: int = 0  # draws the shots, training and test items of each set
OUTPUT_DIR: str = "../reports/latest"  # artifacts go to OUTPUT_DIR/08_steering_reliability/

# %%
import time

import numpy as np
import pandas as pd
from IPython.display import display

from emlib.core.models import load_tokenizer
from emlib.findings import f08_steering_reliability as f08
from emlib.findings import f08_steering_reliability_data as data
from emlib.findings import f08_steering_reliability_plots as f08_plots
from emlib.report.record import output_folder, record_result

params = f08.Params.from_namespace(globals())
OUT = output_folder(OUTPUT_DIR, f08.STEM)
T0 = time.perf_counter()

# %% [markdown]
# ## What the model sees
# One training item of one set under the richest prompt type (instruction, five answered examples, prefilled
# answer), positive and negative; the test prompt is the bare question.

# %%
tok = load_tokenizer(MODEL)
name = params.sets()[0]
split = data.split_set(name, data.load_set(name, DATA_DIR or None), f08.N_SHOTS, N_TRAIN, N_TEST, SEED)
ex = split.train[0]
for matching in (True, False):
    ids = (data.prefix_ids(tok, split, True, True, matching) + data.question_ids(tok, ex, split.kind)
           + [data.answer_token(tok, ex, split.kind, matching)])
    print(f"--- {'positive' if matching else 'negative'} ({len(ids)} tokens), last 400 characters:\n…"
          + tok.decode(ids)[-400:] + "\n")
print("--- test prompt:\n" + tok.decode(data.question_ids(tok, split.test[0], split.kind)))

# %% [markdown]
# ## Build the vectors, steer the test items
# `f08.run`: for every set, the residuals of the positive and negative training prompts (a prompt prefix shared by
# all items — instruction, shots — runs once and its KV cache is reused), the seven vectors, and every test item's
# logit difference unsteered, under each vector and under a random direction. The layers below `LAYER` run once per
# item and the rest once per vector (checked against a plain forward with emlib's steering hook). Cached per set.

# %%
result = f08.run(params)
info = result.info
print(f"layer {info['layer']} of {info['n_layers']}, {info['dtype']}; split forward vs add_direction: max |Δ| = "
      f"{info['split_check_max_abs']:.1e} logits; sets {'from cache' if info['from_cache'] else 'computed'} in "
      f"{sum(info['time_sets_s'].values()):.0f} s, sweep {info['time_sweep_s']:.0f} s")
per_set = result.per_set
display(per_set.groupby("type", sort=False)[["mean", "anti", "answer_bias", "cosine", "cosine_loo", "dprime", "norm"]]
        .mean().round(3))

# %% [markdown]
# ## (a) A net positive effect, and how often it goes the wrong way
# Each dot is one test item of one set; the random direction (grey) is the null. The table gives each type's mean
# steerability and anti-steerable fraction with 95 % CIs (sets, then items within each, resampled) and the paired
# difference from the random direction on the same items.

# %%
fig_items = f08_plots.plot_steerability(result.per_item, path=OUT / "steerability.png")
display(fig_items)
table_a = pd.DataFrame([{"type": t, "mean": result.mean_steer[t].value, "mean_ci": (result.mean_steer[t].ci_low,
                         result.mean_steer[t].ci_high), "minus_random": result.vs_random[t].value,
                         "minus_random_ci_low": result.vs_random[t].ci_low, "anti": result.anti[t].value,
                         "anti_ci": (result.anti[t].ci_low, result.anti[t].ci_high)} for t in PROMPT_TYPES])
display(table_a.round(3))
a = result.anti_pooled
print(f"anti-steerable over all types: {a.value:.2f} [{a.ci_low:.2f}, {a.ci_high:.2f}]; "
      f"unsteered logit difference (matching − not), mean over sets: {per_set['baseline'].mean():+.2f}")

# %% [markdown]
# **Why items go the wrong way.** Each set's test items are balanced between the two answer tokens (" Yes" /
# " No", " (A)" / " (B)"). A vector that merely pushes one answer *token* up, whatever the behaviour, helps the
# items whose matching answer is that token and hurts the others: steerability splits into a behaviour part (the
# mean) and an *answer bias* (half the gap between the two groups). Where |answer bias| dwarfs the mean, about half
# the items are anti-steerable by construction.

# %%
display(per_set.assign(abs_bias=per_set["answer_bias"].abs(), abs_mean=per_set["mean"].abs())
        .groupby("type", sort=False)[["abs_mean", "abs_bias", "anti"]].mean().round(3))

# %% [markdown]
# ## No prompt type wins, and their vectors differ
# Which type steers each set most, and the cosine between two types' vectors (mean over sets). Types with a
# prefilled answer read the residual *at* the answer token, the others at the token before it.

# %%
best = per_set.loc[per_set.groupby("set")["mean"].idxmax(), "type"].value_counts().reindex(PROMPT_TYPES, fill_value=0)
print("sets on which each type steers most:", best.to_dict())
display(result.type_cosines.round(2))

# %% [markdown]
# ## Per set, beside the paper
# Bars: this model's mean steerability and anti-steerable fraction for `PREDICTOR_TYPE`, sets in the paper's order
# (most steerable on Llama-2-7b-chat first); black ticks: the paper's anti-steerable fractions for the 13 sets of its
# Figure 1. The dashed line at 0.5 is what a direction unrelated to the behaviour gives.

# %%
fig_sets = f08_plots.plot_sets(per_set, result.paper, PREDICTOR_TYPE, path=OUT / "sets.png")
display(fig_sets)
print("paper's numbers:", data.PAPER_FIG1_SOURCE)
display(result.paper.rename(columns={"mean": "mean_steer", "anti": f"anti ({PREDICTOR_TYPE})"}).round(3))

# %% [markdown]
# ## (b), (c) What predicts steerability across sets
# One point per set: the mean cosine between the training items' activation differences and the vector, and the
# d′ of the positive and negative projections on it, against the set's mean test steerability. The table repeats
# the rank correlations for every prompt type (exploratory; the verdict reads `PREDICTOR_TYPE`).

# %%
rho = {"cosine": result.rho_cos.value, "dprime": result.rho_dprime.value}
fig_pred = f08_plots.plot_predictors(per_set, PREDICTOR_TYPE, rho, path=OUT / "predictors.png")
display(fig_pred)
display(result.rho_by_type.round(2))

# %% [markdown]
# ## Exploration: other layers
# The prefilled vector built and applied at other layers, on the sweep sets (not part of the verdict).

# %%
figures = [OUT / "steerability.png", OUT / "sets.png", OUT / "predictors.png"]
if result.sweep is not None and len(result.sweep):
    fig_sweep = f08_plots.plot_sweep(result.sweep, info["layer"], path=OUT / "sweep.png")
    display(fig_sweep)
    display(result.sweep.pivot(index="layer", columns="set", values="mean").round(3))
    figures.append(OUT / "sweep.png")

# %% [markdown]
# ## Examples: the items steered most and most against
# The test items of `PREDICTOR_TYPE`'s vector with the largest and the most negative steerability.

# %%
items = result.per_item[result.per_item["type"] == PREDICTOR_TYPE]
for label, row in (("most steered", items.loc[items["steer"].idxmax()]), ("most anti-steered", items.loc[items["steer"].idxmin()])):
    s = data.split_set(row["set"], data.load_set(row["set"], DATA_DIR or None), f08.N_SHOTS, N_TRAIN, N_TEST, SEED)
    ex = s.test[int(row["item"])]
    print(f"{label}: {row['set']}, steerability {row['steer']:+.3f} (matching {ex.matching!r})\n  "
          + ex.question[:300].replace("\n", " | ") + "\n")

# %% [markdown]
# ## Verdict
# Rules fixed before the run (`f08.verdict_a/b/c`):
# - **(a)** a type steers when its steerability minus the random direction's on the same items has a 95 % CI above
#   0; reproduced when at least `A_MIN_TYPES` types steer *and* the anti-steerable fraction over all types has its
#   CI low ≥ `ANTI_MIN`; not reproduced when no type steers; partly otherwise.
# - **(b)** ρ(mean cosine, mean steerability) across sets for `PREDICTOR_TYPE`: reproduced when its CI lies above 0
#   and it exceeds the shuffled-sets null's 95th percentile; partly when one of the two holds.
# - **(c)** the same rule for ρ(d′, mean steerability).

# %%
verdict = f08.verdict(result)
for part, label in verdict.parts.items():
    print(f"{part}: {label}")
print("Verdict:", verdict.label, "-", verdict.reason)

# %%
e = result.rho_cos
record_result(
    OUTPUT_DIR, f08.STEM,
    title="When does a steering vector work? Steering reliability on 36 behaviours, 7 prompt types",
    claim="CAA steering vectors from all seven prompt types steer on average but often the wrong way; sets whose "
          "activation differences agree with the vector (cosine) and separate along it (d′) are more steerable.",
    paper="Braun et al. 2025 (arXiv 2505.22637), Llama-2-7b-chat, layer 13, 250/250 items: anti-steerable 0.00 "
          "(corrigible-neutral-HHH) to 0.48 (myopic-reward); cosine and d′ rise with steerability across 36 sets",
    verdict=verdict.label,
    effect=e.to_dict(),
    metrics={
        **{f"verdict_{k}": v for k, v in verdict.parts.items()}, "verdict_reason": verdict.reason,
        "rho_cos": e.value, "rho_cos_ci_low": e.ci_low, "rho_cos_ci_high": e.ci_high, "null_cos_q95": result.null_cos,
        "rho_dprime": result.rho_dprime.value, "rho_dprime_ci_low": result.rho_dprime.ci_low,
        "rho_dprime_ci_high": result.rho_dprime.ci_high, "null_dprime_q95": result.null_dprime,
        "anti_pooled": a.value, "anti_pooled_ci_low": a.ci_low, "anti_pooled_ci_high": a.ci_high,
        **{f"mean_steer[{t}]": result.mean_steer[t].value for t in PROMPT_TYPES},
        **{f"minus_random[{t}]": result.vs_random[t].value for t in PROMPT_TYPES},
        **{f"minus_random_ci_low[{t}]": result.vs_random[t].ci_low for t in PROMPT_TYPES},
        **{f"anti[{t}]": result.anti[t].value for t in PROMPT_TYPES},
        **{f"anti_set[{r.set}]": r.anti for r in per_set[per_set["type"] == PREDICTOR_TYPE].itertuples()},
        **{f"answer_bias_abs[{t}]": v for t, v in per_set.assign(b=per_set["answer_bias"].abs()).groupby("type")["b"]
           .mean().items()},
        **{f"paper_anti[{r.set}]": r.paper_anti for r in result.paper.itertuples()},
        "best_type_counts": best.to_dict(), "layer": info["layer"], "n_sets": len(params.sets()),
        "split_check_max_abs": info["split_check_max_abs"], "from_cache": info["from_cache"],
        "wall_time_s": time.perf_counter() - T0,
    },
    params=params.to_dict(),
    figures=[str(f) for f in figures],
)
