"""Finding 03: the rank-1 adapter's B vector turns sharply while it learns, and EM appears at that point."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..core.data import DatasetInfo
from ..core.models import num_layers
from ..interp.lora import local_cosine_similarity, pca, peak_step, random_walk_like, stack_trajectory, trajectory_shape
from ..pipeline.evaluate import depth_to_layer, judged_answers
from ..pipeline.metrics import first_onset, onset_permutation_p, summarize
from ..pipeline.train import TrainResult, train_lora
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError, Verdict, param
from .em import EMParams, FinetuneParams, em_effect, fallback_notes, load_questions, make_judge, sample_config

__all__ = ["STEM", "Params", "Result", "run", "verdict"]

STEM = "03_phase_transition"


@dataclass
class Params(EMParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    depth: float = param(0.5, min=0, max=1)
    alpha: float = param(256.0, gt=0)
    lr: float = param(1e-3, gt=0)
    trajectory_every: int = param(2, min=1)
    k_values: list[int] = param([1, 2, 4], min=1)
    eval_every: int = param(4, min=1)
    scales: list[float] = param([1.0, 5.0, 10.0], gt=0)
    n_samples: int = param(6, min=1)
    tolerance_steps: int = param(8, min=0)
    null_dataset: str = "builtin_safe_financial_advice"  # a benign set: the same rank-1 run on it is the geometry's null
    n_walks: int = param(20, min=1)  # random walks with the trajectory's step norms, the other null
    alpha_null: float = param(0.05, gt=0, max=1)  # the onset-peak coincidence must beat the permutation null at this level

    def check(self) -> None:
        """EVAL_EVERY must land on snapshots."""
        super().check()
        if self.eval_every % self.trajectory_every:
            raise ParamError(f"parameter EVAL_EVERY: must be a multiple of TRAJECTORY_EVERY ({self.trajectory_every}), "
                             f"got {self.eval_every}")

    def finetune(self, layer: int) -> FinetuneParams:
        """The rank-1 adapter with snapshots: equal to notebook 02's at equal settings, so the run is shared."""
        return FinetuneParams(
            model=self.model, dataset=self.dataset, fallback=self.dataset_fallback, data_dir=self.data_dir,
            n_train=self.n_train, rank=1, alpha=self.alpha, lr=self.lr, max_steps=self.max_steps, epochs=self.epochs,
            batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length, seed=self.seed,
            target_modules=("down_proj",), layers=(layer,), use_rslora=True, trajectory_every=self.trajectory_every,
        )


@dataclass
class Result:
    """What run() measured: the onset − peak gap, whether EM emerged at all, and everything the notebook shows."""

    gap: Effect | None  # behavioural onset - local-cosine peak, in steps (None: no checkpoint clears the base)
    emerged: Effect  # the largest EM rate over snapshots and scales minus the base rate (exploratory: a maximum)
    tolerance_steps: int
    gap_p: float = float("nan")  # permutation null: P(a shuffled onset lands at least as close to the peak)
    alpha_null: float = 0.05
    onset_flags: dict[int, bool] = field(default_factory=dict)  # checkpoint -> its EM clears the base
    geometry_null: pd.DataFrame | None = None  # trajectory shape of this run, the benign run and random walks
    geo_peak: int = 0
    grad_peak: int = 0
    onset: int | None = None  # the first checkpoint whose EM clears the base
    pca_ratio: np.ndarray | None = None
    pca_proj: np.ndarray | None = None
    steps: np.ndarray | None = None
    local: pd.DataFrame | None = None  # local cosine per step and k
    log: pd.DataFrame | None = None  # per-step loss and gradient norm
    behaviour: pd.DataFrame | None = None  # EM per (scale, step)
    answers: pd.DataFrame | None = None
    base_em: float = float("nan")
    top: tuple[int, float] = (0, 0.0)  # (step, scale) of the largest EM
    layer: int = -1
    k_main: int = 0
    run: TrainResult | None = None
    data: DatasetInfo | None = None
    judge_id: str = ""
    fallbacks: list[str] = field(default_factory=list)  # built-in sets that stood in for public ones


