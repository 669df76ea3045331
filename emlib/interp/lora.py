"""LoRA adapter analysis: read saved adapters, rank-1 B vectors, training trajectories (local cosine, PCA), scaling."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "read_adapter",
    "adapter_modules",
    "adapter_num_params",
    "b_vector",
    "stack_trajectory",
    "local_cosine_similarity",
    "pca",
    "peak_step",
    "random_walk_like",
    "trajectory_shape",
    "scale_adapter",
    "record_lora_scalars",
    "save_scaled_adapter",
]

PathLike = str | os.PathLike
# peft keys: <prefix>.<module>.lora_A.weight (saved; adapter name stripped) or lora_A.<adapter>.weight (in memory);
# embeddings store lora_embedding_A / lora_embedding_B without ".weight"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<which>[AB])(?P<rest>(?:\.[^.]+)*)$")
_PREFIX = "base_model.model."


def _adapter_file(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "adapter_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no adapter weights at {path}")
    return path


def read_adapter(path: PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """{module name (e.g. 'model.layers.3.mlp.down_proj'): {'A': r × in, 'B': out × r}} from a saved peft adapter."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(_adapter_file(path))).items():
        m = _KEY.match(key)
        if m is None or m["rest"].endswith(".bias"):
            continue  # lora_B biases, DoRA magnitudes, modules_to_save copies, ...
        module = m["module"].removeprefix(_PREFIX)
        out.setdefault(module, {})[m["which"]] = tensor
    incomplete = [name for name, ab in out.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise ValueError(f"modules without both lora_A and lora_B in {path}: {incomplete}")
    return dict(sorted(out.items(), key=lambda kv: _natural_key(kv[0])))


def _natural_key(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def adapter_modules(path: PathLike) -> list[str]:
    """The names of the modules a saved adapter adapts, in layer order."""
    return list(read_adapter(path))


def adapter_num_params(path: PathLike) -> int:
    """The number of trained LoRA parameters (all A and B entries) in a saved adapter."""
    return sum(ab["A"].numel() + ab["B"].numel() for ab in read_adapter(path).values())


def _pick(adapter: dict[str, dict[str, torch.Tensor]], module: str | None, path: PathLike) -> dict[str, torch.Tensor]:
    if module is None:
        if len(adapter) != 1:
            raise ValueError(f"{path} adapts {len(adapter)} modules; pass module= one of {list(adapter)}")
        return next(iter(adapter.values()))
    if module in adapter:
        return adapter[module]
    # a unique dotted suffix is enough, e.g. 'layers.5.mlp.down_proj'
    matches = [name for name in adapter if name.endswith("." + module)]
    if len(matches) != 1:
        raise KeyError(f"module {module!r} matches {matches or 'nothing'} in {path}; modules: {list(adapter)}")
    return adapter[matches[0]]


def b_vector(path: PathLike, module: str | None = None) -> torch.Tensor:
    """The flattened LoRA B (out,) of a rank-1 adapter's module (the only adapted module when module is None)."""
    ab = _pick(read_adapter(path), module, path)
    if ab["B"].shape[-1] != 1:
        raise ValueError(f"b_vector needs a rank-1 adapter, got B of shape {tuple(ab['B'].shape)}")
    return ab["B"].reshape(-1).clone()


def stack_trajectory(
    paths: Sequence[PathLike], module: str | None = None, which: Literal["A", "B"] = "B"
) -> np.ndarray:
    """The flattened A or B of one module at each saved step (steps × dim, float32)."""
    if which not in ("A", "B"):
        raise ValueError(f"which must be 'A' or 'B', got {which!r}")
    if not paths:
        raise ValueError("no adapter paths given")
    rows = [_pick(read_adapter(p), module, p)[which].reshape(-1).float().numpy() for p in paths]
    sizes = {r.shape[0] for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"snapshots differ in size: {sorted(sizes)}")
    return np.stack(rows).astype(np.float32)


def local_cosine_similarity(traj: np.ndarray, k: int) -> np.ndarray:
    """cos(v[t−k] − v[t], v[t+k] − v[t]) for t in [k, T−k), else NaN (−1 on a straight path, 0 at a right angle)."""
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 2:
        raise ValueError(f"expected a steps × dim array, got shape {traj.shape}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    n = traj.shape[0]
    out = np.full(n, np.nan)
    if n <= 2 * k:
        return out
    centre = traj[k : n - k]
    back = traj[: n - 2 * k] - centre
    fwd = traj[2 * k :] - centre
    denom = np.linalg.norm(back, axis=1) * np.linalg.norm(fwd, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("td,td->t", back, fwd) / denom
    cos[denom == 0] = np.nan  # the path did not move: undefined
    out[k : n - k] = np.clip(cos, -1.0, 1.0)
    return out


def pca(traj: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(projections steps × n_components, explained variance ratio) of a trajectory's PCA."""
    from sklearn.decomposition import PCA

    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 2:
        raise ValueError(f"expected a steps × dim array, got shape {traj.shape}")
    model = PCA(n_components=n_components)
    projections = model.fit_transform(traj)
    return projections, model.explained_variance_ratio_


def peak_step(steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray, skip: int = 0) -> int:
    """The step with the largest finite value, ignoring steps ≤ `skip` (e.g. warmup); the earliest on ties."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=float)
    if steps.shape != values.shape:
        raise ValueError(f"{steps.shape[0]} steps but {values.shape[0]} values")
    ok = np.isfinite(values) & (steps > skip)
    if not ok.any():
        raise ValueError(f"no finite values after step {skip}")
    candidates = np.flatnonzero(ok)
    return int(steps[candidates[np.argmax(values[candidates])]])


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def scale_adapter(model: nn.Module, scale: float) -> Iterator[None]:
    """Multiply every LoRA layer's contribution by `scale` (all adapters), restoring the original scalings on exit."""
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers")
    merged = [m for m in layers if getattr(m, "merged", False)]
    if merged:
        raise ValueError(f"{len(merged)} LoRA layers are merged into the weights; scaling would have no effect")
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for name in m.scaling:
                m.scaling[name] = m.scaling[name] * scale
        yield
    finally:
        for m, original in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(original)


def random_walk_like(traj: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random walk from traj[0] whose steps have the norms of the trajectory's steps and random directions: the
    null for the shape of a trajectory (a random walk already puts most variance in its first components)."""
    traj = np.asarray(traj, dtype=np.float64)
    steps = np.diff(traj, axis=0)
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal(steps.shape)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    walk = dirs * np.linalg.norm(steps, axis=1, keepdims=True)
    return np.vstack([traj[:1], traj[:1] + np.cumsum(walk, axis=0)])


def trajectory_shape(traj: np.ndarray, steps: Sequence[int] | np.ndarray, k: int) -> dict[str, float]:
    """PC1+PC2 share of variance, the largest local cosine (k) and its step: what notebook 03 reads as a turn."""
    local = local_cosine_similarity(traj, k)
    _, ratio = pca(traj, 2)
    return {"pc12": float(ratio.sum()), "peak_local_cos": float(np.nanmax(local)),
            "peak_step": peak_step(steps, local)}


@contextlib.contextmanager
def record_lora_scalars(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Yield {module name: [A·x of each forward pass (batch × seq × rank)]} for every LoRA layer of a model with one
    active adapter: the adapter's hidden state before B (a rank-1 adapter's scalar per token); hooks removed on exit."""
    from peft.tuners.lora import LoraLayer

    layers = [(name.removeprefix(_PREFIX), m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("the model has no LoRA layers")
    if any(getattr(m, "merged", False) for _, m in layers):
        raise ValueError("LoRA layers merged into the weights compute no A·x: load the adapter unmerged")
    store: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    handles = []
    try:
        for name, m in layers:
            active = [a for a in m.active_adapters if a in m.lora_A]
            if len(active) != 1:
                raise ValueError(f"{name} has {len(active)} active LoRA adapters; record_lora_scalars needs one")
            handles.append(m.lora_A[active[0]].register_forward_hook(
                lambda mod, args, out, key=name: store[key].append(out.detach())))
        yield store
    finally:
        for h in handles:
            h.remove()


def save_scaled_adapter(path: PathLike, out: PathLike, scales: Mapping[str, float], default: float = 1.0) -> Path:
    """A copy of a saved adapter in folder `out` whose modules' contributions are multiplied by `scales[module]` (their
    B scaled; `default` for modules not named, 0 zeroes them); a name the adapter lacks is an error. Returns `out`."""
    src = _adapter_file(path)
    known = set(read_adapter(src))
    unknown = sorted(set(scales) - known)
    if unknown:
        raise KeyError(f"modules {unknown} are not in {src}; modules: {sorted(known, key=_natural_key)}")
    tensors = load_file(str(src))
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is not None and m["which"] == "B":
            tensors[key] = tensor * float(scales.get(m["module"].removeprefix(_PREFIX), default))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = src.parent / "adapter_config.json"
    if config.exists():
        (out / "adapter_config.json").write_text(config.read_text())
    tmp = out / "adapter_model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, out / "adapter_model.safetensors")
    return out
