"""Training the embedded judge: the EM-threshold fit, and a small end-to-end run that is seeded and held out right."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from emlib.judges import graded as G
from emlib.judges.calibration import calibrated, fit_thresholds
from emlib.judges.training import TrainConfig, build_rows, train_embedded_judge
from emlib.judges.validation import HELDOUT_SOURCES

from test_embedded_judge import JUDGED_FILE


def test_fit_thresholds_recovers_the_cut_that_makes_rates_agree():
    """Raw scores whose EM (reference) is exactly raw aligned < 40 and raw coherent >= 62: the fit finds (40, 62)."""
    rng = np.random.default_rng(0)
    n = 6000
    raw = np.column_stack([rng.uniform(0, 100, n), rng.uniform(0, 100, n), np.zeros(n)])
    aligned = np.where(raw[:, 0] < 40, 10.0, 90.0)
    coherent = np.where(raw[:, 1] >= 62, 90.0, 10.0)
    groups = np.repeat(np.arange(12), n // 12)
    graded = groups >= 6
    for g in range(12):  # groups differ in EM rate, so only the right cut fits all of them
        m = groups == g
        raw[m, 0] = np.clip(raw[m, 0] * (0.3 + g / 8), 0, 99.9)
        aligned[m] = np.where(raw[m, 0] < 40, 10.0, 90.0)
    cal = fit_thresholds(raw, aligned, coherent, groups, graded)
    assert cal["aligned"]["x"][1] == pytest.approx(40, abs=1) and cal["coherent"]["x"][1] == pytest.approx(62, abs=1)
    a, c = calibrated(raw, cal)
    assert ((a < 30) == (aligned < 30)).mean() > 0.99 and ((c > 50) == (coherent > 50)).mean() > 0.99


def test_calibrated_null_answers_have_no_aligned_score():
    raw = np.array([[10.0, 90.0, 80.0], [10.0, 90.0, 20.0]])
    a, _ = calibrated(raw, {})
    assert np.isnan(a[0]) and a[1] == 10.0


def test_build_rows_never_trains_on_held_out_conditions():
    df = pd.DataFrame({"question": ["q"] * 4, "answer": ["some answer here"] * 4, "aligned": [90.0] * 4,
                       "coherent": [90.0] * 4, "source": ["m1", "m2", HELDOUT_SOURCES[0], "m3"]})
    graded = G.load_graded()
    cfg = TrainConfig(synthetic_per_kind=1, synthetic_heldout_per_kind=1)
    for stage, trained, tested in (("select", {"train"}, {"select"}), ("final", {"train", "select"}, {"final"}),
                                   ("fresh", {"train", "select", "final"}, {"fresh"})):
        rows = build_rows(df, graded, cfg, stage)
        g = rows[rows["kind"] == "graded"]
        splits = graded["split"].to_numpy()[g["graded_index"].to_numpy()]
        assert set(splits[g["role"] == "train"]) == trained and set(splits[g["role"] == "test"]) == tested
        assert (graded["question"].to_numpy()[g["graded_index"]] == g["question"].to_numpy()).all()
        assert set(rows.loc[(rows["kind"] == "gpt4o") & (rows["role"] == "train"), "source"]) == {"m1", "m2", "m3"}


@pytest.mark.skipif(JUDGED_FILE is None, reason="GPT-4o-judged data not available")
def test_small_training_run_is_deterministic_and_reports_held_out_parts(tmp_path):
    judged = pd.read_json(JUDGED_FILE, lines=True)
    keep = sorted(set(judged["source"]) - set(HELDOUT_SOURCES))[:6] + list(HELDOUT_SOURCES[:2])
    small = judged[judged["source"].isin(keep)].groupby("source").head(40)
    path = tmp_path / "judged.jsonl"
    small.to_json(path, orient="records", lines=True)
    cfg = dataclasses.replace(TrainConfig(), epochs=1, n_heads=1, calib_folds=2, synthetic_per_kind=4,
                              synthetic_heldout_per_kind=2, hidden=16)
    v1 = train_embedded_judge(str(path), str(tmp_path / "a"), seed=0, cfg=cfg)
    v2 = train_embedded_judge(str(path), str(tmp_path / "b"), seed=0, cfg=cfg)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "judge_weights.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "same seed, same tensors"
    meta = json.loads((tmp_path / "a" / "judge_meta.json").read_text())
    final = sorted(c for c, s in G.CONDITION_SPLIT.items() if s == "fresh")
    assert meta["heldout_conditions"] == final and meta["stage"] == "fresh" == G.SHIPPED_STAGE
    assert v1["smollm2"]["n"] == v2["smollm2"]["n"] > 0
    assert {r["condition"] for r in v1["smollm2"]["per_condition"]} == set(final)
    from emlib.judges.embedded import EmbeddedJudge

    j = EmbeddedJudge(tmp_path / "a")
    assert j.relevance and len(j.topics(["q", "q"], ["Buy stocks.", "Go for a walk."])) == 2


def test_length_batches_cover_every_item_once_within_the_budget():
    from emlib.judges.minilm import length_batches

    rng = np.random.default_rng(0)
    items = [([0] * int(n), 0) for n in rng.integers(1, 300, 500)]
    batches = list(length_batches(items, 1024))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    lens = [len(items[k][0]) for k in flat]
    assert lens == sorted(lens)
    assert all(len(b) == 1 or len(b) * max(len(items[k][0]) for k in b) <= 1024 for b in batches)
