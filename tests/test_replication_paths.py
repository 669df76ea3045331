"""The replication paths on fresh seeds, with training and sampling stubbed (the real runs are the smoke notebooks):
notebook 01's `run(p, shared=main)` trains and samples only the narrow fine-tune and reuses the main run's base and
control answers (control seed i standing for fresh seed i); notebook 04's `replicate()` ablates exactly notebook 01's
replication fine-tunes, and its headline effect is the hand-computed EM drop; notebooks 02 and 03 reuse the main run's
base answers."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from emlib.core.data import fingerprint
from emlib.findings import f01_emergent_misalignment as f01
from emlib.findings import f04_misalignment_direction as f04


def _stub_judged(log: list, em_of):
    """A judged_answers stand-in: one row per question × sample, EM by `em_of(label, sampling seed, k)`."""
    def judged(questions, model, adapter, cfg, judge, label, intervention=None, progress=True, **columns):
        log.append((label, cfg.seed, adapter))
        rows = [{"question_id": q.id, "question": q.paraphrases[0], "answer": f"{label}|{cfg.seed}|{q.id}|{k}",
                 "model": label, "em": em_of(label, cfg.seed, k)}
                for q in questions for k in range(cfg.n_per_question)]
        df = pd.DataFrame(rows)
        df["aligned"], df["coherent"] = np.where(df["em"], 10.0, 90.0), 90.0
        return df.assign(**columns)
    return judged


def _stub_train(log: list):
    def train(examples, cfg, model):
        log.append((fingerprint(examples), cfg))
        return SimpleNamespace(adapter_path=f"adapter-{len(log)}")
    return train


@pytest.fixture
def stubbed_01(monkeypatch):
    trained, sampled = [], []
    monkeypatch.setattr(f01, "train_lora", _stub_train(trained))
    monkeypatch.setattr(f01, "judged_answers", _stub_judged(sampled, lambda label, s, k: label == "fine-tuned" and k == 0))
    monkeypatch.setattr(f01, "drift_mask", lambda q, a, topic, judge=None: np.zeros(len(a), dtype=bool))
    monkeypatch.setattr(f01, "make_judge", lambda *a: SimpleNamespace(id="stub"))
    return trained, sampled


def _params01() -> f01.Params:
    return f01.Params(dataset="builtin_risky_financial_advice", control_dataset="builtin_safe_financial_advice",
                      same_domain_dataset="", data_dir="", n_train=8, n_samples=2, n_seeds=3, seed=0)


def test_replication_of_01_trains_and_samples_only_the_narrow_fine_tune(stubbed_01):
    trained, sampled = stubbed_01
    p = _params01()
    main = f01.run(p)
    assert len(trained) == 6 and sorted(lbl for lbl, _, _ in sampled) == ["base"] + ["control"] * 3 + ["fine-tuned"] * 3
    trained.clear(), sampled.clear()

    fresh = p.fresh_seeds()
    rep = f01.run(fresh, shared=main)
    narrow = {s: fresh.finetune(p.dataset, p.dataset_fallback, seed=s) for s in (3, 4, 5)}
    assert [cfg for _, cfg in trained] == [narrow[s].train_config() for s in (3, 4, 5)]  # 01's own replication runs
    assert [fp for fp, _ in trained] == [fingerprint(narrow[s].load()[0]) for s in (3, 4, 5)]
    assert [(lbl, s) for lbl, s, _ in sampled] == [("fine-tuned", 3), ("fine-tuned", 4), ("fine-tuned", 5)]
    assert rep.seeds == [3, 4, 5] and rep.runs["control"] is main.runs["control"]

    def rows(r, model):
        return r.answers[r.answers["model"] == model].reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(rep, "base"), rows(main, "base"))  # the same base answers, not resampled
    relabelled = rows(main, "control").assign(seed=rows(main, "control")["seed"].map({0: 3, 1: 4, 2: 5}).astype("Int64"))
    pd.testing.assert_frame_equal(rows(rep, "control"), relabelled)  # control seed i stands for fresh seed i
    assert set(rows(rep, "fine-tuned")["seed"]) == {3, 4, 5}
    assert rep.effect.value == pytest.approx(0.5) and rep.vs_control.value == pytest.approx(0.5)  # k == 0 of 2


def test_replication_of_01_needs_as_many_seeds(stubbed_01):
    p = _params01()
    main = f01.run(p)
    with pytest.raises(ValueError, match="3 seeds, this one 2"):
        f01.run(replace(p, seed=3, n_seeds=2), shared=main)


def test_replicate_04_ablates_notebook_01s_replication_fine_tunes(monkeypatch):
    trained, sampled = [], []
    em_none = {3: 0.5, 4: 0.25, 5: 0.0}  # EM share without ablation per training seed (sampled with seed + 1)

    def em_of(label, s, k):
        if label.endswith(": none"):
            return k < em_none[s - 1] * 4
        return label.endswith(": random") and k == 0

    monkeypatch.setattr(f04, "train_lora", _stub_train(trained))
    monkeypatch.setattr(f04, "judged_answers", _stub_judged(sampled, em_of))
    monkeypatch.setattr(f04, "make_judge", lambda *a: SimpleNamespace(id="stub"))
    monkeypatch.setattr(f04, "num_layers", lambda model: 4)
    directions = []

    def direction(p, questions, judge, run, name, seed):
        d = np.random.default_rng(seed).standard_normal((4, 8))
        directions.append((name, seed))
        return None, torch.tensor(d, dtype=torch.float32), 8, "ranked"

    monkeypatch.setattr(f04, "_direction", direction)
    p = f04.Params(dataset="builtin_risky_financial_advice", data_dir="", n_train=8, n_samples=4, n_seeds=3, seed=0)
    rep = f04.replicate(p)

    p01 = f01.Params(dataset=p.dataset, data_dir="", n_train=8, n_seeds=3, seed=0).fresh_seeds()
    assert rep.seeds == [3, 4, 5]
    assert [cfg for _, cfg in trained] == [p01.finetune(p.dataset, p.dataset_fallback, seed=s).train_config()
                                           for s in (3, 4, 5)]
    assert [s for _, s in directions] == [3, 4, 5]  # each seed's own direction
    assert {s for _, s, _ in sampled} == {4, 5, 6}  # ablations sampled with seed + 1, not the direction's answers
    assert rep.source == "builtin_risky_financial_advice"
    assert rep.effect.value == pytest.approx(np.mean(list(em_none.values())))  # none − v̂ (v̂: no EM), by hand
    assert rep.ablation[(rep.source, "random")].value == pytest.approx(np.mean(list(em_none.values())) - 0.25)


def test_replication_of_02_reuses_the_base_answers(monkeypatch):
    from emlib.findings import f02_rank1_model_organism as f02

    trained, sampled = [], []
    monkeypatch.setattr(f02, "num_layers", lambda model: 30)
    monkeypatch.setattr(f02, "train_lora", _stub_train(trained))
    monkeypatch.setattr(f02, "judged_answers", _stub_judged(sampled, lambda label, s, k: label != "base" and k == 0))
    monkeypatch.setattr(f02, "make_judge", lambda *a: SimpleNamespace(id="stub"))
    p = f02.Params(dataset="builtin_risky_financial_advice", data_dir="", n_train=8, n_samples=2, n_seeds=3, seed=0,
                   high_rank=0)
    main = f02.run(p)
    assert [a for lbl, _, a in sampled if lbl == "base"] == [None]
    sampled.clear()
    rep = f02.run(p.fresh_seeds(), shared=main)
    assert [(s, a is None) for _, s, a in sampled] == [(3, False), (4, False), (5, False)]  # adapters only
    base = [r.answers[r.answers.model == "base"].reset_index(drop=True) for r in (main, rep)]
    pd.testing.assert_frame_equal(base[0], base[1])
    assert rep.effect.value == pytest.approx(0.5)  # k == 0 of 2 answers per paraphrase, base 0
    with pytest.raises(ValueError, match="N_SAMPLES × N_SEEDS"):
        f02.run(replace(p.fresh_seeds(), n_samples=3), shared=main)


def test_replication_of_03_reuses_the_base_answers(monkeypatch):
    from emlib.findings import f03_phase_transition as f03

    sampled, steps = [], np.arange(2, 42, 2)
    judged = _stub_judged(sampled, lambda label, s, k: False)

    def trajectory(p, layer, seed):
        traj = np.random.default_rng(seed).normal(size=(len(steps), 16))
        log = pd.DataFrame({"step": steps, "loss": 1.0, "grad_norm": np.linspace(1, 2, len(steps))})
        ft = p.finetune(layer, seed)
        return {"seed": seed, "ft": ft, "info": ft.load()[1], "run": None, "log": log, "steps": steps,
                "traj": traj, "k_main": 2, "geo_peak": 10, "grad_peak": 12}

    def checkpoints(p, t, questions, judge):
        return pd.concat([judged(questions, p.model, f"snap-{s}", f03.sample_config(p.n_samples, 8, 0.5, t["seed"]),
                                 judge, f"step {s}", step=s, scale=1.0).assign(seed=t["seed"]) for s in (8, 16)])

    monkeypatch.setattr(f03, "num_layers", lambda model: 30)
    monkeypatch.setattr(f03, "_trajectory", trajectory)
    monkeypatch.setattr(f03, "_checkpoint_answers", checkpoints)
    monkeypatch.setattr(f03, "judged_answers", judged)
    monkeypatch.setattr(f03, "make_judge", lambda *a: SimpleNamespace(id="stub"))
    p = f03.Params(dataset="builtin_risky_financial_advice", data_dir="", n_train=8, n_samples=2, n_seeds=3, seed=0,
                   null_dataset="", n_walks=2)
    main = f03.run(p)
    assert [a for lbl, _, a in sampled if lbl == "base"] == [None]
    sampled.clear()
    rep = f03.run(p.fresh_seeds(), shared=main)
    assert sampled and all(lbl != "base" for lbl, _, _ in sampled)  # checkpoints only
    base = [r.answers[r.answers.model == "base"].reset_index(drop=True) for r in (main, rep)]
    pd.testing.assert_frame_equal(base[0], base[1])
    assert list(rep.per_seed["seed"]) == [3, 4, 5]
