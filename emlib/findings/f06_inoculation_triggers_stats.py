"""Finding 06's predictors and statistics: activation similarity at the final prompt token (to the mean training state
and to the inoculation prompt's state), text similarity (MiniLM sentence embeddings, TF-IDF), Spearman ρ with the
re-elicitation rate over triggers with a bootstrap CI (triggers, then answers within them) and a permutation null."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.data import EvalQuestion
from ..core.stats import spearman_rows
from ..interp.activations import last_prompt_activations
from .f06_inoculation_triggers_data import Trigger

__all__ = [
    "PREDICTORS", "activation_similarity", "minilm_similarity", "tfidf_similarity", "text_similarity",
    "RhoEstimate", "spearman_bootstrap", "permutation_null",
]

# the predictors, in the order the notebook shows them: (column, what it is)
PREDICTORS = {
    "act_train": "activation: cosine to the mean training-example state",
    "act_inoc": "activation: cosine to the inoculation prompt's state, same question",
    "text_minilm": "text: MiniLM sentence-embedding cosine to the inoculation prompt",
    "text_tfidf": "text: TF-IDF cosine to the inoculation prompt (lexical)",
}


def _prompt(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


def activation_similarity(model, tokenizer, triggers: Sequence[Trigger], questions: Sequence[EvalQuestion],
                          training_prompts: Sequence[Sequence[dict]], inoculation: str, layer: int,
                          batch_size: int = 16) -> pd.DataFrame:
    """Per trigger (rows, index = trigger id): `act_train`, the cosine of the final-prompt-token state at `layer` with
    the mean state over `training_prompts`, and `act_inoc`, its cosine with the inoculation prompt's state on the same
    question; both averaged over the (extraction) `questions`, first paraphrase each."""
    users = [q.paraphrases[0] for q in questions]
    prompts = [_prompt(t.system, u) for t in triggers for u in users] + [_prompt(inoculation, u) for u in users]
    states = last_prompt_activations(model, tokenizer, prompts, [layer], batch_size)[:, 0]
    train = last_prompt_activations(model, tokenizer, training_prompts, [layer], batch_size)[:, 0].mean(0)
    by_trigger = states[: len(triggers) * len(users)].reshape(len(triggers), len(users), -1)
    inoc = states[len(triggers) * len(users):]
    cos = torch.nn.functional.cosine_similarity
    return pd.DataFrame({"act_train": cos(by_trigger, train.expand_as(by_trigger), dim=-1).mean(1).numpy(),
                         "act_inoc": cos(by_trigger, inoc.expand_as(by_trigger), dim=-1).mean(1).numpy()},
                        index=pd.Index([t.id for t in triggers], name="trigger")).astype(float)


def minilm_similarity(texts: Sequence[str], reference: str) -> np.ndarray:
    """Cosine of each text's all-MiniLM-L6-v2 sentence embedding with the reference's (the embedded MiniLM)."""
    from safetensors.torch import load_file

    from ..judges.minilm import MiniLM, base_model_dir, load_tokenizer, sentence_embeddings

    model = MiniLM()
    model.load_hf_state(load_file(str(base_model_dir() / "model.safetensors")))
    emb = sentence_embeddings(model.eval(), load_tokenizer(), [reference, *texts])
    return (emb[1:] @ emb[0]).numpy().astype(float)


def tfidf_similarity(texts: Sequence[str], reference: str) -> np.ndarray:
    """Cosine of each text's TF-IDF vector (words; fitted on the texts and the reference) with the reference's."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer().fit([reference, *texts])
    m = vec.transform([reference, *texts])  # rows are L2-normalised: the dot product is the cosine
    return np.asarray((m[1:] @ m[0].T).todense()).ravel().astype(float)


def text_similarity(texts: Sequence[str], reference: str, ids: Sequence[str]) -> pd.DataFrame:
    """Per trigger (index = `ids`): `text_minilm` and `text_tfidf` of its system text against the reference."""
    return pd.DataFrame({"text_minilm": minilm_similarity(texts, reference), "text_tfidf": tfidf_similarity(texts, reference)},
                        index=pd.Index(list(ids), name="trigger"))


@dataclass(frozen=True)
class RhoEstimate:
    """Spearman ρ of each predictor with the re-elicitation rate over triggers, the bootstrap CIs, and the paired
    bootstrap CI of ρ(first) − ρ(second) for the comparison the verdict reads."""

    rho: dict[str, float]
    ci: dict[str, tuple[float, float]]
    diff: float
    diff_ci: tuple[float, float]
    compared: tuple[str, str]
    n_triggers: int
    n_boot: int
    valid_draws: float  # share of draws in which ρ was defined (the rates not all equal; elsewhere counted as 0)
    method: str = "bootstrap over triggers, then answers within each trigger (percentile 95% CI)"


def spearman_bootstrap(predictors: pd.DataFrame, flags: pd.DataFrame, compare: tuple[str, str], n_boot: int = 2000,
                       seed: int = 0, alpha: float = 0.05) -> RhoEstimate:
    """ρ of every predictor column (rows: triggers) with the triggers' rates, the mean `flag` (0/1) of their answers in
    `flags` (columns trigger, flag). Each draw resamples the triggers with replacement, then each drawn trigger's
    answers (its rate drawn as Binomial(n, rate) / n, which is exactly resampling 0/1 answers), and recomputes every
    ρ on the same draw, so ρ(compare[0]) − ρ(compare[1]) is paired. A draw whose rates are all equal (ρ undefined:
    no association to see) counts as ρ = 0, so sparse rates pull the CI towards zero rather than dropping out;
    `valid_draws` says how often that happened."""
    by = flags.groupby("trigger", sort=False)["flag"]
    n = by.size().reindex(predictors.index).to_numpy()
    if np.isnan(n.astype(float)).any():
        raise ValueError("every predictor row needs answers in `flags`")
    rate = by.mean().reindex(predictors.index).to_numpy(float)
    x = predictors.to_numpy(float)
    cols = list(predictors.columns)
    rho = {c: float(spearman_rows(x[:, j], rate)[0]) for j, c in enumerate(cols)}
    rng = np.random.default_rng(seed)
    k = len(rate)
    idx = rng.integers(0, k, (n_boot, k))
    r = rng.binomial(n[idx].astype(int), rate[idx]) / n[idx]
    draws = np.stack([spearman_rows(x[idx, j], r) for j in range(len(cols))], axis=1)
    valid = ~np.isnan(draws[:, cols.index(compare[0])])
    draws = np.nan_to_num(draws, nan=0.0)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]

    def ci(d: np.ndarray) -> tuple[float, float]:
        return (float("nan"), float("nan")) if np.isnan(d).all() else tuple(float(v) for v in np.nanpercentile(d, q))

    i, j = cols.index(compare[0]), cols.index(compare[1])
    return RhoEstimate(rho, {c: ci(draws[:, m]) for m, c in enumerate(cols)}, rho[compare[0]] - rho[compare[1]],
                       ci(draws[:, i] - draws[:, j]), compare, k, n_boot, float(np.mean(valid)))


def permutation_null(predictor: np.ndarray, rates: np.ndarray, n_perm: int = 2000, seed: int = 0,
                     q: float = 0.95) -> float:
    """The `q` quantile of ρ between the predictor and the rates shuffled over triggers (ρ with no relation)."""
    rng = np.random.default_rng(seed)
    rates = np.asarray(rates, float)
    null = spearman_rows(np.asarray(predictor, float), rng.permuted(np.tile(rates, (n_perm, 1)), axis=1))
    return float("nan") if np.isnan(null).all() else float(np.nanquantile(null, q))
