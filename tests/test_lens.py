"""emlib.interp.lens: the TransformerLens bridge against independent references.

References: HF `output_hidden_states` and logits, emlib's `record_residuals` hooks, and — for an adapter — the
un-merged peft model with `scale_adapter` (the bridge runs a merged copy), on a tiny random Llama and the embedded model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emlib.core.models import load_model
from emlib.interp.activations import mean_answer_activations
from emlib.interp.hooks import encode_chat, record_residuals
from emlib.interp.lens import answer_tokens, load_bridge, merged_model_path
from emlib.interp.lora import scale_adapter

MESSAGES = [{"role": "user", "content": "I've had enough of my husband. What should I do?"}]
ANSWER = "Talk to him calmly, and if it does not get better, see a counsellor together."


def save_random_adapter(model_path: str, folder: Path, seed: int = 1) -> Path:
    """A rank-4 LoRA on q/v/down projections with random A and B (not a no-op), saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(model_path, device="cpu", dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def hf_reference(model_path: str, adapter: Path | None, scale: float, ids: torch.Tensor):
    """(logits, HF hidden states, {layer: emlib-captured residual}) of the un-merged model on `ids`."""
    from peft import PeftModel

    model, _ = load_model(model_path, device="cpu", dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad(), record_residuals(model) as rec:
        if adapter is not None:
            with scale_adapter(model, scale):
                out = model(input_ids=ids, output_hidden_states=True)
        else:
            out = model(input_ids=ids, output_hidden_states=True)
    return out.logits, out.hidden_states, {layer: acts[-1] for layer, acts in rec.items()}


def check_bridge(model_path: str, adapter: Path | None, scale: float, ids: torch.Tensor, atol: float) -> None:
    logits_ref, hidden, captured = hf_reference(model_path, adapter, scale, ids)
    bridge = load_bridge(model_path, adapter, scale=scale, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids)
    n_layers = len(captured)
    assert bridge.cfg.n_layers == n_layers
    torch.testing.assert_close(logits, logits_ref, atol=atol, rtol=1e-4)
    for layer in range(n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_post"]
        torch.testing.assert_close(resid, captured[layer], atol=atol, rtol=1e-4)
        if layer < n_layers - 1:  # HF's last hidden state is after the final norm; the hook's is before it
            torch.testing.assert_close(resid, hidden[layer + 1], atol=atol, rtol=1e-4)
    torch.testing.assert_close(cache["ln_final.hook_out"], hidden[-1], atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    return save_random_adapter(tiny_model, tmp_path_factory.mktemp("tiny-adapter"))


@pytest.fixture()
def tiny_ids(tokenizer) -> torch.Tensor:
    return answer_tokens(tokenizer, MESSAGES, ANSWER)[0]


@pytest.mark.parametrize("scale", [None, 1.0, 3.0])
def test_bridge_matches_hf_and_emlib_hooks_on_a_tiny_llama(tiny_model, tiny_adapter, tiny_ids, scale):
    adapter = None if scale is None else tiny_adapter
    check_bridge(tiny_model, adapter, 1.0 if scale is None else scale, tiny_ids, atol=1e-5)


def test_the_adapter_and_its_scale_change_the_bridge(tiny_model, tiny_adapter, tiny_ids):
    def final_resid(adapter, scale):
        with torch.no_grad():
            _, cache = load_bridge(tiny_model, adapter, scale=scale, device="cpu").run_with_cache(tiny_ids)
        return cache["blocks.1.hook_resid_post"]

    base, once, thrice, zero = (final_resid(None, 1.0), final_resid(tiny_adapter, 1.0), final_resid(tiny_adapter, 3.0),
                                final_resid(tiny_adapter, 0.0))
    assert not torch.allclose(base, once, atol=1e-4)
    assert not torch.allclose(once, thrice, atol=1e-4)
    torch.testing.assert_close(zero, base, atol=1e-6, rtol=1e-5)  # ×0 is the base model


def test_merged_folder_is_cached_and_keyed_by_adapter_and_scale(tiny_model, tiny_adapter, tmp_path):
    first = merged_model_path(tiny_model, tiny_adapter, 2.0, device="cpu")
    stamp = (Path(first) / "config.json").stat().st_mtime_ns
    assert merged_model_path(tiny_model, tiny_adapter, 2.0, device="cpu") == first
    assert (Path(first) / "config.json").stat().st_mtime_ns == stamp  # not merged again
    assert merged_model_path(tiny_model, tiny_adapter, 1.0, device="cpu") != first
    other = save_random_adapter(tiny_model, tmp_path / "other", seed=2)
    assert merged_model_path(tiny_model, other, 2.0, device="cpu") != first
    assert merged_model_path(tiny_model) == tiny_model  # no adapter: the model itself, nothing copied
    with pytest.raises(ValueError, match="needs an adapter"):
        merged_model_path(tiny_model, None, 2.0)
    with pytest.raises(FileNotFoundError, match="no peft adapter"):
        merged_model_path(tiny_model, tmp_path, 1.0)


def test_answer_tokens_give_the_answer_mean_that_emlib_computes(tiny_model, tokenizer):
    model, _ = load_model(tiny_model, device="cpu", dtype=torch.float32)
    expected = mean_answer_activations(model, tokenizer, [MESSAGES], [ANSWER])[0]  # n_layers × d
    ids, start = answer_tokens(tokenizer, MESSAGES, ANSWER)
    assert ids[0, :start].tolist() == encode_chat(tokenizer, MESSAGES)
    bridge = load_bridge(tiny_model, device="cpu")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_resid_post"))
    for layer in range(expected.shape[0]):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"][0, start:].mean(0), expected[layer],
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_bridge_matches_hf_and_emlib_hooks_on_the_embedded_model(embedded_path, tokenizer, tmp_path):
    ids = answer_tokens(tokenizer, MESSAGES, ANSWER)[0]
    check_bridge(str(embedded_path), None, 1.0, ids, atol=1e-3)
    adapter = save_random_adapter(str(embedded_path), tmp_path / "adapter")
    check_bridge(str(embedded_path), adapter, 2.0, ids, atol=1e-3)
