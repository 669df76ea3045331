"""Tests for emlib.interp.lora on tiny random Llamas with peft LoRA: trajectories geometry, adapter I/O, adapter scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from conftest import tiny_llama

from emlib.interp.lora import (
    adapter_modules,
    adapter_num_params,
    b_vector,
    local_cosine_similarity,
    pca,
    read_adapter,
    scale_adapter,
    stack_trajectory,
)



def _tiny_lora(target_modules: list[str], layers: list[int] | None = None, rank: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    base = tiny_llama()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules, layers_to_transform=layers)
    model = get_peft_model(base, config)
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture
def peft_model():
    return _tiny_lora(["q_proj", "down_proj"])


@pytest.fixture
def ids():
    return torch.randint(0, 128, (2, 6))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- trajectory geometry


@pytest.mark.parametrize("k", [1, 2, 3])
def test_local_cosine_straight_line_is_minus_one(k):
    rng = np.random.default_rng(0)
    direction, origin = rng.normal(size=20), rng.normal(size=20)
    speeds = np.cumsum(rng.uniform(0.5, 2.0, size=12))  # uneven steps along one line
    traj = origin + speeds[:, None] * direction
    cos = local_cosine_similarity(traj, k)
    assert cos.shape == (12,)
    assert np.isnan(cos[:k]).all() and np.isnan(cos[12 - k :]).all()
    np.testing.assert_allclose(cos[k : 12 - k], -1.0, atol=1e-12)


def test_local_cosine_right_angle_turn_is_zero():
    # along x for steps 0..5, then along y: the corner is step 5
    traj = np.array([[t, 0.0] for t in range(6)] + [[5.0, t] for t in range(1, 6)])
    cos = local_cosine_similarity(traj, 1)
    assert np.isnan(cos[0]) and np.isnan(cos[-1])
    assert cos[5] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.delete(cos[1:-1], 4), -1.0, atol=1e-12)
    with pytest.raises(ValueError):
        local_cosine_similarity(traj, 0)


def test_local_cosine_short_or_stalled_trajectory_is_nan():
    assert np.isnan(local_cosine_similarity(np.zeros((4, 3)), 2)).all()  # T ≤ 2k: nothing defined
    assert np.isnan(local_cosine_similarity(np.zeros((5, 3)), 1)).all()  # no movement: undefined, not an error


def test_pca_of_planar_trajectory():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(50, 2)))[0].T  # 2 orthonormal vectors in 50-d
    t = np.linspace(0, 3, 40)
    traj = 4.0 + np.stack([np.cos(t) * 3, np.sin(2 * t)], axis=1) @ basis
    proj, ratio = pca(traj, 2)
    assert proj.shape == (40, 2) and ratio.shape == (2,)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-9)
    _, ratio3 = pca(traj, 3)
    assert ratio3[2] < 1e-12


# ---------------------------------------------------------------- adapter I/O


def test_read_adapter_round_trip(tmp_path, peft_model):
    peft_model.save_pretrained(tmp_path)
    adapter = read_adapter(tmp_path)
    state = dict(peft_model.named_parameters())
    assert len(adapter) == 4  # q_proj and down_proj in 2 layers
    assert adapter_modules(tmp_path)[0] == "model.layers.0.mlp.down_proj"
    for module, ab in adapter.items():
        for which in "AB":
            expected = state[f"base_model.model.{module}.lora_{which}.default.weight"]
            torch.testing.assert_close(ab[which], expected.detach(), rtol=0, atol=0)
    assert adapter["model.layers.1.self_attn.q_proj"]["B"].shape == (32, 1)
    assert adapter["model.layers.1.self_attn.q_proj"]["A"].shape == (1, 32)
    assert read_adapter(tmp_path / "adapter_model.safetensors").keys() == adapter.keys()  # the file itself works too
    trainable = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert adapter_num_params(tmp_path) == trainable == 2 * ((32 + 32) + (64 + 32))  # rank 1: q_proj 32→32, down_proj 64→32


def test_b_vector(tmp_path, peft_model):
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="modules"):
        b_vector(tmp_path)  # several modules and none named
    b = b_vector(tmp_path, "model.layers.1.mlp.down_proj")
    expected = peft_model.base_model.model.model.layers[1].mlp.down_proj.lora_B["default"].weight
    assert b.shape == (32,)
    torch.testing.assert_close(b, expected.detach().reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(b_vector(tmp_path, "layers.1.mlp.down_proj"), b)  # a unique suffix is enough
    with pytest.raises(KeyError):
        b_vector(tmp_path, "down_proj")  # ambiguous suffix

    single = tmp_path / "single"
    one = _tiny_lora(["down_proj"], layers=[1])
    one.save_pretrained(single)
    expected = one.base_model.model.model.layers[1].mlp.down_proj.lora_B["default"].weight
    torch.testing.assert_close(b_vector(single), expected.detach().reshape(-1), rtol=0, atol=0)

    rank2 = tmp_path / "rank2"
    _tiny_lora(["down_proj"], layers=[1], rank=2).save_pretrained(rank2)
    with pytest.raises(ValueError, match="rank-1"):
        b_vector(rank2)


def test_stack_trajectory(tmp_path):
    model = _tiny_lora(["down_proj"], layers=[0])
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    expected_b, expected_a, paths = [], [], []
    for step in range(3):
        with torch.no_grad():
            layer.lora_B["default"].weight.add_(float(step))
        path = tmp_path / f"step-{step:06d}"
        model.save_pretrained(path)
        paths.append(path)
        expected_b.append(layer.lora_B["default"].weight.detach().reshape(-1).numpy().copy())
        expected_a.append(layer.lora_A["default"].weight.detach().reshape(-1).numpy().copy())
    traj = stack_trajectory(paths)
    assert traj.shape == (3, 32) and traj.dtype == np.float32
    np.testing.assert_array_equal(traj, np.stack(expected_b))
    np.testing.assert_array_equal(stack_trajectory(paths, which="A"), np.stack(expected_a))  # A: 1 × 64 → 64
    with pytest.raises(ValueError):
        stack_trajectory(paths, which="C")


# ---------------------------------------------------------------- scaling


def test_scale_one_and_zero(peft_model, ids):
    adapted = _logits(peft_model, ids)
    with peft_model.disable_adapter():
        base = _logits(peft_model, ids)
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapter is not trivial
    with scale_adapter(peft_model, 1.0):
        torch.testing.assert_close(_logits(peft_model, ids), adapted, rtol=0, atol=0)
    with scale_adapter(peft_model, 0.0):
        torch.testing.assert_close(_logits(peft_model, ids), base, rtol=0, atol=0)


def test_scale_two_is_base_plus_twice_the_delta(peft_model):
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 5, 32)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scaling = layer.scaling["default"]
    with torch.no_grad():
        base = layer.base_layer(x)
        delta = x @ a.T @ b.T * scaling
        with scale_adapter(peft_model, 2.0):
            scaled = layer(x)
        unscaled = layer(x)
    torch.testing.assert_close(unscaled, base + delta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled, base + 2 * delta, rtol=1e-5, atol=1e-5)


def test_scalings_restored_after_exit_and_exception(peft_model, ids):
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    before = [dict(m.scaling) for m in layers]
    adapted = _logits(peft_model, ids)
    with scale_adapter(peft_model, -3.0):
        assert [m.scaling["default"] for m in layers] == [-3.0 * s["default"] for s in before]
    assert [dict(m.scaling) for m in layers] == before
    with pytest.raises(RuntimeError, match="boom"):
        with scale_adapter(peft_model, 5.0):
            raise RuntimeError("boom")
    assert [dict(m.scaling) for m in layers] == before
    torch.testing.assert_close(_logits(peft_model, ids), adapted, rtol=0, atol=0)


def test_scale_adapter_needs_lora_layers():
    with pytest.raises(ValueError, match="no LoRA"):
        with scale_adapter(tiny_llama(), 2.0):
            pass


def test_peak_step():
    from emlib.interp.lora import peak_step

    steps = [2, 4, 6, 8, 10]
    assert peak_step(steps, [9.0, 1.0, 3.0, 3.0, float("nan")]) == 2
    assert peak_step(steps, [9.0, 1.0, 3.0, 3.0, float("nan")], skip=2) == 6  # earliest of the tie, warmup skipped
    with pytest.raises(ValueError, match="no finite"):
        peak_step(steps, [float("nan")] * 5)
    with pytest.raises(ValueError, match="5 steps but 4"):
        peak_step(steps, [1.0] * 4)


# ---------------------------------------------------------------- LoRA scalars and per-module scaling


def test_record_lora_scalars_equal_x_times_a(peft_model, ids):
    from emlib.interp.lora import record_lora_scalars

    inputs = {}
    layers = {f"model.layers.{i}.{part}.{kind}": getattr(getattr(peft_model.base_model.model.model.layers[i], part), kind)
              for i in range(2) for part, kind in (("self_attn", "q_proj"), ("mlp", "down_proj"))}
    handles = [m.register_forward_pre_hook(lambda mod, args, key=k: inputs.__setitem__(key, args[0].detach()))
               for k, m in layers.items()]
    with record_lora_scalars(peft_model) as rec:
        _logits(peft_model, ids)
        _logits(peft_model, ids[:1])
    for h in handles:
        h.remove()
    assert set(rec) == set(layers)
    for name, m in layers.items():
        a = m.lora_A["default"].weight.detach()
        assert len(rec[name]) == 2 and rec[name][0].shape == (2, 6, 1)  # one entry per pass, batch × seq × rank
        torch.testing.assert_close(rec[name][1], inputs[name] @ a.T, rtol=1e-5, atol=1e-6)  # by hand: x @ A.T
    with record_lora_scalars(peft_model) as rec:
        pass
    _logits(peft_model, ids)  # hooks are gone after exit
    assert all(not v for v in rec.values())
    with pytest.raises(ValueError, match="no LoRA"):
        with record_lora_scalars(tiny_llama()):
            pass


def test_record_lora_scalars_rank_and_merged_refused():
    from emlib.interp.lora import record_lora_scalars

    model = _tiny_lora(["down_proj"], layers=[1], rank=3)
    x = torch.randint(0, 128, (1, 4))
    with record_lora_scalars(model) as rec:
        _logits(model, x)
    assert list(rec) == ["model.layers.1.mlp.down_proj"] and rec["model.layers.1.mlp.down_proj"][0].shape == (1, 4, 3)
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        with record_lora_scalars(model):
            pass


def test_save_scaled_adapter_scales_each_module(tmp_path, peft_model, ids):
    from peft import PeftModel

    from emlib.interp.lora import save_scaled_adapter

    peft_model.save_pretrained(tmp_path / "orig")
    base_state = {k: v.clone() for k, v in peft_model.get_base_model().state_dict().items() if "lora_" not in k}
    original = read_adapter(tmp_path / "orig")
    scales = {"model.layers.0.mlp.down_proj": 3.0, "model.layers.1.self_attn.q_proj": -2.0}
    out = save_scaled_adapter(tmp_path / "orig", tmp_path / "scaled", scales, default=0.0)
    scaled = read_adapter(out)
    for module, ab in original.items():
        torch.testing.assert_close(scaled[module]["A"], ab["A"], rtol=0, atol=0)  # A (and so the scalar) unchanged
        torch.testing.assert_close(scaled[module]["B"], ab["B"] * scales.get(module, 0.0), rtol=0, atol=0)

    def load(folder):
        torch.manual_seed(0)
        base = tiny_llama()
        base.load_state_dict({k.replace("base_layer.", ""): v for k, v in base_state.items()}, strict=False)
        return PeftModel.from_pretrained(base, str(folder)).eval()

    with torch.no_grad():  # the same delta by hand: layer 0's down_proj at ×3, everything else of layer 0 zeroed
        layer = load(out).base_model.model.model.layers[0].mlp.down_proj
        x = torch.randn(2, 3, 64)
        a, b = original["model.layers.0.mlp.down_proj"]["A"], original["model.layers.0.mlp.down_proj"]["B"]
        torch.testing.assert_close(layer(x), layer.base_layer(x) + 3.0 * (x @ a.T @ b.T) * layer.scaling["default"],
                                   rtol=1e-5, atol=1e-5)
    same = save_scaled_adapter(tmp_path / "orig", tmp_path / "same", {})
    torch.testing.assert_close(_logits(load(same), ids), _logits(load(tmp_path / "orig"), ids), rtol=0, atol=0)
    torch.testing.assert_close(_logits(load(same), ids), _logits(peft_model, ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="not in"):
        save_scaled_adapter(tmp_path / "orig", tmp_path / "bad", {"model.layers.7.mlp.down_proj": 1.0})
