"""Finding 11 (COAR with a KAN surrogate): splines against scipy and pykan, masked forward passes against plain
ones, interactions on functions with known answers, surrogates on data with known structure, verdict rules on
synthetic Results (every branch, every boundary), and the notebook's defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch
from scipy.interpolate import BSpline

from emlib.findings import f11_coar_kan as f11
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError
from emlib.findings.f11_coar_kan_model import (
    DigitsCNN,
    interactions_from_values,
    margins_from_logits,
    masked_margins,
    pair_index,
    pair_masks,
    sample_masks,
)
from emlib.findings.f11_coar_kan_plots import pair_matrix
from emlib.findings.f11_coar_kan_seed import SeedRun, pair_scores, run_seed
from emlib.findings.f11_coar_kan_surrogate import (
    BatchedKAN,
    K,
    KanConfig,
    bspline_basis,
    column_corr,
    cubic_bspline_basis,
    cubic_spline,
    fit_kan,
    fit_linear,
    predict_kan,
    predict_linear,
    uniform_knots,
)

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "11_coar_kan.ipynb"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- splines


def test_bspline_basis_matches_scipy():
    knots = uniform_knots(4, K, -1.0, 1.0)
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    ours = bspline_basis(x, knots.double(), K).numpy()
    ref = BSpline.design_matrix(x.numpy(), knots.double().numpy(), K).toarray()
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-10)  # partition of unity on the grid


def test_cubic_closed_form_equals_cox_de_boor_and_sparse_evaluation():
    t = torch.linspace(-1, 1, 57)
    np.testing.assert_allclose(cubic_bspline_basis(t, 5), bspline_basis(t, uniform_knots(5, 3), 3), atol=1e-6)
    coef = torch.randn(2, 3, 5 + 3)
    tt = torch.rand(2, 11, 3) * 2 - 1
    tt[0, 0, 0], tt[1, 1, 2] = 1.0, -1.0  # both ends of the grid
    dense = (cubic_bspline_basis(tt, 5) * coef[:, None]).sum(-1)
    np.testing.assert_allclose(cubic_spline(tt, coef, 5), dense, atol=1e-5)


def test_spline_basis_and_first_layer_match_pykan():
    pytest.importorskip("kan")
    from kan.KANLayer import KANLayer
    from kan.spline import B_batch

    layer = KANLayer(in_dim=3, out_dim=2, num=4, k=3, grid_range=[0, 1])
    x = torch.rand(20, 3)
    ours = bspline_basis(x, uniform_knots(4, 3, 0.0, 1.0), 3)
    np.testing.assert_allclose(ours, B_batch(x, layer.grid, k=3), atol=1e-5)
    # our first layer with pykan's edges (scale_base * silu + scale_sp * spline) gives pykan's outputs
    kan = BatchedKAN(1, 3, KanConfig(hidden=2, grid=4))
    with torch.no_grad():
        kan.wb1.copy_(layer.scale_base.unsqueeze(0))
        c = layer.coef * layer.scale_sp.unsqueeze(-1)  # (in, out, nb)
        kan.c1.copy_(c.permute(0, 2, 1).reshape(1, -1, 2))
        np.testing.assert_allclose(kan.hidden(x)[0], layer(x)[0], atol=1e-5)


def test_binary_fast_path_equals_general_first_layer():
    kan = BatchedKAN(3, 5, KanConfig(hidden=2, grid=3, seed=1))
    with torch.no_grad():
        kan.c1.normal_()
        kan.wb1.normal_()
    x = torch.bernoulli(torch.full((16, 5), 0.5))
    assert len(kan.features(x)) == 3  # binary inputs take the fast path
    general = (bspline_basis(x, kan.knots1, K).flatten(1), torch.nn.functional.silu(x))
    with torch.no_grad():
        np.testing.assert_allclose(kan.hidden(x), kan.hidden(x, general), atol=1e-5)


def test_update_grid_keeps_the_function_on_its_inputs():
    kan = BatchedKAN(2, 4, KanConfig(hidden=3, grid=5))
    with torch.no_grad():
        kan.c1.mul_(20)  # hidden values well outside the initial [-1, 1] grid
    x = torch.bernoulli(torch.full((64, 4), 0.6))
    before = kan(x).detach()
    kan.update_grid(x)
    h = kan.hidden(x)
    assert (kan.lo2 <= h.amin(1)).all() and (kan.hi2 >= h.amax(1)).all()
    assert (kan(x).detach() - before).abs().max() < 0.05 * before.abs().max() + 1e-3


# ---------------------------------------------------------------- surrogates


def test_fit_linear_recovers_known_coefficients_and_has_no_interactions():
    rng = np.random.default_rng(0)
    x = sample_masks(200, 6, 0.3, rng)
    beta = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [-1.0, 1.0], [2.0, 0.5], [0.0, 0.0]])
    y = 0.7 + x @ beta
    w = fit_linear(x, y)
    np.testing.assert_allclose(w[1:], beta, atol=1e-8)
    np.testing.assert_allclose(predict_linear(w, x), y, atol=1e-8)
    np.testing.assert_allclose(interactions_from_values(predict_linear(w, pair_masks(6)), 6), 0.0, atol=1e-8)


def test_column_corr_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(column_corr(a, b), expected)
    assert np.isnan(column_corr(np.ones((5, 1)), b[:5, :1])[0])


def test_kan_finds_an_interaction_the_linear_model_cannot():
    rng = np.random.default_rng(0)
    n = 6
    x = sample_masks(600, n, 0.5, rng)
    y = (x[:, :3] @ np.array([1.0, 0.5, -0.5]) + 2.0 * x[:, 0] * x[:, 1])[:, None]  # one AND interaction
    y = y + rng.normal(size=y.shape) * 0.05
    tr, ho = slice(0, 400), slice(400, None)
    model, mean, sd, losses = fit_kan(x[tr], y[tr], KanConfig(hidden=3, grid=3, steps=300, lr=0.03))
    assert losses[-1] < losses[0]
    lin = column_corr(predict_linear(fit_linear(x[tr], y[tr]), x[ho]), y[ho])[0]
    kan = column_corr(predict_kan(model, mean, sd, x[ho]), y[ho])[0]
    assert kan > lin + 0.02
    i_kan = interactions_from_values(predict_kan(model, mean, sd, pair_masks(n))[:, 0], n)
    a, b = pair_index(n)
    assert (a[np.argmax(np.abs(i_kan))], b[np.argmax(np.abs(i_kan))]) == (0, 1)
    assert i_kan[np.argmax(np.abs(i_kan))] == pytest.approx(2.0, abs=0.5)


# ---------------------------------------------------------------- network and perturbations


def test_margins_from_logits_by_hand():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    np.testing.assert_allclose(margins_from_logits(logits, torch.tensor([1, 0])), [3.0, -3.0])


def test_masked_margins_equal_plain_forward_passes():
    torch.manual_seed(0)
    net = DigitsCNN(3, 4).eval()
    x, y = torch.rand(5, 1, 8, 8), np.array([0, 3, 9, 2, 5])
    masks = sample_masks(7, 7, 0.4, np.random.default_rng(0))
    masks[0] = 1.0
    masks[1, 3:] = 0.0  # all of conv2 ablated: the logits are the head's bias
    got = masked_margins(net, x, y, masks, chunk=3)
    with torch.no_grad():
        ref = np.stack([margins_from_logits(net(x, torch.tensor(m)), torch.tensor(y)).numpy() for m in masks])
        np.testing.assert_allclose(got[0], margins_from_logits(net(x), torch.tensor(y)).numpy(), atol=1e-5)
        bias_margin = margins_from_logits(net.head.bias.expand(5, -1), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(got[1], bias_margin, atol=1e-5)


def test_pair_interactions_of_a_known_function():
    n = 4
    masks = pair_masks(n)
    assert masks.shape == (1 + n + n * (n - 1) // 2, n)
    values = 3.0 * masks[:, 0] * masks[:, 1] + masks[:, 2] - 2.0 * masks[:, 3]  # only 0 and 1 interact
    inter = interactions_from_values(values, n)
    expected = np.zeros(n * (n - 1) // 2)
    expected[0] = 3.0  # pair (0, 1): 1 - 1 - 1 + 4 with the other terms cancelling
    np.testing.assert_allclose(inter, expected)
    m = pair_matrix(inter, n)
    assert m[1, 0] == m[0, 1] == 3.0 and np.isnan(m[2, 2])


def test_sample_masks_ablation_rate():
    masks = sample_masks(4000, 10, 0.3, np.random.default_rng(0))
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert 1 - masks.mean() == pytest.approx(0.3, abs=0.01)


def test_pair_scores_by_hand():
    # 4 components, pairs in order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    i_pred = np.array([5.0, 0.0, 0.0, 0.0, 0.0, -4.0])
    i_net = np.array([2.0, 0.0, 1.0, 0.0, -6.0, 3.0])
    importance = np.array([1.0, 3.0, 0.1, 2.0])  # |β_a β_b| largest for (1,3) then (0,1)
    s = pair_scores(i_pred, i_net, importance, k=2)
    assert s["top_abs"] == pytest.approx((2.0 + 3.0) / 2)
    assert s["random_abs"] == pytest.approx(12.0 / 6)
    assert s["important_abs"] == pytest.approx((6.0 + 2.0) / 2)
    assert s["hits"] == 0.5 and s["chance_hits"] == pytest.approx(2 / 6)  # network's top 2: (1,3) and (2,3)


# ---------------------------------------------------------------- params, run (tiny), cache

TINY = dict(conv1_filters=3, conv2_filters=4, epochs=1, n_examples=4, alphas=[0.1, 0.3], n_train_masks=40,
            n_heldout_masks=20, kan_steps=3, top_k=2, n_seeds=2, n_boot=100)


def test_params_checks():
    with pytest.raises(ParamError, match="FOCUS_ALPHA"):
        f11.Params(alphas=[0.05, 0.3], focus_alpha=0.1)
    with pytest.raises(ParamError, match="TOP_K"):
        f11.Params(conv1_filters=2, conv2_filters=2, top_k=7)
    assert f11.Params(alphas="0.1,0.3").alphas == [0.1, 0.3]


def test_tiny_run_is_complete_and_cached():
    p = f11.Params(**TINY)
    r = f11.run(p)
    assert len(r.per_example) == 2 * 4 * 2 and len(r.interactions) == 2 * 4
    assert set(r.gain) == {0.1, 0.3} and np.isfinite(r.top_vs_random.value)
    assert r.runs[0].i_kan.shape == (4, 21) and r.runs[0].linear_weights.shape == (4, 7)
    again = run_seed(p, p.seed)
    assert again.network["from_cache"]
    pd.testing.assert_frame_equal(again.per_example, r.runs[0].per_example, check_dtype=False)
    np.testing.assert_allclose(again.i_net, r.runs[0].i_net)
    assert isinstance(f11.verdict(r).label, str)


def test_notebook_defaults_equal_params_defaults():
    declared = pm.inspect_notebook(str(NOTEBOOK))
    assert set(declared) - {"OUTPUT_DIR"} == set(f11.Params.names())
    defaults = f11.Params()
    for name in f11.Params.names():
        assert getattr(defaults, name.lower()) == ast.literal_eval(declared[name]["default"]), name


# ---------------------------------------------------------------- statistics and verdicts


def test_effect_of_constant_values_has_a_zero_width_ci():
    e = f11.effect_of("x", np.full(6, 0.25), np.tile([0, 1, 2], 2), np.repeat([0, 1], 3), n_boot=200, seed=0)
    assert (e.value, e.ci_low, e.ci_high) == pytest.approx((0.25, 0.25, 0.25))
    one = f11.effect_of("x", np.arange(5.0), np.arange(5), np.zeros(5), n_boot=500, seed=0)
    assert one.value == pytest.approx(2.0) and one.ci_low < 2.0 < one.ci_high


def _eff(lo: float) -> Effect:
    return Effect("e", lo + 0.01, lo, lo + 0.02)


def _result(gains: list[float], nulls: list[float], top: float) -> f11.Result:
    alphas = [0.05, 0.1, 0.3][: len(gains)]
    return f11.Result({a: _eff(g) for a, g in zip(alphas, gains)}, {a: _eff(v) for a, v in zip(alphas, nulls)},
                      _eff(top), _eff(-1.0))


@pytest.mark.parametrize("gains, nulls, expected", [
    ([0.01, 0.01, 0.01], [0.01, 0.01, 0.01], REPRODUCED),
    ([1e-9, 1e-9, 1e-9], [1e-9, 1e-9, 1e-9], REPRODUCED),  # just past the boundary
    ([0.0, 0.01, 0.01], [0.01, 0.01, 0.01], PARTLY),  # a CI touching zero does not pass
    ([0.01, 0.01, 0.01], [0.01, 0.0, 0.01], PARTLY),  # beats linear but not beyond the additive null at one α
    ([-0.01, -0.01, 0.02], [0.02, 0.02, 0.02], PARTLY),
    ([0.0, 0.0, 0.0], [0.01, 0.01, 0.01], NOT_REPRODUCED),
    ([0.01, 0.01, 0.01], [-0.01, 0.0, -1.0], NOT_REPRODUCED),
])
def test_verdict_a_branches_and_boundaries(gains, nulls, expected):
    assert f11.verdict_a(_result(gains, nulls, 0.1)) == expected


@pytest.mark.parametrize("top, expected", [(0.5, REPRODUCED), (1e-9, REPRODUCED), (0.0, NOT_REPRODUCED),
                                           (-0.2, NOT_REPRODUCED)])
def test_verdict_b_boundary(top, expected):
    assert f11.verdict_b(_result([0.01], [0.01], top)) == expected


@pytest.mark.parametrize("gains, top, label", [
    ([0.01, 0.01], 0.1, REPRODUCED),
    ([0.01, 0.0], 0.1, PARTLY),
    ([0.0, 0.0], 0.1, PARTLY),
    ([0.01, 0.01], 0.0, PARTLY),
    ([0.0, 0.0], 0.0, NOT_REPRODUCED),
])
def test_verdict_combines_parts(gains, top, label):
    v = f11.verdict(_result(gains, [0.01] * len(gains), top))
    assert v.label == label
    assert set(v.parts) == {"a_counterfactuals", "b_interactions"}
    assert "alpha" in v.reason and "random pairs" in v.reason


def test_seed_run_round_trip(tmp_path):
    run = SeedRun({"seed": 3, "test_accuracy": 0.9}, pd.DataFrame({"a": [1.0, 2.0]}), pd.DataFrame({"b": [3]}),
                  np.ones((2, 3)), np.zeros((2, 3)), np.eye(2))
    run.save(tmp_path)
    back = SeedRun.load(tmp_path)
    assert back.network == run.network
    np.testing.assert_array_equal(back.linear_weights, np.eye(2))
    pd.testing.assert_frame_equal(back.per_example, run.per_example)
