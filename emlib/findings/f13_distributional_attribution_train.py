"""Finding 13's machinery: many seeds of a tiny MLP trained together with torch.func, removal retraining, unrolled
differentiation through training and the damped-Hessian influence function.

Every seed s has its own initialisation and batch order, both fixed by (seed, s). A training example i enters each
step's loss with a weight w_i (1 in the full data): the batch loss is sum_b w_{i_b} l_{i_b} / B + wd/2 |theta|^2,
so removing example k (w_k = 0) keeps every seed's batches, and their order, unchanged (the paper's interpolated
update). All seeds are one `vmap` of `torch.func.grad` over `functional_call` of the same module.

Example::

    data = load_digits_pair(3, 8, n_train=150, n_test=100, seed=0)
    cfg = TrainConfig(hidden=16, steps=400, batch_size=15, lr=0.3, weight_decay=1e-3)
    theta0, order = init_params(64, cfg, n_seeds=64, seed=0), batch_order(150, cfg, n_seeds=64, seed=0)
    theta = train(theta0, order, data, cfg)                       # {name: [64, ...]}
    dz, states = unrolled_grad(theta0, order, data, cfg, data.x_test[0], checkpoints=[100, 400])  # dz[400]: [64, 150]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "Data", "TrainConfig", "load_digits_pair", "make_module", "init_params", "batch_order", "learning_rates", "train", "logits",
    "unrolled_grad", "retrain_without", "hessian_parts", "influence", "n_params",
]


@dataclass(frozen=True)
class Data:
    """A binary task: inputs (centred, scaled to about [-1, 1]) and 0/1 labels, train and test."""

    x_train: torch.Tensor  # [N, D]
    y_train: torch.Tensor  # [N] 0./1.
    x_test: torch.Tensor  # [M, D]
    y_test: torch.Tensor  # [M]
    images_train: np.ndarray  # [N, 8, 8] raw pixels, for showing examples
    images_test: np.ndarray  # [M, 8, 8]


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe shared by every seed: plain SGD with weight decay, tanh MLP D -> hidden -> 1."""

    hidden: int = 16  # hidden units
    steps: int = 400  # SGD steps
    batch_size: int = 15  # examples per step (each epoch is a fresh permutation; the remainder is dropped)
    lr: float = 0.3  # learning rate
    weight_decay: float = 1e-3  # L2 coefficient (gives the loss a minimum; without it the logits grow forever)
    schedule: str = "linear"  # "linear": lr decays linearly to 0 at the last step; "constant"
    dtype: str = "float64"  # float64 keeps tiny removal effects far above round-off


def load_digits_pair(a: int, b: int, n_train: int, n_test: int, seed: int, dtype: str = "float64") -> Data:
    """scikit-learn's bundled 8x8 digits `a` (label 0) vs `b` (label 1), shuffled by `seed`, split train/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(np.isin(digits.target, [a, b]))
    keep = keep[np.random.default_rng(seed).permutation(len(keep))]
    if n_train + n_test > len(keep):
        raise ValueError(f"digits {a} vs {b} have {len(keep)} examples; asked for {n_train} + {n_test}")
    tr, te = keep[:n_train], keep[n_train:n_train + n_test]
    x = digits.data / 16.0
    mean = x[tr].mean(axis=0)
    t = getattr(torch, dtype)
    as_x = lambda idx: torch.tensor(2.0 * (x[idx] - mean), dtype=t)  # noqa: E731
    as_y = lambda idx: torch.tensor((digits.target[idx] == b).astype(float), dtype=t)  # noqa: E731
    return Data(as_x(tr), as_y(tr), as_x(te), as_y(te), digits.images[tr], digits.images[te])


def make_module(n_in: int, hidden: int) -> nn.Module:
    """The architecture (its parameters are supplied per seed through functional_call)."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def n_params(n_in: int, hidden: int) -> int:
    """Parameters of one seed's model."""
    return n_in * hidden + hidden + hidden + 1


