"""Finding 11, one CNN training seed: train, perturb, fit both surrogates per example, measure interactions; cached.

`run_seed(params, seed)` returns a `SeedRun`; it is cached on disk under
cache_dir("f11_coar_kan", hash of every parameter that determines it, the seed and VERSION).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..core.cache import atomic_dir, cache_dir, stable_hash
from .f11_coar_kan_model import (
    accuracy,
    interactions_from_values,
    load_digits_split,
    masked_margins,
    pair_index,
    pair_masks,
    sample_masks,
    train_cnn,
)
from .f11_coar_kan_surrogate import (
    KanConfig,
    column_corr,
    fit_kan,
    fit_linear,
    predict_kan,
    predict_linear,
)

__all__ = ["VERSION", "SeedRun", "run_seed", "pair_scores", "component_names", "TEST_FRACTION"]

VERSION = "f11-v2"
TEST_FRACTION = 0.3


@dataclass
class SeedRun:
    """One training seed's results: the network's summary, per-(example, α) correlations, per-example interaction
    scores, and at FOCUS_ALPHA the predicted and measured interactions of every pair (examples × pairs)."""

    network: dict[str, Any]
    per_example: pd.DataFrame
    interactions: pd.DataFrame
    i_kan: np.ndarray  # (examples, pairs) mixed differences of the KAN surrogate at the unablated model
    i_net: np.ndarray  # (examples, pairs) the same measured in the network
    linear_weights: np.ndarray  # (examples, components) linear COAR coefficients at FOCUS_ALPHA (1 = kept)

    def save(self, folder) -> None:
        """Write the run into `folder` (npz for arrays, csv for frames, json for the network summary)."""
        np.savez(folder / "arrays.npz", i_kan=self.i_kan, i_net=self.i_net, linear_weights=self.linear_weights)
        self.per_example.to_csv(folder / "per_example.csv", index=False)
        self.interactions.to_csv(folder / "interactions.csv", index=False)
        (folder / "network.json").write_text(json.dumps(self.network, indent=2))

    @classmethod
    def load(cls, folder) -> SeedRun:
        """Read a run written by save()."""
        arrays = np.load(folder / "arrays.npz")
        return cls(json.loads((folder / "network.json").read_text()), pd.read_csv(folder / "per_example.csv"),
                   pd.read_csv(folder / "interactions.csv"), arrays["i_kan"], arrays["i_net"], arrays["linear_weights"])


def component_names(c1: int, c2: int) -> list[str]:
    """'conv1:i' for the first layer's filters, then 'conv2:j'."""
    return [f"conv1:{i}" for i in range(c1)] + [f"conv2:{j}" for j in range(c2)]


def pair_scores(i_pred: np.ndarray, i_net: np.ndarray, importance: np.ndarray, k: int) -> dict[str, float]:
    """For one example: mean |I_net| over the k pairs with the largest |I_pred| (`top_abs`), over all pairs
    (`random_abs`, the expectation for a random pair) and over the k pairs with the largest importance product
    |β_a β_b| (`important_abs`); the Spearman correlation of I_pred with I_net over pairs; and `hits`, the share
    of the k predicted pairs among the network's own top k by |I_net| (chance: k / pairs)."""
    n = len(importance)
    a, b = pair_index(n)
    top = np.argsort(-np.abs(i_pred), kind="stable")[:k]
    important = np.argsort(-np.abs(importance[a] * importance[b]), kind="stable")[:k]
    true_top = np.argsort(-np.abs(i_net), kind="stable")[:k]
    rank = column_corr(rankdata(i_pred)[:, None], rankdata(i_net)[:, None])[0]
    return {
        "top_abs": float(np.abs(i_net[top]).mean()), "random_abs": float(np.abs(i_net).mean()),
        "important_abs": float(np.abs(i_net[important]).mean()), "rank_corr": float(rank),
        "hits": len(np.intersect1d(top, true_top)) / k, "chance_hits": k / len(a),
    }


def _cache_key(p, seed: int) -> str:
    fields = {k: v for k, v in p.to_dict().items() if k not in ("n_seeds", "n_boot")}
    return stable_hash(fields, seed, TEST_FRACTION, VERSION)


