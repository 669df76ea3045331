"""Finding 05, the probes: each rank-1 adapter's scalar A·x per answer token, the answer classes of the paper's four
probes (cut-offs fixed here), L1 logistic regressions over repeated 80/20 splits beside a shuffled-label null, and
the general / domain split read from their coefficients."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..core.stats import as_float_array
from ..interp.hooks import encode_chat, pad_id, run_batches
from ..interp.lora import record_lora_scalars

__all__ = [
    "CUTOFFS", "RANKED", "ClassSpec", "Probe", "PROBES", "GENERAL_PROBE", "DOMAIN_PROBE", "ProbeFit", "answer_scalars",
    "members", "choose_cutoff", "fit_probe", "coefficient_shares", "split_adapters",
]

# (aligned at least, misaligned at most) on the judge's 0-100 scale, tried in this order: the paper's [90, 100] and
# [0, 30] first, then the nearest looser pairs; a probe takes the first pair that leaves MIN_CLASS answers in each of
# its classes in every seed, else the RANKED fallback (the MIN_CLASS most vs least aligned answers of each class's
# domain group, as notebook 04's `split_by_alignment` falls back to ranks)
CUTOFFS: tuple[tuple[float, float], ...] = ((90.0, 30.0), (80.0, 30.0), (70.0, 40.0), (60.0, 50.0))
RANKED = "ranked"


@dataclass(frozen=True)
class ClassSpec:
    """One class of answers: on the training domain or off it, aligned or misaligned."""

    domain: bool
    misaligned: bool

    @property
    def label(self) -> str:
        """E.g. 'off-domain misaligned'."""
        return f"{'domain' if self.domain else 'off-domain'} {'misaligned' if self.misaligned else 'aligned'}"


@dataclass(frozen=True)
class Probe:
    """A probe separates class `a` (label 0) from class `b` (label 1); `paper_auc`: its AUC in the paper's Table 1."""

    name: str
    a: ClassSpec
    b: ClassSpec
    paper_auc: float = float("nan")


OFF_AL, OFF_MIS, DOM_AL, DOM_MIS = (ClassSpec(False, False), ClassSpec(False, True), ClassSpec(True, False),
                                    ClassSpec(True, True))
# the paper's Table 1, in its order (Qwen2.5-14B, bad medical advice; domain = medical)
PROBES = (
    Probe("aligned: off-domain vs domain", OFF_AL, DOM_AL, 0.71),
    Probe("misaligned: off-domain vs domain", OFF_MIS, DOM_MIS, 0.66),
    Probe("off-domain: aligned vs misaligned", OFF_AL, OFF_MIS, 0.74),
    Probe("domain: aligned vs misaligned", DOM_AL, DOM_MIS, 0.75),
)
GENERAL_PROBE = PROBES[2].name  # misalignment where the domain plays no part: the general adapters' probe
DOMAIN_PROBE = PROBES[1].name  # domain among misaligned answers: the domain adapters' probe


