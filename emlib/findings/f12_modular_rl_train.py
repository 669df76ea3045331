"""Finding 12's policy and its training: a tanh MLP whose neurons sit in 2-D, trained by PPO with a wiring penalty.

Every neuron of the policy has a place: layer k at height k · `layer_gap`, its units at evenly spaced x in [0, 1]
(inputs in observation order, X offsets on the left and Y offsets on the right; actions left, right, up, down).
The *wiring cost* is Σ |w_ij| · d_ij over the policy's weights, d_ij the Euclidean distance the weight spans
(Liu, Gan & Tegmark 2023, brain-inspired modular training); PPO's loss gets `penalty` × that cost (ramped up
linearly over the first `penalty_warmup` of training, if set). Every
`swap_every` updates each hidden layer's neurons are re-assigned to its slots so as to minimise the cost given
the other layers (an exact assignment; BIMT's swaps) — done with and without the penalty alike, so the penalty is
the only difference between the two. The critic is a separate, unpenalised MLP. The `uniform` control gives every
weight the same length (the layout's mean), which makes the penalty plain L1 of the same overall scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .f12_modular_rl_env import make_vector_env, obs_size

__all__ = [
    "PPOConfig", "Policy", "slot_positions", "wiring_cost", "relayout", "train_policy", "TrainedPolicy", "evaluate_success",
]


@dataclass(frozen=True)
class PPOConfig:
    """Everything that determines one trained policy (its cache key)."""

    grid_size: int = 8
    n_obstacles: int = 0
    slip: float = 0.1
    episode_steps: int = 40
    hidden: tuple[int, ...] = (24, 24)
    penalty: float = 0.0
    penalty_warmup: float = 0.0  # fraction of training over which the penalty ramps up linearly from 0
    uniform: bool = False  # the control: every weight's length is the layout's mean length (plain L1, same scale)
    layer_gap: float = 0.25
    swap_every: int = 10
    total_steps: int = 150_000
    n_envs: int = 16
    rollout: int = 64
    epochs: int = 4
    minibatches: int = 4
    lr: float = 3e-3
    gamma: float = 0.95
    gae_lambda: float = 0.9
    clip: float = 0.2
    entropy: float = 0.01
    seed: int = 0


def slot_positions(sizes: list[int], layer_gap: float) -> list[np.ndarray]:
    """The (x, y) of each slot in each layer: x evenly spaced in [0, 1], y = layer index × layer_gap."""
    return [np.stack([(np.arange(n) + 0.5) / n, np.full(n, k * layer_gap)], axis=1) for k, n in enumerate(sizes)]


class Policy(nn.Module):
    """A tanh MLP from observation to action logits, with each neuron's place in the plane (`pos[k][i]`)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int = 4, layer_gap: float = 0.25):
        super().__init__()
        self.sizes = [n_in, *hidden, n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        self.layer_gap = layer_gap
        self.pos = slot_positions(self.sizes, layer_gap)  # neuron i of layer k sits at pos[k][i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)

    def distances(self) -> list[torch.Tensor]:
        """d[k][j, i]: the length of the weight from neuron i of layer k to neuron j of layer k + 1."""
        out = []
        for k in range(len(self.layers)):
            a, b = self.pos[k], self.pos[k + 1]
            out.append(torch.as_tensor(np.linalg.norm(b[:, None, :] - a[None, :, :], axis=-1), dtype=torch.float32))
        return out

    def weights(self) -> list[np.ndarray]:
        """Each layer's weight matrix (out × in) as numpy."""
        return [layer.weight.detach().cpu().numpy().copy() for layer in self.layers]


def wiring_cost(policy: Policy, dist: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Σ |w| · (distance the weight spans) over every layer of the policy (differentiable)."""
    dist = policy.distances() if dist is None else dist
    return sum((layer.weight.abs() * d).sum() for layer, d in zip(policy.layers, dist))


def relayout(policy: Policy, sweeps: int = 2) -> None:
    """Re-assign each hidden layer's neurons to that layer's slots to minimise the wiring cost, others fixed."""
    slots = slot_positions(policy.sizes, policy.layer_gap)
    w = [np.abs(m) for m in policy.weights()]
    for _ in range(sweeps):
        for k in range(1, len(policy.sizes) - 1):
            s, prev, nxt = slots[k], policy.pos[k - 1], policy.pos[k + 1]
            d_in = np.linalg.norm(s[:, None, :] - prev[None, :, :], axis=-1)  # slot × previous neuron
            d_out = np.linalg.norm(s[:, None, :] - nxt[None, :, :], axis=-1)  # slot × next neuron
            cost = w[k - 1] @ d_in.T + w[k].T @ d_out.T  # neuron × slot
            rows, cols = linear_sum_assignment(cost)
            policy.pos[k] = s[cols[np.argsort(rows)]]


@dataclass
class TrainedPolicy:
    """A trained policy with its training curve: (environment steps, success rate of the episodes finished)."""

    policy: Policy
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    from_cache: bool = False


def _critic(n_in: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def train_policy(cfg: PPOConfig) -> TrainedPolicy:
    """PPO (clipped objective, GAE) on `cfg.n_envs` XYNavEnvs for `cfg.total_steps` environment steps."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    n_in = obs_size(cfg.grid_size)
    policy, critic = Policy(n_in, cfg.hidden, 4, cfg.layer_gap), _critic(n_in)
    opt = torch.optim.Adam([*policy.parameters(), *critic.parameters()], lr=cfg.lr)
    envs = make_vector_env(cfg.n_envs, cfg.seed, grid_size=cfg.grid_size, n_obstacles=cfg.n_obstacles, slip=cfg.slip,
                           max_steps=cfg.episode_steps)
    envs.action_space.seed(cfg.seed)
    obs = torch.as_tensor(envs.reset(seed=cfg.seed)[0])
    T, N = cfg.rollout, cfg.n_envs
    n_updates = max(1, cfg.total_steps // (T * N))
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, dist = [], policy.distances()
    if cfg.uniform:
        mean = float(torch.cat([d.ravel() for d in dist]).mean())
        dist = [torch.full_like(d, mean) for d in dist]
    for update in range(n_updates):
        buf_obs, buf_act, buf_logp, buf_rew, buf_done, buf_val = [], [], [], [], [], []
        n_done = n_succ = 0
        with torch.no_grad():
            for _ in range(T):
                logits = policy(obs)
                act = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
                buf_obs.append(obs)
                buf_act.append(act)
                buf_logp.append(torch.log_softmax(logits, -1).gather(1, act[:, None]).squeeze(1))
                buf_val.append(critic(obs).squeeze(1))
                nxt, rew, term, trunc, info = envs.step(act.numpy())
                done = term | trunc
                n_done, n_succ = n_done + int(done.sum()), n_succ + int(term.sum())
                buf_rew.append(torch.as_tensor(rew, dtype=torch.float32))
                buf_done.append(torch.as_tensor(done, dtype=torch.float32))
                obs = torch.as_tensor(nxt)
            last_val = critic(obs).squeeze(1)
        rew, done, val = torch.stack(buf_rew), torch.stack(buf_done), torch.stack(buf_val)
        adv, gae = torch.zeros_like(rew), torch.zeros(N)
        for t in reversed(range(T)):  # time-outs are treated as ends (the offsets make the state Markov enough)
            next_val = last_val if t == T - 1 else val[t + 1]
            delta = rew[t] + cfg.gamma * next_val * (1 - done[t]) - val[t]
            gae = delta + cfg.gamma * cfg.gae_lambda * (1 - done[t]) * gae
            adv[t] = gae
        ret = (adv + val).reshape(-1)
        b_obs, b_act, b_logp = torch.cat(buf_obs), torch.cat(buf_act), torch.cat(buf_logp)
        b_adv = adv.reshape(-1)
        size = T * N // cfg.minibatches
        ramp = min(1.0, (update + 1) / (cfg.penalty_warmup * n_updates)) if cfg.penalty_warmup > 0 else 1.0
        for _ in range(cfg.epochs):
            perm = torch.randperm(T * N, generator=gen)
            for start in range(0, T * N, size):
                idx = perm[start:start + size]
                logits = policy(b_obs[idx])
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(1, b_act[idx, None]).squeeze(1)
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                ratio = torch.exp(logp - b_logp[idx])
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                ent = -(logp_all.exp() * logp_all).sum(-1).mean()
                v_loss = 0.5 * ((critic(b_obs[idx]).squeeze(1) - ret[idx]) ** 2).mean()
                loss = pg - cfg.entropy * ent + 0.5 * v_loss
                if cfg.penalty > 0:
                    loss = loss + ramp * cfg.penalty * wiring_cost(policy, dist)
                opt.zero_grad()
                loss.backward()
                opt.step()
        if cfg.swap_every and (update + 1) % cfg.swap_every == 0:
            relayout(policy)
            dist = dist if cfg.uniform else policy.distances()
        curve.append(((update + 1) * T * N, n_succ / n_done if n_done else float("nan")))
    envs.close()
    relayout(policy)
    return TrainedPolicy(policy, curve, time.perf_counter() - t0)


def evaluate_success(policy: Policy, cfg: PPOConfig, n_episodes: int, seed: int) -> tuple[float, float]:
    """(success rate, mean episode length) of the greedy policy over fresh episodes (slips included): each of the
    `cfg.n_envs` environments plays ceil(n_episodes / n_envs) episodes, so short episodes are not favoured."""
    envs = make_vector_env(cfg.n_envs, seed, grid_size=cfg.grid_size, n_obstacles=cfg.n_obstacles, slip=cfg.slip,
                           max_steps=cfg.episode_steps)
    per_env = -(-n_episodes // cfg.n_envs)
    obs, _ = envs.reset(seed=seed)
    done_eps = np.zeros(cfg.n_envs, dtype=int)
    steps = np.zeros(cfg.n_envs)
    successes, lengths = [], []
    with torch.no_grad():
        while done_eps.min() < per_env:
            obs, _, term, trunc, _ = envs.step(policy(torch.as_tensor(obs)).argmax(-1).numpy())
            steps += 1
            for i in np.flatnonzero(term | trunc):
                if done_eps[i] < per_env:
                    successes.append(float(term[i]))
                    lengths.append(steps[i])
                done_eps[i] += 1
                steps[i] = 0
    envs.close()
    return float(np.mean(successes)), float(np.mean(lengths))
