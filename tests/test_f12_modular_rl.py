"""Finding 12: the X/Y MiniGrid task, the wiring cost and re-seating, the weight graph and its communities,
ablations read as X/Y errors (checked on hand-built policies), caching, the parameters, and the verdict rule on
synthetic Results (every branch, every boundary)."""

from __future__ import annotations

import ast
import math

import networkx as nx
import numpy as np
import papermill as pm
import pytest
import torch

from emlib.findings import f12_modular_rl as f12
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError
from emlib.findings.f12_modular_rl_env import XYNavEnv, encode, input_axes, obs_size
from emlib.findings.f12_modular_rl_graph import (
    ablate, active_units, axis_errors, community_axes, louvain, modularity, module_units, node_axes, random_like,
    weight_graph,
)
from emlib.findings.f12_modular_rl_train import Policy, PPOConfig, evaluate_success, relayout, wiring_cost
from emlib.report.runner import repo_root

NOTEBOOK = repo_root() / "notebooks" / "12_modular_rl.ipynb"


# ---------------------------------------------------------------- environment


def test_encode_is_two_one_hots_in_offset_order():
    # grid 5: interior 3, offsets -2..2 -> 5 units per axis
    obs = encode(1, -2, 5)[0]
    expected = np.zeros(10, dtype=np.float32)
    expected[3] = 1.0  # dx = +1 -> index 1 + 2
    expected[5 + 0] = 1.0  # dy = -2 -> index 0 of the Y block
    assert np.array_equal(obs, expected)
    assert obs_size(5) == 10 and input_axes(5) == ["X"] * 5 + ["Y"] * 5


def test_moves_follow_the_actions_and_walls_block_them():
    env = XYNavEnv(grid_size=6, slip=0.0, seed=0)
    env.reset(seed=0)
    env.agent_pos, env.goal_pos = (2, 2), (4, 4)
    env.grid.set(2, 2, None)
    env.grid.set(4, 4, None)
    from minigrid.core.world_object import Goal
    env.put_obj(Goal(), 4, 4)
    for action, (mx, my) in zip(range(4), [(-1, 0), (1, 0), (0, -1), (0, 1)]):
        before = env.agent_pos
        obs, reward, term, trunc, _ = env.step(action)
        assert tuple(env.agent_pos) == (before[0] + mx, before[1] + my)
        assert np.array_equal(obs, encode(*env.offsets(), 6)[0]) and reward == 0 and not term
    env.agent_pos = (1, 1)
    env.step(0)  # the outer wall is at x = 0
    assert tuple(env.agent_pos) == (1, 1)


def test_reaching_the_goal_ends_the_episode_with_minigrids_reward():
    env = XYNavEnv(grid_size=6, slip=0.0, max_steps=10, seed=1)
    env.reset(seed=1)
    dx, dy = env.offsets()
    actions = [1 if dx > 0 else 0] * abs(dx) + [3 if dy > 0 else 2] * abs(dy)
    for i, a in enumerate(actions):
        _, reward, term, _, _ = env.step(a)
    assert term and env.offsets() == (0, 0)
    assert reward == pytest.approx(1 - 0.9 * len(actions) / 10)


def test_slip_draws_random_moves_and_obstacles_never_cut_the_goal_off():
    env = XYNavEnv(grid_size=6, slip=1.0, n_obstacles=6, seed=2)
    for s in range(20):
        env.reset(seed=s)
        assert env._reachable()
    env = XYNavEnv(grid_size=8, slip=1.0, max_steps=10_000, seed=3)
    env.reset(seed=3)
    moves = set()
    for _ in range(60):
        before = tuple(env.agent_pos)
        _, _, term, _, _ = env.step(0)  # always "left": with slip 1 every direction shows up
        moves.add((env.agent_pos[0] - before[0], env.agent_pos[1] - before[1]))
        if term:
            env.reset()
    assert {(1, 0), (0, 1), (0, -1)} <= moves


# ---------------------------------------------------------------- wiring


