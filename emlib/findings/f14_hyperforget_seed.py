"""Finding 14, one training seed end to end: original model, weight dataset, hypernetwork, samples, baselines, relearning.

`run_seed(cfg, split)` returns plain numpy arrays (cached on disk by a hash of `cfg`):

- the **weight dataset**: the original model's training checkpoints and, for every class except the held-out one,
  unlearning checkpoints from the original: fine-tuning on the retained classes (`finetune`), gradient ascent on
  the forgotten class (`ascent`), and fine-tuning on the retained classes after that ascent (`ascent+repair`), at
  each unlearning learning rate; each checkpoint is labelled with its per-class training losses;
- the **hypernetwork**: a conditional DDPM over the checkpoints' coordinates in a linear basis, conditioned on
  the per-class losses; sampled for each class c with the target "the original's losses, but class c's loss at the
  forget target" (the held-out class included), and with the original's own losses (the control condition);
- **baselines** for every class: the original, a retrain without the class, gradient ascent stopped at the first
  checkpoint with 0 training accuracy on the class, and the fine-tune / ascent+repair trajectories' endpoints;
- **relearning**: the first sampled models of each class and the ascent / retrain baselines fine-tuned on the
  retained classes only.

All accuracies are per class on the test split, (..., 10); `retain_forget` turns them into forget / retain accuracy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from ..core.cache import atomic_write_bytes, cache_dir, stable_hash
from .f14_hyperforget_diffusion import Conditioner, fit_basis, sample_ddpm, train_ddpm
from .f14_hyperforget_mlp import N_CLASSES, Split, class_metrics, init_weights, retain_forget, train_batch

__all__ = ["VERSION", "METHODS", "BASELINES", "SeedConfig", "forget_target", "run_seed"]

VERSION = "f14-v1"
METHODS = ("finetune", "ascent", "ascent+repair")
BASELINES = ("original", "retrain", "ascent", "finetune", "ascent+repair")
GOOD_RETAIN_DROP = 0.02  # a checkpoint counts as successfully unlearned when its train retain accuracy is this close


@dataclass(frozen=True)
class SeedConfig:
    """Everything that determines one seed's run (its hash is the cache key)."""

    dataset: str
    n_max: int
    test_frac: float
    split_seed: int
    hidden: int
    train_steps: int
    train_lr: float
    train_ckpt_every: int
    unlearn_lrs: tuple[float, ...]
    unlearn_steps: int
    ckpt_every: int
    held_out: int
    n_components: int
    cond_loss_floor: float
    target_quantile: float
    diffusion_steps: int
    diffusion_iters: int
    denoiser_width: int
    denoiser_depth: int
    diffusion_lr: float
    diffusion_batch: int
    predict: str
    p_uncond: float
    guidance: float
    n_samples: int
    n_relearn: int
    relearn_steps: int
    relearn_lr: float
    seed: int


def _weights(y: torch.Tensor, cls: int, kind: str) -> torch.Tensor:
    """Signed example weights: 'retain' descends the mean loss on other classes, 'ascent' ascends it on `cls`."""
    mask = (y == cls).float() if kind == "ascent" else (y != cls).float()
    return mask / mask.sum() * (-1.0 if kind == "ascent" else 1.0)


def forget_target(losses: np.ndarray, accs: np.ndarray, forget_class: np.ndarray, original_acc: np.ndarray,
                  counts: np.ndarray, quantile: float) -> float:
    """The forget-class loss to ask the hypernetwork for: the `quantile` of the forget-class training loss over the
    dataset's unlearning checkpoints that reached 0 training accuracy on their class while keeping their retain
    accuracy within GOOD_RETAIN_DROP of the original's; without any, the same quantile over all unlearning
    checkpoints. losses/accs (M, 10), forget_class (M,) with -1 for training checkpoints, original_acc (10,)."""
    good, every = [], []
    for c in np.unique(forget_class[forget_class >= 0]):
        m = forget_class == c
        f, r = retain_forget(accs[m], counts, int(c))
        _, r0 = retain_forget(original_acc, counts, int(c))
        every.append(losses[m, c])
        good.append(losses[m, c][(f == 0) & (r >= r0 - GOOD_RETAIN_DROP)])
    pool = np.concatenate(good) if sum(len(g) for g in good) else np.concatenate(every)
    return float(np.quantile(pool, quantile))


def _unlearning(cfg: SeedConfig, split: Split, w: torch.Tensor) -> dict:
    """Every class's unlearning trajectories from the original w (1, P): checkpoints, their class and method."""
    x, y = split.x_train, split.y_train
    runs = [(c, lr) for c in range(N_CLASSES) for lr in cfg.unlearn_lrs]
    lr = torch.tensor([r[1] for r in runs], dtype=torch.float32)
    retain = torch.stack([_weights(y, c, "retain") for c, _ in runs])
    ascent = torch.stack([_weights(y, c, "ascent") for c, _ in runs])
    n = len(runs)
    ends, ckpts = train_batch(w.expand(2 * n, -1), x, y, torch.cat([retain, ascent]), torch.cat([lr, lr]),
                              cfg.unlearn_steps, cfg.ckpt_every)
    _, repair = train_batch(ends[n:], x, y, retain, lr, cfg.unlearn_steps, cfg.ckpt_every)
    cls = np.array([c for c, _ in runs])
    return {"finetune": ckpts[:, :n], "ascent": ckpts[:, n:], "ascent+repair": repair, "class": cls,
            "lr": np.array([r[1] for r in runs])}