def run(p: Params) -> Result:
    """Train (or reuse) the rank-1 run with snapshots; measure the B-vector geometry and EM at checkpoints × scales."""
    layer = depth_to_layer(p.depth, num_layers(p.model))
    ft = p.finetune(layer)
    train_set, info = ft.load()
    questions, notes = load_questions(p.questions, p.data_dir)
    tr = train_lora(train_set, ft.train_config(), model=p.model)
    log = pd.DataFrame(tr.log)
    steps = np.array(tr.steps)
    traj = stack_trajectory(tr.trajectory, which="B")
    local = pd.concat([pd.DataFrame({"step": steps, "k": f"k={k} ({k * p.trajectory_every} steps)",
                                     "local_cos": local_cosine_similarity(traj, k)}) for k in p.k_values])
    proj, ratio = pca(traj, 2)
    k_main = p.k_values[len(p.k_values) // 2]
    geo_peak = peak_step(steps, local_cosine_similarity(traj, k_main))
    grad_peak = peak_step(log.step.to_numpy(), log.grad_norm.to_numpy(), skip=ft.train_config().warmup_steps)

    judge = make_judge(p.judge, p.judge_model)
    cfg = sample_config(p.n_samples, p.max_new_tokens, p.temperature, p.seed)
    checkpoints = [(s, path) for s, path in zip(tr.steps, tr.trajectory) if s % p.eval_every == 0]
    base = judged_answers(questions, p.model, None, cfg, judge, "base", step=0, scale=0.0)
    answers = pd.concat(
        [base] + [judged_answers(questions, p.model, path, cfg, judge, f"step {s} ×{scale:g}", adapter_scale=scale,
                                 step=s, scale=scale, progress=False)
                  for s, path in checkpoints for scale in p.scales],
        ignore_index=True,
    )
    behaviour = summarize(answers[answers.scale > 0], by=["scale", "step"], seed=p.seed)
    scaled = answers[answers.scale > 0]
    onset, flags = first_onset(scaled, base, seed=p.seed)
    gap_p = onset_permutation_p(flags, geo_peak, seed=p.seed)
    top = behaviour.sort_values("em_rate", ascending=False).iloc[0]
    top_cell = scaled[(scaled.step == top.step) & (scaled.scale == top.scale)]
    emerged = em_effect("max EM over snapshots - EM(base)", top_cell, base, p.seed)
    gap = None if onset is None else Effect(
        "behavioural onset - local-cosine peak (steps)", float(onset - geo_peak), float(onset - geo_peak),
        float(onset - geo_peak), ci_method=f"a rule, no CI; permutation p = {gap_p:.3f} ({len(flags)} checkpoints)")
    return Result(gap, emerged, p.tolerance_steps, gap_p, p.alpha_null, flags, geometry_null(p, ft, traj, steps, k_main),
                  geo_peak, grad_peak, onset, ratio, proj, steps, local, log, behaviour, answers,
                  float(base["em"].astype(float).mean()), (int(top.step), float(top.scale)), layer, k_main, tr, info,
                  judge.id, notes + fallback_notes([info]))


def geometry_null(p: Params, ft: FinetuneParams, traj: np.ndarray, steps: np.ndarray, k: int) -> pd.DataFrame:
    """The trajectory's shape beside its nulls: the same rank-1 run on a benign set, and random walks with the same
    step norms (median of `n_walks`)."""
    rows = [{"trajectory": f"{ft.dataset} (this run)", **trajectory_shape(traj, steps, k)}]
    if p.null_dataset:
        benign = replace(ft, dataset=p.null_dataset, fallback=p.null_dataset)
        run = train_lora(benign.load()[0], benign.train_config(), model=p.model)
        rows.append({"trajectory": f"{p.null_dataset} (benign, same settings)",
                     **trajectory_shape(stack_trajectory(run.trajectory, which="B"), np.array(run.steps), k)})
    walks = pd.DataFrame([trajectory_shape(random_walk_like(traj, seed=p.seed + i), steps, k) for i in range(p.n_walks)])
    rows.append({"trajectory": f"random walk, same step norms (median of {p.n_walks})", **walks.median().to_dict()})
    return pd.DataFrame(rows)


def verdict(r: Result) -> Verdict:
    """Onset = the first checkpoint whose EM clears the base (two-stage CI of the difference above zero, any scale).
    *Reproduced* when there is one, |onset − local-cosine peak| ≤ `tolerance_steps`, and a shuffled order of the
    checkpoints puts the onset as close less often than `alpha_null` (permutation p < alpha_null); *partly
    reproduced* when within the tolerance but not beyond chance; otherwise, or with no onset, *not reproduced at
    this scale*."""
    if r.gap is None:
        return Verdict(NOT_REPRODUCED, "no checkpoint's EM clears the base model's")
    if abs(r.gap.value) <= r.tolerance_steps and r.gap_p < r.alpha_null:
        return Verdict(REPRODUCED, "EM first clears the base within the tolerance of the geometric peak, beyond chance")
    if abs(r.gap.value) <= r.tolerance_steps:
        return Verdict(PARTLY, f"the onset is within the tolerance, but a random onset would be as close (p = {r.gap_p:.2f})")
    return Verdict(NOT_REPRODUCED, "EM clears the base, but away from the geometric peak")