def test_wiring_cost_is_weight_times_distance_by_hand():
    pol = Policy(2, (2,), 2, layer_gap=0.5)
    with torch.no_grad():
        for layer in pol.layers:
            layer.weight.zero_()
        pol.layers[0].weight[0, 1] = 2.0  # input 1 (x = .75) -> hidden 0 (x = .25): length sqrt(.5^2 + .5^2)
        pol.layers[1].weight[1, 1] = -3.0  # hidden 1 (x = .75) -> output 1 (x = .75): length .5
    assert wiring_cost(pol).item() == pytest.approx(2.0 * math.sqrt(0.5) + 3.0 * 0.5, rel=1e-6)


def test_relayout_moves_neurons_next_to_what_they_connect_and_never_adds_wire():
    torch.manual_seed(0)
    pol = Policy(4, (4,), 4, layer_gap=0.25)
    with torch.no_grad():
        pol.layers[0].weight.copy_(torch.eye(4).flip(0))  # hidden i reads input 3 - i: crossed wiring
        pol.layers[1].weight.copy_(torch.eye(4).flip(1))  # output j reads hidden 3 - j
    before = wiring_cost(pol).item()
    relayout(pol)
    assert wiring_cost(pol).item() < before
    # hidden i now sits above input 3 - i
    assert np.allclose(pol.pos[1][:, 0], pol.pos[0][::-1, 0])


# ---------------------------------------------------------------- graph


def _two_blocks() -> list[np.ndarray]:
    """inputs {0,1} -> hidden 0 -> output 0 and inputs {2,3} -> hidden 1 -> output 1, all weights 1."""
    w0 = np.zeros((2, 4))
    w0[0, :2] = w0[1, 2:] = 1.0
    return [w0, np.eye(2)]


def test_two_disjoint_blocks_have_modularity_one_half():
    g = weight_graph(_two_blocks())
    comms = louvain(g)
    assert sorted(sorted(c) for c in comms) == [[(0, 0), (0, 1), (1, 0), (2, 0)], [(0, 2), (0, 3), (1, 1), (2, 1)]]
    # two components, 3 unit edges each: Q = 2 * (3/6 - (6/12)^2) = 0.5
    assert modularity(g, comms) == pytest.approx(0.5)
    assert modularity(g, [set(g.nodes)]) == pytest.approx(0.0)
    assert modularity(g, comms) == pytest.approx(nx.community.modularity(g, comms))


def test_prune_drops_light_edges_relative_to_the_heaviest():
    ws = _two_blocks()
    ws[1][0, 1] = 0.009  # a light cross edge
    assert weight_graph(ws, prune=0.01).number_of_edges() == 6
    assert weight_graph(ws, prune=0.0).number_of_edges() == 7
    g = weight_graph([np.zeros((2, 4)), np.eye(2)], prune=0.01)
    assert active_units(g, 3) == [(1, 0), (1, 1)]
    g = weight_graph([np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]), np.array([[1.0, 0], [0, 0]])], prune=0.01)
    assert active_units(g, 3) == [(1, 0)]


def test_community_axes_by_majority_of_inputs_and_actions():
    axes = node_axes([10, 3, 4], grid_size=5)  # 5 X inputs, 5 Y inputs; actions X, X, Y, Y
    comms = [{(0, 0), (0, 1), (2, 2)}, {(0, 5), (2, 2), (2, 3)}, {(0, 0), (0, 5)}, {(1, 0)}]
    assert community_axes(comms, axes) == ["X", "Y", "", ""]
    assert module_units([{(0, 0), (1, 2), (1, 0), (2, 0)}, {(1, 1)}], ["X", "Y"], "X", 3) == [(1, 0), (1, 2)]


def test_random_like_matches_layer_counts_within_the_pool():
    rng = np.random.default_rng(0)
    pool = [(1, i) for i in range(5)] + [(2, i) for i in range(3)]
    for _ in range(20):
        out = random_like([(1, 0), (1, 3), (2, 1)], pool, rng)
        assert sum(u[0] == 1 for u in out) == 2 and sum(u[0] == 2 for u in out) == 1
        assert set(out) <= set(pool) and len(set(out)) == 3


