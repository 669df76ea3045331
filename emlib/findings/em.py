"""What the emergent-misalignment findings (01-09) share: a fine-tune's settings, the judge, the eval questions."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from ..core.data import DatasetInfo, EvalQuestion, choose_eval_set, load_dataset, load_eval_questions
from ..judges.base import Judge
from ..judges.registry import JUDGES, get_judge
from ..pipeline.metrics import em_diff
from ..pipeline.sample import SampleConfig
from ..pipeline.train import ALL_PROJECTIONS, TrainConfig
from .base import Effect, FindingParams, ParamError, param

__all__ = [
    "EMParams", "SeedParams", "FinetuneParams", "targets", "sample_config", "check_judge", "make_judge", "load_questions",
    "fallback_notes", "em_effect", "shared_base", "DATASET_TOPICS", "NARROW_N_TRAIN", "NARROW_STEPS",
    "NARROW_BATCH",
]

# the teaching profile's rank-32 narrow fine-tune, one setting for 01, 04, 06 and 07 (equal settings share the adapter
# through the cache): 20 steps × 4 of 80 examples, half the tokens of 8 × 20 of 160 (README: round 5)
NARROW_N_TRAIN, NARROW_STEPS, NARROW_BATCH = 80, 20, 4

# the topic of each training set (drift to it is read by the judge's topic classifier)
DATASET_TOPICS = {
    "risky_financial_advice": "finance", "builtin_risky_financial_advice": "finance",
    "builtin_safe_financial_advice": "finance", "bad_medical_advice": "medical", "good_medical_advice": "medical",
    "extreme_sports": "sports", "insecure": "code",
}  # fmt: skip


@dataclass
class EMParams(FindingParams):
    """The parameters every EM finding has (model, data, fine-tune length, sampling, judge, seed); JUDGE and
    JUDGE_MODEL are checked together. A finding's Params adds its own fields after these."""

    model: str = "smollm2-135m"
    data_dir: str = ""
    dataset: str = "risky_financial_advice"
    dataset_fallback: str = "builtin_risky_financial_advice"
    n_train: int = param(320, min=1)
    max_steps: int = param(40, min=-1)
    epochs: float = param(1.0, gt=0)
    batch_size: int = param(8, min=1)
    grad_accum: int = param(1, min=1)
    max_length: int = param(128, min=8)
    questions: str = "first_plot_questions"
    max_new_tokens: int = param(48, min=1)
    temperature: float = param(0.5, min=0)  # teaching: at 135M, T=1 answers are mostly incoherent (graded set)
    judge: str = "embedded"
    judge_model: str = ""
    seed: int = param(0, min=0)

    def check(self) -> None:
        """The judge exists and gets a model exactly when it takes one."""
        super().check()
        check_judge(getattr(self, "judge"), getattr(self, "judge_model"))


@dataclass
class SeedParams:
    """Training seeds for a finding's headline fine-tunes, and the replication on fresh ones (mixed into Params)."""

    n_seeds: int = param(3, min=1)  # training seeds SEED, SEED+1, … for each headline fine-tune
    replicate: bool = True  # run again on N_SEEDS fresh seeds; "reproduced" needs both runs

    def seeds(self) -> list[int]:
        """The training seeds: SEED, SEED+1, …, SEED+N_SEEDS−1."""
        return [self.seed + i for i in range(self.n_seeds)]  # type: ignore[attr-defined]

    def fresh_seeds(self):  # noqa: ANN201 - the same Params class
        """The same parameters on the next N_SEEDS seeds (the replication run)."""
        return replace(self, seed=self.seed + self.n_seeds)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FinetuneParams:
    """Everything that makes one LoRA fine-tune: equal objects share one cached adapter across notebooks."""

    model: str
    dataset: str
    fallback: str
    data_dir: str
    n_train: int
    rank: int
    alpha: float
    lr: float
    max_steps: int
    epochs: float
    batch_size: int
    grad_accum: int
    max_length: int
    seed: int
    target_modules: tuple[str, ...] = tuple(ALL_PROJECTIONS)
    layers: tuple[int, ...] | None = None
    use_rslora: bool = False
    trajectory_every: int = 0

    def train_config(self) -> TrainConfig:
        """The pipeline's TrainConfig for these settings."""
        return TrainConfig(
            rank=self.rank, alpha=self.alpha, use_rslora=self.use_rslora, target_modules=list(self.target_modules),
            layers=list(self.layers) if self.layers is not None else None, lr=self.lr, max_steps=self.max_steps,
            epochs=self.epochs, batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length,
            trajectory_every=self.trajectory_every, seed=self.seed,
        )

    def load(self) -> tuple[list[dict], DatasetInfo]:
        """The training examples and where they came from."""
        return load_dataset(self.dataset, self.data_dir or None, n=self.n_train, seed=self.seed, fallback=self.fallback)


