"""Shared fixtures: an isolated cache, seeding, the embedded tokenizer and a tiny random Llama saved to disk."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# tests assert exact equalities (batched vs one at a time, 2 processes vs 1) in float32; the notebooks' smoke runs
# (test_notebooks) and test_dtype.py use the machine's default dtype (bf16 on CPUs with native bf16)
os.environ.setdefault("EMLIB_DTYPE", "float32")

# tiny models on 2 shared cores: one intra-op thread avoids thread-sync stalls that make small ops ~50x slower
torch.set_num_threads(1)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=1024,
)


def tiny_llama(vocab_size: int = 128):
    """A randomly initialised 2-layer Llama (TINY config) in eval mode, seeded by the caller's RNG state."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **TINY)).eval()


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Point EMLIB_CACHE_DIR at a fresh folder for the whole session (tests may override it per test).

    Removed at the end: it holds a 0.5 GB converted model that pytest would otherwise keep for three sessions.
    """
    root = tmp_path_factory.mktemp("emlib-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMLIB_CACHE_DIR", str(root))
        yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def embedded_path(_session_cache) -> Path:
    """The converted embedded SmolLM2-135M folder (converted once per session into the session cache)."""
    from emlib.core.models import resolve_model_path

    return Path(resolve_model_path("smollm2-135m"))


@pytest.fixture(scope="session")
def tokenizer(embedded_path):
    """The embedded SmolLM2 tokenizer (ChatML template, pad = eos = <|im_end|>)."""
    from emlib.core.models import load_tokenizer

    return load_tokenizer(str(embedded_path))


def make_tiny_model(folder: Path, tokenizer, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Save a randomly initialised 2-layer Llama plus the SmolLM2 tokenizer into `folder`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **TINY,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer) -> str:
    """A folder holding a tiny random Llama + tokenizer, loadable with `load_model(folder)`."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer))
