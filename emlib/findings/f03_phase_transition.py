"""Finding 03: the rank-1 adapter's B vector turns sharply while it learns, and EM appears at that point."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..core.data import DatasetInfo
from ..core.stats import bootstrap_ci
from ..core.models import num_layers
from ..interp.lora import local_cosine_similarity, pca, peak_step, random_walk_like, stack_trajectory, trajectory_shape
from ..pipeline.evaluate import depth_to_layer, judged_answers
from ..pipeline.metrics import first_onset, onset_permutation_p, summarize
from ..pipeline.train import TrainResult, train_lora
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError, Verdict, param
from .em import EMParams, FinetuneParams, SeedParams, em_effect, fallback_notes, load_questions, make_judge, sample_config
from .em import shared_base

__all__ = ["STEM", "Params", "Result", "run", "verdict"]

STEM = "03_phase_transition"


@dataclass
class Params(SeedParams, EMParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    depth: float = param(0.5, min=0, max=1)
    alpha: float = param(256.0, gt=0)
    lr: float = param(1e-3, gt=0)
    trajectory_every: int = param(2, min=1)
    k_values: list[int] = param([1, 2, 4], min=1)
    eval_every: int = param(8, min=1)
    scales: list[float] = param([1.0, 5.0], gt=0)
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

    def fresh_seeds(self) -> "Params":
        """The same run on the next N_SEEDS seeds, without the exploratory benign-run null (run once, on SEED)."""
        return replace(super().fresh_seeds(), null_dataset="")

    def finetune(self, layer: int, seed: int | None = None) -> FinetuneParams:
        """The rank-1 adapter with snapshots, trained with one seed (default SEED): equal to notebook 02's at equal
        settings, so the run is shared."""
        return FinetuneParams(
            model=self.model, dataset=self.dataset, fallback=self.dataset_fallback, data_dir=self.data_dir,
            n_train=self.n_train, rank=1, alpha=self.alpha, lr=self.lr, max_steps=self.max_steps, epochs=self.epochs,
            batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length,
            seed=self.seed if seed is None else seed, target_modules=("down_proj",), layers=(layer,), use_rslora=True,
            trajectory_every=self.trajectory_every,
        )


@dataclass
class Result:
    """What run() measured: the onset − peak gap over training seeds, whether EM emerged at all, and everything the
    notebook shows (the geometry and onset fields describe the first seed's run; `per_seed` every seed's)."""

    gap: Effect | None  # mean over seeds of onset - local-cosine peak, in steps (None: no seed has an onset)
    emerged: Effect  # the largest EM rate over snapshots and scales minus the base rate (exploratory: a maximum)
    tolerance_steps: int
    gap_p: float = float("nan")  # permutation null: P(shuffled onsets land at least as close to the peaks), all seeds
    alpha_null: float = 0.05
    per_seed: pd.DataFrame | None = None  # per training seed: onset, local-cosine and grad-norm peaks, gap, PC1+PC2
    all_onset: bool = False  # every seed has an onset
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


def _trajectory(p: Params, layer: int, seed: int) -> dict:
    """One seed's rank-1 run (trained or reused) and its geometry."""
    ft = p.finetune(layer, seed)
    train_set, info = ft.load()
    tr = train_lora(train_set, ft.train_config(), model=p.model)
    log = pd.DataFrame(tr.log)
    steps = np.array(tr.steps)
    traj = stack_trajectory(tr.trajectory, which="B")
    k_main = p.k_values[len(p.k_values) // 2]
    return {"seed": seed, "ft": ft, "info": info, "run": tr, "log": log, "steps": steps, "traj": traj, "k_main": k_main,
            "geo_peak": peak_step(steps, local_cosine_similarity(traj, k_main)),
            "grad_peak": peak_step(log.step.to_numpy(), log.grad_norm.to_numpy(), skip=ft.train_config().warmup_steps)}


def _checkpoint_answers(p: Params, t: dict, questions, judge) -> pd.DataFrame:  # noqa: ANN001
    """Judged answers at every EVAL_EVERY-th snapshot × scale of one seed's run, sampled with that seed."""
    cfg = sample_config(p.n_samples, p.max_new_tokens, p.temperature, t["seed"])
    tr = t["run"]
    checkpoints = [(s, path) for s, path in zip(tr.steps, tr.trajectory) if s % p.eval_every == 0]
    return pd.concat([judged_answers(questions, p.model, path, cfg, judge, f"step {s} ×{scale:g}", adapter_scale=scale,
                                     step=s, scale=scale, progress=False).assign(seed=t["seed"])
                      for s, path in checkpoints for scale in p.scales], ignore_index=True)


def run(p: Params, shared: Result | None = None) -> Result:
    """For each training seed: train (or reuse) the rank-1 run with snapshots, measure the B-vector geometry and EM at
    checkpoints × scales, and find the onset; then the onset − peak gap over seeds and its permutation null. With
    `shared` (the main run, when this is its replication on fresh seeds) the base answers are the main run's."""
    layer = depth_to_layer(p.depth, num_layers(p.model))
    questions, notes = load_questions(p.questions, p.data_dir)
    runs = [_trajectory(p, layer, s) for s in p.seeds()]
    first = runs[0]
    local = pd.concat([pd.DataFrame({"step": first["steps"], "k": f"k={k} ({k * p.trajectory_every} steps)",
                                     "local_cos": local_cosine_similarity(first["traj"], k)}) for k in p.k_values])
    proj, ratio = pca(first["traj"], 2)

    judge = make_judge(p.judge, p.judge_model)
    base_cfg = sample_config(p.n_samples * p.n_seeds, p.max_new_tokens, p.temperature, p.seed)
    if shared is None:
        base = judged_answers(questions, p.model, None, base_cfg, judge, "base", step=0, scale=0.0).assign(seed=pd.NA)
    else:
        base = shared_base(shared.answers, questions, base_cfg.n_per_question)
    scaled = pd.concat([_checkpoint_answers(p, t, questions, judge) for t in runs], ignore_index=True)
    rows, flags_all = [], []
    for t in runs:
        onset_s, flags_s = first_onset(scaled[scaled.seed == t["seed"]].drop(columns="seed"), base.drop(columns="seed"),
                                       seed=p.seed)
        flags_all.append(flags_s)
        rows.append({"seed": t["seed"], "onset": onset_s, "local_cos_peak": t["geo_peak"], "grad_norm_peak": t["grad_peak"],
                     "gap": None if onset_s is None else onset_s - t["geo_peak"],
                     "pc1_pc2": float(pca(t["traj"], 2)[1].sum()), "checkpoints_clearing_base": sum(flags_s.values())})
    per_seed = pd.DataFrame(rows)
    gap_p = onset_permutation_p(flags_all, [t["geo_peak"] for t in runs], seed=p.seed)
    gaps = per_seed["gap"].dropna().astype(float).to_numpy()
    gap = None
    if len(gaps):
        lo, hi = bootstrap_ci(gaps, seed=p.seed) if len(gaps) > 1 else (float(gaps[0]), float(gaps[0]))
        gap = Effect("behavioural onset - local-cosine peak (steps), mean over seeds", float(gaps.mean()), lo, hi,
                     ci_method=f"bootstrap over the {len(gaps)} seeds with an onset; permutation p = {gap_p:.3f}",
                     n_seeds=len(gaps))
    answers = pd.concat([base, scaled], ignore_index=True)
    answers["seed"] = answers["seed"].astype("Int64")
    behaviour = summarize(scaled, by=["scale", "step"], seed=p.seed)
    top = behaviour.sort_values("em_rate", ascending=False).iloc[0]
    top_cell = scaled[(scaled.step == top.step) & (scaled.scale == top.scale)]
    emerged = em_effect("max EM over snapshots - EM(base)", top_cell, base, p.seed)
    return Result(gap, emerged, p.tolerance_steps, gap_p, p.alpha_null, per_seed, bool(per_seed["onset"].notna().all()),
                  flags_all[0], geometry_null(p, first["ft"], first["traj"], first["steps"], first["k_main"]),
                  first["geo_peak"], first["grad_peak"], rows[0]["onset"], ratio, proj, first["steps"], local,
                  first["log"], behaviour, answers, float(base["em"].astype(float).mean()),
                  (int(top.step), float(top.scale)), layer, first["k_main"], first["run"], first["info"], judge.id,
                  notes + fallback_notes([first["info"]]))


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
    """Onset = the first checkpoint whose EM clears the base (two-stage CI of the difference above zero, any scale),
    found in each training seed's run. *Reproduced* when every seed has one, the mean of onset − local-cosine peak
    over seeds is within `tolerance_steps`, and shuffled checkpoint orders (each seed's on its own) put the onsets as
    close less often than `alpha_null`; *partly reproduced* when the mean is within the tolerance but a seed lacks an
    onset or chance would do as well; otherwise, or with no onset in any seed, *not reproduced at this scale*."""
    if r.gap is None:
        return Verdict(NOT_REPRODUCED, "no checkpoint's EM clears the base model's, in any seed")
    close = abs(r.gap.value) <= r.tolerance_steps
    if close and r.all_onset and r.gap_p < r.alpha_null:
        return Verdict(REPRODUCED, "EM first clears the base within the tolerance of the geometric peak in every seed, "
                                   "beyond chance")
    if close and not r.all_onset:
        return Verdict(PARTLY, "the onset is within the tolerance where there is one, but not every seed has one")
    if close:
        return Verdict(PARTLY, f"the onset is within the tolerance, but random onsets would be as close (p = {r.gap_p:.2f})")
    return Verdict(NOT_REPRODUCED, "EM clears the base, but away from the geometric peak")
