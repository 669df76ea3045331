"""Finding 10 (relearning after unlearning): helpers against hand-computed references, the verdict rules on synthetic
results (every branch, every boundary), a tiny end-to-end run, and the notebook's defaults."""

from __future__ import annotations

import ast
import math

import numpy as np
import pandas as pd
import pytest
import torch

from emlib.findings import f10_relearning as f10
from emlib.findings import f10_relearning_train as tr
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect, ParamError
from emlib.report.runner import repo_root

NOTEBOOK = repo_root() / "notebooks" / "10_relearning_after_unlearning.ipynb"


# ---------- helpers against independent references ----------

def test_spearman_matches_the_textbook_formula_and_handles_ties():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, -1, 1, 0) -> 1 - 12 / 60
    assert f10.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert f10.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3) -> Pearson of those
    assert f10.spearman([0, 0, 5], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert math.isnan(f10.spearman([0, 0, 0, 0], [1, 2, 3, 4]))
    assert math.isnan(f10.spearman([1, 2], [1, 2]))


def test_loss_barrier_against_the_line_between_end_points():
    assert tr.loss_barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)  # line at 0.5 is 1.5
    assert tr.loss_barrier([0, 0.5, 1], [1.0, 1.2, 2.0]) == 0.0  # below the line: no barrier
    assert tr.loss_barrier([0, 0.25, 0.5, 0.75, 1], [0, 1, 0, 0, 0]) == pytest.approx(1.0)


def test_interpolation_end_points_are_the_two_models_and_l2_is_euclidean():
    a, b = tr.make_mlp(8, 0), tr.make_mlp(8, 1)
    va, vb = tr.flat(a), tr.flat(b)
    x, y = torch.rand(20, 64), torch.randint(0, 10, (20,))
    ts, losses = tr.interpolation_losses(tr.make_mlp(8, 2), va, vb, x, y, 5)
    assert ts.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert losses[0] == pytest.approx(tr.mean_loss(a, x, y), rel=1e-6)
    assert losses[-1] == pytest.approx(tr.mean_loss(b, x, y), rel=1e-6)
    assert tr.l2_distance(va, vb) == pytest.approx(float(np.linalg.norm(va.numpy() - vb.numpy())), rel=1e-6)
    assert tr.l2_distance(va, va) == 0.0


def test_flip_labels_always_moves_to_another_class():
    y = np.repeat(np.arange(10), 50)
    flipped = tr.flip_labels(y, np.random.default_rng(0))
    assert (flipped != y).all() and flipped.min() >= 0 and flipped.max() <= 9


def test_make_split_partitions_the_training_set():
    data = tr.load_split(0, 0.25)
    assert len(data[0]) + len(data[1]) == 1797 and data[0].max() <= 1.0
    split = tr.make_split(data, np.array([3, 10, 50]))
    assert len(split.y_forget) == 3 and len(split.y_retain) == len(data[2]) - 3
    assert torch.equal(split.y_forget, split.y_forget_true)
    assert torch.equal(split.x_forget[1], torch.from_numpy(data[0][10]))
    flipped = tr.make_split(data, np.array([3, 10, 50]), flip_seed=0)
    assert (flipped.y_forget != flipped.y_forget_true).all()
    with pytest.raises(ValueError):
        tr.make_split(data, np.array([], dtype=int))


def test_consistency_scores_are_held_out_probabilities():
    rng = np.random.default_rng(0)
    x = rng.random((40, 64), dtype=np.float32)
    y = np.arange(40) % 10
    s = tr.consistency_scores(x, y, hidden=8, reps=2, folds=2, epochs=1, lr=1e-3, batch_size=16, seed=0)
    assert s.shape == (40,) and (s >= 0).all() and (s <= 1).all()


