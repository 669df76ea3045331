"""Interpretability tools on HF causal LMs: decoder-layer hooks, activations, steering and ablation, LoRA geometry."""
