"""Finding 03: the rank-1 adapter's B vector turns sharply while it learns, and EM appears at that point."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core.data import DatasetInfo
from ..core.models import num_layers
from ..interp.lora import local_cosine_similarity, pca, peak_step, stack_trajectory
from ..pipeline.evaluate import depth_to_layer, judged_answers
from ..pipeline.metrics import steepest_rise, summarize
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

    gap: Effect  # behavioural onset - local-cosine peak, in steps
    emerged: Effect  # the largest EM rate over snapshots and scales minus the base rate
    tolerance_steps: int
    geo_peak: int = 0
    grad_peak: int = 0
    onset: Effect | None = None  # the onset step with its CI
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
    base_em = base["em"].astype(float).to_numpy()
    onset, onset_lo, onset_hi = steepest_rise(scaled, base_em, seed=p.seed)
    top = behaviour.sort_values("em_rate", ascending=False).iloc[0]
    top_cell = scaled[(scaled.step == top.step) & (scaled.scale == top.scale)]
    emerged = em_effect("max EM over snapshots - EM(base)", top_cell, base, p.seed)
    gap = Effect("behavioural onset - local-cosine peak (steps)", float(onset - geo_peak), float(onset_lo - geo_peak),
                 float(onset_hi - geo_peak), ci_method="bootstrap over answers of the steepest-rise step")
    return Result(gap, emerged, p.tolerance_steps, geo_peak, grad_peak,
                  Effect("onset step", float(onset), float(onset_lo), float(onset_hi)), ratio, proj, steps, local, log,
                  behaviour, answers, float(base_em.mean()), (int(top.step), float(top.scale)), layer, k_main, tr, info,
                  judge.id, notes + fallback_notes([info]))


def verdict(r: Result) -> Verdict:
    """Given that some snapshot's EM is significantly above the base (CI of the difference above zero):
    *reproduced* when the whole CI of onset − peak lies within ±`tolerance_steps`; *partly reproduced* when only
    the point estimate does; otherwise, or when EM never emerged, *not reproduced at this scale*."""
    if not r.emerged.above:
        return Verdict(NOT_REPRODUCED, "no snapshot's EM is clearly above the base model's")
    if max(abs(r.gap.ci_low), abs(r.gap.ci_high)) <= r.tolerance_steps:
        return Verdict(REPRODUCED, "EM emerges and its onset's whole CI is within the tolerance of the geometric peak")
    if abs(r.gap.value) <= r.tolerance_steps:
        return Verdict(PARTLY, "the onset's point estimate is within the tolerance, its CI is not")
    return Verdict(NOT_REPRODUCED, "EM emerges, but away from the geometric peak")