def test_unlearning_methods_and_their_strengths():
    data = tr.load_split(0, 0.25)
    split = tr.make_split(data, np.arange(20))
    model = tr.train(tr.make_mlp(16, 0), split.x_train, split.y_train, epochs=1, lr=1e-3, batch_size=64, seed=0)
    theta0 = tr.flat(model)
    moved = {}
    for method in tr.METHODS:
        m = tr.unlearn(tr.load_flat(tr.make_mlp(16, 0), theta0), theta0, method, 1.0, split, epochs=1, lr=1e-3,
                       batch_size=64, seed=0)
        moved[method] = tr.l2_distance(tr.flat(m), theta0)
        assert moved[method] > 0
    # weight noise of 1x each tensor's RMS moves about as far as the weights' own norm
    assert moved["weight_noise"] == pytest.approx(float(theta0.norm()), rel=0.3)
    with pytest.raises(ValueError):
        tr.unlearn(tr.make_mlp(16, 0), theta0, "nope", 1.0, split, epochs=1, lr=1e-3, batch_size=64, seed=0)


def test_gradient_ascent_lowers_forget_accuracy():
    data = tr.load_split(0, 0.25)
    split = tr.make_split(data, np.arange(30))
    model = tr.train(tr.make_mlp(32, 0), split.x_train, split.y_train, epochs=20, lr=3e-3, batch_size=128, seed=0)
    theta0 = tr.flat(model)
    before = tr.accuracy(model, split.x_forget, split.y_forget)
    tr.unlearn(model, theta0, "gradient_ascent", 1.0, split, epochs=2, lr=1e-3, batch_size=128, seed=0)
    assert tr.accuracy(model, split.x_forget, split.y_forget) < before


# ---------- params ----------

def test_params_coerce_lists_and_reject_empty_strengths():
    p = f10.Params(ga_strengths="0.3,0.1")
    assert p.ga_strengths == [0.3, 0.1] and p.strengths()["gradient_ascent"] == [0.1, 0.3]
    with pytest.raises(ParamError, match="NOISE_STRENGTHS"):
        f10.Params(noise_strengths=[])
    with pytest.raises(ParamError):
        f10.Params(forget_set="random")
    assert f10.Params(seed=3, n_seeds=2).train_seeds() == [3, 4]


def test_notebook_defaults_equal_params_defaults():
    import papermill as pm

    declared = pm.inspect_notebook(str(NOTEBOOK))
    defaults = {k: ast.literal_eval(v["default"]) for k, v in declared.items() if k != "OUTPUT_DIR"}
    assert set(defaults) == set(f10.Params.names())
    assert {k.lower(): v for k, v in defaults.items()} == f10.Params().to_dict()


# ---------- summarize / outcomes on a synthetic table ----------

