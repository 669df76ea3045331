"""Finding 11's network and its perturbations: a small CNN on scikit-learn's digits whose conv filters are the components.

`DigitsCNN` has two conv layers (`c1` and `c2` filters) and a linear read-out; a component is one conv filter, and
ablating it zeroes that filter's output channel. `masked_margins` runs every (mask, example) pair in batches and
returns the correct-class margins; `pair_masks` builds the masks that measure every pairwise interaction
m(both ablated) − m(a) − m(b) + m(none).

    >>> net = DigitsCNN(4, 4)
    >>> x = torch.zeros(2, 1, 8, 8); m = np.ones((3, 8))
    >>> masked_margins(net, x, np.array([0, 1]), m).shape
    (3, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DigitsCNN", "Digits", "load_digits_split", "train_cnn", "accuracy", "margins_from_logits", "masked_margins",
    "sample_masks", "pair_index", "pair_masks", "interactions_from_values",
]


class DigitsCNN(nn.Module):
    """conv(1→c1, 3×3) → ReLU → 2×2 max-pool → conv(c1→c2, 3×3) → ReLU → linear(c2·4·4 → 10) on 8×8 digits.

    `forward(x, mask)` takes an optional keep-mask over the c1 + c2 filters (1 = kept, 0 = ablated), either one
    mask (shape (c1+c2,)) for all inputs or one per input (shape (batch, c1+c2)).
    """

    def __init__(self, c1: int = 16, c2: int = 32, n_classes: int = 10) -> None:
        super().__init__()
        self.c1, self.c2 = c1, c2
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.head = nn.Linear(c2 * 16, n_classes)

    @property
    def n_components(self) -> int:
        """Number of components (conv filters)."""
        return self.c1 + self.c2

    def features1(self, x: torch.Tensor) -> torch.Tensor:
        """The first conv layer's activations after ReLU and pooling, shape (batch, c1, 4, 4) (ablating a filter
        zeroes its channel, before or after the pooling alike)."""
        return F.max_pool2d(F.relu(self.conv1(x)), 2)

    def rest(self, h1: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from first-layer activations, with filters ablated where `mask` is 0."""
        if mask is not None:
            mask = mask.to(h1.dtype)
            if mask.dim() == 1:
                mask = mask.unsqueeze(0)
            h1 = h1 * mask[:, : self.c1, None, None]
        h2 = F.relu(self.conv2(h1))
        if mask is not None:
            h2 = h2 * mask[:, self.c1:, None, None]
        return self.head(h2.flatten(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.rest(self.features1(x), mask)


@dataclass
class Digits:
    """scikit-learn's 8×8 digits scaled to [0, 1], split into train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Digits:
    """The bundled digits (1,797 images, no download) as tensors, in an unstratified random split seeded by `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_test = round(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def train_cnn(data: Digits, c1: int, c2: int, epochs: int, lr: float = 3e-3, batch_size: int = 64,
              seed: int = 0) -> tuple[DigitsCNN, list[float]]:
    """Train a DigitsCNN with Adam on the training split; returns the net (eval mode) and the loss per epoch."""
    torch.manual_seed(seed)
    net = DigitsCNN(c1, c2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    net.train()
    for _ in range(epochs):
        perm, total = torch.randperm(len(data.y_train), generator=gen), 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(perm))
    return net.eval(), losses


@torch.no_grad()
def accuracy(net: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of inputs classified correctly."""
    return float((net(x).argmax(1) == y).float().mean())


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class margin: logit of the label minus the largest other logit (last dim = classes)."""
    correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return correct - others.max(-1).values


@torch.no_grad()
def masked_margins(net: DigitsCNN, x: torch.Tensor, labels: np.ndarray | torch.Tensor, masks: np.ndarray,
                   chunk: int = 256) -> np.ndarray:
    """Margins of every example under every keep-mask: shape (n_masks, n_examples), float64."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    h1 = net.features1(x)  # unaffected by the masks: computed once
    n_ex = len(x)
    out = np.empty((len(m), n_ex))
    for i in range(0, len(m), chunk):
        mb = m[i:i + chunk]
        h = h1.unsqueeze(0).expand(len(mb), *h1.shape).reshape(-1, *h1.shape[1:])
        logits = net.rest(h, mb.repeat_interleave(n_ex, 0)).view(len(mb), n_ex, -1)
        out[i:i + len(mb)] = margins_from_logits(logits, labels.expand(len(mb), n_ex)).double().numpy()
    return out


def sample_masks(n_masks: int, n_components: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Keep-masks (1 = kept) where each component is ablated independently with probability `alpha`, float32."""
    return (rng.random((n_masks, n_components)) >= alpha).astype(np.float32)


def pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n(n−1)/2 pairs (a < b), in the order of np.triu_indices(n, 1)."""
    return np.triu_indices(n, 1)


def pair_masks(n: int) -> np.ndarray:
    """Keep-masks for pairwise interactions: row 0 nothing ablated, rows 1..n one component ablated, then every
    pair (a < b, triu order) ablated together. Shape (1 + n + n(n−1)/2, n)."""
    a, b = pair_index(n)
    masks = np.ones((1 + n + len(a), n), dtype=np.float32)
    masks[1 + np.arange(n), np.arange(n)] = 0
    rows = 1 + n + np.arange(len(a))
    masks[rows, a] = 0
    masks[rows, b] = 0
    return masks


def interactions_from_values(values: np.ndarray, n: int) -> np.ndarray:
    """I(a, b) = v(both ablated) − v(a ablated) − v(b ablated) + v(none) from values on `pair_masks(n)` rows.

    `values` has the mask rows first (shape (rows,) or (rows, k)); the result is (n(n−1)/2,) or (n(n−1)/2, k).
    """
    a, b = pair_index(n)
    v = np.asarray(values, dtype=float)
    none, single, both = v[0], v[1:1 + n], v[1 + n:]
    return both - single[a] - single[b] + none
