"""Finding 13: the vmapped training against a plain loop, unrolled derivatives against finite differences, the
closed-form Hessian against torch.func.hessian, the IF as the long-training limit on a converged case, the
distribution statistics, every verdict branch and boundary, and the notebook's defaults."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from torch.func import functional_call, grad, hessian

from emlib.findings import f13_distributional_attribution as f13
from emlib.findings import f13_distributional_attribution_stats as st
from emlib.findings import f13_distributional_attribution_train as tr
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / f"{f13.STEM}.ipynb"
CFG = tr.TrainConfig(hidden=3, steps=12, batch_size=4, lr=0.5, weight_decay=1e-2, schedule="linear", dtype="float64")


@pytest.fixture(scope="module")
def tiny():
    data = tr.load_digits_pair(3, 8, n_train=12, n_test=4, seed=0, dtype="float64")
    return data, tr.init_params(64, CFG, 2, seed=0), tr.batch_order(12, CFG, 2, seed=0)


def _plain_sgd(data, theta0, order, cfg, s, removed=None):
    """Seed s trained by a hand-written loop (autograd, no vmap / torch.func), example `removed` left out of its
    batches with the batch sum still divided by B."""
    module = tr.make_module(64, cfg.hidden).double()
    params = {k: v[s].clone().requires_grad_(True) for k, v in theta0.items()}
    for t, lr in enumerate(tr.learning_rates(cfg)):
        idx = [int(i) for i in order[s, t] if int(i) != removed]
        z = functional_call(module, params, (data.x_train[idx],)).squeeze(-1)
        y = 2 * data.y_train[idx] - 1
        loss = torch.nn.functional.softplus(-y * z).sum() / cfg.batch_size
        loss = loss + 0.5 * cfg.weight_decay * sum((p * p).sum() for p in params.values())
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (p - lr * g).detach().requires_grad_(True) for (k, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        return functional_call(module, params, (data.x_test,)).squeeze(-1)


def test_batch_order_is_per_seed_epochs_of_permutations():
    order = tr.batch_order(12, dataclasses.replace(CFG, steps=6), 3, seed=0)
    assert order.shape == (3, 6, 4)
    for s in range(3):
        for epoch in range(2):
            assert sorted(order[s, 3 * epoch: 3 * epoch + 3].reshape(-1).tolist()) == list(range(12))
    assert not torch.equal(order[0], order[1])
    assert torch.equal(order, tr.batch_order(12, dataclasses.replace(CFG, steps=6), 3, seed=0))


def test_learning_rate_schedules():
    assert tr.learning_rates(dataclasses.replace(CFG, steps=4)) == pytest.approx([0.5, 0.375, 0.25, 0.125])
    assert tr.learning_rates(dataclasses.replace(CFG, steps=3, schedule="constant")) == [0.5] * 3


def test_vmapped_training_and_removal_match_a_plain_loop(tiny):
    data, theta0, order = tiny
    out = tr.retrain_without(theta0, order, data, CFG, [5, 0], data.x_test)  # [3, S, M]
    for s in range(2):
        torch.testing.assert_close(out[0, s], _plain_sgd(data, theta0, order, CFG, s), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[1, s], _plain_sgd(data, theta0, order, CFG, s, removed=5), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[2, s], _plain_sgd(data, theta0, order, CFG, s, removed=0), rtol=1e-10, atol=1e-10)
    assert (out[1] - out[0]).abs().max() > 1e-4  # the removal does something


def test_unrolled_gradient_matches_central_finite_differences(tiny):
    data, theta0, order = tiny
    x = data.x_test[1]
    grads, states = tr.unrolled_grad(theta0, order, data, CFG, x, checkpoints=[6, 12], chunk=1)
    eps = 1e-5
    for k in (0, 7, 11):
        w = torch.ones(2, 12, dtype=torch.float64)
        hi, lo = w.clone(), w.clone()
        hi[:, k] += eps
        lo[:, k] -= eps
        for t in (6, 12):
            cfg = dataclasses.replace(CFG, steps=12)
            z_hi = tr.logits(tr.train(theta0, order, data, cfg, hi, checkpoints=[t])[t], x[None], 3)[:, 0]
            z_lo = tr.logits(tr.train(theta0, order, data, cfg, lo, checkpoints=[t])[t], x[None], 3)[:, 0]
            torch.testing.assert_close(grads[t][:, k], (z_hi - z_lo) / (2 * eps), rtol=1e-6, atol=1e-9)
    final = tr.train(theta0, order, data, CFG)
    torch.testing.assert_close(states[12]["0.weight"], final["0.weight"])


def test_closed_form_hessian_matches_torch_func(tiny):
    data, theta0, order = tiny
    params = tr.train(theta0, order, data, CFG)
    hess, grads, gz = tr.hessian_parts(params, data, CFG, data.x_test[0])
    module = tr.make_module(64, 3).double()
    names = list(params)
    shapes = [params[k].shape[1:] for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    sign = 2 * data.y_train - 1
    for s in range(2):
        flat = torch.cat([params[k][s].reshape(-1) for k in names])

        def unflat(f):
            return {k: v.reshape(sh) for k, v, sh in zip(names, f.split(sizes), shapes)}

        def objective(f):
            z = functional_call(module, unflat(f), (data.x_train,)).squeeze(-1)
            return torch.nn.functional.softplus(-sign * z).mean() + 0.5 * CFG.weight_decay * (f * f).sum()

        torch.testing.assert_close(hess[s], hessian(objective)(flat), rtol=1e-9, atol=1e-12)
        def first_loss(f):
            return torch.nn.functional.softplus(-sign[0] * functional_call(module, unflat(f), (data.x_train[0],)))[0]

        torch.testing.assert_close(grads[s, 0], grad(first_loss)(flat))


def test_influence_function_is_the_limit_of_unrolled_differentiation_at_a_minimum():
    data = tr.load_digits_pair(3, 8, n_train=10, n_test=2, seed=1, dtype="float64")
    cfg = tr.TrainConfig(hidden=2, steps=400, batch_size=10, lr=0.5, weight_decay=0.1, schedule="constant",
                         dtype="float64")
    theta0, order = tr.init_params(64, cfg, 1, seed=0), tr.batch_order(10, cfg, 1, seed=0)
    grads, states = tr.unrolled_grad(theta0, order, data, cfg, data.x_test[0], checkpoints=[400])
    hess, _, _ = tr.hessian_parts(states[400], data, cfg, data.x_test[0])
    assert torch.linalg.eigvalsh(hess)[0, 0] > 0  # a minimum: full-batch GD has converged
    inf, lam = tr.influence(states[400], data, cfg, data.x_test[0], damping=0.0)
    assert lam.tolist() == [0.0]  # positive definite: no damping added
    torch.testing.assert_close(inf, grads[400], rtol=1e-4, atol=1e-8)


def test_influence_raises_the_damping_at_a_saddle(tiny):
    data, theta0, order = tiny
    params = {k: torch.zeros_like(v) for k, v in theta0.items()}  # all units dead: a saddle of the objective
    hess, grads, gz = tr.hessian_parts(params, data, CFG, data.x_test[0])
    e_min = torch.linalg.eigvalsh(hess)[:, 0]
    assert (e_min < 0).all()
    inf, lam = tr.influence(params, data, CFG, data.x_test[0], damping=0.05)
    torch.testing.assert_close(lam, 0.05 - e_min)
    expect = -torch.einsum("snp,sp->sn", grads, torch.linalg.solve(
        hess + lam[:, None, None] * torch.eye(hess.shape[1], dtype=hess.dtype), gz[..., None])[..., 0]) / 12
    torch.testing.assert_close(inf, expect)


def test_shifts_of_known_distributions():
    base = np.array([0.0, 1.0, 2.0, 3.0])
    moved = np.stack([base + 0.5, 2 * base, base[::-1]])
    assert st.shift(base, moved, "mean") == pytest.approx([0.5, 1.5, 0.0])
    assert st.shift(base, moved, "sd") == pytest.approx([0.0, base.std(ddof=1), 0.0])
    assert st.shift(base, moved, "var") == pytest.approx([0.0, 3 * base.var(ddof=1), 0.0])
    assert st.shift(base, moved, "q0.5") == pytest.approx([0.5, 1.5, 0.0])
    a, b = np.random.default_rng(0).normal(size=(2, 30))
    assert st.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert np.isnan(st.pearson(np.ones(5), a[:5]))


def test_corr_ci_of_an_exact_prediction_is_one_and_the_null_is_low():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    moved = base[None] + rng.normal(scale=0.1, size=(12, 1)) * (1 + base[None])  # varied mean and sd shifts
    assert st.corr_ci(base, moved, moved, "var", n_boot=50, seed=0, method="spearman") == pytest.approx((1, 1, 1))
    r, lo, hi = st.corr_ci(base, moved, moved, "mean", n_boot=50, seed=0)
    assert (r, lo, hi) == pytest.approx((1, 1, 1))
    x = rng.normal(size=12)
    assert st.permutation_null(x, x, n_perm=200, seed=0) < 0.7


def test_spearman_is_pearson_of_ranks():
    a, b = np.random.default_rng(1).normal(size=(2, 25))
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert st.correlation(a, b, "spearman") == pytest.approx(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------- verdicts on synthetic results


def _eff(lo: float, value: float | None = None) -> Effect:
    return Effect("e", lo + 0.05 if value is None else value, lo, lo + 0.1)


def _result(a_lo=(0.9, 0.9), nulls=(0.3, 0.3), movers=(2, 8, 1, 32), drop_lo=0.05, final=(0.3, 0.4)):
    return f13.Result(
        corr_mean=_eff(a_lo[0]), corr_var=_eff(a_lo[1]), null_mean=nulls[0], null_var=nulls[1], r_min=0.8,
        confirmed_top=movers[0], n_top=movers[1], confirmed_random=movers[2], n_random=movers[3],
        err_drop=_eff(drop_lo), err_final=final[0], err_null_final=final[1], e_max=0.5,
    )


@pytest.mark.parametrize("a_lo, nulls, expected", [
    ((0.9, 0.9), (0.3, 0.3), REPRODUCED),
    ((0.8, 0.8), (0.3, 0.3), REPRODUCED),  # at R_MIN exactly
    ((0.8, 0.7999), (0.3, 0.3), PARTLY),  # just under for the variance
    ((0.7999, 0.9), (0.3, 0.3), PARTLY),
    ((0.7, 0.7), (0.3, 0.3), NOT_REPRODUCED),
    ((0.85, 0.85), (0.85, 0.3), PARTLY),  # not above the shuffled null for the mean
    ((0.85, 0.85), (0.9, 0.9), NOT_REPRODUCED),
])
def test_verdict_a(a_lo, nulls, expected):
    assert f13.verdict_a(_result(a_lo=a_lo, nulls=nulls)) == expected


@pytest.mark.parametrize("movers, expected", [
    ((2, 8, 1, 32), REPRODUCED),
    ((1, 8, 3, 32), REPRODUCED),  # 1/8 = 0.125 > 3/32
    ((1, 8, 4, 32), PARTLY),  # 1/8 = 4/32: no better than random
    ((1, 8, 5, 32), PARTLY),
    ((0, 8, 1, 32), PARTLY),  # movers exist, the method found none
    ((0, 8, 0, 32), NOT_REPRODUCED),
])
def test_verdict_b(movers, expected):
    assert f13.verdict_b(_result(movers=movers)) == expected


@pytest.mark.parametrize("drop_lo, final, expected", [
    (0.05, (0.3, 0.4), REPRODUCED),
    (1e-9, (0.5, 0.6), REPRODUCED),  # drop just above zero, final error at E_MAX exactly
    (0.05, (0.5001, 0.6), PARTLY),  # just over E_MAX
    (0.05, (0.3, 0.3), PARTLY),  # no better than another seed's IF
    (0.0, (0.3, 0.4), NOT_REPRODUCED),  # a CI touching zero is no drop
    (-0.1, (0.1, 0.9), NOT_REPRODUCED),
])
def test_verdict_c(drop_lo, final, expected):
    assert f13.verdict_c(_result(drop_lo=drop_lo, final=final)) == expected


def test_verdict_combines_parts():
    assert f13.verdict(_result()).label == REPRODUCED
    v = f13.verdict(_result(movers=(0, 8, 0, 32)))
    assert v.label == PARTLY and v.parts["b_variance_movers"] == NOT_REPRODUCED
    v = f13.verdict(_result(a_lo=(0.1, 0.1), movers=(0, 8, 0, 32), drop_lo=-1))
    assert v.label == NOT_REPRODUCED


# ---------------------------------------------------------------- parameters, a tiny run, the notebook


def test_params_reject_inconsistent_values():
    with pytest.raises(ParamError, match="DIGIT_A and DIGIT_B"):
        f13.Params(digit_a=3, digit_b=3)
    with pytest.raises(ParamError, match="LENGTHS"):
        f13.Params(lengths=[100, 50])
    with pytest.raises(ParamError, match="AGREE_SEEDS"):
        f13.Params(n_seeds=8, agree_seeds=16)
    assert f13.Params(lengths="10,20").lengths == [10, 20]


def test_tiny_run_is_finite_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    p = f13.Params(n_train=20, n_test=5, hidden=3, steps=8, batch_size=5, n_seeds=6, n_random=4, n_top=2,
                   lengths=[4, 8], agree_seeds=4, n_boot=20)
    r = f13.run(p)
    assert not r.info["from_cache"] and len(r.examples) >= 4 and r.arrays["actual"].shape[1] == 6
    assert np.isfinite([r.corr_mean.value, r.corr_var.value, r.err_drop.ci_low, r.err_final]).all()
    assert list(r.agreement["length"]) == [4, 8]
    again = f13.run(p)
    assert again.info["from_cache"] and again.corr_var == r.corr_var
    assert f13.verdict(r).label in (REPRODUCED, PARTLY, NOT_REPRODUCED)


def test_notebook_defaults_equal_params_defaults():
    declared = pm.inspect_notebook(str(NOTEBOOK))
    assert set(declared) - {"OUTPUT_DIR"} == set(f13.Params.names())
    defaults = f13.Params()
    for name in f13.Params.names():
        assert getattr(defaults, name.lower()) == ast.literal_eval(declared[name]["default"]), name
