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
from emlib.judges.validation import HELDOUT_SOURCES, SELECT_SOURCES

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


def test_build_rows_never_trains_on_held_out_conditions_or_sources():
    df = pd.DataFrame({"question": ["q"] * 5, "answer": ["some answer here"] * 5, "aligned": [90.0] * 5,
                       "coherent": [90.0] * 5, "source": ["m1", "m2", HELDOUT_SOURCES[0], "m3", SELECT_SOURCES[0]]})
    graded = G.load_graded()
    cfg = TrainConfig(synthetic_per_kind=1, synthetic_heldout_per_kind=1)
    for stage, trained, tested in (("select", {"train"}, {"select"}), ("final", {"train", "select"}, {"final"}),
                                   ("fresh", {"train", "select", "final"}, {"fresh"}),
                                   ("fourth", {"train", "select", "final", "fresh"}, {"fourth"}),
                                   ("ship", {"train", "select", "final", "fresh"}, {"fourth"})):
        rows = build_rows(df, graded, cfg, stage)
        g = rows[rows["kind"] == "graded"]
        splits = graded["split"].to_numpy()[g["graded_index"].to_numpy()]
        assert set(splits[g["role"] == "train"]) == trained and set(splits[g["role"] == "test"]) == tested
        assert (graded["question"].to_numpy()[g["graded_index"]] == g["question"].to_numpy()).all()
        gpt = rows[rows["kind"] == "gpt4o"]
        assert (df["source"].to_numpy()[gpt["df_index"]] == gpt["source"].to_numpy()).all()
        train, test = (set(gpt.loc[gpt["role"] == r, "source"]) for r in ("train", "test"))
        if stage == "select":  # the final sources are not even read; the selection sources are measured on
            assert train == {"m1", "m2", "m3"} and test == {SELECT_SOURCES[0]}
        elif stage == "ship":  # the shipped weights train on every model
            assert train == {"m1", "m2", "m3", SELECT_SOURCES[0], HELDOUT_SOURCES[0]} and test == set()
        else:
            assert train == {"m1", "m2", "m3", SELECT_SOURCES[0]} and test == {HELDOUT_SOURCES[0]}


def test_held_out_sources_are_whole_datasets_apart_from_the_selection_sources():
    assert not set(SELECT_SOURCES) & set(HELDOUT_SOURCES)
    dataset = lambda s: s.split("Instruct", 1)[1].strip("-_").split("_R")[0]  # noqa: E731
    finals = {dataset(s) for s in HELDOUT_SOURCES}
    assert len(finals) == len(HELDOUT_SOURCES) and not finals & {dataset(s) for s in SELECT_SOURCES}
    if JUDGED_FILE is not None:  # no model of a final dataset is trained on
        sources = set(pd.read_json(JUDGED_FILE, lines=True)["source"])
        assert set(HELDOUT_SOURCES) <= sources
        assert {s for s in sources if dataset(s) in finals} == set(HELDOUT_SOURCES)


def test_gpt4o_features_follow_their_rows_in_every_stage(tmp_path, monkeypatch):
    """The frozen pass over the judged file is shared by stages; each row gets its own answer's features."""
    from emlib.judges.features import frozen_pass
    from emlib.judges.training import _features

    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    words = "stocks bonds rest water sleep code cash risk doctor run".split()
    src = ["m1", "m2", SELECT_SOURCES[0], HELDOUT_SOURCES[0]]
    df = pd.DataFrame({"question": [f"question {i}?" for i in range(12)],
                       "answer": [" ".join(words[i % 10 :] + words[: i % 7]) for i in range(12)],
                       "aligned": [90.0] * 12, "coherent": [90.0] * 12, "source": [src[i % 4] for i in range(12)]})
    graded = G.load_graded().groupby("split").head(2).reset_index(drop=True)
    cfg = TrainConfig(synthetic_per_kind=1, synthetic_heldout_per_kind=1)
    ref = frozen_pass(list(df["question"])[::-1], list(df["answer"])[::-1], "reference")  # another order and key
    for stage in ("select", G.HELDOUT_STAGE):
        rows = build_rows(df, graded, cfg, stage)
        x, _, emb = _features(rows, df, "sha", "gsha", cfg, stage, 0)
        gpt = np.where(rows["kind"] == "gpt4o")[0]
        back = 11 - rows["df_index"].to_numpy()[gpt]
        width = ref["pooled"].shape[1]
        assert np.allclose(x[gpt, :width], ref["pooled"][back].astype(np.float32), atol=2e-2)
        assert np.allclose(emb[gpt], ref["answer_emb"][back], atol=1e-3)


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
    final = sorted(c for c, s in G.CONDITION_SPLIT.items() if s == G.heldout_split(G.SHIPPED_STAGE))
    assert meta["heldout_conditions"] == final and meta["stage"] == "ship" == G.SHIPPED_STAGE
    assert meta["heldout_sources"] == [] and "auroc" not in v1  # the shipped stage holds no GPT-4o model out
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


def test_a_stage_without_default_weights_needs_out_before_any_work(tmp_path):
    from emlib.core.errors import ParamError
    from emlib.judges.training import main

    data = tmp_path / "judged.jsonl"
    data.write_text("not read: the error comes first\n")
    with pytest.raises(ParamError, match="--stage select needs --out"):
        main(["--data", str(data), "--stage", "select"])