def _compute(cfg: SeedConfig, split: Split) -> dict[str, np.ndarray]:
    x, y, xt, yt = split.x_train, split.y_train, split.x_test, split.y_test
    n_train, counts = len(y), np.bincount(y.numpy(), minlength=N_CLASSES)
    w0 = init_weights(1, split.n_in, cfg.hidden, cfg.seed)
    one = torch.full((1,), cfg.train_lr)
    w, train_ckpts = train_batch(w0, x, y, torch.full((1, n_train), 1.0 / n_train), one, cfg.train_steps,
                                 cfg.train_ckpt_every)
    # the retrain baselines: same init, same schedule, without the class
    retrain, _ = train_batch(w0.expand(N_CLASSES, -1), x, y, torch.stack([_weights(y, c, "retain") for c in range(N_CLASSES)]),
                             one.expand(N_CLASSES), cfg.train_steps)
    un = _unlearning(cfg, split, w)
    keep = un["class"] != cfg.held_out
    steps = un["finetune"].shape[0]
    parts, labels = [train_ckpts[:, 0]], [np.full(train_ckpts.shape[0], -1)]
    for method in METHODS:
        parts.append(un[method][:, keep].reshape(-1, w.shape[1]))  # step-major: step 0 runs, step 1 runs, ...
        labels.append(np.tile(un["class"][keep], steps))
    data_w, data_class = torch.cat(parts), np.concatenate(labels)
    data_loss, data_acc = class_metrics(data_w, x, y)
    orig_loss, orig_acc_train = (a[0] for a in class_metrics(w, x, y))
    target = forget_target(data_loss, data_acc, data_class, orig_acc_train, counts, cfg.target_quantile)

    # the hypernetwork
    basis = fit_basis(data_w, cfg.n_components)
    coords = basis.encode(data_w)
    cond = Conditioner(data_loss, floor=cfg.cond_loss_floor)
    model, curve = train_ddpm(coords, cond(data_loss), steps=cfg.diffusion_steps, iters=cfg.diffusion_iters,
                              width=cfg.denoiser_width, depth=cfg.denoiser_depth, lr=cfg.diffusion_lr,
                              batch_size=cfg.diffusion_batch, p_uncond=cfg.p_uncond, seed=cfg.seed, predict=cfg.predict)
    wanted = np.tile(orig_loss, (N_CLASSES + 1, 1))
    wanted[np.arange(N_CLASSES), np.arange(N_CLASSES)] = target  # row c forgets c; the last row is the control
    conds = cond(np.repeat(wanted, cfg.n_samples, axis=0))
    clip = float(coords.abs().max()) * 1.2
    sampled = basis.decode(sample_ddpm(model, conds, steps=cfg.diffusion_steps, guidance=cfg.guidance,
                                       seed=cfg.seed, clip=clip, predict=cfg.predict))
    _, sampled_acc = class_metrics(sampled, xt, yt)
    sampled_acc = sampled_acc.reshape(N_CLASSES + 1, cfg.n_samples, N_CLASSES)
    sampled_loss, _ = class_metrics(sampled, x, y)
    sampled_loss = sampled_loss.reshape(N_CLASSES + 1, cfg.n_samples, N_CLASSES)

    # baselines, each (10 classes, 10 per-class accuracies)
    stop = []  # ascent at the largest learning rate, stopped at its first checkpoint with 0 train forget accuracy
    big = np.flatnonzero(un["lr"] == max(cfg.unlearn_lrs))
    for c in range(N_CLASSES):
        run = big[un["class"][big] == c][0]
        _, acc = class_metrics(un["ascent"][:, run], x, y)
        hit = np.flatnonzero(acc[:, c] == 0)
        stop.append(un["ascent"][hit[0] if len(hit) else -1, run])
    last = {m: un[m][-1, big] for m in ("finetune", "ascent+repair")}
    base_w = {"original": w.expand(N_CLASSES, -1), "retrain": retrain, "ascent": torch.stack(stop), **last}
    baseline_acc = np.stack([class_metrics(base_w[b], xt, yt)[1] for b in BASELINES])

    # relearning: fine-tune on the retained classes only (sampled models, the ascent and retrain baselines)
    r = cfg.n_relearn
    relearn_w = torch.cat([sampled.view(N_CLASSES + 1, cfg.n_samples, -1)[:N_CLASSES, :r].reshape(-1, w.shape[1]),
                           base_w["ascent"], base_w["retrain"]])
    relearn_cls = np.concatenate([np.repeat(np.arange(N_CLASSES), r), np.arange(N_CLASSES), np.arange(N_CLASSES)])
    relearned, _ = train_batch(relearn_w, x, y, torch.stack([_weights(y, int(c), "retain") for c in relearn_cls]),
                               torch.full((len(relearn_cls),), cfg.relearn_lr), cfg.relearn_steps)
    before, after = class_metrics(relearn_w, xt, yt)[1], class_metrics(relearned, xt, yt)[1]

    recon_acc = class_metrics(basis.decode(basis.encode(w)), xt, yt)[1][0]
    return {
        "test_counts": np.bincount(yt.numpy(), minlength=N_CLASSES), "original_acc": baseline_acc[0, 0],
        "original_loss": orig_loss, "forget_target": np.array(target), "held_out": np.array(cfg.held_out),
        "sampled_acc": sampled_acc, "sampled_loss": sampled_loss, "baseline_acc": baseline_acc,
        "relearn_before": before, "relearn_after": after, "relearn_class": relearn_cls,
        "n_checkpoints": np.array(len(data_class)), "explained": basis.explained, "recon_acc": recon_acc,
        "diffusion_curve": np.array(curve),
    }


def run_seed(cfg: SeedConfig, split: Split) -> dict[str, np.ndarray]:
    """One seed's arrays (see the module docstring), cached under the hash of cfg and VERSION."""
    path = cache_dir("f14_hyperforget", stable_hash(cfg, VERSION)) / "seed.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    out = _compute(cfg, split)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(path, buf.getvalue())
    return out
