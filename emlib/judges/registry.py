"""Judges by backend name."""

from __future__ import annotations

from .base import Judge
from .embedded import EmbeddedJudge
from .llm import HFJudge, OpenAIJudge

__all__ = ["JUDGES", "get_judge"]

JUDGES = ("embedded", "openai", "hf")


def get_judge(name: str = "embedded", **kwargs) -> Judge:
    """A judge by backend name: `embedded` (offline, default), `openai`, or `hf` (model=...)."""
    if name == "embedded":
        return EmbeddedJudge(**kwargs)
    if name == "openai":
        return OpenAIJudge(**kwargs)
    if name == "hf":
        return HFJudge(**kwargs)
    raise ValueError(f"unknown judge {name!r}: use 'embedded', 'openai' or 'hf'")
