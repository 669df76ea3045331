"""Finding 14's hypernetwork: a conditional DDPM over network weights, in a linear basis of the checkpoints.

`Basis` maps flat weights to standardised coordinates: the top principal components of the checkpoints (a
deviation from the paper, which diffuses the raw parameters; n_components 0 keeps the raw space, standardised per
coordinate). `Denoiser` predicts the noise from (noisy coordinates, timestep, condition); the condition is a
vector of per-class losses (log-scaled, standardised). Classifier-free guidance: the condition is dropped with
probability `p_uncond` while training, and sampling mixes (1 + w) * conditional - w * unconditional noise.

    >>> import torch
    >>> s = cosine_schedule(10)
    >>> bool((s[1:] < s[:-1]).all()) and 0 < float(s[-1]) < float(s[0]) < 1
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Basis", "fit_basis", "Conditioner", "Denoiser", "cosine_schedule", "train_ddpm", "sample_ddpm"]


@dataclass
class Basis:
    """w = mean + (x * scale) @ components: x are standardised coordinates (K,), w flat weights (P,)."""

    mean: torch.Tensor  # (P,)
    components: torch.Tensor  # (K, P), orthonormal rows (the identity's rows in the raw space)
    scale: torch.Tensor  # (K,)
    explained: np.ndarray  # fraction of the checkpoints' variance each coordinate holds

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        return ((w - self.mean) @ self.components.T) / self.scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean + (x * self.scale) @ self.components


def fit_basis(w: torch.Tensor, n_components: int, min_scale: float = 1e-6) -> Basis:
    """The top `n_components` principal directions of the checkpoints w (M, P); 0: the raw coordinates."""
    mean = w.mean(0)
    centred = w - mean
    total = float(centred.pow(2).sum()) or 1.0
    if n_components <= 0:
        comps = torch.eye(w.shape[1])
    else:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        comps = vh[: min(n_components, vh.shape[0])]
    coords = centred @ comps.T
    explained = (coords.pow(2).sum(0) / total).numpy()
    return Basis(mean, comps.contiguous(), coords.std(0).clamp_min(min_scale), explained)


class Conditioner:
    """Per-class losses -> the denoiser's condition: log(clamp(loss, floor, cap)), standardised per class."""

    def __init__(self, losses: np.ndarray, floor: float = 1e-4, cap: float = 50.0):
        self.floor, self.cap = floor, cap
        z = self._log(losses)
        self.mu, self.sd = z.mean(0), np.maximum(z.std(0), 1e-3)

    def _log(self, losses: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(losses, dtype=float), self.floor, self.cap))

    def __call__(self, losses: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((self._log(losses) - self.mu) / self.sd, dtype=torch.float32)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Denoiser(nn.Module):
    """An MLP eps(x_t, t, c): [x_t, timestep embedding, condition * keep, keep] -> noise, with residual blocks."""

    def __init__(self, dim: int, cond_dim: int, width: int = 256, depth: int = 3, t_dim: int = 64):
        super().__init__()
        self.t_dim = t_dim
        self.inp = nn.Linear(dim + t_dim + cond_dim + 1, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, _timestep_embedding(t, self.t_dim), cond * keep[:, None], keep[:, None]], dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def cosine_schedule(steps: int, s: float = 0.008) -> torch.Tensor:
    """alpha-bar_t for t = 1..steps (Nichol & Dhariwal's cosine schedule, betas clipped at 0.999)."""
    f = lambda t: math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(t + 1) / f(t), 0.999) for t in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def train_ddpm(
    x: torch.Tensor, cond: torch.Tensor, *, steps: int, iters: int, width: int, depth: int, lr: float,
    batch_size: int, p_uncond: float, seed: int, predict: str = "eps", log_every: int = 50,
) -> tuple[Denoiser, list[float]]:
    """Fit a Denoiser to coordinates x (M, K) with conditions cond (M, C); returns it and its loss curve
    (mean noise-prediction MSE per `log_every` iterations). Adam with cosine learning-rate decay."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Denoiser(x.shape[1], cond.shape[1], width, depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iters, 1))
    abar = cosine_schedule(steps)
    curve, running = [], []
    for _ in range(iters):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        t = torch.randint(0, steps, (batch_size,), generator=g)
        noise = torch.randn(batch_size, x.shape[1], generator=g)
        a = abar[t][:, None]
        xt = a.sqrt() * x[idx] + (1 - a).sqrt() * noise
        keep = (torch.rand(batch_size, generator=g) >= p_uncond).float()
        loss = (model(xt, t, cond[idx], keep) - (noise if predict == "eps" else x[idx])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if len(running) == log_every:
            curve.append(float(np.mean(running)))
            running = []
    return model.eval(), curve


@torch.no_grad()
def sample_ddpm(
    model: Denoiser, cond: torch.Tensor, *, steps: int, guidance: float, seed: int, clip: float | None = None,
    predict: str = "eps",
) -> torch.Tensor:
    """Ancestral DDPM samples, one per row of cond (N, C); x0 predictions clamped to ±clip when given."""
    g = torch.Generator().manual_seed(seed)
    abar = cosine_schedule(steps)
    n, dim = cond.shape[0], model.out[-1].out_features
    x = torch.randn(n, dim, generator=g)
    ones, zeros = torch.ones(n), torch.zeros(n)
    for t in range(steps - 1, -1, -1):
        tt = torch.full((n,), t, dtype=torch.long)
        out = model(x, tt, cond, ones)
        if guidance:
            out = (1 + guidance) * out - guidance * model(x, tt, cond, zeros)
        a_t = abar[t]
        a_prev = abar[t - 1] if t > 0 else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt() if predict == "eps" else out
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        if t == 0:
            x = x0
            break
        beta = 1 - a_t / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        x = mean + var.sqrt() * torch.randn(n, dim, generator=g)
    return x