# ---------------------------------------------------------------- ablations and errors


def _axis_policy(grid_size: int, gain: float) -> Policy:
    """Hidden unit per input (tanh(1)); left/right read the X block, up/down the Y block, by offset sign × gain."""
    n = obs_size(grid_size)
    pol = Policy(n, (n,), 4)
    offsets = np.arange(-(grid_size - 3), grid_size - 2)
    with torch.no_grad():
        pol.layers[0].weight.copy_(torch.eye(n))
        pol.layers[0].bias.zero_()
        w = torch.zeros(4, n)
        half = n // 2
        s = torch.as_tensor(np.sign(offsets), dtype=torch.float32) * gain
        w[0, :half], w[1, :half] = -s, s  # left when dx < 0, right when dx > 0
        w[2, half:], w[3, half:] = -s, s  # up when dy < 0, down when dy > 0
        pol.layers[1].weight.copy_(w)
        pol.layers[1].bias.zero_()
    return pol


def test_axis_errors_by_hand_and_at_chance():
    pol = _axis_policy(6, gain=2.0)
    # on every offset with dx != 0 the X logits are ±2·tanh(1): P(wrong | X move) = 1 / (1 + exp(4·tanh(1)))
    expected = 1 / (1 + math.exp(4 * math.tanh(1.0)))
    xe, ye = axis_errors(pol, 6)
    assert xe == pytest.approx(expected, rel=1e-5) and ye == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        for p in pol.parameters():
            p.zero_()
    assert axis_errors(pol, 6) == pytest.approx((0.5, 0.5))


def test_ablating_the_x_units_leaves_y_intact_and_the_original_untouched():
    pol = _axis_policy(6, gain=2.0)
    half = obs_size(6) // 2
    x_units = [(1, i) for i in range(half)]
    cut = ablate(pol, x_units)
    xe, ye = axis_errors(cut, 6)
    assert xe == pytest.approx(0.5) and ye == pytest.approx(axis_errors(pol, 6)[1])
    assert pol.layers[0].weight[0, 0].item() == 1.0  # a copy was ablated
    assert torch.equal(ablate(pol, [])(torch.eye(2 * half)), pol(torch.eye(2 * half)))


# ---------------------------------------------------------------- training, caching, evaluation


TINY = dict(grid_size=5, hidden=(4, 4), total_steps=64, n_envs=2, rollout=16, epochs=1, minibatches=2, swap_every=1)


def test_load_or_train_caches_the_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    cfg = PPOConfig(penalty=0.01, penalty_warmup=0.5, **TINY)
    first = f12.load_or_train(cfg)
    second = f12.load_or_train(cfg)
    assert not first.from_cache and second.from_cache
    assert [s for s, _ in first.curve] == [32, 64]
    np.testing.assert_array_equal(np.array(second.curve), np.array(first.curve))  # NaN: no episode ended
    for a, b in zip(first.policy.weights(), second.policy.weights()):
        assert np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(first.policy.pos, second.policy.pos))
    success, length = evaluate_success(second.policy, cfg, 4, seed=5)
    assert 0.0 <= success <= 1.0 and length >= 1


def test_run_end_to_end_on_a_tiny_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    p = f12.Params(grid_size=5, hidden=[4, 4], penalties=[0.0, 0.01], verdict_penalty=0.01, total_steps=64, n_envs=2,
                   rollout=16, epochs=1, minibatches=2, n_seeds=2, n_random=2, n_eval_episodes=2, n_boot=100)
    r = f12.run(p)
    assert len(r.runs) == 6 and r.runs.groupby(["kind", "penalty"]).size().to_dict() == {
        ("L1", 0.01): 2, ("local", 0.0): 2, ("local", 0.01): 2}  # the plain-L1 control at the verdict's strength
    assert r.q_vs_l1 is not None and r.dissociation_gain is not None
    assert set(r.ablations.ablation) == {"none", "X module", "Y module", "random (X size)",
                                                               "random (Y size)"}
    assert r.q_gain.ci_low <= r.q_gain.value <= r.q_gain.ci_high
    assert f12.verdict(r).label in (REPRODUCED, PARTLY, NOT_REPRODUCED)
    assert torch.get_num_threads() == 1  # conftest's setting is restored


