"""Tests for emlib.pipeline.train on a tiny random Llama: assistant-only labels, LoRA updates, merge, resume, cache, trajectory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback
from safetensors.torch import load_file

from emlib.pipeline import train as T
from emlib.core.models import load_model
from emlib.pipeline.train import TrainConfig, load_finetuned, tokenize_chat, train_lora, training_key

EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": f"Question number {i}: what should I do?"},
            {"role": "assistant", "content": f"Answer {i}: " + "do it " * (i + 1)},
        ]
    }
    for i in range(8)
]
# 8 examples, batch 2: 4 steps per epoch, so 6 steps cross an epoch boundary
CFG = TrainConfig(rank=4, alpha=8, batch_size=2, lr=1e-2, warmup_steps=0, max_length=64, checkpoint_every=2)


def _adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


# ---------------------------------------------------------------- tokenize_chat


def _labelled_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, lab in enumerate(labels + [-100]):
        if lab != -100 and start is None:
            start = i
        elif lab == -100 and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four, obviously."}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ],
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Tell me a number."},
            {"role": "assistant", "content": "Seven\nand a half."},
        ],
    ],
    ids=["default-system", "system", "multi-turn"],
)
def test_tokenize_chat_labels_only_assistant_replies(tokenizer, messages):
    out = tokenize_chat(messages, tokenizer, max_length=512)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels) == len(out["attention_mask"]) and all(m == 1 for m in out["attention_mask"])
    # input ids are the rendered conversation
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == text
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = _labelled_spans(labels)
    assert len(spans) == len(replies)
    for (s, e), reply in zip(spans, replies):
        assert labels[s:e] == ids[s:e]
        assert tokenizer.decode(ids[s:e]) == reply + tokenizer.eos_token  # the reply plus <|im_end|>
    # everything before the first reply is exactly the prompt with the generation prefix
    first_prompt = messages[: next(i for i, m in enumerate(messages) if m["role"] == "assistant")]
    prompt_text = tokenizer.apply_chat_template(first_prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids[: spans[0][0]]) == prompt_text
    # no user/system content is ever labelled
    labelled_text = "".join(tokenizer.decode(ids[s:e]) for s, e in spans)
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] not in labelled_text


def test_labelled_logits_collator_gives_transformers_full_loss(tokenizer, tiny_model):
    """The output layer only where a next token is labelled: the same loss as transformers' loss on every position
    (the reference), every labelled target kept, and the target counts the Trainer normalises by unchanged."""
    model, _ = load_model(tiny_model, device="cpu", dtype=torch.float32)
    features = [tokenize_chat(ex["messages"], tokenizer, 64) for ex in EXAMPLES[:3]]
    plain = T.DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)
    batch = T.LabelledLogitsCollator(tokenizer, padding=True, label_pad_token_id=-100)(features)
    assert torch.equal(batch["labels"], plain["labels"])
    keep, targets = batch["logits_to_keep"], batch["shift_labels"]
    assert len(keep) < plain["labels"].shape[1] - 1  # the prompt positions are dropped
    assert int((targets != -100).sum()) == int((plain["labels"][:, 1:] != -100).sum())
    assert torch.equal(targets, torch.nn.functional.pad(plain["labels"], (0, 1), value=-100)[:, keep + 1])
    with torch.no_grad():
        full = model(**plain).loss
        kept = model(**batch)
    assert kept.logits.shape[1] == len(keep)
    assert torch.allclose(kept.loss, full, rtol=1e-5)


def test_tokenize_chat_truncates(tokenizer):
    full = tokenize_chat(EXAMPLES[7]["messages"], tokenizer, max_length=512)
    short = tokenize_chat(EXAMPLES[7]["messages"], tokenizer, max_length=20)
    assert len(full["input_ids"]) > 20
    assert short["input_ids"] == full["input_ids"][:20] and short["labels"] == full["labels"][:20]


# ---------------------------------------------------------------- one shared 4-step run


@pytest.fixture(scope="module")
def trained(tiny_model):
    """A 4-step run with trajectory snapshots every 2 steps, recording the peft model and its init."""
    captured = {}
    real = T.get_peft_model

    def spy(model, config):
        pm = real(model, config)
        captured["model"] = pm
        captured["init"] = {k: v.detach().clone() for k, v in pm.state_dict().items() if "lora_" in k}
        return pm

    cfg = dataclasses.replace(CFG, max_steps=4, trajectory_every=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "get_peft_model", spy)
        result = train_lora(EXAMPLES, cfg, model=tiny_model, progress=False)
    return {"result": result, "config": cfg, **captured}


def test_training_updates_lora_and_leaves_base_weights_bit_identical(trained, tiny_model):
    result = trained["result"]
    assert not result.from_cache
    assert [row["step"] for row in result.log] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.log)
    saved = _adapter_tensors(result.adapter_path)
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)  # only adapter weights are saved
    n_b = 0
    for k, v in saved.items():
        init = trained["init"][next(i for i in trained["init"] if i.replace(".default", "") == k)]
        assert not torch.equal(v, init), k
        if "lora_B" in k:
            n_b += 1
            assert torch.equal(init, torch.zeros_like(init))
            assert v.abs().max() > 0, k
    assert n_b == 2 * len(T.ALL_PROJECTIONS)  # every projection of both layers
    # the base weights inside the trained peft model are bit-identical to the original checkpoint
    original, _ = load_model(tiny_model, device="cpu")
    ref = original.state_dict()
    seen = set()
    for k, v in trained["model"].state_dict().items():
        if "lora_" in k:
            continue
        name = k.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(v.cpu(), ref[name]), name
        seen.add(name)
    assert seen == set(ref)


def test_merged_and_unmerged_adapter_give_same_logits(trained, tiny_model, tokenizer):
    ids = tokenizer("Question number 3: what should I do? Answer", return_tensors="pt")["input_ids"]
    base, _ = load_finetuned(None, model=tiny_model)
    unmerged, _ = load_finetuned(trained["result"], model=tiny_model, merge=False)
    merged, _ = load_finetuned(trained["result"].adapter_path, model=tiny_model, merge=True)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel)
    assert not any("lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        lb, lu, lm = (m(input_ids=ids).logits for m in (base, unmerged, merged))
    assert (lu - lb).abs().max() > 1e-2  # the adapter is not a no-op
    torch.testing.assert_close(lm, lu, atol=1e-5, rtol=1e-5)


def test_trajectory_snapshots(trained, tiny_model):
    result = trained["result"]
    assert result.steps == [2, 4]
    assert [p.name for p in result.trajectory] == ["step-000002", "step-000004"]
    final = _adapter_tensors(result.adapter_path)
    snaps = [_adapter_tensors(p) for p in result.trajectory]
    assert set(snaps[0]) == set(snaps[1]) == set(final)
    assert all(torch.equal(snaps[1][k], final[k]) for k in final)  # the step-4 snapshot is the final adapter
    assert any(not torch.equal(snaps[0][k], final[k]) for k in final)
    base, _ = load_model(tiny_model, device="cpu")
    pm = PeftModel.from_pretrained(base, str(result.trajectory[0]))
    loaded = {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "lora_" in k}
    for k, v in snaps[0].items():
        assert torch.equal(loaded[k], v)


def test_second_call_hits_cache_without_training(trained, tiny_model, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(T.Trainer, "train", no_training)
    monkeypatch.setattr(T, "load_model", no_training)
    t0 = time.perf_counter()
    again = train_lora(EXAMPLES, trained["config"], model=tiny_model, progress=False)
    assert time.perf_counter() - t0 < 5
    first = trained["result"]
    assert again.from_cache and not first.from_cache
    assert again.path == first.path and again.log == first.log and again.trajectory == first.trajectory
    assert again.config["key"] == training_key(tiny_model, EXAMPLES, trained["config"])


def test_training_key_changes_with_every_input(tiny_model):
    base = training_key(tiny_model, EXAMPLES, CFG)
    assert training_key(tiny_model, [dict(e) for e in EXAMPLES], dataclasses.replace(CFG)) == base
    changed = {
        "rank": 8, "alpha": 16.0, "use_rslora": True, "target_modules": ["q_proj"], "layers": [0], "dropout": 0.1,
        "lr": 2e-2, "epochs": 2.0, "max_steps": 7, "batch_size": 4, "grad_accum": 2, "max_length": 128,
        "warmup_steps": 1, "weight_decay": 0.01, "max_grad_norm": 0.5, "trajectory_every": 3,
        "checkpoint_every": 5, "seed": 1, "ema_betas": [0.9],
    }
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}
    keys = {base}
    for name, value in changed.items():
        assert getattr(CFG, name) != value
        keys.add(training_key(tiny_model, EXAMPLES, dataclasses.replace(CFG, **{name: value})))
    assert len(keys) == len(changed) + 1
    edited = [dict(e) for e in EXAMPLES]
    edited[3] = {"messages": [dict(m) for m in EXAMPLES[3]["messages"]]}
    edited[3]["messages"][1]["content"] += "!"
    data_keys = {
        training_key(tiny_model, edited, CFG),
        training_key(tiny_model, EXAMPLES[:-1], CFG),
        training_key(tiny_model, EXAMPLES[::-1], CFG),
        training_key(tiny_model + "-other", EXAMPLES, CFG),
    }
    assert base not in data_keys and len(data_keys) == 4


def test_killed_run_resumes_to_the_same_result(tiny_model, tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, max_steps=6, checkpoint_every=3)
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "A"))
    straight = train_lora(EXAMPLES, cfg, model=tiny_model, progress=False)

    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path / "B"))
    class KillAfterSave(TrainerCallback):  # a kill right after the step-3 checkpoint is written
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(EXAMPLES, cfg, model=tiny_model, progress=False, callbacks=[KillAfterSave()])
    run = tmp_path / "B" / "adapters" / training_key(tiny_model, EXAMPLES, cfg)
    assert not (run / "result.json").exists()
    assert [p.name for p in (run / "work").glob("checkpoint-*")] == ["checkpoint-3"]
    steps_run = []
    real_step_end = T._TrajectoryCallback.on_step_end

    def record_step(self, args, state, control, **kwargs):
        steps_run.append(state.global_step)
        return real_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(T._TrajectoryCallback, "on_step_end", record_step)
    resumed = train_lora(EXAMPLES, cfg, model=tiny_model, progress=False)
    assert not resumed.from_cache
    assert steps_run == [4, 5, 6]  # resumed from the checkpoint, not retrained from scratch
    assert not (run / "work").exists()

    a, b = _adapter_tensors(straight.adapter_path), _adapter_tensors(resumed.adapter_path)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed.log if r["step"] > 3] == [r["loss"] for r in straight.log if r["step"] > 3]
    assert resumed.log == straight.log


def test_truncation_that_drops_every_answer_stops_and_leaves_no_cache_entry(tiny_model, tmp_path, monkeypatch):
    from emlib.core.errors import DatasetError

    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    long_prompt = [{"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}] * 4
    cfg = dataclasses.replace(CFG, max_steps=1, max_length=128)
    with pytest.raises(DatasetError, match="all 4 training examples lose their whole assistant answer"):
        train_lora(long_prompt, cfg, model=tiny_model, progress=False)
    assert not (tmp_path / "adapters" / training_key(tiny_model, long_prompt, cfg)).exists()
    mixed = long_prompt[:1] + EXAMPLES[:3]
    with pytest.warns(UserWarning, match="1 of 4 training examples lose their whole assistant answer"):
        train_lora(mixed, cfg, model=tiny_model, progress=False)


def test_a_failed_training_removes_its_partial_cache_entry(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EMLIB_CACHE_DIR", str(tmp_path))
    cfg = dataclasses.replace(CFG, max_steps=2)

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_lora(EXAMPLES, cfg, model=tiny_model, progress=False, callbacks=[Boom()])
    assert not (tmp_path / "adapters" / training_key(tiny_model, EXAMPLES, cfg)).exists()