def _table(seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for s in seeds:
        rows.append(dict(seed=s, method="original", strength=0.0, forget_before=1.0, forget_after=1.0,
                         test_before=0.97, test_after=0.97, l2=0.0, barrier=0.0))
        rows.append(dict(seed=s, method="retrain", strength=0.0, forget_before=0.5, forget_after=0.5,
                         test_before=0.97, test_after=0.97, l2=9.0, barrier=0.3))
        # GA: weak one not effective (0.70 > 0.65), strong one effective
        rows.append(dict(seed=s, method="gradient_ascent", strength=0.1, forget_before=0.70, forget_after=0.95,
                         test_before=0.96, test_after=0.97, l2=1.0, barrier=0.0))
        rows.append(dict(seed=s, method="gradient_ascent", strength=1.0, forget_before=0.60, forget_after=0.90 + 0.01 * s,
                         test_before=0.95, test_after=0.97, l2=1.5, barrier=0.0))
        # noise: unlearns but breaks utility (test 0.90 < 0.92): never effective
        rows.append(dict(seed=s, method="weight_noise", strength=2.0, forget_before=0.4, forget_after=0.45,
                         test_before=0.90, test_after=0.95, l2=40.0, barrier=0.1))
    return pd.DataFrame(rows)


def test_summarize_marks_effective_settings_at_the_margins():
    summary = f10.summarize(_table()).set_index(["method", "strength"])
    assert not summary.loc[("gradient_ascent", 0.1), "effective"]
    assert summary.loc[("gradient_ascent", 1.0), "effective"]
    assert not summary.loc[("weight_noise", 2.0), "effective"]
    assert not summary.loc[("retrain", 0.0), "effective"] and not summary.loc[("original", 0.0), "effective"]
    t = _table()
    t.loc[t["method"] == "gradient_ascent", "forget_before"] = 0.5 + f10.EFFECTIVE_MARGIN  # exactly at the margin
    t.loc[t["method"] == "weight_noise", "test_before"] = 0.97 - f10.UTILITY_MARGIN
    s2 = f10.summarize(t).set_index(["method", "strength"])
    assert s2.loc[("gradient_ascent", 0.1), "effective"] and s2.loc[("weight_noise", 2.0), "effective"]


def test_method_outcomes_read_the_weakest_effective_strength_else_the_strongest():
    t = _table()
    outcomes = {o.method: o for o in f10.method_outcomes(t, f10.summarize(t), n_boot=200, seed=0)}
    ga, wn = outcomes["gradient_ascent"], outcomes["weight_noise"]
    assert ga.strength == 1.0 and ga.effective and ga.gap.value == pytest.approx(0.41)
    assert ga.gap.ci_low <= ga.gap.value <= ga.gap.ci_high and ga.recovered
    assert wn.strength == 2.0 and not wn.effective and not wn.recovered


# ---------- verdicts on synthetic results ----------

def _e(value, lo, hi):
    return Effect("x", value, lo, hi, "bootstrap over seeds")


def _outcome(method, gap_lo, effective=True):
    return f10.MethodOutcome(method, 1.0, effective, 0.5, 0.5 + gap_lo, _e(gap_lo + 0.05, gap_lo, gap_lo + 0.1),
                             _e(0.3, 0.2, 0.4))


def _result(gaps, retrain_hi=0.05, rho_l2=(-0.5, -0.7, -0.3), rho_barrier=(-0.5, -0.7, -0.3), effective=None):
    methods = [_outcome(m, g, True if effective is None else effective[i]) for i, (m, g) in enumerate(gaps.items())]
    return f10.Result(methods, _e(0.0, -0.05, retrain_hi), _e(*rho_l2), _e(*rho_barrier), _e(0.3, 0.2, 0.4), 8, 5)


ABOVE, BELOW = f10.RECOVERY_MIN + 1e-6, f10.RECOVERY_MIN


def test_verdict_a_reproduced_when_most_standard_methods_recover():
    r = _result({"gradient_ascent": ABOVE, "retain_finetune": BELOW, "random_relabel": ABOVE, "weight_noise": BELOW})
    assert f10.verdict_a(r).label == REPRODUCED


def test_verdict_a_gap_exactly_at_the_threshold_does_not_count():
    r = _result({"gradient_ascent": ABOVE, "retain_finetune": BELOW, "random_relabel": BELOW})
    assert f10.verdict_a(r).label == PARTLY  # 1 of 3: not more than half


def test_verdict_a_weight_space_methods_do_not_count():
    r = _result({"gradient_ascent": BELOW, "retain_finetune": BELOW, "weight_noise": ABOVE, "weight_distance": ABOVE})
    assert f10.verdict_a(r).label == NOT_REPRODUCED


def test_verdict_a_needs_min_testable_standard_methods():
    r = _result({"gradient_ascent": ABOVE, "retain_finetune": ABOVE, "random_relabel": ABOVE},
                effective=[True, False, False])
    assert f10.MIN_TESTABLE == 2
    assert f10.verdict_a(r).label == PARTLY  # 1 testable, recovered: partly
    r2 = _result({"gradient_ascent": ABOVE, "retain_finetune": ABOVE, "random_relabel": ABOVE},
                 effective=[True, True, False])
    assert f10.verdict_a(r2).label == REPRODUCED  # 2 of 2
    r3 = _result({"gradient_ascent": ABOVE, "retain_finetune": BELOW}, effective=[True, True])
    assert f10.verdict_a(r3).label == PARTLY  # 1 of 2 is not more than half


def test_verdict_a_null_must_hold():
    gaps = {"gradient_ascent": ABOVE, "retain_finetune": ABOVE, "random_relabel": ABOVE}
    assert f10.verdict_a(_result(gaps, retrain_hi=f10.RETRAIN_RISE_MAX)).label == NOT_REPRODUCED
    assert "retrain itself relearns" in f10.verdict_a(_result(gaps, retrain_hi=f10.RETRAIN_RISE_MAX)).reason
    assert f10.verdict_a(_result(gaps, retrain_hi=f10.RETRAIN_RISE_MAX - 1e-6)).label == REPRODUCED


def test_verdict_b_branches_and_boundaries():
    gaps = {"gradient_ascent": ABOVE}
    assert f10.verdict_b(_result(gaps)).label == REPRODUCED
    assert f10.verdict_b(_result(gaps, rho_barrier=(-0.2, -0.5, 0.0))).label == PARTLY  # CI touching 0: not below
    assert "L2 distance" in f10.verdict_b(_result(gaps, rho_barrier=(-0.2, -0.5, 0.0))).reason
    assert f10.verdict_b(_result(gaps, rho_l2=(0.1, -0.1, 0.3), rho_barrier=(-0.2, -0.5, -1e-6))).label == PARTLY
    nan = (float("nan"),) * 3
    assert f10.verdict_b(_result(gaps, rho_l2=nan, rho_barrier=nan)).label == NOT_REPRODUCED
    assert f10.verdict_b(_result(gaps, rho_l2=(0.5, 0.3, 0.7), rho_barrier=(0.5, 0.3, 0.7))).label == NOT_REPRODUCED


def test_verdict_combines_the_parts():
    good = {"gradient_ascent": ABOVE, "random_relabel": ABOVE}
    assert f10.verdict(_result(good)).label == REPRODUCED
    v = f10.verdict(_result(good, rho_l2=(0.1, -0.1, 0.3), rho_barrier=(0.1, -0.1, 0.3)))
    assert v.label == PARTLY and v.parts == {"a_relearning": REPRODUCED, "b_predictors": NOT_REPRODUCED}
    bad = f10.verdict(_result({"gradient_ascent": BELOW}, rho_l2=(0.1, -0.1, 0.3), rho_barrier=(0.1, -0.1, 0.3)))
    assert bad.label == NOT_REPRODUCED


# ---------- tiny end-to-end run ----------

TINY = dict(n_seeds=2, n_forget=15, hidden=8, epochs=2, consistency_reps=1, consistency_folds=2, consistency_epochs=1,
            unlearn_epochs=1, ga_strengths=[0.1], finetune_strengths=[10.0], relabel_strengths=[1.0],
            noise_strengths=[1.0], distance_strengths=[10.0], relearn_epochs=1, barrier_points=3, n_boot=100)


def test_run_end_to_end_and_from_cache():
    threads = torch.get_num_threads()
    r = f10.run(f10.Params(**TINY))
    assert torch.get_num_threads() == threads
    assert len(r.table) == 2 * (2 + 5) and set(r.table["seed"]) == {0, 1}
    assert len(r.methods) == 5 and len(r.forget_consistency) == 15
    orig = r.table[r.table["method"] == "original"]
    assert (orig["l2"] == 0).all() and (orig["barrier"] == 0).all()
    assert set(r.curves["seed"]) == {0} and len(r.curves) == 7 * 3
    assert r.effect.ci_low <= r.effect.value <= r.effect.ci_high
    assert f10.verdict(r).label in (REPRODUCED, PARTLY, NOT_REPRODUCED)
    again = f10.run(f10.Params(**TINY))
    pd.testing.assert_frame_equal(r.table, again.table)
    flipped = f10.run(f10.Params(**{**TINY, "forget_set": "flipped"}))
    assert flipped.forget_consistency is None and len(flipped.table) == len(r.table)
