"""Finding 12: a locality penalty on an RL policy's wiring makes X and Y movement modules that ablations confirm.

Policies (small tanh MLPs, neurons placed in 2-D) are trained by PPO on a stochastic MiniGrid navigation task whose
observation is the goal's X and Y offset (`f12_modular_rl_env`), with the wiring penalty at several strengths and
several seeds each (`f12_modular_rl_train`, cached). Each policy's weight graph is cut into Louvain communities and
its modules are ablated (`f12_modular_rl_graph`); figures are in `f12_modular_rl_plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_dir, cache_dir, stable_hash
from ..core.stats import bootstrap_ci
from .base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, FindingParams, ParamError, Verdict, combine, param
from .f12_modular_rl_env import ACTIONS
from .f12_modular_rl_graph import (
    ablate, active_units, axis_errors, community_axes, describe_communities, louvain, modularity, module_units,
    node_axes, random_like, weight_graph,
)
from .f12_modular_rl_train import Policy, PPOConfig, TrainedPolicy, evaluate_success, train_policy

__all__ = ["STEM", "VERSION", "MIN_SUCCESS", "Params", "Result", "run", "verdict", "seed_effect", "load_or_train"]

STEM = "12_modular_rl"
VERSION = "f12-v1"  # salt of the policy cache: bump when training changes
MIN_SUCCESS = 0.8  # verdict (a) also needs the penalised policies to solve the task this often (greedy, slips on)


@dataclass
class Params(FindingParams):
    """The notebook's parameters (see its parameters cell for what each one means)."""

    grid_size: int = param(8, min=4, max=32)
    n_obstacles: int = param(0, min=0)
    slip: float = param(0.1, min=0, max=1)
    episode_steps: int = param(40, min=1)
    hidden: list[int] = param([24, 24], min=1)
    penalties: list[float] = param([0.0, 0.001, 0.003, 0.01], min=0)
    verdict_penalty: float = param(0.003, gt=0)
    penalty_warmup: float = param(0.3, min=0, max=1)
    l1_control: bool = True
    layer_gap: float = param(0.25, gt=0)
    swap_every: int = param(10, min=0)
    total_steps: int = param(50_000, min=1)
    n_envs: int = param(16, min=1)
    rollout: int = param(64, min=2)
    epochs: int = param(4, min=1)
    minibatches: int = param(4, min=1)
    lr: float = param(3e-3, gt=0)
    n_seeds: int = param(4, min=2)
    prune: float = param(0.01, min=0, max=1)
    n_random: int = param(20, min=1)
    n_eval_episodes: int = param(160, min=1)
    n_boot: int = param(2000, min=100)
    seed: int = param(10, min=0)

    def check(self) -> None:
        if 0.0 not in self.penalties:
            raise ParamError("parameter PENALTIES: must include 0.0 (the unpenalised baseline)")
        if self.verdict_penalty not in self.penalties:
            raise ParamError(f"parameter VERDICT_PENALTY: {self.verdict_penalty} is not one of PENALTIES {self.penalties}")
        if (self.n_envs * self.rollout) % self.minibatches:
            raise ParamError("parameter MINIBATCHES: must divide N_ENVS × ROLLOUT")

    def ppo(self, penalty: float, seed: int, uniform: bool = False) -> PPOConfig:
        """The training settings of one policy (`uniform`: the plain-L1 control)."""
        return PPOConfig(
            grid_size=self.grid_size, n_obstacles=self.n_obstacles, slip=self.slip, episode_steps=self.episode_steps,
            hidden=tuple(self.hidden), penalty=penalty, penalty_warmup=self.penalty_warmup if penalty > 0 else 0.0,
            layer_gap=self.layer_gap,
            swap_every=self.swap_every, total_steps=self.total_steps, n_envs=self.n_envs, rollout=self.rollout,
            epochs=self.epochs, minibatches=self.minibatches, lr=self.lr, seed=seed, uniform=uniform,
        )


@dataclass
class Result:
    """What run() measured: the effects the verdict reads, and the frames the notebook shows."""

    q_gain: Effect  # Q(verdict penalty) − Q(no penalty), paired over seeds
    dissociation: Effect  # at the verdict penalty: module dissociation − random-set dissociation, over seeds
    x_selectivity: Effect  # ablating the X module: X error − Y error, over seeds
    y_selectivity: Effect  # ablating the Y module: Y error − X error, over seeds
    success: float  # greedy success rate of the penalised policies (mean over seeds)
    success_unpenalised: float
    verdict_penalty: float = 0.0
    dissociation_gain: Effect | None = None  # report only: D(verdict penalty) − D(no penalty), paired by seed
    q_vs_l1: Effect | None = None  # report only: Q(locality penalty) − Q(plain L1, same strength), paired by seed
    runs: pd.DataFrame | None = None  # one row per (kind, penalty, seed); kind "local" or "L1" (the control)
    ablations: pd.DataFrame | None = None  # one row per (penalty, seed, ablation)
    communities: pd.DataFrame | None = None  # one row per (penalty, seed, community)
    curves: pd.DataFrame | None = None  # training success per (penalty, seed, steps)
    policies: dict[tuple[str, float, int], Policy] = field(default_factory=dict)  # by (kind, penalty, seed)
    partitions: dict[tuple[str, float, int], tuple[list[set], list[str]]] = field(default_factory=dict)
    grid_size: int = 8


