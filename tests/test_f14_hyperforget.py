"""Finding 14 (HyperForget): the batched MLP against torch's own layers and optimiser, the DDPM's maths, the
per-seed helpers on hand-made cases, the nested bootstrap, and the verdict rule branch by branch, boundaries exact."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from torch import nn

from emlib.findings import f14_hyperforget as f14
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError
from emlib.findings.f14_hyperforget_diffusion import (
    Conditioner, cosine_schedule, fit_basis, sample_ddpm, train_ddpm,
)
from emlib.findings.f14_hyperforget_mlp import (
    N_CLASSES, class_metrics, forward, init_weights, load_split, n_params, retain_forget, train_batch, unflatten,
)
from emlib.findings.f14_hyperforget_seed import forget_target

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "14_hyperforget.ipynb"


def _reference_mlp(w: torch.Tensor, n_in: int, hidden: int) -> nn.Sequential:
    """nn.Linear layers holding the flat weights w (P,)."""
    w1, b1, w2, b2 = (t[0] for t in unflatten(w[None], n_in, hidden))
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))
    with torch.no_grad():
        net[0].weight.copy_(w1), net[0].bias.copy_(b1), net[2].weight.copy_(w2), net[2].bias.copy_(b2)
    return net


# ---------------------------------------------------------------- the batched MLP


def test_forward_matches_torch_linear_layers():
    n_in, hidden = 5, 4
    w = torch.randn(3, n_params(n_in, hidden))
    x = torch.randn(7, n_in)
    out = forward(w, x)
    assert out.shape == (3, 7, N_CLASSES)
    for b in range(3):
        torch.testing.assert_close(out[b], _reference_mlp(w[b], n_in, hidden)(x))


def test_init_weights_is_seeded_and_bounded_per_layer():
    n_in, hidden = 16, 4
    w = init_weights(2, n_in, hidden, seed=3)
    assert torch.equal(w, init_weights(2, n_in, hidden, seed=3))
    w1, b1, w2, b2 = unflatten(w, n_in, hidden)
    assert w1.abs().max() <= n_in ** -0.5 and b1.abs().max() <= n_in ** -0.5
    assert w2.abs().max() <= hidden ** -0.5 and b2.abs().max() <= hidden ** -0.5
    assert w2.abs().max() > n_in ** -0.5  # the output layer's wider range is used


def test_train_batch_equals_torch_adam_per_network():
    n_in, hidden, n = 6, 5, 12
    x, y = torch.randn(n, n_in), torch.arange(n) % N_CLASSES
    w0 = torch.randn(2, n_params(n_in, hidden)) * 0.3
    ew = torch.zeros(2, n)
    ew[0, :8] = 1 / 8  # network 0: descend the mean loss of the first 8 examples
    ew[1, y == 3] = -1 / float((y == 3).sum())  # network 1: ascend the loss of class 3
    lr = torch.tensor([0.01, 0.003])
    w, ck = train_batch(w0, x, y, ew, lr, steps=4, every=2)
    assert ck.shape == (2, 2, w0.shape[1]) and torch.equal(ck[-1], w)
    for b in range(2):
        net = _reference_mlp(w0[b], n_in, hidden)
        opt = torch.optim.Adam(net.parameters(), lr=float(lr[b]))
        for _ in range(4):
            ce = nn.functional.cross_entropy(net(x), y, reduction="none")
            opt.zero_grad()
            (ce * ew[b]).sum().backward()
            opt.step()
        flat = torch.cat([net[0].weight.flatten(), net[0].bias, net[2].weight.flatten(), net[2].bias])
        torch.testing.assert_close(w[b], flat, rtol=1e-4, atol=1e-5)


def test_class_metrics_and_retain_forget_by_hand():
    n_in, hidden = 3, 2
    w = torch.zeros(1, n_params(n_in, hidden))
    w[0, -N_CLASSES:] = torch.arange(N_CLASSES, dtype=torch.float32)  # b2: always predicts class 9
    x, y = torch.zeros(4, n_in), torch.tensor([9, 9, 1, 0])
    loss, acc = class_metrics(w, x, y)
    logp = torch.log_softmax(torch.arange(N_CLASSES, dtype=torch.float32), 0)
    assert acc[0, 9] == 1 and acc[0, 1] == 0 and acc[0, 0] == 0 and acc[0, 5] == 0  # absent classes: 0
    np.testing.assert_allclose(loss[0, [9, 1, 0]], -logp[[9, 1, 0]].numpy(), rtol=1e-6)
    counts = np.array([10, 30] + [0] * 7 + [60])
    per_class = np.array([0.5, 1.0] + [0.0] * 7 + [0.2])
    f, r = retain_forget(per_class, counts, 9)
    assert f == pytest.approx(0.2) and r == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)


def test_load_split_is_stratified_and_mnist_goes_through_openml(monkeypatch):
    s = load_split("digits", 0.5, seed=0, n_max=400)
    assert len(s.y_train) + len(s.y_test) == 400 and s.n_in == 64 and float(s.x_train.max()) <= 1.0
    assert abs(len(s.y_train) - len(s.y_test)) <= 1 and set(s.y_test.tolist()) == set(range(N_CLASSES))
    import sklearn.datasets

    class Fake:
        data, target = np.full((40, 784), 255.0), np.array([str(i % 10) for i in range(40)])

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", lambda *a, **k: Fake())
    m = load_split("mnist", 0.5, seed=0)
    assert m.n_in == 784 and float(m.x_train.max()) == 1.0 and m.y_train.dtype == torch.long
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("cifar")


# ---------------------------------------------------------------- the hypernetwork


def test_basis_round_trips_the_span_and_the_raw_space():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 3, generator=g) @ torch.randn(3, 12, generator=g) + 5.0  # rank 3 around a mean
    basis = fit_basis(w, 3)
    assert basis.dim == 3 and basis.explained.sum() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(basis.decode(basis.encode(w)), w, rtol=1e-4, atol=1e-4)
    assert torch.allclose(basis.encode(w).std(0), torch.ones(3), atol=1e-4)  # standardised coordinates
    one = fit_basis(w, 1)
    assert 0 < one.explained.sum() < 1
    raw = fit_basis(w, 0)
    assert raw.dim == 12
    torch.testing.assert_close(raw.decode(raw.encode(w)), w)


def test_conditioner_clamps_logs_and_standardises():
    losses = np.array([[0.001, 1.0], [0.05, 100.0]])
    cond = Conditioner(losses, floor=0.05, cap=50.0)
    z = cond(losses).numpy()
    assert z[0, 0] == z[1, 0] == 0  # both clamp to the floor: no spread, centred
    np.testing.assert_allclose(z[:, 1], [-1, 1], atol=1e-6)  # log 1 and log 50, standardised


def test_cosine_schedule_decreases_from_near_one():
    abar = cosine_schedule(50)
    assert abar.shape == (50,) and float(abar[0]) > 0.99 and float(abar[-1]) < 1e-3
    assert bool((abar[1:] < abar[:-1]).all())


class _Constant(nn.Module):
    """A 'denoiser' that always predicts the same clean point v (or zero noise)."""

    def __init__(self, v: torch.Tensor):
        super().__init__()
        self.v = v
        self.out = nn.Sequential(nn.Linear(1, len(v)))

    def forward(self, x, t, cond, keep):
        return self.v.expand(x.shape[0], -1)


def test_sampler_returns_the_predicted_clean_point():
    v = torch.tensor([0.5, -2.0, 1.0])
    x = sample_ddpm(_Constant(v), torch.zeros(4, 2), steps=20, guidance=0.0, seed=0, predict="x0")
    torch.testing.assert_close(x, v.expand(4, -1))
    clipped = sample_ddpm(_Constant(v), torch.zeros(2, 2), steps=20, guidance=2.0, seed=0, predict="x0", clip=1.0)
    torch.testing.assert_close(clipped, v.clamp(-1, 1).expand(2, -1))  # guidance of equal outputs changes nothing


def test_ddpm_learns_a_conditional_two_point_distribution():
    cond = torch.tensor([[1.0], [-1.0]]).repeat(64, 1)
    x = torch.cat([cond, -cond], 1)  # condition +1 -> (1, -1); -1 -> (-1, 1)
    for predict in ("x0", "eps"):
        model, curve = train_ddpm(x, cond, steps=20, iters=400, width=32, depth=1, lr=3e-3, batch_size=64,
                                  p_uncond=0.0, seed=0, predict=predict, log_every=100)
        assert len(curve) == 4 and curve[-1] < curve[0]
        out = sample_ddpm(model, torch.tensor([[1.0], [-1.0]]).repeat(8, 1), steps=20, guidance=0.0, seed=1,
                          predict=predict)
        assert (torch.sign(out) == torch.sign(x[:16])).float().mean() > 0.9, predict


# ---------------------------------------------------------------- per seed


def test_forget_target_uses_the_successful_unlearning_checkpoints():
    counts = np.full(N_CLASSES, 10)
    original = np.full(N_CLASSES, 1.0)
    acc = np.ones((5, N_CLASSES))
    acc[1:, 0] = 0.0  # rows 1-4 unlearned class 0
    acc[4, 1:] = 0.9  # ... but row 4 lost 10 points of retain accuracy: not successful
    losses = np.zeros((5, N_CLASSES))
    losses[:, 0] = [0.1, 4.0, 6.0, 8.0, 100.0]
    forget_class = np.array([-1, 0, 0, 0, 0])
    assert forget_target(losses, acc, forget_class, original, counts, 0.5) == pytest.approx(6.0)
    assert forget_target(losses, acc, forget_class, original, counts, 1.0) == pytest.approx(8.0)
    acc[1:4, 0] = 0.5  # none successful: the quantile over every unlearning checkpoint
    assert forget_target(losses, acc, forget_class, original, counts, 0.5) == pytest.approx(7.0)


def test_params_check_coerce_and_rotate_the_held_out_class():
    p = f14.Params(unlearn_lrs="1e-3,3e-3", held_out_class=9, seed=4)
    assert p.unlearn_lrs == [1e-3, 3e-3]
    assert [p.seed_config(i).held_out for i in range(3)] == [9, 0, 1]
    assert [p.seed_config(i).seed for i in range(2)] == [4, 5] and p.seed_config(1).split_seed == 4
    with pytest.raises(ParamError, match="N_RELEARN"):
        f14.Params(n_samples=2, n_relearn=3)
    with pytest.raises(ParamError, match="PREDICT"):
        f14.Params(predict="v")
    with pytest.raises(ParamError, match="HELD_OUT_CLASS"):
        f14.Params(held_out_class=10)


def test_notebook_defaults_equal_params_defaults():
    declared = pm.inspect_notebook(str(NOTEBOOK))
    assert set(declared) - {"OUTPUT_DIR"} == set(f14.Params.names())
    defaults = f14.Params()
    for name in f14.Params.names():
        assert getattr(defaults, name.lower()) == ast.literal_eval(declared[name]["default"]), name


def test_run_end_to_end_on_a_tiny_setting_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    p = f14.Params(n_max=300, hidden=4, train_steps=10, train_ckpt_every=5, unlearn_steps=2, ckpt_every=1,
                   n_components=4, diffusion_steps=3, diffusion_iters=3, denoiser_width=8, denoiser_depth=1,
                   n_samples=2, n_relearn=1, relearn_steps=1, n_seeds=2, n_boot=20)
    threads = torch.get_num_threads()
    r = f14.run(p)
    assert torch.get_num_threads() == threads
    assert len(r.models) == 2 * N_CLASSES * 2 * 2  # seeds x classes x conditions x samples
    assert r.models.held_out.sum() == 2 * 2 * 2 and set(r.seeds.held_out) == {8, 9}
    assert set(r.baselines.method) == {"original", "retrain", "ascent", "finetune", "ascent+repair"}
    assert (r.baselines[r.baselines.method == "retrain"].forget_acc == 0).all()  # never saw the class
    assert len(r.relearn) == 2 * (N_CLASSES + 2 * N_CLASSES)
    for e in (r.forget, r.retain_drop, r.conditioned, r.heldout_forget):
        assert e.ci_low <= e.value + 1e-9 <= e.ci_high + 2e-9
    assert len(list(tmp_path.rglob("seed.npz"))) == 2
    again = f14.run(p)
    assert again.models.equals(r.models)


# ---------------------------------------------------------------- statistics


def test_nested_bootstrap_degenerate_and_seed_level_cases():
    const = np.full((3, 2, 5), 0.25)
    assert f14.nested_bootstrap(const, n_boot=50) == (0.25, 0.25, 0.25)
    assert f14.nested_bootstrap(const, const * 0, n_boot=50) == (0.25, 0.25, 0.25)
    seeds = np.array([0.0, 1.0])[:, None, None] * np.ones((2, 1, 4))  # no spread within a seed
    v, lo, hi = f14.nested_bootstrap(seeds, n_boot=500)
    assert v == 0.5 and lo == 0.0 and hi == 1.0  # both seeds drawn alike happens often: the CI spans them


def test_nested_bootstrap_within_one_seed_matches_the_binomial_interval():
    rng = np.random.default_rng(0)
    a = (rng.random((1, 1, 400)) < 0.3).astype(float)
    v, lo, hi = f14.nested_bootstrap(a, n_boot=4000)
    half = 1.96 * np.sqrt(v * (1 - v) / 400)
    assert lo == pytest.approx(v - half, abs=0.01) and hi == pytest.approx(v + half, abs=0.01)


# ---------------------------------------------------------------- verdict


def _e(value: float, lo: float, hi: float) -> Effect:
    return Effect("e", value, lo, hi)


def _result(forget_hi=0.01, drop_hi=0.02, caused_lo=0.5, b=(0.5, 0.3, 0.1), tol=0.05, margin=0.05) -> f14.Result:
    bf, bd, bc = b
    return f14.Result(_e(0.0, 0.0, forget_hi), _e(0.0, -0.01, drop_hi), _e(0.9, caused_lo, 0.95),
                      _e(bf, bf - 0.1, bf), _e(bd, bd - 0.1, bd), _e(0.5, bc, 0.6), forget_tol=tol, retain_margin=margin)


def test_verdict_reproduced_at_the_exact_boundaries():
    v = f14.verdict(_result(forget_hi=0.05, drop_hi=0.05, caused_lo=1e-9))
    assert v.label == REPRODUCED and v.parts["a_trained_classes"] == REPRODUCED


def test_verdict_partly_when_only_one_of_forget_and_retain_holds():
    assert f14.verdict(_result(forget_hi=0.05 + 1e-9)).label == PARTLY  # keeps, forgets not (just past)
    assert f14.verdict(_result(drop_hi=0.05 + 1e-9)).label == PARTLY  # forgets, keeps not (just past)


def test_verdict_not_reproduced_without_the_null_or_without_both():
    assert f14.verdict(_result(caused_lo=0.0)).label == NOT_REPRODUCED  # the control gap's CI touches 0
    assert f14.verdict(_result(caused_lo=-0.2)).label == NOT_REPRODUCED
    assert f14.verdict(_result(forget_hi=0.5, drop_hi=0.5)).label == NOT_REPRODUCED


def test_verdict_tolerances_come_from_the_result():
    assert f14.verdict(_result(forget_hi=0.08, tol=0.08)).label == REPRODUCED
    assert f14.verdict(_result(drop_hi=0.08, margin=0.079)).label == PARTLY


def test_held_out_part_is_reported_beside_but_does_not_set_the_label():
    v = f14.verdict(_result(b=(0.5, 0.3, 0.1)))
    assert v.label == REPRODUCED and v.parts["b_held_out_class"] == NOT_REPRODUCED
    assert "(b) held-out class: no" in v.reason
    good = f14.verdict(_result(b=(0.01, 0.01, 0.1)))
    assert good.parts["b_held_out_class"] == REPRODUCED and "(b) held-out class: forget" in good.reason
    part = f14.verdict(_result(b=(0.01, 0.3, 0.1)))
    assert part.parts["b_held_out_class"] == PARTLY
    assert f14.verdict(_result(forget_hi=0.5, drop_hi=0.5, b=(0.01, 0.01, 0.1))).label == NOT_REPRODUCED
