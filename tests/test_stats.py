"""Tests for emlib.core.stats: the clustered (questions > answers, seeds > questions > answers) bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from emlib.core.stats import Estimate, bootstrap_ci, bootstrap_diff_ci, hierarchical_bootstrap, hierarchical_diff


def clustered(rng: np.random.Generator, n_questions: int = 30, per_question: int = 8, sd_question: float = 1.0):
    """Answers with a shared effect per question (sd 1, as large as the answers' own noise); true mean 0."""
    q = np.repeat(np.arange(n_questions), per_question)
    return rng.normal(0, sd_question, n_questions)[q] + rng.normal(0, 1, q.size), q


def width(e: Estimate | tuple[float, float]) -> float:
    lo, hi = e.ci if isinstance(e, Estimate) else e
    return hi - lo


# ---------------------------------------------------------------- coverage against the known true value


def test_two_stage_interval_covers_true_mean_answer_level_does_not():
    """200 synthetic data sets of 30 questions x 8 answers, between-question sd = within sd: the two-stage
    95 % interval covers the true mean 0 in ~95 % of them; answers resampled alone cover far less
    (measured over master seeds 0-7: two-stage 0.92-0.975, answer-level 0.575-0.685)."""
    rng = np.random.default_rng(0)
    n_data, covered_two_stage, covered_answers = 200, 0, 0
    for d in range(n_data):
        x, q = clustered(rng)
        e = hierarchical_bootstrap(x, q, n_boot=400, seed=d)
        covered_two_stage += e.ci_low <= 0.0 <= e.ci_high
        lo, hi = bootstrap_ci(x, n_boot=400, seed=d)
        covered_answers += lo <= 0.0 <= hi
    assert 0.90 <= covered_two_stage / n_data <= 0.99
    assert covered_answers / n_data < 0.85


# ---------------------------------------------------------------- against a brute-force reference


def reference_draws(x, q, s, n_boot, seed, weight="answers"):
    """Literal three-stage bootstrap with loops: draw seeds, one draw of questions for all of them, then the
    answers of each copy of each (seed, question) cell; the pooled mean over non-missing answers, or the
    mean of the copies' means."""
    rng = np.random.default_rng(seed)
    seeds, questions = np.unique(s), np.unique(q)
    rows = {(a, b): np.flatnonzero((s == a) & (q == b)) for a in seeds for b in questions}
    out = []
    for _ in range(n_boot):
        picked = []
        qs = rng.choice(questions, size=len(questions))
        for a in rng.choice(seeds, size=len(seeds)):
            for b in qs:
                r = rows[(a, b)]
                if r.size:
                    picked.append(r[rng.integers(0, r.size, r.size)])
        if weight == "answers":
            out.append(np.nanmean(x[np.concatenate(picked)]))
        else:
            out.append(np.mean([x[i].mean() for i in picked]))
    return np.array(out)


def test_matches_a_brute_force_three_stage_bootstrap():
    rng = np.random.default_rng(3)
    sizes = rng.integers(3, 15, size=(3, 6))  # 3 seeds x 6 questions, unequal cells
    s = np.concatenate([np.full(n, i) for i, row in enumerate(sizes) for n in row])
    q = np.concatenate([np.full(n, j) for row in sizes for j, n in enumerate(row)])
    x = rng.normal(0, 1, 3)[s] + rng.normal(0, 1, 6)[q] + rng.normal(0, 1, s.size)
    x[rng.random(x.size) < 0.1] = np.nan  # missing answers are left out
    ref = reference_draws(x, q, s, n_boot=1000, seed=1)
    ref_lo, ref_hi = np.quantile(ref, [0.025, 0.975])
    e = hierarchical_bootstrap(x, q, s, n_boot=4000, seed=2)
    assert e.value == pytest.approx(np.nanmean(x))
    tol = 0.15 * (ref_hi - ref_lo)  # Monte Carlo error of the reference's 1000 draws
    assert e.ci_low == pytest.approx(ref_lo, abs=tol) and e.ci_high == pytest.approx(ref_hi, abs=tol)
    assert (e.n_seeds, e.n_questions, e.n_answers) == (3, 6, int(np.isfinite(x).sum()))
    full = np.where(np.isnan(x), 0.0, x)  # questions weighted equally (no missing answers)
    ref_lo, ref_hi = np.quantile(reference_draws(full, q, s, n_boot=1000, seed=1, weight="questions"), [0.025, 0.975])
    e = hierarchical_bootstrap(full, q, s, weight="questions", n_boot=4000, seed=2)
    cell_means = [full[(s == a) & (q == b)].mean() for a in range(3) for b in range(6)]
    assert e.value == pytest.approx(np.mean(cell_means))
    tol = 0.15 * (ref_hi - ref_lo)
    assert e.ci_low == pytest.approx(ref_lo, abs=tol) and e.ci_high == pytest.approx(ref_hi, abs=tol)


def test_one_question_reduces_to_the_answer_level_bootstrap():
    x = np.random.default_rng(4).normal(size=300)
    e = hierarchical_bootstrap(x, np.zeros(300), n_boot=4000, seed=0)
    lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
    assert e.ci_low == pytest.approx(lo, abs=0.1 * (hi - lo)) and e.ci_high == pytest.approx(hi, abs=0.1 * (hi - lo))


def test_question_weighting_and_missing_values():
    x = np.array([1.0, 1.0, 1.0, 1.0, 0.0, np.nan, 0.0])
    q = np.array(["a", "a", "a", "a", "b", "b", "c"])
    pooled = hierarchical_bootstrap(x, q, n_boot=200)
    per_question = hierarchical_bootstrap(x, q, weight="questions", n_boot=200)
    assert pooled.value == pytest.approx(4 / 6)
    assert per_question.value == pytest.approx(1 / 3)  # mean of the question means 1, 0, 0
    assert (pooled.n_questions, pooled.n_answers, pooled.n_seeds) == (3, 6, 1)
    assert 0.0 <= pooled.ci_low <= pooled.value <= pooled.ci_high <= 1.0
    assert "questions weighted equally" in per_question.ci_method
    only_nan = hierarchical_bootstrap([np.nan, None], ["a", "b"])
    assert np.isnan(only_nan.value) and only_nan.n_answers == 0


# ---------------------------------------------------------------- paired differences


def test_paired_difference_of_identical_arrays_is_exactly_zero():
    rng = np.random.default_rng(5)
    x, q = clustered(rng)
    s = np.tile([0, 1, 2, 3], x.size // 4)
    for seeds in (None, s):
        e = hierarchical_diff(x, x.copy(), q, seeds_a=seeds, pairing="answers", n_boot=500)
        assert (e.value, e.ci_low, e.ci_high) == (0.0, 0.0, 0.0)
    # shared questions with separately resampled answers: exactly 0 as a value, an interval around it
    e = hierarchical_diff(x, x.copy(), q, pairing="questions", n_boot=500)
    assert e.value == 0.0 and e.ci_low < 0.0 < e.ci_high


def test_pairing_by_question_is_tighter_when_conditions_share_question_effects():
    rng = np.random.default_rng(6)
    n_q, per_q = 20, 10
    q = np.repeat(np.arange(n_q), per_q)
    u = rng.normal(0, 2, n_q)[q]  # question effects shared by both conditions
    a = 0.5 + u + rng.normal(0, 1, q.size)
    b = u + rng.normal(0, 1, q.size)  # separate samples: answers not paired
    paired = hierarchical_diff(a, b, q, pairing="questions", n_boot=1000)
    unpaired = hierarchical_diff(a, b, q, pairing="none", n_boot=1000)
    assert paired.value == pytest.approx(a.mean() - b.mean()) == pytest.approx(unpaired.value)
    assert width(paired) < 0.5 * width(unpaired)
    assert paired.ci_low > 0  # the shift of 0.5 is found once question effects cancel
    assert "paired by question" in paired.ci_method and "unpaired" in unpaired.ci_method
    assert paired.n_answers == 2 * q.size and paired.n_questions == n_q


def test_pairing_by_answer_is_tighter_when_answers_share_their_sample():
    rng = np.random.default_rng(7)
    q = np.repeat(np.arange(15), 12)
    shared = rng.normal(0, 1, 15)[q] + rng.normal(0, 1, q.size)  # same prompt and sampling seed
    a, b = shared + 0.2 + rng.normal(0, 0.2, q.size), shared + rng.normal(0, 0.2, q.size)
    by_answer = hierarchical_diff(a, b, q, pairing="answers", n_boot=1000)
    by_question = hierarchical_diff(a, b, q, pairing="questions", n_boot=1000)
    assert width(by_answer) < 0.5 * width(by_question)
    assert by_answer.ci_low > 0


def test_pairing_by_answer_checks_its_inputs_and_keeps_half_missing_pairs():
    q = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="equal lengths"):
        hierarchical_diff([1, 2, 3], [1, 2], [0, 0, 1], [0, 0], pairing="answers")
    with pytest.raises(ValueError, match="same question"):
        hierarchical_diff([1, 2, 3, 4], [1, 2, 3, 4], q, q[::-1], pairing="answers")
    with pytest.raises(ValueError, match="pairing"):
        hierarchical_diff([1.0], [1.0], [0], pairing="sideways")
    e = hierarchical_diff([1.0, np.nan, 0.0, 1.0], [0.0, 1.0, np.nan, np.nan], q, pairing="answers", n_boot=200)
    assert e.value == pytest.approx(2 / 3 - 1 / 2) and e.n_answers == 5


def test_base_condition_without_seeds_against_seeded_fine_tunes():
    """EM(fine-tuned, 3 training seeds) - EM(base): the base has no training seed and keeps its answers."""
    rng = np.random.default_rng(8)
    q = np.tile(np.repeat(np.arange(8), 20), 3)
    s = np.repeat([11, 12, 13], 160)
    a = (rng.random(q.size) < 0.3).astype(float)
    b = (rng.random(160) < 0.05).astype(float)
    e = hierarchical_diff(a, b, q, q[:160], seeds_a=s, n_boot=500)
    assert e.value == pytest.approx(a.mean() - b.mean())
    assert (e.n_seeds, e.n_questions, e.n_answers) == (3, 8, 640)
    assert e.ci_low < e.value < e.ci_high and "seeds" in e.ci_method
    assert e == hierarchical_diff(a, b, q, q[:160], seeds_a=[f"s{v}" for v in s], n_boot=500)  # labels: any type


# ---------------------------------------------------------------- seeds, determinism, speed, interface


def test_resampling_seeds_widens_the_interval_when_seeds_differ():
    rng = np.random.default_rng(9)
    q = np.tile(np.repeat(np.arange(10), 10), 4)
    s = np.repeat(np.arange(4), 100)
    base = rng.normal(0, 0.5, 10)[q] + rng.normal(0, 1, q.size)
    with_seed_effects = base + rng.normal(0, 2, 4)[s]
    over_seeds = hierarchical_bootstrap(with_seed_effects, q, s, n_boot=1000)
    ignoring_seeds = hierarchical_bootstrap(with_seed_effects, q, n_boot=1000)
    assert width(over_seeds) > 2 * width(ignoring_seeds)
    assert over_seeds.n_seeds == 4 and ignoring_seeds.n_seeds == 1 and over_seeds.ci_method.startswith("three-stage")
    # and without seed effects it stays close to the two-stage interval
    no_effect = hierarchical_bootstrap(base, q, s, n_boot=1000)
    assert width(no_effect) < 1.5 * width(hierarchical_bootstrap(base, q, n_boot=1000))


def test_deterministic_for_a_seed_and_accepts_pandas():
    rng = np.random.default_rng(10)
    x, q = clustered(rng)
    df = pd.DataFrame({"em": x, "question_id": [f"q{i}" for i in q], "seed": np.tile([1, 2], x.size // 2)})
    one = hierarchical_bootstrap(df["em"], df["question_id"], df["seed"], n_boot=300, seed=4)
    assert one == hierarchical_bootstrap(x, [f"q{i}" for i in q], np.tile([1, 2], x.size // 2), n_boot=300, seed=4)
    assert one != hierarchical_bootstrap(df["em"], df["question_id"], df["seed"], n_boot=300, seed=5)
    d1 = hierarchical_diff(df["em"], df["em"] * 0.5, df["question_id"], n_boot=300, seed=4)
    assert d1 == hierarchical_diff(df["em"], df["em"] * 0.5, df["question_id"], n_boot=300, seed=4)


def test_fast_enough_for_2000_draws_over_1000_answers():
    rng = np.random.default_rng(11)
    q = np.repeat(np.arange(8), 125)
    x = (rng.random(q.size) < rng.beta(0.5, 2.5, 8)[q]).astype(float)
    hierarchical_bootstrap(x, q, n_boot=20)  # warm-up
    t = time.perf_counter()
    hierarchical_bootstrap(x, q, n_boot=2000)
    hierarchical_diff(x, x[::-1], q, pairing="answers", n_boot=2000)
    assert time.perf_counter() - t < 3.0  # ~0.1 s each on an idle core; generous for a shared CPU


def test_estimate_fields_and_existing_helpers_unchanged():
    e = hierarchical_bootstrap([0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"], n_boot=100)
    d = e.to_dict()
    assert set(d) == {"value", "ci_low", "ci_high", "n_seeds", "n_questions", "n_answers", "ci_method"}
    assert e.as_tuple() == (e.value, e.ci_low, e.ci_high) and e.ci == (e.ci_low, e.ci_high)
    with pytest.raises(ValueError, match="weight"):
        hierarchical_bootstrap([1.0], ["a"], weight="seeds")
    with pytest.raises(ValueError, match="labels"):
        hierarchical_bootstrap([1.0, 2.0], ["a"])
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_diff_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0, 1.0)
