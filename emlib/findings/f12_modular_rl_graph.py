"""Finding 12's analysis: the policy as a weighted graph, its Louvain communities, and ablations read as X/Y errors.

The graph has one node per neuron, ``(layer, index)``, and one edge per weight with weight |w| (biases left out).
A community's *axis* is read from the inputs and actions it holds: X when it holds more X units (X-offset inputs,
left/right actions) than Y units, Y when fewer, none on a tie. The *X module* is the hidden neurons of the
X communities (likewise Y). Ablating a set of hidden neurons zeroes their incoming weights, biases and outgoing
weights. *X error* is, over every goal offset with dx ≠ 0, the policy's probability of stepping away from the goal
along X given that it steps along X, P(wrong X move) / (P(left) + P(right)); 0 is perfect, 0.5 is chance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from .f12_modular_rl_env import ACTION_AXIS, encode, input_axes
from .f12_modular_rl_train import Policy

__all__ = [
    "weight_graph", "louvain", "modularity", "node_axes", "community_axes", "module_units", "ablate", "axis_errors",
    "active_units", "random_like", "CommunityReport", "describe_communities",
]


def weight_graph(weights: list[np.ndarray], prune: float = 0.0) -> nx.Graph:
    """Nodes (layer, i) for every neuron; an edge between consecutive layers for each weight with
    |w| > prune × max |w| (over all layers), of weight |w|."""
    g = nx.Graph()
    cut = prune * max(float(np.abs(w).max()) for w in weights)
    for k, w in enumerate(weights):
        g.add_nodes_from((k, i) for i in range(w.shape[1]))
        g.add_nodes_from((k + 1, j) for j in range(w.shape[0]))
        rows, cols = np.nonzero(np.abs(w) > cut)
        g.add_weighted_edges_from(((k, int(i)), (k + 1, int(j)), float(abs(w[j, i]))) for j, i in zip(rows, cols))
    return g


def louvain(g: nx.Graph, seed: int = 0) -> list[set]:
    """Louvain communities of the weighted graph (networkx, resolution 1), largest first."""
    comms = nx.community.louvain_communities(g, weight="weight", resolution=1.0, seed=seed)
    return sorted((set(c) for c in comms), key=lambda c: (-len(c), min(c)))


def modularity(g: nx.Graph, communities: list[set]) -> float:
    """Newman's weighted modularity Q of a partition."""
    return float(nx.community.modularity(g, communities, weight="weight"))


def node_axes(sizes: list[int], grid_size: int) -> dict[tuple[int, int], str]:
    """The axis of each input and output neuron ('X' or 'Y'); hidden neurons have none."""
    axes = {(0, i): a for i, a in enumerate(input_axes(grid_size))}
    axes.update({(len(sizes) - 1, j): a for j, a in enumerate(ACTION_AXIS)})
    return axes


def community_axes(communities: list[set], axes: dict[tuple[int, int], str]) -> list[str]:
    """'X', 'Y' or '' for each community: the axis of the majority of the inputs and actions it holds."""
    out = []
    for c in communities:
        nx_, ny = sum(axes.get(n) == "X" for n in c), sum(axes.get(n) == "Y" for n in c)
        out.append("X" if nx_ > ny else "Y" if ny > nx_ else "")
    return out


def module_units(communities: list[set], labels: list[str], axis: str, n_layers: int) -> list[tuple[int, int]]:
    """The hidden neurons (layer, i) of the communities labelled `axis` (0 < layer < n_layers − 1), sorted."""
    return sorted(n for c, a in zip(communities, labels) if a == axis for n in c if 0 < n[0] < n_layers - 1)


def ablate(policy: Policy, units: list[tuple[int, int]]) -> Policy:
    """A copy of the policy with the given hidden neurons silenced (incoming weights, bias, outgoing weights = 0)."""
    out = copy.deepcopy(policy)
    with torch.no_grad():
        for k, i in units:
            out.layers[k - 1].weight[i, :] = 0.0
            out.layers[k - 1].bias[i] = 0.0
            out.layers[k].weight[:, i] = 0.0
    return out


def axis_errors(policy: Policy, grid_size: int) -> tuple[float, float]:
    """(X error, Y error) of the policy over every goal offset (see the module docstring)."""
    r = np.arange(-(grid_size - 3), grid_size - 2)
    dx, dy = (a.ravel() for a in np.meshgrid(r, r, indexing="ij"))
    keep = (dx != 0) | (dy != 0)
    dx, dy = dx[keep], dy[keep]
    with torch.no_grad():
        p = torch.softmax(policy(torch.as_tensor(encode(dx, dy, grid_size))), -1).numpy()
    errs = []
    for d, (neg, pos) in ((dx, (0, 1)), (dy, (2, 3))):  # X: left/right; Y: up/down (y grows downwards)
        m = d != 0
        wrong = np.where(d[m] > 0, p[m, neg], p[m, pos])
        errs.append(float(np.mean(wrong / (p[m, neg] + p[m, pos]))))
    return errs[0], errs[1]


def active_units(g: nx.Graph, n_layers: int) -> list[tuple[int, int]]:
    """The hidden neurons with at least one edge in the (pruned) graph, sorted."""
    return sorted(n for n in g.nodes if 0 < n[0] < n_layers - 1 and g.degree(n) > 0)


def random_like(units: list[tuple[int, int]], pool: list[tuple[int, int]], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random neurons from `pool` with as many in each layer as `units` has (the pool must have enough)."""
    out = []
    for k in sorted({u[0] for u in units}):
        n, cands = sum(1 for u in units if u[0] == k), [u for u in pool if u[0] == k]
        out += [cands[i] for i in rng.choice(len(cands), size=n, replace=False)]
    return sorted(out)


@dataclass
class CommunityReport:
    """One community: its axis label and the inputs, hidden neurons and actions it holds."""

    index: int
    axis: str
    n_x_inputs: int
    n_y_inputs: int
    n_hidden: int
    actions: list[str]


def describe_communities(communities: list[set], labels: list[str], sizes: list[int], grid_size: int,
                         action_names: tuple[str, ...]) -> list[CommunityReport]:
    """What each community holds (inputs by axis, hidden neurons, actions)."""
    axes_in, last = input_axes(grid_size), len(sizes) - 1
    out = []
    for i, (c, a) in enumerate(zip(communities, labels)):
        ins = [axes_in[n[1]] for n in c if n[0] == 0]
        out.append(CommunityReport(i, a, ins.count("X"), ins.count("Y"), sum(1 for n in c if 0 < n[0] < last),
                                   [action_names[n[1]] for n in sorted(c) if n[0] == last]))
    return out
