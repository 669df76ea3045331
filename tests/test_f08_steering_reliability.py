"""Finding 08: the prompts against the paper's format, the cached and split forward passes against plain forwards with
emlib's own steering hook, the statistics against hand computations and scipy, the vectors and their effect against
the `steering-vectors` library, every verdict branch and boundary, and bad input named before any work."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import tiny_llama

from emlib.core.errors import DatasetError, ParamError
from emlib.core.sources import ENV_MWE_DIR, resolve_mwe_dir
from emlib.findings import f08_steering_reliability as f08
from emlib.findings import f08_steering_reliability_data as data
from emlib.findings import f08_steering_reliability_forward as fw
from emlib.findings import f08_steering_reliability_stats as st
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect
from emlib.interp.hooks import get_layers, record_residuals
from emlib.interp.steering import add_direction


def _write_set(folder: Path, name: str, rows: list) -> Path:
    path = folder / data.KINDS[name] / f"{name}.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _persona(i: int, yes: bool) -> dict:
    return {"question": f"Is the following statement something you would say?\n\"Statement {i}\"",
            "answer_matching_behavior": " Yes" if yes else " No", "answer_not_matching_behavior": " No" if yes else " Yes"}


def _xrisk(i: int, a: bool) -> dict:
    return {"question": f"Question {i}?\n\nChoices:\n (A) one\n (B) two",
            "answer_matching_behavior": " (A)" if a else " (B)", "answer_not_matching_behavior": " (B)" if a else " (A)"}


# ---------------------------------------------------------------- data and prompts


def test_the_36_sets_and_the_papers_numbers():
    assert len(data.SETS) == 36 and len(data.KINDS) == 36
    assert set(data.INSTRUCTIONS) == set(data.KINDS)
    assert set(data.PAPER_FIG1) <= set(data.KINDS) and len(data.PAPER_FIG1) == 13
    assert data.PAPER_FIG1["myopic-reward"] == 0.48 and data.PAPER_FIG1["corrigible-neutral-HHH"] == 0.0
    steer = [data.PAPER_ALL36[n][1] for n, _ in data.SETS]
    assert steer == sorted(steer, reverse=True)  # SETS is the paper's ranking, most steerable first
    assert list(data.PROMPT_TYPES)[0] == "prefilled" and len(data.PROMPT_TYPES) == 7
    families = [t for pair in data.FAMILIES.values() for t in pair if t]
    assert sorted(families) == sorted(data.PROMPT_TYPES)


def test_resolver_and_bad_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MWE_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="nowhere"):
        resolve_mwe_dir()
    good = [_persona(i, i % 2 == 0) for i in range(6)]
    _write_set(tmp_path, "narcissism", good)
    monkeypatch.setenv(ENV_MWE_DIR, str(tmp_path))
    assert resolve_mwe_dir() == tmp_path and len(data.load_set("narcissism")) == 6
    for bad, what in [("{not json", "not JSON"), ({"question": "", "answer_matching_behavior": " Yes"}, "'question'"),
                      ({**good[0], "answer_matching_behavior": "Yes"}, "answer_matching_behavior"),
                      ({**good[0], "answer_not_matching_behavior": " Yes"}, "the same")]:
        path = _write_set(tmp_path, "narcissism", [good[0], bad])
        with pytest.raises(DatasetError, match=rf"{path}:2: .*{what}"):
            data.load_set("narcissism")
    with pytest.raises(DatasetError, match="unknown set"):
        data.load_set("sycophancy")
    with pytest.raises(DatasetError, match="not found"):
        data.load_set("openness")


def test_split_is_disjoint_balanced_and_seeded():
    items = [data.Example(f"q{i}", " Yes" if i % 3 else " No", " No" if i % 3 else " Yes") for i in range(60)]
    s = data.split_set("openness", items, 5, 12, 10, seed=0)
    parts = [s.shots, s.train, s.test]
    assert [len(p) for p in parts] == [5, 12, 10]
    assert len({ex.question for p in parts for ex in p}) == 27
    for part in (s.train, s.test):
        assert sum(ex.matching == " Yes" for ex in part) == len(part) // 2
    assert s == data.split_set("openness", items, 5, 12, 10, seed=0) != data.split_set("openness", items, 5, 12, 10, 1)
    short = data.split_set("openness", items[:20], 5, 12, 10, seed=0)  # a small set: the test part gets the rest
    assert len(short.test) == 3
    with pytest.raises(DatasetError, match="fewer than"):
        data.split_set("openness", items[:18], 5, 12, 10, seed=0)


def test_prompts_follow_the_papers_format(tokenizer):
    x, p = data.Example("Q?\n\nChoices:\n (A) yes\n (B) no", " (B)", " (A)"), data.Example("Say \"hi\"?", " No", " Yes")
    assert tokenizer.decode(data.question_ids(tokenizer, x, "xrisk")) == "Question: Q?\n\nChoices:\n (A) yes\n (B) no\n\nAnswer: ("
    assert tokenizer.decode(data.question_ids(tokenizer, p, "persona")) == (
        "Question: Say \"hi\"?\n\nChoices:\n - Yes\n - No\n\nAnswer:")
    assert tokenizer.decode([data.answer_token(tokenizer, x, "xrisk", True)]) == "B"
    assert tokenizer.decode([data.answer_token(tokenizer, x, "xrisk", False)]) == "A"
    assert tokenizer.decode([data.answer_token(tokenizer, p, "persona", True)]) == " No"
    split = data.Split("myopic-reward", "xrisk", [x, x], [], [])
    text = tokenizer.decode(data.prefix_ids(tokenizer, split, True, True, False))
    assert text == (data.INSTRUCTIONS["myopic-reward"][1] + "\n\n"
                    + "Question: Q?\n\nChoices:\n (A) yes\n (B) no\n\nAnswer: (A)\n\n" * 2)
    assert data.prefix_ids(tokenizer, split, False, False, True) == []


# ---------------------------------------------------------------- forward passes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64)
    return LlamaForCausalLM(cfg).eval()


def _seqs():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in (5, 9, 3, 6, 4)]


def test_cached_prefix_residuals_equal_plain_forwards(model):
    prefix, seqs = _seqs()[1], _seqs()
    got = fw.last_residuals(model, prefix, seqs, [1, 2], pad=0, batch_size=2, read=(1, 2))
    assert got.shape == (5, 2, 2, 32)
    for i, s in enumerate(seqs):
        with torch.no_grad(), record_residuals(model, [1, 2]) as rec:
            model(input_ids=torch.tensor([prefix + s]))
        for li, layer in enumerate((1, 2)):
            torch.testing.assert_close(got[i, li, 0], rec[layer][0][0, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[i, li, 1], rec[layer][0][0, -2], atol=1e-5, rtol=1e-5)
    no_prefix = fw.last_residuals(model, [], seqs, [0], pad=0, batch_size=3)
    with torch.no_grad(), record_residuals(model, [0]) as rec:
        model(input_ids=torch.tensor([seqs[2]]))
    torch.testing.assert_close(no_prefix[2, 0, 0], rec[0][0][0, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="within every sequence"):
        fw.last_residuals(model, [], seqs, [0], pad=0, read=(4,))


def test_split_steering_equals_the_hook_on_the_full_model(model):
    seqs, pairs = _seqs(), [(5, 9), (10, 11), (3, 4), (7, 8), (1, 2)]
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    vectors[0] = 0
    for layer in (1, 3):
        got = fw.steered_logit_diffs(model, seqs, pairs, layer, vectors, multiplier=1.5, pad=0, batch_size=2)
        for i, (s, (a, b)) in enumerate(zip(seqs, pairs)):
            with torch.no_grad():
                plain = model(input_ids=torch.tensor([s])).logits[0, -1]
            assert float(got[i, 0]) == pytest.approx(float(plain[a] - plain[b]), abs=1e-5)
            for j in (1, 2):
                with torch.no_grad(), add_direction(model, vectors[j], layer, 1.5 * float(vectors[j].norm())):
                    ref = model(input_ids=torch.tensor([s])).logits[0, -1]
                assert float(got[i, j]) == pytest.approx(float(ref[a] - ref[b]), abs=1e-5)
                assert abs(float(got[i, j] - got[i, 0])) > 1e-4  # the vector does something


def test_layer_window_restores_the_layers_even_on_error(model):
    layers = get_layers(model)
    with pytest.raises(RuntimeError):
        with fw.layer_window(model, 1, 3):
            assert len(get_layers(model)) == 2
            raise RuntimeError("boom")
    assert get_layers(model) is layers and len(layers) == 4
    with pytest.raises(IndexError):
        with fw.layer_window(model, 2, 5):
            pass


def test_vectors_and_effects_match_the_steering_vectors_library(tiny_model, tokenizer):
    """emlib's mean-difference vector and its logit effect equal steering-vectors' train_steering_vector and
    SteeringVector.apply (decoder-block output, last token read, all positions steered) on a tiny model."""
    sv = pytest.importorskip("steering_vectors")
    from emlib.core.models import load_model

    model, tok = load_model(tiny_model, dtype=torch.float32)
    exs = [data.Example(f"Do you like item {i}?\n\nChoices:\n (A) Yes\n (B) No", " (A)" if i % 2 else " (B)",
                        " (B)" if i % 2 else " (A)") for i in range(4)]
    pos = [data.question_ids(tok, e, "xrisk") + [data.answer_token(tok, e, "xrisk", True)] for e in exs]
    neg = [data.question_ids(tok, e, "xrisk") + [data.answer_token(tok, e, "xrisk", False)] for e in exs]
    acts_p = fw.last_residuals(model, [], pos, [1], pad=0)[:, 0, 0]
    acts_n = fw.last_residuals(model, [], neg, [1], pad=0)[:, 0, 0]
    ours = acts_p.mean(0) - acts_n.mean(0)
    theirs = sv.train_steering_vector(model, tok, [(tok.decode(a), tok.decode(b)) for a, b in zip(pos, neg)],
                                      layers=[1], layer_type="decoder_block", read_token_index=-1)
    torch.testing.assert_close(theirs.layer_activations[1].float(), ours, atol=1e-5, rtol=1e-4)
    q = [data.question_ids(tok, e, "xrisk") for e in exs]
    pairs = [(data.answer_token(tok, e, "xrisk", True), data.answer_token(tok, e, "xrisk", False)) for e in exs]
    got = fw.steered_logit_diffs(model, q, pairs, 1, torch.stack([torch.zeros_like(ours), 20 * ours]), pad=0)
    for i, (s, (a, b)) in enumerate(zip(q, pairs)):
        with torch.no_grad(), sv.SteeringVector({1: 20 * ours}, "decoder_block").apply(model, multiplier=1.0):
            ref = model(input_ids=torch.tensor([s])).logits[0, -1]
        assert float(got[i, 1]) == pytest.approx(float(ref[a] - ref[b]), abs=1e-4)
    assert float((got[:, 1] - got[:, 0]).abs().max()) > 1e-4


# ---------------------------------------------------------------- statistics


def test_cosines_and_dprime_by_hand():
    pos = torch.tensor([[2.0, 0.0], [2.0, 2.0], [4.0, 0.0]])
    neg = torch.zeros(3, 2)
    v = np.array([8 / 3, 2 / 3])
    d = pos.double().numpy()
    want = [float(x @ v / np.linalg.norm(x) / np.linalg.norm(v)) for x in d]
    np.testing.assert_allclose(st.diff_cosines(pos, neg), want, rtol=1e-9)
    loo = [(d[1] + d[2]) / 2, (d[0] + d[2]) / 2, (d[0] + d[1]) / 2]
    np.testing.assert_allclose(st.diff_cosines(pos, neg, leave_one_out=True),
                               [float(x @ r / np.linalg.norm(x) / np.linalg.norm(r)) for x, r in zip(d, loo)], rtol=1e-9)
    u = v / np.linalg.norm(v)
    pp, pn = d @ u, np.zeros(3)
    assert st.dprime(pos, neg) == pytest.approx((pp.mean() - pn.mean()) / np.sqrt((pp.var() + pn.var()) / 2))
    assert np.isnan(st.dprime(neg, neg))


def test_spearman_its_draws_and_the_permutation_null():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert st.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert np.isnan(st.spearman(x, np.ones(12)))
    # per-set draws: own value in column 0; a monotone relation survives every resample of the sets
    xd = np.repeat(np.arange(12.0)[:, None], 51, axis=1)
    rho, draws = st.spearman_draws(xd, 2 * xd + 1, seed=0)
    assert rho == pytest.approx(1.0) and draws.shape == (50,) and np.nanmin(draws) == pytest.approx(1.0)
    rho, draws = st.spearman_draws(xd, -xd, seed=0)
    assert np.nanmax(draws) == pytest.approx(-1.0)
    steer = np.arange(10.0)
    own = steer[st.draw_indices(10, 200, np.random.default_rng(0))].mean(1)
    assert own[0] == 4.5 and own.shape == (201,) and 3 < own[1:].mean() < 6
    assert 0.3 < st.permutation_q95(np.arange(12.0), np.arange(12.0), 500, 0) < 0.6  # 95th pct of ρ under shuffling
    with pytest.raises(ValueError, match="match"):
        st.spearman_draws(xd, xd[:, :3])


def test_set_draws_of_cosine_and_dprime_equal_the_statistics_on_each_resample():
    """The vectorised draws against `diff_cosines` and `dprime` (the reference) called on each resample in turn."""
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=(10, 24)) + 0.5, rng.normal(size=(10, 24))
    idx = st.draw_indices(10, 40, np.random.default_rng(1))
    assert (idx[0] == np.arange(10)).all() and idx.shape == (41, 10)
    for chunk in (7, 256):  # chunked or not, the same numbers
        cos, dp = st.mean_cosine_draws(pos, neg, idx, chunk), st.dprime_draws(pos, neg, idx, chunk)
        ref_cos = [st.diff_cosines(torch.from_numpy(pos[i]), torch.from_numpy(neg[i])).mean() for i in idx]
        ref_dp = [st.dprime(torch.from_numpy(pos[i]), torch.from_numpy(neg[i])) for i in idx]
        np.testing.assert_allclose(cos, ref_cos, rtol=1e-12)
        np.testing.assert_allclose(dp, ref_dp, rtol=1e-10)
    assert np.isnan(st.dprime_draws(pos, pos, idx[:2])).all()  # no difference: no direction, as dprime says
    assert np.isnan(st.dprime(torch.from_numpy(pos), torch.from_numpy(pos)))


def test_vector_cosines_between_types():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    c = st.vector_cosines({"a": a, "b": b})
    assert c.shape == (2, 2, 2)
    np.testing.assert_allclose(c[0, 0], 1.0)
    np.testing.assert_allclose(c[0, 1], [1 / np.sqrt(2), -1.0])
    np.testing.assert_allclose(c[1, 0], c[0, 1])


def _synthetic_arrays(n_sets: int = 8, n: int = 10, coherent: bool = True) -> dict:
    """Sets whose training differences are more coherent the more their test items steer (or the reverse)."""
    rng = np.random.default_rng(0)
    types = list(data.PROMPT_TYPES)
    out = {}
    for k in range(n_sets):
        level = k / (n_sets - 1)
        signal = level if coherent else 1 - level
        arr = {"baseline": rng.normal(size=n), "vectors": rng.normal(size=(7, 4)) + 1}
        arr["steer"] = np.column_stack([level + 0.3 * rng.normal(size=n) for _ in types] + [0.1 * rng.normal(size=n)])
        for t in types:
            direction = np.array([1.0, 0, 0, 0])
            diffs = signal * 3 * direction + rng.normal(size=(n, 4))
            arr[f"neg_{t}"] = rng.normal(size=(n, 4))
            arr[f"pos_{t}"] = arr[f"neg_{t}"] + diffs
        out[f"set{k}"] = arr
    return out


def test_analyse_finds_a_planted_relation_and_its_absence(monkeypatch):
    p = f08.Params(datasets=[n for n, _ in data.SETS[:8]], n_boot=200, n_perm=200, sweep_layers=[])
    r = f08.analyse(_synthetic_arrays(), p)
    assert r.rho_cos.value > 0.8 and r.rho_cos.ci_low > 0 and r.rho_cos.value > r.null_cos
    assert r.rho_dprime.value > 0.8
    assert r.mean_steer["prefilled"].value == pytest.approx(r.per_set.query("type == 'prefilled'")["mean"].mean())
    assert r.vs_random["instruction"].ci_low > 0
    assert 0 < r.anti_pooled.value < 0.5 and r.anti_pooled.n_questions == 8
    assert r.per_item["type"].nunique() == 8  # seven types and the random direction
    assert r.type_cosines.shape == (7, 7) and np.allclose(np.diag(r.type_cosines), 1.0)
    biased = _synthetic_arrays()
    for arr in biased.values():  # a vector that only pushes " Yes": +0.5 where it matches, -0.5 where it does not
        arr["first"] = np.arange(10) % 2 == 0
        arr["steer"][:, 0] = np.where(arr["first"], 0.5, -0.5)
    row = f08.analyse(biased, p).per_set.iloc[0]
    assert (row["type"], row["mean"], row["answer_bias"], row["anti"]) == ("prefilled", 0.0, 0.5, 0.5)
    rev = f08.analyse(_synthetic_arrays(coherent=False), p)
    assert rev.rho_cos.value < -0.8 and f08.verdict_b(rev) == NOT_REPRODUCED


# ---------------------------------------------------------------- verdict rules


def eff(lo: float, value: float | None = None) -> Effect:
    return Effect("e", lo + 0.05 if value is None else value, lo, lo + 0.1)


def _result(n_pos: int = 7, anti_lo: float = 0.2, cos_lo: float = 0.1, cos_val: float = 0.5, null: float = 0.3,
            dp_lo: float = 0.1, dp_val: float = 0.5) -> f08.Result:
    types = list(data.PROMPT_TYPES)
    vs = {t: eff(0.01 if i < n_pos else -0.01) for i, t in enumerate(types)}
    return f08.Result(mean_steer=vs, vs_random=vs, anti=vs, anti_pooled=eff(anti_lo), rho_cos=eff(cos_lo, cos_val),
                      rho_dprime=eff(dp_lo, dp_val), null_cos=null, null_dprime=null, a_min_types=4, anti_min=0.05)


@pytest.mark.parametrize("n_pos, anti_lo, label", [
    (7, 0.2, REPRODUCED), (4, 0.05, REPRODUCED), (3, 0.2, PARTLY), (4, 0.0499, PARTLY), (1, 0.0, PARTLY),
    (0, 0.3, NOT_REPRODUCED)])
def test_verdict_a(n_pos, anti_lo, label):
    assert f08.verdict_a(_result(n_pos=n_pos, anti_lo=anti_lo)) == label


@pytest.mark.parametrize("lo, val, null, label", [
    (0.01, 0.5, 0.3, REPRODUCED), (0.0, 0.5, 0.3, PARTLY), (0.01, 0.3, 0.3, PARTLY), (-0.2, 0.2, 0.3, NOT_REPRODUCED)])
def test_verdict_b_and_c(lo, val, null, label):
    assert f08.verdict_b(_result(cos_lo=lo, cos_val=val, null=null)) == label
    assert f08.verdict_c(_result(dp_lo=lo, dp_val=val, null=null)) == label


def test_verdict_combines_the_parts():
    v = f08.verdict(_result())
    assert v.label == REPRODUCED and set(v.parts) == {"a_net_positive_unreliable", "b_cosine_predicts",
                                                      "c_separation_predicts"}
    assert f08.verdict(_result(n_pos=0, cos_lo=-1, cos_val=0, dp_lo=-1, dp_val=0)).label == NOT_REPRODUCED
    assert f08.verdict(_result(n_pos=0)).label == PARTLY


# ---------------------------------------------------------------- parameters


def test_params_reject_bad_values_before_any_work():
    with pytest.raises(ParamError, match="unknown set"):
        f08.Params(datasets=["sycophancy", "openness", "narcissism"])
    with pytest.raises(ParamError, match="at least 3"):
        f08.Params(datasets=["openness", "narcissism"])
    with pytest.raises(ParamError, match="PREDICTOR_TYPE"):
        f08.Params(prompt_types=["instruction", "5-shot"], a_min_types=1)
    with pytest.raises(ParamError, match="A_MIN_TYPES"):
        f08.Params(prompt_types=["prefilled"], a_min_types=4)
    with pytest.raises(ParamError, match="PROMPT_TYPES"):
        f08.Params(prompt_types=["prefilled", "2-shot"])
    assert len(f08.Params().sets()) == 36 and f08.Params(datasets="openness,narcissism,myopic-reward").sets()[0] == "openness"
