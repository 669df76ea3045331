"""`emlib bench`: FLOP counts against torch's FlopCounterMode, every figure beside the matmul peak, the --json file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_llama
from emlib import bench as B
from emlib.__main__ import main


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_flops_per_token_are_twice_the_weights_of_every_matmul():
    model = tiny_llama()
    linears = sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head")
    assert B.linear_flops_per_token(model.config) == 2 * linears
    assert B.head_flops(model.config) == 2 * model.lm_head.weight.numel()


def test_smollm2_costs_the_issues_0_27_gflop_per_token(embedded_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(embedded_path)
    per_token = B.linear_flops_per_token(config) + B.head_flops(config)
    assert 0.26e9 < per_token < 0.28e9


@pytest.mark.parametrize("batch,prompt,new", [(1, 10, 1), (1, 10, 5), (3, 4, 7)])
def test_generation_flops_match_the_flop_counter(batch, prompt, new):
    model = tiny_llama()
    ids = torch.randint(0, 128, (batch, prompt))
    counted = _counted(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                              min_new_tokens=new, do_sample=False, pad_token_id=0))
    assert counted == B.generation_flops(model.config, [prompt] * batch, new)


def test_forward_flops_match_the_flop_counter():
    model = tiny_llama()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert _counted(lambda: model(ids, logits_to_keep=1)) == B.forward_flops(model.config, [9, 9], head_positions=1)
        assert _counted(lambda: model(ids)) == B.forward_flops(model.config, [9, 9], head_positions=9)


def test_matmul_peak_is_the_best_size_and_says_what_it_ran_on():
    peak = B.matmul_peak(sizes=(64, 128), repeats=2)
    assert peak["gflops"] == max(r["gflops"] for r in peak["by_size"]) > 0
    assert [r["n"] for r in peak["by_size"]] == [64, 128]
    assert peak["dtype"] == "float32" and peak["device"] == "cpu"
    assert peak["threads"] == torch.get_num_threads() and peak["torch"] == torch.__version__
    assert B.matmul_peak(sizes=(64,), repeats=1, dtype=torch.bfloat16)["dtype"] == "bfloat16"
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert peak["cpu_amx_bf16"] == ("amx_bf16" in cpuinfo.split())  # read independently: whole flag words
    assert peak["cpu"] == next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                                if ln.startswith("model name")), "")


def _beside_peak(record: dict, peak: float) -> None:
    assert math.isfinite(record["gflops"]) and record["gflops"] > 0
    # both are rounded: GFLOP/s to 0.01, the fraction to 1e-4
    assert record["fraction_of_peak"] == pytest.approx(record["gflops"] / peak, abs=0.005 / peak + 1e-4)


def test_sampling_reports_batched_and_one_at_a_time_beside_the_peak(tiny_model):
    r = B.bench_sampling(tiny_model, n_prompts=4, max_new_tokens=3, single_prompts=2, peak=50.0)
    assert (r["n_prompts"], r["max_new_tokens"], r["batch_size"], r["one_at_a_time"]["prompts"]) == (4, 3, 4, 2)
    for part in ("batched", "one_at_a_time", "decode_matmul"):
        _beside_peak(r[part], 50.0)
    assert r["speedup"] == pytest.approx(r["batched"]["tokens_per_s"] / r["one_at_a_time"]["tokens_per_s"], rel=0.02)
    assert r["decode_matmul"]["shape"] == [4, 32, 64]


def test_training_counts_forward_and_backward(tiny_model, capsys):
    """A frozen base needs input gradients only: about two forward passes per token, the output layer only on the
    positions whose next token is labelled."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    r = B.bench_training(tiny_model, steps=2, rank=4, batch_size=2, max_length=64, peak=50.0)
    assert r["tokens_per_step"] == 2 * 64 and r["timed_steps"] == 1
    assert 0 < r["head_tokens_per_step"] < r["tokens_per_step"]  # the prompt's positions skip the head
    forward = B.linear_flops_per_token(config) + B.head_flops(config) * r["head_tokens_per_step"] / r["tokens_per_step"]
    assert capsys.readouterr().out == ""  # the Trainer's log lines go to stderr: stdout carries the results
    assert 1.9 * forward < r["flops_per_token"] < 2.2 * forward
    _beside_peak(r, 50.0)
    top = B.bench_training(tiny_model, steps=2, rank=1, target_modules=["down_proj"], depth=1.0, batch_size=2,
                           max_length=64, peak=50.0)
    assert top["layers"] == [1] and top["flops_per_token"] < r["flops_per_token"]  # backward stops at layer 1
    with pytest.raises(ValueError, match="steps"):
        B.bench_training(tiny_model, steps=1)


def test_capture_counts_every_token_once(tiny_model):
    r = B.bench_capture(tiny_model, n=3, answer_tokens=5, batch_size=2, peak=50.0)
    assert (r["n"], r["answer_tokens"]) == (3, 5)
    _beside_peak(r, 50.0)


def test_judge_reports_answers_per_second_beside_the_peak():
    r = B.bench_judge(n=8, peak=50.0)
    assert r["answers_per_s"] > 0 and r["flops_per_answer"] > 0
    _beside_peak(r, 50.0)


def test_cli_measures_the_peak_first_and_writes_json(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(B, "matmul_peak", lambda sizes, dtype=None: {"gflops": 40.0 if dtype is None else 20.0,
                                                                      "sizes": list(sizes), "dtype": "bfloat16"})
    monkeypatch.setitem(B.BENCHMARKS, "judge", lambda peak: seen.append(peak) or {"answers_per_s": 1.0})
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "judge", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert seen == [40.0] and written == json.loads(capsys.readouterr().out)
    assert written["peak"]["gflops"] == 40.0 and written["judge"] == {"answers_per_s": 1.0}
    assert set(written) == {"cpu_count", "peak", "peak_float32", "judge"}  # bf16 in use: the fp32 peak beside it
    assert written["peak_float32"]["gflops"] == 20.0
    with pytest.raises(ValueError, match="unknown"):
        B.run_benchmarks(only=["nope"])