def run_seed(p, seed: int) -> SeedRun:
    """One seed of the finding for Params p (cached): see the module docstring."""
    folder = cache_dir("f11_coar_kan", _cache_key(p, seed))
    if (folder / "network.json").exists():
        run = SeedRun.load(folder)
        run.network["from_cache"] = True
        return run
    run = _compute(p, seed)
    with atomic_dir(folder) as tmp:
        run.save(tmp)
    return run


def _compute(p, seed: int) -> SeedRun:
    t0 = time.perf_counter()
    data = load_digits_split(TEST_FRACTION, p.seed)  # the split and the explained examples are shared by all seeds
    examples = np.sort(np.random.default_rng(p.seed).choice(len(data.y_test), p.n_examples, replace=False))
    x, y = data.x_test[examples], data.y_test[examples].numpy()
    net, losses = train_cnn(data, p.conv1_filters, p.conv2_filters, p.epochs, seed=seed)
    n, n_ex, n_tr = net.n_components, len(examples), p.n_train_masks
    t_train = time.perf_counter() - t0
    t_perturb = t_fit = 0.0
    rows, focus = [], {}
    for i, alpha in enumerate(p.alphas):
        t1 = time.perf_counter()
        rng = np.random.default_rng([seed, i, 11])
        masks = sample_masks(n_tr + p.n_heldout_masks, n, alpha, rng)
        margins = masked_margins(net, x, y, masks)  # (masks, examples)
        t2 = time.perf_counter()
        tr, ho = slice(0, n_tr), slice(n_tr, None)
        w = fit_linear(masks[tr], margins[tr])
        resid_sd = (margins[tr] - predict_linear(w, masks[tr])).std(0)
        null = predict_linear(w, masks) + rng.normal(size=margins.shape) * resid_sd  # additive by construction
        w_null = fit_linear(masks[tr], null[tr])
        cfg = KanConfig(hidden=p.kan_hidden, grid=p.kan_grid, steps=p.kan_steps, lr=p.kan_lr, seed=1000 * seed + i)
        model, mean, sd, _ = fit_kan(masks[tr], np.hstack([margins[tr], null[tr]]), cfg)
        kan_ho = predict_kan(model, mean, sd, masks[ho])
        corr = {
            "corr_linear": column_corr(predict_linear(w, masks[ho]), margins[ho]),
            "corr_kan": column_corr(kan_ho[:, :n_ex], margins[ho]),
            "corr_linear_null": column_corr(predict_linear(w_null, masks[ho]), null[ho]),
            "corr_kan_null": column_corr(kan_ho[:, n_ex:], null[ho]),
        }
        for j, ex in enumerate(examples):
            rows.append({"seed": seed, "example": int(ex), "alpha": alpha, **{k: float(v[j]) for k, v in corr.items()}})
        if np.isclose(alpha, p.focus_alpha):
            focus = {"model": (model, mean, sd), "weights": w[1:].T}
        t_perturb += t2 - t1
        t_fit += time.perf_counter() - t2
    t3 = time.perf_counter()
    pm = pair_masks(n)
    i_net = interactions_from_values(masked_margins(net, x, y, pm), n).T  # (examples, pairs)
    i_kan = interactions_from_values(predict_kan(*focus["model"], pm)[:, :n_ex], n).T
    weights = focus["weights"]
    inter = pd.DataFrame([{"seed": seed, "example": int(ex), "label": int(y[j]),
                           **pair_scores(i_kan[j], i_net[j], weights[j], p.top_k)} for j, ex in enumerate(examples)])
    inter["margin"] = masked_margins(net, x, y, pm[:1])[0]
    network = {"seed": seed, "test_accuracy": accuracy(net, data.x_test, data.y_test), "final_loss": losses[-1],
               "n_components": n, "train_s": t_train, "perturb_s": t_perturb + time.perf_counter() - t3,
               "fit_s": t_fit, "from_cache": False}
    return SeedRun(network, pd.DataFrame(rows), inter, i_kan, i_net, weights)