def test_seed_effect_is_the_mean_with_a_bootstrap_ci():
    e = f12.seed_effect(np.array([0.1, 0.2, 0.3, 0.4]), "x", n_boot=500, seed=0)
    assert e.value == pytest.approx(0.25) and 0.1 <= e.ci_low <= 0.25 <= e.ci_high <= 0.4


# ---------------------------------------------------------------- parameters


def test_params_check_penalties_and_coerce_lists():
    p = f12.Params(penalties="0,0.01", verdict_penalty=0.01, hidden="8,8")
    assert p.penalties == [0.0, 0.01] and p.hidden == [8, 8]
    with pytest.raises(ParamError, match="PENALTIES: must include 0.0"):
        f12.Params(penalties=[0.001, 0.003])
    with pytest.raises(ParamError, match="VERDICT_PENALTY"):
        f12.Params(verdict_penalty=0.005)
    with pytest.raises(ParamError, match="MINIBATCHES"):
        f12.Params(minibatches=3)
    assert f12.Params().ppo(0.0, 1).penalty_warmup == 0.0  # no penalty, no ramp: one cache key


def test_notebook_defaults_equal_params_defaults():
    declared = pm.inspect_notebook(str(NOTEBOOK))
    assert set(declared) - {"OUTPUT_DIR"} == set(f12.Params.names())
    defaults = f12.Params()
    for name in f12.Params.names():
        assert getattr(defaults, name.lower()) == ast.literal_eval(declared[name]["default"]), name


# ---------------------------------------------------------------- verdict


def _eff(lo: float) -> Effect:
    return Effect("e", lo + 0.05, lo, lo + 0.1)


def _result(q_lo=0.1, success=0.9, d_lo=0.1, x_lo=0.1, y_lo=0.1) -> f12.Result:
    return f12.Result(_eff(q_lo), _eff(d_lo), _eff(x_lo), _eff(y_lo), success, 1.0)


@pytest.mark.parametrize("q_lo, success, expected", [
    (0.1, 0.9, REPRODUCED),
    (1e-9, f12.MIN_SUCCESS, REPRODUCED),  # just above 0, success exactly at the bar
    (1e-9, f12.MIN_SUCCESS - 1e-9, PARTLY),  # modular but not competent
    (0.0, 0.9, NOT_REPRODUCED),  # CI touching 0 is not above it
    (-0.1, 0.2, NOT_REPRODUCED),
])
def test_verdict_a(q_lo, success, expected):
    assert f12.verdict(_result(q_lo=q_lo, success=success)).parts["a_modularity"] == expected


@pytest.mark.parametrize("d_lo, x_lo, y_lo, expected", [
    (1e-9, 1e-9, 1e-9, REPRODUCED),
    (0.1, 0.0, 0.1, PARTLY),  # single dissociation
    (0.1, 0.1, 0.0, PARTLY),
    (0.1, -0.1, -0.1, PARTLY),
    (0.0, 0.1, 0.1, NOT_REPRODUCED),  # no better than random sets
    (-0.2, 0.1, 0.1, NOT_REPRODUCED),
])
def test_verdict_b(d_lo, x_lo, y_lo, expected):
    assert f12.verdict(_result(d_lo=d_lo, x_lo=x_lo, y_lo=y_lo)).parts["b_dissociation"] == expected


def test_verdict_combines_the_parts():
    assert f12.verdict(_result()).label == REPRODUCED
    assert f12.verdict(_result(d_lo=0.0)).label == PARTLY
    v = f12.verdict(_result(q_lo=0.0, d_lo=0.0))
    assert v.label == NOT_REPRODUCED and "(a)" in v.reason and "(b)" in v.reason
