"""Finding 05: the scalars read by hand on a tiny model, the class cut-offs, the probes against known answers, the
general / domain split and every verdict branch on synthetic Results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from conftest import tiny_llama
from test_activations import char_tokenizer

from emlib.core.errors import ParamError
from emlib.findings import f05_lora_probes as f05
from emlib.findings.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Effect
from emlib.findings.f05_lora_probes_probe import (
    CUTOFFS, DOMAIN_PROBE, GENERAL_PROBE, PROBES, RANKED, ClassSpec, answer_scalars, choose_cutoff,
    coefficient_shares, fit_probe, members, split_adapters,
)
from emlib.interp.hooks import encode_chat


def eff(lo: float, hi: float | None = None) -> Effect:
    hi = lo + 0.1 if hi is None else hi
    return Effect("e", (lo + hi) / 2, lo, hi)


# ---------------------------------------------------------------- the scalars


def test_answer_scalars_equal_x_times_a_at_the_answer_tokens():
    torch.manual_seed(0)
    tok = char_tokenizer()
    model = get_peft_model(tiny_llama(), LoraConfig(r=1, lora_alpha=2, target_modules=["down_proj"])).eval()
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer question"}]]
    answers = ["no way", "ok"]
    scalars, names = answer_scalars(model, tok, prompts, answers, batch_size=2)  # one padded batch
    assert names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    for messages, answer, got in zip(prompts, answers, scalars):
        ids = encode_chat(tok, messages) + list(tok(answer, add_special_tokens=False)["input_ids"])
        start = len(encode_chat(tok, messages))
        inputs = {}
        layers = model.base_model.model.model.layers
        handles = [layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach())) for i, layer in enumerate(layers)]
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        expected = np.concatenate([(inputs[i][0] @ layers[i].mlp.down_proj.lora_A["default"].weight.detach().T).numpy()
                                   for i in range(2)], axis=1)[start:]  # by hand: x @ A.T, answer tokens only
        assert got.shape == (len(answer), 2)  # one character = one token
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- classes and cut-offs


def frame(aligned, domain) -> pd.DataFrame:
    return pd.DataFrame({"aligned": aligned, "domain": domain})


def test_members_by_cutoff_and_rank():
    f = frame([95, 10, 85, 35, None, 92, 5, 50], [False, False, False, False, False, True, True, True])
    off_al, off_mis, dom_mis = ClassSpec(False, False), ClassSpec(False, True), ClassSpec(True, True)
    assert members(f, off_al, (90, 30)).tolist() == [0]
    assert members(f, off_mis, (90, 30)).tolist() == [1]
    assert members(f, off_al, (80, 40)).tolist() == [0, 2]
    assert members(f, off_mis, (80, 40)).tolist() == [1, 3]
    assert members(f, dom_mis, (90, 30)).tolist() == [6]
    assert members(f, off_al, RANKED, 2).tolist() == [0, 2]  # the 2 most aligned off-domain answers; None is left out
    assert members(f, off_mis, RANKED, 2).tolist() == [1, 3]
    assert members(f, dom_mis, RANKED, 1).tolist() == [6]


def test_choose_cutoff_takes_the_papers_then_the_nearest_that_leaves_enough():
    general = next(p for p in PROBES if p.name == GENERAL_PROBE)
    rich = frame([95, 96, 97, 10, 20, 25], [False] * 6)
    assert choose_cutoff([rich], general, 3) == CUTOFFS[0]  # the paper's [90, 100] vs [0, 30]
    looser = frame([95, 96, 85, 10, 20, 35], [False] * 6)
    assert choose_cutoff([looser], general, 3) == (70.0, 40.0)  # 85 needs ≥ 70 ... and 35 needs ≤ 40
    assert choose_cutoff([rich, looser], general, 3) == (70.0, 40.0)  # every seed must have enough
    middling = frame([75, 70, 65, 62, 61, 60], [False] * 6)  # no pair works: rank them
    assert choose_cutoff([middling], general, 3) == RANKED
    assert choose_cutoff([middling], general, 4) is None  # 6 answers cannot give 4 + 4
    domain = next(p for p in PROBES if p.name == DOMAIN_PROBE)  # off-domain vs domain misaligned: separate groups
    f = frame([10, 50, 60, 20], [False, False, True, True])
    assert choose_cutoff([f], domain, 1) == CUTOFFS[0]
    assert choose_cutoff([f], domain, 2) == RANKED
    assert choose_cutoff([f], domain, 3) is None


# ---------------------------------------------------------------- probes


def tokens(rng, n_answers, shift, n_features=4, length=30):
    out = []
    for _ in range(n_answers):
        x = rng.normal(size=(length, n_features))
        x[:, 0] += shift
        out.append(x)
    return out


def test_probe_finds_the_informative_adapter_and_the_null_does_not():
    rng = np.random.default_rng(0)
    x = tokens(rng, 20, 0.0) + tokens(rng, 20, 1.0)  # feature 0 carries the class, one SD apart per token
    fit = fit_probe(x, [0] * 20 + [1] * 20, n_splits=20, c=0.01, seed=0)
    assert fit.auc.shape == fit.auc_null.shape == (20,) and fit.coefs.shape == (20, 4)
    assert fit.auc.min() == 1.0  # answer means of 30 tokens are ~5 SE apart: every held-out pair ranks right
    assert 0.3 < fit.auc_null.mean() < 0.7
    assert 0.6 < fit.token_auc.mean() < 0.85  # per token: Φ(1 / √2) ≈ 0.76
    assert (fit.coefs[:, 0] > 0).all() and np.abs(fit.coefs[:, 1:]).max() < 0.05
    assert (fit.n_a, fit.n_b, fit.n_tokens) == (20, 20, 40 * 30)


def test_probe_with_too_few_tokens_for_its_penalty_is_at_chance():
    rng = np.random.default_rng(1)
    x = tokens(rng, 3, 0.0, length=2) + tokens(rng, 3, 0.5, length=2)
    fit = fit_probe(x, [0] * 3 + [1] * 3, n_splits=5, c=0.01)
    assert np.all(fit.coefs == 0) and np.all(fit.auc == 0.5)  # C = 0.01 on 8 tokens zeroes every coefficient
    with pytest.raises(ValueError, match="at least 2"):
        fit_probe(x[:4], [0, 1, 1, 1], n_splits=1)


def test_coefficient_shares_and_split():
    coefs = np.array([[1.0, -0.5, 0.0, 0.2], [3.0, 0.5, 0.0, 0.2]])  # feature 1 flips sign: it cancels
    np.testing.assert_allclose(coefficient_shares(coefs, 4), [2 / 2.2, 0, 0, 0.2 / 2.2])
    assert coefficient_shares(None, 3).tolist() == [0, 0, 0]
    assert coefficient_shares(np.zeros((2, 3)), 3).tolist() == [0, 0, 0]
    general = np.array([0.5, 0.3, 0.2, 0.0])
    domain = np.array([0.0, 0.2, 0.3, 0.5])
    assert split_adapters(general, domain) == ["general", "general", "domain", "domain"]
    assert split_adapters([0.24, 0.76, 0, 0], [0.0, 0.0, 0, 1.0]) == ["neither", "general", "neither", "domain"]


# ---------------------------------------------------------------- parameters


def test_layers_from_block_depths():
    p = f05.Params()
    assert p.layers(30) == [9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert p.layers(48) == [15, 16, 17, 21, 22, 23, 27, 28, 29]  # the paper's layers on Qwen2.5-14B
    with pytest.raises(ParamError, match="BLOCK_DEPTHS"):
        f05.Params(block_depths=[0.3, 0.35]).layers(30)
    with pytest.raises(ParamError, match="BLOCK_DEPTHS"):
        f05.Params(block_depths=[0.9], block_size=4).layers(30)
    spec = p.organism([9, 10], seed=4)
    assert spec.rank == 1 and spec.layers == (9, 10) and spec.target_modules == ("down_proj",) and spec.use_rslora


def test_steer_scales_zero_the_others():
    p = f05.Params(steer_general=20.0, steer_domain=30.0, steer_general_down=-10.0)
    split, modules = ["general", "domain", "neither", "general"], ["m0", "m1", "m2", "m3"]
    assert p.steer_scales("general up", split, modules) == {"m0": 20.0, "m3": 20.0}
    assert p.steer_scales("domain up", split, modules) == {"m1": 30.0}
    assert p.steer_scales("domain up, general down", split, modules) == {"m0": -10.0, "m1": 30.0, "m3": -10.0}


# ---------------------------------------------------------------- verdict


def result(organism=0.1, probes=(0.1, 0.1, 0.1, 0.1), split=("general", "domain"), steering=0.1) -> f05.Result:
    effects = {p.name: eff(lo) for p, lo in zip(PROBES, probes) if lo is not None}
    return f05.Result(eff(organism), effects, None if steering is None else eff(steering), {0: list(split), 1: list(split)})


@pytest.mark.parametrize("probes, label", [
    ((0.1, 0.1, 0.1, 0.1), REPRODUCED),
    ((0.1, 0.1, 0.1, 0.0), PARTLY),  # the boundary: an interval touching zero does not beat the null
    ((0.1, None, 0.1, 0.1), PARTLY),  # a probe that could not be run does not beat it either
    ((0.0, -0.1, 0.0, None), NOT_REPRODUCED),
])
def test_verdict_probes(probes, label):
    assert f05.verdict_probes(result(probes=probes)) == label


@pytest.mark.parametrize("probes, split, steering, label", [
    ((0.1, 0.1, 0.1, 0.1), ("general", "domain"), 0.01, REPRODUCED),
    ((0.1, 0.1, 0.1, 0.1), ("general", "domain"), 0.0, PARTLY),  # split, but steering not clearly apart
    ((0.1, 0.1, 0.1, 0.1), ("general", "neither"), 0.1, PARTLY),  # no domain adapter: steering alone
    ((0.1, 0.0, 0.1, 0.1), ("general", "domain"), 0.1, PARTLY),  # the domain probe at chance: no split
    ((0.1, 0.1, 0.0, 0.1), ("general", "domain"), 0.0, NOT_REPRODUCED),  # the general probe at chance, no steering
    ((0.1, 0.1, 0.1, 0.1), ("general", "domain"), None, PARTLY),
])
def test_verdict_split(probes, split, steering, label):
    assert f05.verdict_split(result(probes=probes, split=split, steering=steering)) == label


def test_split_needs_every_seed():
    r = result()
    r.split[1] = ["general", "general"]
    assert not f05.split_exists(r) and f05.verdict_split(r) == PARTLY


@pytest.mark.parametrize("organism, probes, steering, label", [
    (0.1, (0.1,) * 4, 0.1, REPRODUCED),
    (0.0, (0.1,) * 4, 0.1, PARTLY),  # no EM in the organism: at most partly
    (0.1, (0.0,) * 4, 0.0, PARTLY),
    (0.0, (0.0,) * 4, 0.0, NOT_REPRODUCED),
])
def test_verdict_combines_organism_probes_and_split(organism, probes, steering, label):
    v = f05.verdict(result(organism=organism, probes=probes, steering=steering))
    assert v.label == label and set(v.parts) == {"organism EM", "(a) probes", "(b) split and steering"}
    assert ("not clearly above" in v.reason) == (organism <= 0)


def test_probes_end_to_end_on_synthetic_scalars_find_the_planted_split():
    rng = np.random.default_rng(0)

    def seed_frame():
        rows = []
        for domain in (False, True):
            for mis in (False, True):
                for _ in range(16):
                    x = rng.normal(size=(20, 3))
                    x[:, 0] += 1.0 * mis  # adapter 0: misalignment anywhere (general)
                    x[:, 1] += 1.0 * (mis and domain)  # adapter 1: misalignment on the domain only
                    rows.append({"aligned": 10.0 if mis else 95.0, "domain": domain, "scalars": x})
        return pd.DataFrame(rows)

    p = f05.Params(min_class=10, n_splits=8)
    effects, fits, cutoffs, table, coefficients, split = f05._probes(p, {0: seed_frame(), 1: seed_frame()}, [9, 10, 11])
    assert all(c == CUTOFFS[0] for c in cutoffs.values())  # 16 answers per class at the paper's cut-offs
    assert split == {0: ["general", "domain", "neither"], 1: ["general", "domain", "neither"]}
    assert effects[GENERAL_PROBE].above and effects[DOMAIN_PROBE].above
    assert not effects["aligned: off-domain vs domain"].above  # nothing planted there
    assert len(fits) == 8 and set(table["n_a"]) == {32} and len(coefficients) == 4 * 2 * 3
    r = f05.Result(eff(0.1), effects, eff(0.1), split)
    assert f05.split_exists(r) and f05.verdict_probes(r) == PARTLY and f05.verdict_split(r) == REPRODUCED