def load_or_train(cfg: PPOConfig) -> TrainedPolicy:
    """The trained policy for `cfg` from the cache, or trained now and cached (keyed by every setting + VERSION)."""
    folder = cache_dir("f12_policies", stable_hash(cfg, VERSION))
    file = folder / "policy.pt"
    n_in = 2 * (2 * (cfg.grid_size - 2) - 1)
    if file.exists():
        blob = torch.load(file, weights_only=True)
        policy = Policy(n_in, cfg.hidden, 4, cfg.layer_gap)
        policy.load_state_dict(blob["state"])
        policy.pos = [p.numpy() for p in blob["pos"]]
        return TrainedPolicy(policy, [tuple(c) for c in blob["curve"]], float(blob["wall_time_s"]), from_cache=True)
    trained = train_policy(cfg)
    with atomic_dir(folder) as tmp:
        torch.save({"state": trained.policy.state_dict(), "pos": [torch.as_tensor(p) for p in trained.policy.pos],
                    "curve": [list(c) for c in trained.curve], "wall_time_s": trained.wall_time_s}, tmp / "policy.pt")
    return trained


def seed_effect(values: np.ndarray, name: str, n_boot: int, seed: int) -> Effect:
    """The mean of per-seed values with its percentile bootstrap 95 % CI over seeds."""
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return Effect(name, float(np.mean(values)), lo, hi, "bootstrap over training seeds")


def _analyse(policy: Policy, p: Params, penalty: float, seed: int, rng: np.random.Generator):
    """Communities, module ablations and their random controls for one policy."""
    n_layers = len(policy.sizes)
    g = weight_graph(policy.weights(), p.prune)
    comms = louvain(g, seed)
    labels = community_axes(comms, node_axes(policy.sizes, p.grid_size))
    pool = active_units(g, n_layers)
    rows, sel = [], {}
    base = axis_errors(policy, p.grid_size)
    rows.append({"ablation": "none", "x_error": base[0], "y_error": base[1], "n_units": 0})
    rand_gap = []
    for axis in ("X", "Y"):
        units = module_units(comms, labels, axis, n_layers)
        xe, ye = axis_errors(ablate(policy, units), p.grid_size)
        rows.append({"ablation": f"{axis} module", "x_error": xe, "y_error": ye, "n_units": len(units)})
        sel[axis] = (xe - ye) if axis == "X" else (ye - xe)
        draws = np.array([axis_errors(ablate(policy, random_like(units, pool, rng)), p.grid_size) for _ in range(p.n_random)])
        rows.append({"ablation": f"random ({axis} size)", "x_error": draws[:, 0].mean(), "y_error": draws[:, 1].mean(),
                     "n_units": len(units)})
        rand_gap.append(np.abs(draws[:, 0] - draws[:, 1]).mean())
    for r in rows:
        r.update(penalty=penalty, seed=seed)
    comm_rows = [{**vars(c), "actions": ",".join(c.actions), "penalty": penalty, "seed": seed}
                 for c in describe_communities(comms, labels, policy.sizes, p.grid_size, ACTIONS)]
    run_row = {
        "penalty": penalty, "seed": seed, "modularity": modularity(g, comms), "n_communities": sum(len(c) > 1 for c in comms),
        "n_active": len(pool), "n_x_module": sum(r["n_units"] for r in rows if r["ablation"] == "X module"),
        "n_y_module": sum(r["n_units"] for r in rows if r["ablation"] == "Y module"),
        "x_error": base[0], "y_error": base[1], "x_selectivity": sel["X"], "y_selectivity": sel["Y"],
        "dissociation": (sel["X"] + sel["Y"]) / 2, "random_dissociation": float(np.mean(rand_gap)),
    }
    return run_row, rows, comm_rows, (comms, labels)


