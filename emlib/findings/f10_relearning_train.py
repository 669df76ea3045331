"""Finding 10's models and procedures: a small MLP on scikit-learn's bundled digits, training, five unlearning
methods, relearning on the retain set, and the two weight-space predictors (L2 distance, linear-path loss barrier).

Everything works on a model's parameters as one flat vector, so distances, interpolation and noise are one line each.

>>> data = load_split(seed=0, test_fraction=0.25)
>>> split = make_split(data, forget=np.arange(50))
>>> model = train(make_mlp(hidden=128, seed=0), split.x_train, split.y_train, epochs=1, lr=1e-3, batch_size=64, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.nn.utils import parameters_to_vector, vector_to_parameters

__all__ = [
    "METHODS", "RETRAIN", "GA_CAP", "Split", "load_split", "consistency_scores", "flip_labels", "make_split", "make_mlp", "flat", "load_flat", "accuracy", "mean_loss",
    "train", "unlearn", "l2_distance", "interpolation_losses", "loss_barrier",
]

METHODS = ("gradient_ascent", "retain_finetune", "random_relabel", "weight_noise", "weight_distance")
RETRAIN = "retrain"  # the gold standard: trained from scratch on the retain set alone
GA_CAP = 4.0  # gradient ascent stops pushing an example once its forget-label cross-entropy passes this (nats)
N_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """Digits split into a retain set, a forget set (with its flipped labels) and a test set, as tensors."""

    x_retain: torch.Tensor
    y_retain: torch.Tensor
    x_forget: torch.Tensor
    y_forget: torch.Tensor  # the labels the original model was trained on (flipped ones when flipped)
    y_forget_true: torch.Tensor  # the digits' real labels
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def x_train(self) -> torch.Tensor:
        """Retain and forget images: what the original model is trained on."""
        return torch.cat([self.x_retain, self.x_forget])

    @property
    def y_train(self) -> torch.Tensor:
        return torch.cat([self.y_retain, self.y_forget])


def flip_labels(y: np.ndarray, rng: np.random.Generator, n_classes: int = N_CLASSES) -> np.ndarray:
    """Each label moved to a different class, uniformly among the other n_classes - 1."""
    return (y + rng.integers(1, n_classes, size=len(y))) % n_classes


def load_split(seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """load_digits (1,797 8x8 images, pixels scaled to [0, 1]) split into train and test, stratified, from `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    return tuple(train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed))


def consistency_scores(x: np.ndarray, y: np.ndarray, *, hidden: int, reps: int, folds: int, epochs: int, lr: float,
                       batch_size: int, seed: int) -> np.ndarray:
    """Each example's held-out consistency: the probability of its label, averaged over `reps` repetitions of
    `folds`-fold cross-fitting (each time predicted by an MLP that never saw it). Low = atypical, needs memorising."""
    scores = np.zeros(len(y))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for r in range(reps):
        order = np.random.default_rng(seed * 1000 + r).permutation(len(y))
        for k, held in enumerate(np.array_split(order, folds)):
            fit = np.setdiff1d(order, held)
            model = make_mlp(hidden, seed * 1000 + r * folds + k)
            train(model, xt[fit], yt[fit], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed * 1000 + r * folds + k)
            with torch.no_grad():
                p = torch.softmax(model(xt[held]), -1)[torch.arange(len(held)), yt[held]]
            scores[held] += p.numpy() / reps
    return scores


def make_split(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], forget: np.ndarray,
               flip_seed: int | None = None) -> Split:
    """The Split of (x_train, x_test, y_train, y_test) with training examples `forget` as the forget set; with
    `flip_seed` their labels are flipped to another class (then only memorisation can fit them)."""
    x_tr, x_te, y_tr, y_te = data
    forget = np.asarray(forget)
    if not 0 < len(forget) < len(y_tr):
        raise ValueError(f"the forget set must hold between 1 and {len(y_tr) - 1} examples, got {len(forget)}")
    retain = np.setdiff1d(np.arange(len(y_tr)), forget)
    y_forget = y_tr[forget] if flip_seed is None else flip_labels(y_tr[forget], np.random.default_rng(flip_seed))
    t = torch.from_numpy
    return Split(t(x_tr[retain]), t(y_tr[retain]), t(x_tr[forget]), t(np.ascontiguousarray(y_forget)),
                 t(y_tr[forget]), t(x_te), t(y_te))


def make_mlp(hidden: int, seed: int) -> nn.Sequential:
    """64 -> hidden -> hidden -> 10 with ReLUs, initialised from `seed`."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, N_CLASSES))
    torch.random.set_rng_state(gen_state)
    return model


def flat(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached vector (a copy)."""
    return parameters_to_vector(model.parameters()).detach().clone()


def load_flat(model: nn.Module, vec: torch.Tensor) -> nn.Module:
    """Write a flat parameter vector into the model (in place) and return it."""
    with torch.no_grad():
        vector_to_parameters(vec.clone(), model.parameters())
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of examples whose arg-max prediction equals the label."""
    return float((model(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy (nats)."""
    return float(cross_entropy(model(x), y))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int, seed: int,
          extra: Callable[[nn.Module, torch.Generator], torch.Tensor] | None = None) -> nn.Module:
    """Adam on mean cross-entropy over shuffled mini-batches of (x, y), plus `extra(model, gen)` each step when given.

    A fresh optimiser every call: relearning gets no momentum left over from unlearning.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = cross_entropy(model(x[idx]), y[idx])
            if extra is not None:
                loss = loss + extra(model, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def _per_tensor_noise(model: nn.Module, scale: float, gen: torch.Generator) -> None:
    """Add Gaussian noise with std = scale x the RMS of each parameter tensor, in place."""
    with torch.no_grad():
        for p in model.parameters():
            rms = p.pow(2).mean().sqrt()
            p.add_(torch.randn(p.shape, generator=gen) * scale * rms)


def unlearn(model: nn.Module, original: torch.Tensor, method: str, strength: float, split: Split, *, epochs: int,
            lr: float, batch_size: int, seed: int) -> nn.Module:
    """Unlearn the forget set from `model` (holding the original's weights `original`), in place.

    Every method trains `epochs` epochs on the retain set with Adam at `lr`, plus its own term at `strength`:

    - gradient_ascent: minus strength x the forget set's cross-entropy on its (flipped) labels, each example's
      term capped at GA_CAP nats so that it stops once forgotten;
    - retain_finetune: nothing else; the learning rate is strength x lr (catastrophic forgetting);
    - random_relabel: strength x cross-entropy of the forget set on random labels (redrawn each step, never the
      forget label);
    - weight_noise: before training, Gaussian noise of std strength x each tensor's RMS (then retain repair);
    - weight_distance: minus strength x RMS(theta - theta_original) / RMS(theta_original): pushed away from the
      original in weight space while fitting the retain set (the paper's weight-distance regulariser).
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; one of {', '.join(METHODS)}")
    gen = torch.Generator().manual_seed(seed + 7919)
    extra = None
    if method == "gradient_ascent":
        def extra(m, g):
            ce = cross_entropy(m(split.x_forget), split.y_forget, reduction="none")
            return -strength * ce.clamp(max=GA_CAP).mean()
    elif method == "random_relabel":
        def extra(m, g):
            wrong = (split.y_forget + torch.randint(1, N_CLASSES, split.y_forget.shape, generator=g)) % N_CLASSES
            return strength * cross_entropy(m(split.x_forget), wrong)
    elif method == "weight_noise":
        _per_tensor_noise(model, strength, gen)
    elif method == "weight_distance":
        scale = float(original.pow(2).mean().sqrt())

        def extra(m, g):
            diff = parameters_to_vector(m.parameters()) - original
            return -strength * diff.pow(2).mean().add(1e-12).sqrt() / scale
    step_lr = lr * strength if method == "retain_finetune" else lr
    return train(model, split.x_retain, split.y_retain, epochs=epochs, lr=step_lr, batch_size=batch_size, seed=seed,
                 extra=extra)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two flat parameter vectors."""
    return float((a - b).norm())


@torch.no_grad()
def interpolation_losses(model: nn.Module, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean cross-entropy of (x, y) at n_points evenly spaced points of the straight path from a (t=0) to b (t=1).

    Uses `model` as scratch space (its weights are overwritten). Returns (t, losses).
    """
    ts = np.linspace(0.0, 1.0, n_points)
    losses = np.array([mean_loss(load_flat(model, (1 - t) * a + t * b), x, y) for t in ts])
    return ts, losses


def loss_barrier(ts: np.ndarray, losses: np.ndarray) -> float:
    """max over t of loss(t) minus the straight line between the end points' losses (>= 0: 0 when the path is
    convex, i.e. the two models are linearly mode-connected)."""
    ts, losses = np.asarray(ts, dtype=float), np.asarray(losses, dtype=float)
    line = (1 - ts) * losses[0] + ts * losses[-1]
    return float(max(0.0, np.max(losses - line)))
