"""Judges of answers (aligned, coherent 0-100): the protocol and cache, LLM judges, the embedded judge, its training."""