def run(p: Params) -> Result:
    """Train (or load) one policy per penalty and seed, evaluate it, find its communities and ablate its modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs, ablations, comms, curves, policies, partitions = [], [], [], [], {}, {}
        jobs = [("local", pen) for pen in p.penalties] + ([("L1", p.verdict_penalty)] if p.l1_control else [])
        for seed in range(p.seed, p.seed + p.n_seeds):
            for j, (kind, penalty) in enumerate(jobs):
                cfg = p.ppo(penalty, seed, uniform=kind == "L1")
                trained = load_or_train(cfg)
                success, length = evaluate_success(trained.policy, cfg, p.n_eval_episodes, seed + 10_000)
                row, abl, com, part = _analyse(trained.policy, p, penalty, seed, np.random.default_rng([seed, j]))
                row.update(success=success, episode_length=length, train_time_s=trained.wall_time_s,
                           from_cache=trained.from_cache)
                for r in (row, *abl, *com):
                    r["kind"] = kind
                runs.append(row)
                ablations += abl
                comms += com
                curves += [{"kind": kind, "penalty": penalty, "seed": seed, "steps": s, "success": v}
                           for s, v in trained.curve]
                policies[(kind, penalty, seed)], partitions[(kind, penalty, seed)] = trained.policy, part
    finally:
        torch.set_num_threads(threads)
    runs_df = pd.DataFrame(runs)
    local = runs_df[runs_df.kind == "local"]
    on = local[local.penalty == p.verdict_penalty].sort_values("seed")
    off = local[local.penalty == 0.0].sort_values("seed")
    l1 = runs_df[runs_df.kind == "L1"].sort_values("seed")
    q_gain = seed_effect(on.modularity.values - off.modularity.values, "Q(penalty) - Q(none)", p.n_boot, p.seed)
    diss = seed_effect((on.dissociation - on.random_dissociation).values, "dissociation(module) - dissociation(random)",
                       p.n_boot, p.seed)
    return Result(
        q_gain, diss, seed_effect(on.x_selectivity.values, "X module: X error - Y error", p.n_boot, p.seed),
        seed_effect(on.y_selectivity.values, "Y module: Y error - X error", p.n_boot, p.seed),
        float(on.success.mean()), float(off.success.mean()), p.verdict_penalty,
        seed_effect(on.dissociation.values - off.dissociation.values, "D(penalty) - D(none)", p.n_boot, p.seed),
        seed_effect(on.modularity.values - l1.modularity.values, "Q(locality) - Q(plain L1)", p.n_boot, p.seed)
        if len(l1) else None,
        runs_df, pd.DataFrame(ablations),
        pd.DataFrame(comms), pd.DataFrame(curves), policies, partitions, p.grid_size,
    )


def verdict(r: Result) -> Verdict:
    """Two parts, each with its null, CIs by bootstrap over training seeds, at the verdict penalty.

    (a) *modularity*: reproduced when the 95 % CI of Q(penalty) − Q(no penalty) (paired by seed) lies above 0 and
    the penalised policies reach the goal in at least MIN_SUCCESS (0.8) of greedy episodes; partly when the CI lies
    above 0 but the success rate is below MIN_SUCCESS (modular but not competent); otherwise not reproduced.
    (b) *double dissociation*: per seed, D = ½[(X err − Y err | X module ablated) + (Y err − X err | Y module
    ablated)] and its null D₀ = mean |X err − Y err| over random same-size sets of active hidden neurons (an
    unsigned, hence stricter, null). Reproduced when the CI of D − D₀ lies above 0 and the CIs of both
    selectivities (X module: X err − Y err; Y module: Y err − X err) lie above 0; partly when the CI of D − D₀ lies
    above 0 but only one or neither selectivity CI does (more axis-specific than chance, not a clean double
    dissociation); otherwise not reproduced. Overall: `combine` of the two parts.
    """
    a_ok = r.q_gain.ci_low > 0
    if a_ok and r.success >= MIN_SUCCESS:
        a = REPRODUCED
    elif a_ok:
        a = PARTLY
    else:
        a = NOT_REPRODUCED
    if r.dissociation.ci_low > 0 and r.x_selectivity.ci_low > 0 and r.y_selectivity.ci_low > 0:
        b = REPRODUCED
    elif r.dissociation.ci_low > 0:
        b = PARTLY
    else:
        b = NOT_REPRODUCED
    parts = {"a_modularity": a, "b_dissociation": b}
    reasons = {
        REPRODUCED: "the penalty raises modularity and the policies still solve the task",
        PARTLY: f"the penalty raises modularity but the policies reach the goal in only {r.success:.0%} of episodes",
        NOT_REPRODUCED: "the penalty does not clearly raise modularity",
    }
    reasons_b = {
        REPRODUCED: "ablating each module hurts its own axis more than the other, beyond random ablations",
        PARTLY: "module ablations are more axis-specific than random ones but not a clean double dissociation",
        NOT_REPRODUCED: "module ablations are not more axis-specific than random ones",
    }
    return Verdict(combine(parts), f"(a) {reasons[a]}; (b) {reasons_b[b]}", parts)
