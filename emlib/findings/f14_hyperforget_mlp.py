"""Finding 14's target networks: a one-hidden-layer MLP kept as flat weight vectors, trained many at once.

A batch of B networks is a (B, P) tensor; `forward` runs all of them on the same inputs. `train_batch` trains them
together with Adam (each network its own signed example weights and learning rate: positive weights descend the
cross-entropy, negative ones ascend it), which is how the original model, the retrain baselines and every unlearning trajectory are made.

    >>> import torch
    >>> w = init_weights(3, n_in=64, hidden=8, seed=0)
    >>> forward(w, torch.zeros(5, 64)).shape
    torch.Size([3, 5, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "N_CLASSES", "Split", "load_split", "n_params", "unflatten", "init_weights", "forward", "train_batch",
    "class_metrics", "retain_forget",
]

N_CLASSES = 10


@dataclass
class Split:
    """A train/test split of a 10-class image set, flattened to vectors in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    @property
    def n_in(self) -> int:
        return int(self.x_train.shape[1])

    def test_counts(self) -> np.ndarray:
        """Test examples per class."""
        return np.bincount(self.y_test.numpy(), minlength=N_CLASSES)


def _load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X scaled to [0, 1], y) of `digits` (scikit-learn's bundled 8x8 set, offline) or `mnist` (OpenML, online)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data / 16.0, d.target.astype(np.int64)
    if name == "mnist":
        from sklearn.datasets import fetch_openml

        d = fetch_openml("mnist_784", version=1, as_frame=False, parser="liac-arff")
        return np.asarray(d.data, dtype=np.float64) / 255.0, np.asarray(d.target).astype(np.int64)
    raise ValueError(f"unknown dataset {name!r}: digits | mnist")


def load_split(name: str = "digits", test_frac: float = 0.5, seed: int = 0, n_max: int = 0) -> Split:
    """A stratified train/test split (`n_max` > 0: keep at most that many examples before splitting)."""
    from sklearn.model_selection import train_test_split

    x, y = _load_arrays(name)
    if n_max and len(y) > n_max:
        keep, _ = train_test_split(np.arange(len(y)), train_size=n_max, stratify=y, random_state=seed)
        x, y = x[keep], y[keep]
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_frac, stratify=y, random_state=seed)
    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return Split(t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), t(yte, torch.long), name)


def n_params(n_in: int, hidden: int) -> int:
    """Weights and biases of the MLP n_in -> hidden -> 10."""
    return n_in * hidden + hidden + hidden * N_CLASSES + N_CLASSES


def unflatten(w: torch.Tensor, n_in: int, hidden: int) -> tuple[torch.Tensor, ...]:
    """(W1 (B,H,n_in), b1 (B,H), W2 (B,10,H), b2 (B,10)) views of flat weights (B, P), in nn.Linear's layout."""
    b = w.shape[0]
    i = n_in * hidden
    w1 = w[:, :i].reshape(b, hidden, n_in)
    b1 = w[:, i:i + hidden]
    j = i + hidden + hidden * N_CLASSES
    w2 = w[:, i + hidden:j].reshape(b, N_CLASSES, hidden)
    return w1, b1, w2, w[:, j:j + N_CLASSES]


def init_weights(n: int, n_in: int, hidden: int, seed: int) -> torch.Tensor:
    """n networks initialised like nn.Linear (uniform ±1/sqrt(fan_in) for weights and biases)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for fan_in, size in ((n_in, n_in * hidden + hidden), (hidden, hidden * N_CLASSES + N_CLASSES)):
        bound = 1.0 / fan_in ** 0.5
        parts.append((torch.rand(n, size, generator=g) * 2 - 1) * bound)
    return torch.cat(parts, dim=1)  # W1, b1 | W2, b2: the flat layout of unflatten


def forward(w: torch.Tensor, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
    """Logits (B, N, 10) of B networks on the same inputs x (N, n_in)."""
    n_in = x.shape[1]
    hidden = hidden or (w.shape[1] - N_CLASSES) // (n_in + 1 + N_CLASSES)
    w1, b1, w2, b2 = unflatten(w, n_in, hidden)
    h = torch.relu(torch.einsum("nd,bhd->bnh", x, w1) + b1[:, None, :])
    return torch.einsum("bnh,bch->bnc", h, w2) + b2[:, None, :]


def train_batch(
    w0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    example_weight: torch.Tensor,
    lr: torch.Tensor,
    steps: int,
    every: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch Adam on B networks at once; returns (final weights (B,P), checkpoints (n_ckpt, B, P)).

    Network b minimises sum_n example_weight[b, n] * cross-entropy(example n) at learning rate lr[b]: weights
    1/n on n examples descend their mean loss, negative weights ascend it (gradient ascent). Checkpoints are taken
    at steps every, 2*every, ... (none when every is 0).
    """
    w = w0.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    hidden = (w.shape[1] - N_CLASSES) // (x.shape[1] + 1 + N_CLASSES)
    active = example_weight != 0
    cols = active.any(0)  # examples no network uses are skipped
    x, y, example_weight = x[cols], y[cols], example_weight[:, cols]
    ckpts = []
    for t in range(1, steps + 1):
        w.requires_grad_(True)
        logits = forward(w, x, hidden)
        ce = F.cross_entropy(logits.reshape(-1, N_CLASSES), y.repeat(w.shape[0]), reduction="none").view(w.shape[0], -1)
        (grad,) = torch.autograd.grad((ce * example_weight).sum(), w)
        with torch.no_grad():
            w = w.detach()
            m.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
            mhat, vhat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            w -= lr[:, None] * mhat / (vhat.sqrt() + eps)
        if every and t % every == 0:
            ckpts.append(w.clone())
    empty = torch.zeros(0, *w.shape)
    return w.detach(), torch.stack(ckpts) if ckpts else empty


@torch.no_grad()
def class_metrics(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean cross-entropy and accuracy, each (B, 10), of B networks on (x, y)."""
    onehot = F.one_hot(y, N_CLASSES).float()
    counts = onehot.sum(0).clamp_min(1)
    losses, accs = [], []
    for i in range(0, w.shape[0], chunk):
        logits = forward(w[i:i + chunk], x)
        ce = -torch.log_softmax(logits, -1).gather(-1, y.expand(logits.shape[0], -1)[..., None])[..., 0]
        correct = (logits.argmax(-1) == y).float()
        losses.append((ce @ onehot) / counts)
        accs.append((correct @ onehot) / counts)
    return torch.cat(losses).numpy(), torch.cat(accs).numpy()


def retain_forget(class_acc: np.ndarray, counts: np.ndarray, forget: int) -> tuple[np.ndarray, np.ndarray]:
    """(forget accuracy, retain accuracy) from per-class accuracies (..., 10): the class `forget`, and the
    example-weighted mean over the other classes."""
    class_acc = np.asarray(class_acc, dtype=float)
    keep = np.arange(N_CLASSES) != forget
    retain = (class_acc[..., keep] * counts[keep]).sum(-1) / counts[keep].sum()
    return class_acc[..., forget], retain