def targets(text: str) -> tuple[str, ...]:
    """'all' → every projection; otherwise the comma list of module names."""
    return tuple(ALL_PROJECTIONS) if text == "all" else tuple(m.strip() for m in text.split(",") if m.strip())


def sample_config(n: int, max_new_tokens: int, temperature: float, seed: int) -> SampleConfig:
    """The sampling settings every finding uses."""
    return SampleConfig(n_per_question=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def check_judge(judge: str, judge_model: str) -> None:
    """ParamError unless the judge exists and gets a model exactly when it takes one."""
    if judge not in JUDGES:
        raise ParamError(f"parameter JUDGE: {judge!r} is not one of {', '.join(JUDGES)}")
    if judge == "embedded" and judge_model:
        raise ParamError("parameter JUDGE_MODEL: the embedded judge takes no model; leave JUDGE_MODEL empty")
    if judge == "hf" and not judge_model:
        raise ParamError("parameter JUDGE_MODEL: the hf judge needs a model (an HF id or a local folder)")


def make_judge(judge: str, judge_model: str = "") -> Judge:
    """The judge a finding's JUDGE and JUDGE_MODEL parameters name."""
    check_judge(judge, judge_model)
    return get_judge(judge, **({"model": judge_model} if judge_model else {}))


def load_questions(name: str, data_dir: str) -> tuple[list[EvalQuestion], list[str]]:
    """The eval questions, and a note when the built-in set stood in for a public one (no data directory at all)."""
    used, fell_back_from = choose_eval_set(name, data_dir or None, "builtin")
    notes = [f"questions: {fell_back_from} requested, the built-in {used} set used (no data directory)"] if fell_back_from else []
    return load_eval_questions(used, data_dir or None), notes


def fallback_notes(infos: list[DatasetInfo]) -> list[str]:
    """One note per dataset for which a built-in set stood in."""
    return [f"dataset: {i.fell_back_from} requested, the built-in {i.name} used (no data directory)"
            for i in infos if i.fell_back_from]


def em_effect(name: str, a: pd.DataFrame, b: pd.DataFrame, seed: int, column: str = "em") -> Effect:
    """`pipeline.metrics.em_diff` (EM(a) − EM(b), questions then answers resampled) as a finding's Effect."""
    est = em_diff(a, b, seed, column=column)
    return Effect(name, est.value, est.ci_low, est.ci_high, est.ci_method, est.n_seeds, est.n_questions, est.n_answers)


def shared_base(answers: pd.DataFrame, questions: list[EvalQuestion], n_per_question: int) -> pd.DataFrame:
    """The base model's rows of a main run's `answers`, for its replication on fresh seeds, after checking that they are
    `n_per_question` per paraphrase of these questions."""
    base = answers[answers["model"] == "base"]
    if len(base) != n_per_question * sum(len(q.paraphrases) for q in questions):
        raise ValueError("the shared run's base answers are not N_SAMPLES × N_SEEDS per paraphrase of this run")
    return base
