"""The experiment pipeline: LoRA fine-tuning, sampling, judging and summarising answers."""