def init_params(n_in: int, cfg: TrainConfig, n_seeds: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-seed PyTorch-default (uniform +-1/sqrt(fan_in)) initialisation, seed s drawn from Generator(seed, s)."""
    module = make_module(n_in, cfg.hidden)
    shapes = {k: v.shape for k, v in module.named_parameters()}
    fan_in = {"0.weight": n_in, "0.bias": n_in, "2.weight": cfg.hidden, "2.bias": cfg.hidden}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in shapes}
    for s in range(n_seeds):
        g = torch.Generator().manual_seed(1_000_003 * seed + s)
        for k, shape in shapes.items():
            bound = 1.0 / fan_in[k] ** 0.5
            out[k].append((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound)
    return {k: torch.stack(v).to(getattr(torch, cfg.dtype)) for k, v in out.items()}


def batch_order(n_train: int, cfg: TrainConfig, n_seeds: int, seed: int) -> torch.Tensor:
    """[n_seeds, steps, batch_size] example indices: per seed, epochs of fresh permutations (remainder dropped)."""
    per_epoch = n_train // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {n_train} training examples")
    epochs = -(-cfg.steps // per_epoch)
    out = np.empty((n_seeds, epochs * per_epoch, cfg.batch_size), dtype=np.int64)
    for s in range(n_seeds):
        rng = np.random.default_rng([seed, s, 7])
        perms = [rng.permutation(n_train)[: per_epoch * cfg.batch_size] for _ in range(epochs)]
        out[s] = np.concatenate(perms).reshape(-1, cfg.batch_size)
    return torch.from_numpy(out[:, : cfg.steps])


def _step_fn(n_in: int, cfg: TrainConfig, data: Data):
    """One SGD step for one seed: (params, batch indices [B], weights [N]) -> params."""
    module = make_module(n_in, cfg.hidden).to(getattr(torch, cfg.dtype))
    x, y = data.x_train, data.y_train
    sign = 2.0 * y - 1.0

    def loss(params, idx, w):
        z = functional_call(module, params, (x[idx],)).squeeze(-1)
        data_term = (w[idx] * torch.nn.functional.softplus(-sign[idx] * z)).sum() / cfg.batch_size
        return data_term + 0.5 * cfg.weight_decay * sum((p * p).sum() for p in params.values())

    g = grad(loss)

    def step(params, idx, w, lr):
        d = g(params, idx, w)
        return {k: p - lr * d[k] for k, p in params.items()}

    return step


def learning_rates(cfg: TrainConfig) -> list[float]:
    """The learning rate of each step: constant, or decaying linearly from lr to lr / steps at the last step."""
    if cfg.schedule == "constant":
        return [cfg.lr] * cfg.steps
    if cfg.schedule == "linear":
        return [cfg.lr * (cfg.steps - t) / cfg.steps for t in range(cfg.steps)]
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use linear or constant")


def logits(params: dict[str, torch.Tensor], x: torch.Tensor, hidden: int) -> torch.Tensor:
    """[S, M] logits of every seed's model on inputs x [M, D]."""
    module = make_module(x.shape[1], hidden).to(x.dtype)
    return vmap(lambda p: functional_call(module, p, (x,)).squeeze(-1))(params)


def train(theta0: dict[str, torch.Tensor], order: torch.Tensor, data: Data, cfg: TrainConfig,
          weights: torch.Tensor | None = None, checkpoints: Sequence[int] = ()) -> dict:
    """Train every seed (the leading dim of theta0 and order) for order.shape[1] steps; weights [S, N] or None (all 1).

    Returns the final params, or {step: params} when `checkpoints` are given (each a step count <= steps)."""
    n_in = data.x_train.shape[1]
    w = torch.ones(order.shape[0], data.x_train.shape[0], dtype=data.x_train.dtype) if weights is None else weights
    vstep = vmap(_step_fn(n_in, cfg, data), in_dims=(0, 0, 0, None))
    params, saved = theta0, {}
    want = set(checkpoints)
    rates = learning_rates(cfg)
    for t in range(order.shape[1]):
        params = vstep(params, order[:, t], w, rates[t])
        if t + 1 in want:
            saved[t + 1] = params
    return saved if checkpoints else params


def unrolled_grad(theta0: dict[str, torch.Tensor], order: torch.Tensor, data: Data, cfg: TrainConfig,
                  x_target: torch.Tensor, checkpoints: Sequence[int], chunk: int = 64,
                  ) -> tuple[dict[int, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """d z_s(t) / d w_i by reverse-mode differentiation through training, for every seed s, example i and t in
    `checkpoints` ({t: [S, N]}, z_s(t) the target logit of seed s after t steps), and the params at each checkpoint
    ({t: {name: [S, ...]}}). Seeds go in chunks of `chunk` (the graph of a chunk's whole run is held in memory)."""
    grads: dict[int, list[torch.Tensor]] = {t: [] for t in checkpoints}
    states: dict[int, list[dict[str, torch.Tensor]]] = {t: [] for t in checkpoints}
    n_seeds, n_train = order.shape[0], data.x_train.shape[0]
    ts = sorted(set(checkpoints))
    for lo in range(0, n_seeds, chunk):
        sl = slice(lo, min(lo + chunk, n_seeds))
        w = torch.ones(sl.stop - sl.start, n_train, dtype=data.x_train.dtype, requires_grad=True)
        with torch.enable_grad():
            saved = train({k: v[sl] for k, v in theta0.items()}, order[sl, : ts[-1]], data, cfg, weights=w,
                          checkpoints=ts)
            for j, t in enumerate(ts):
                z = logits(saved[t], x_target[None], cfg.hidden)[:, 0]
                (dw,) = torch.autograd.grad(z.sum(), w, retain_graph=j < len(ts) - 1)
                grads[t].append(dw.detach())
                states[t].append({k: v.detach() for k, v in saved[t].items()})
    return ({t: torch.cat(v) for t, v in grads.items()},
            {t: {k: torch.cat([s[k] for s in v]) for k in v[0]} for t, v in states.items()})


def retrain_without(theta0: dict[str, torch.Tensor], order: torch.Tensor, data: Data, cfg: TrainConfig,
                    removed: Sequence[int], x_eval: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[len(removed) + 1, S, M] logits on x_eval after training every seed with nothing removed (row 0) and
    without each removed example in turn (same init, same batch order), all configurations batched together."""
    n_seeds, n_train = order.shape[0], data.x_train.shape[0]
    configs = [None, *removed]
    rows = []
    per = max(1, chunk // n_seeds)
    for lo in range(0, len(configs), per):
        part = configs[lo:lo + per]
        w = torch.ones(len(part), n_seeds, n_train, dtype=data.x_train.dtype)
        for c, k in enumerate(part):
            if k is not None:
                w[c, :, k] = 0.0
        rep = lambda v: v.unsqueeze(0).expand(len(part), *v.shape).reshape(-1, *v.shape[1:])  # noqa: E731
        params = train({k: rep(v) for k, v in theta0.items()}, rep(order), data, cfg, weights=w.reshape(-1, n_train))
        rows.append(logits(params, x_eval, cfg.hidden).reshape(len(part), n_seeds, -1))
    return torch.cat(rows)


def _flat(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W [S, H, D], b [S, H], v [S, H], c [S]) of the MLP's parameters."""
    return params["0.weight"], params["0.bias"], params["2.weight"][:, 0], params["2.bias"][:, 0]


def hessian_parts(params: dict[str, torch.Tensor], data: Data, cfg: TrainConfig,
                  x_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per seed, in closed form for the tanh MLP (parameter order W row by row, b, v, c, as in named_parameters):
    H [S, P, P], the Hessian of (1/N) sum_i l_i + wd/2 |theta|^2; G [S, N, P], the per-example loss gradients;
    g [S, P], the target logit's gradient. H = (1/N) sum_i (l''_i J_i J_i^T + l'_i d2z_i) + wd I."""
    W, b, v, c = (t.to(torch.float64) for t in _flat(params))
    x, y = data.x_train.to(torch.float64), 2.0 * data.y_train.to(torch.float64) - 1.0
    n, d = x.shape
    s_, h_ = W.shape[0], W.shape[1]

    def jac(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.einsum("shd,nd->snh", W, xx) + b[:, None, :]
        t = torch.tanh(a)
        dt = 1.0 - t * t
        gw = (v[:, None, :] * dt)[..., None] * xx[None, :, None, :]  # [S, n, H, D]
        j = torch.cat([gw.reshape(s_, len(xx), -1), v[:, None, :] * dt, t,
                       torch.ones(s_, len(xx), 1, dtype=xx.dtype)], dim=2)
        return j, t, dt

    jz, t, dt = jac(x)
    z = (t * v[:, None, :]).sum(-1) + c[:, None]
    p = torch.sigmoid(z)
    l1 = -y * torch.sigmoid(-y * z)  # dl/dz
    l2 = p * (1.0 - p)  # d2l/dz2
    hess = torch.einsum("snp,sn,snq->spq", jz, l2 / n, jz)
    # l'_i d2z_i: per hidden unit h, the block over (W_h, b_h) is v_h tanh''(a_h) xt xt^T, and (W_h, b_h) x v_h is
    # tanh'(a_h) xt, with xt = (x, 1); nothing else
    xt = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)  # [n, D+1]
    d2 = -2.0 * t * dt
    block = torch.einsum("snh,ni,nj->shij", (l1 / n)[..., None] * v[:, None, :] * d2, xt, xt)  # [S, H, D+1, D+1]
    cross = torch.einsum("snh,ni->shi", (l1 / n)[..., None] * dt, xt)  # [S, H, D+1]
    ofs_b, ofs_v = h_ * d, h_ * d + h_
    for h in range(h_):
        rows = torch.tensor(list(range(h * d, (h + 1) * d)) + [ofs_b + h])
        hess[:, rows[:, None], rows[None, :]] += block[:, h]
        hess[:, rows, ofs_v + h] += cross[:, h]
        hess[:, ofs_v + h, rows] += cross[:, h]
    hess = hess + cfg.weight_decay * torch.eye(hess.shape[1], dtype=hess.dtype)
    grads = l1[..., None] * jz
    gz, _, _ = jac(x_target.to(torch.float64)[None])
    return hess, grads, gz[:, 0]


def influence(params: dict[str, torch.Tensor], data: Data, cfg: TrainConfig, x_target: torch.Tensor,
              damping: float, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic influence-function prediction of d z_s / d w_i at each seed's params (float64), [S, N]:
    -grad z^T (H + lambda_s I)^-1 grad l_i / N, H the Hessian of the full-data objective (1/N) sum_i l_i +
    wd/2 |theta|^2 (the SGD objective in expectation over batches). lambda_s = damping + max(0, -min eig H_s): the
    damping is raised where a seed sits near a saddle, so H + lambda_s I >= damping I. Returns (IF, lambda_s [S])."""
    n_seeds, n_train = params["0.bias"].shape[0], data.x_train.shape[0]
    out, lams = [], []
    for lo in range(0, n_seeds, chunk):
        part = {k: v[lo:lo + chunk] for k, v in params.items()}
        hess, grads, gz = hessian_parts(part, data, cfg, x_target)
        eye = torch.eye(hess.shape[1], dtype=hess.dtype)
        lam = torch.full((hess.shape[0],), float(damping), dtype=hess.dtype)
        _, not_pd = torch.linalg.cholesky_ex(hess)
        if bool((not_pd != 0).any()):
            bad = not_pd != 0
            lam[bad] += (-torch.linalg.eigvalsh(hess[bad])[:, 0]).clamp(min=0.0)
        # Cholesky: H + lambda_s I is positive definite by construction (and batched LU solve fails under 2 MKL
        # threads in torch 2.13); a seed left singular (damping 0 at a saddle) gets a least-squares solution
        system = hess + lam[:, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(system)
        sol = torch.cholesky_solve(gz[..., None], chol)[..., 0]  # [S, P]
        for k in torch.nonzero(info).flatten().tolist():
            sol[k] = torch.linalg.lstsq(system[k], gz[k, :, None]).solution[:, 0]
        out.append(-torch.einsum("snp,sp->sn", grads, sol) / n_train)
        lams.append(lam)
    return torch.cat(out), torch.cat(lams)