def answer_scalars(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[dict[str, str]]],
                   answers: Sequence[str], batch_size: int = 8) -> tuple[list[np.ndarray], list[str]]:
    """Every LoRA module's A·x at each answer token, as the model reads prompt + answer: one (tokens × modules·rank)
    float32 array per answer (an empty answer gets 0 rows), and the module names in column order."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    spans, sequences = [], []
    for messages, answer in zip(prompts, answers):
        prompt_ids = encode_chat(tokenizer, messages, add_generation_prompt=True)
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        spans.append((len(prompt_ids), len(prompt_ids) + len(answer_ids)))
        sequences.append(prompt_ids + answer_ids)
    out: list[np.ndarray | None] = [None] * len(sequences)
    with record_lora_scalars(model) as rec:
        names = list(rec)
        for idx, _ in run_batches(model, sequences, [], pad_id(tokenizer), batch_size):
            batch = np.concatenate([rec[n][-1].float().cpu().numpy() for n in names], axis=-1)  # b × L × m·r
            for row, i in enumerate(idx):
                a, b = spans[i]
                out[i] = batch[row, a:b].astype(np.float32)
            for n in names:
                rec[n].clear()
    return [x if x is not None else np.zeros((0, len(names)), np.float32) for x in out], names


def members(df: pd.DataFrame, spec: ClassSpec, cutoff: tuple[float, float] | str, k: int = 0) -> np.ndarray:
    """Positions (into df) of the answers of one class: `domain` (bool column) matching and `aligned` at least
    cutoff[0] (aligned) or at most cutoff[1] (misaligned); RANKED: the k most (or least) aligned of the group."""
    aligned = as_float_array(df["aligned"])
    group = (df["domain"].to_numpy(bool) == spec.domain) & ~np.isnan(aligned)
    if cutoff == RANKED:
        pos = np.flatnonzero(group)
        order = pos[np.argsort(aligned[pos], kind="stable")]
        return np.sort(order[:k] if spec.misaligned else order[len(order) - k:] if k else order[:0])
    high, low = cutoff
    return np.flatnonzero(group & ((aligned <= low) if spec.misaligned else (aligned >= high)))


def choose_cutoff(frames: Sequence[pd.DataFrame], probe: Probe, min_class: int) -> tuple[float, float] | str | None:
    """The first CUTOFFS pair leaving `min_class` answers in both classes in every frame (seed), else RANKED when
    every frame has enough answers to rank (min_class per class, none in both), else None (the probe is not run)."""
    for cutoff in CUTOFFS:
        if all(min(len(members(f, probe.a, cutoff)), len(members(f, probe.b, cutoff))) >= min_class for f in frames):
            return cutoff
    def enough(f: pd.DataFrame) -> bool:
        ok = ~np.isnan(as_float_array(f["aligned"]))
        n_a, n_b = (int((ok & (f["domain"].to_numpy(bool) == s.domain)).sum()) for s in (probe.a, probe.b))
        return min(n_a, n_b) >= (2 * min_class if probe.a.domain == probe.b.domain else min_class)
    return RANKED if frames and all(enough(f) for f in frames) else None


@dataclass
class ProbeFit:
    """One probe fitted on one seed's answers over repeated splits: per split, the answer-level AUC, the same with
    shuffled labels, the token-level AUC, and the coefficients (z-scored features)."""

    auc: np.ndarray
    auc_null: np.ndarray
    token_auc: np.ndarray
    coefs: np.ndarray  # n_splits × features
    n_a: int = 0
    n_b: int = 0
    n_tokens: int = 0
    extra: dict = field(default_factory=dict)


@functools.cache
def _l1() -> dict:
    """The L1 penalty in the spelling of the installed scikit-learn (`penalty` is deprecated from 1.8 on)."""
    import sklearn

    major, minor = (int(t) for t in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def _split_auc(x: list[np.ndarray], y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float):
    """Fit on the tokens of the training answers; (answer AUC of the mean token score, token AUC, coefficients)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    xt = np.concatenate([x[i] for i in train])
    yt = np.concatenate([np.full(len(x[i]), y[i]) for i in train])
    scaler = StandardScaler().fit(xt)
    model = LogisticRegression(solver="liblinear", C=c, class_weight="balanced", **_l1())
    model.fit(scaler.transform(xt), yt)
    scores = [model.decision_function(scaler.transform(x[i])) for i in test]
    answer = roc_auc_score(y[test], [s.mean() for s in scores])
    token = roc_auc_score(np.concatenate([np.full(len(s), y[i]) for s, i in zip(scores, test)]), np.concatenate(scores))
    return float(answer), float(token), model.coef_[0].copy()


def fit_probe(x: Sequence[np.ndarray], y: Sequence[int], n_splits: int, c: float = 0.01, test_share: float = 0.2,
              seed: int = 0) -> ProbeFit:
    """Repeated stratified 80/20 splits of the answers (each answer's tokens stay on one side): z-score on the
    training tokens, L1 logistic regression (liblinear, C, balanced classes) on them, AUC on the held-out answers
    (score: mean over its tokens); each split again with the answers' labels shuffled (the null)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    x = [np.asarray(a, dtype=np.float64) for a in x]
    y = np.asarray(y, dtype=int)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} answers but {len(y)} labels")
    if any(len(a) == 0 for a in x):
        raise ValueError("every answer needs at least one token")
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"each class needs at least 2 answers, got {counts.tolist()}")
    n_test = min(max(2, int(round(test_share * len(y)))), len(y) - 2)
    rng = np.random.default_rng(seed)
    auc, null, token, coefs = [], [], [], []
    for k in range(n_splits):
        shuffled = rng.permutation(y)
        for labels, sink in ((y, auc), (shuffled, null)):
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed * 100_003 + k)
            train, test = next(splitter.split(np.zeros(len(labels)), labels))
            answer, tok, coef = _split_auc(x, labels, train, test, c)
            sink.append(answer)
            if labels is y:
                token.append(tok)
                coefs.append(coef)
    return ProbeFit(np.array(auc), np.array(null), np.array(token), np.array(coefs), int(counts[0]), int(counts[1]),
                    int(sum(len(a) for a in x)))


def coefficient_shares(coefs: np.ndarray | None, n_features: int) -> np.ndarray:
    """Each feature's share of |mean coefficient over splits| (signs that flip between splits cancel); zeros when
    the probe was not run or every coefficient is zero."""
    if coefs is None or len(coefs) == 0:
        return np.zeros(n_features)
    mean = np.abs(np.asarray(coefs, dtype=float).mean(axis=0))
    total = mean.sum()
    return mean / total if total > 0 else np.zeros(n_features)


def split_adapters(general: np.ndarray, domain: np.ndarray) -> list[str]:
    """Per adapter, from its coefficient shares in the general probe and the domain probe: 'general' when its
    general share is larger and at least an even share (1 / adapters), 'domain' likewise, else 'neither'."""
    general, domain = np.asarray(general, float), np.asarray(domain, float)
    if general.shape != domain.shape:
        raise ValueError(f"{general.shape} general shares but {domain.shape} domain shares")
    even = 1.0 / max(1, general.size)
    return ["general" if g > d and g >= even else "domain" if d > g and d >= even else "neither"
            for g, d in zip(general, domain)]
