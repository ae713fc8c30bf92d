"""train_adapter on a tiny random Gemma 4 and a small synthetic pets set, on CPU.

Config validation, the batch plan, too-long examples, outputs, a falling loss, bit-identical resume
(in process, and after a real SIGKILL of the entrypoint: `-m integration`), and explicit 4-bit on CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from petqlora.data import dataset as data_lib
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.modeling import load_model_and_processor
from petqlora.train.config import TrainConfig, parse_train_config
from petqlora.train.examples import batch_plan, select_examples, sequence_length
from petqlora.train.train_adapter import train_adapter

ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint) -> Path:
    return tiny_checkpoint("gemma4-31b")


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    """12 training images over 6 learnable synthetic breeds, of varied aspect ratios."""
    return pets_dataset(4)


def small_config(model: Path, **overrides) -> TrainConfig:
    values = dict(base_model=str(model), lora_r=4, lora_alpha=4, lora_dropout=0.05, batch_size=4, grad_accum=2,
                  max_steps=6, learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=2,
                  keep_checkpoints=2, log_every=1, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_logged(*args, **kwargs) -> tuple[dict, list[str]]:
    """train_adapter(*args, **kwargs) and the messages it logged."""
    logger = logging.getLogger("petqlora.train.train_adapter")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return train_adapter(*args, **kwargs), handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, dataset, tmp_path_factory):
    """Run A: 6 steps of 2 micro-batches (3 per epoch, so steps straddle epochs), checkpoints every 2."""
    out = tmp_path_factory.mktemp("run_a")
    metrics, messages = run_logged(dataset, out, small_config(tiny_model))
    return out, metrics, messages


def adapter_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / ADAPTER_FILE))


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys() and ta
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:3]}"


# ---- config

def test_config_names_every_wrong_field_in_one_error():
    with pytest.raises(ValueError) as err:
        TrainConfig(base_model="", lora_r=0, lora_dropout=1.5, batch_size="4", learning_rate=3.0,
                    on_too_long="truncate", image_token_budget=100, quantize="8bit", optimizer="sgd",
                    checkpoint_every=-1, adapt_vision="yes")
    text = str(err.value)
    for field in ("base_model", "lora_r=0", "lora_dropout=1.5", "batch_size='4'", "learning_rate=3.0",
                  "on_too_long='truncate'", "image_token_budget=100", "quantize='8bit'", "optimizer='sgd'",
                  "checkpoint_every=-1", "adapt_vision='yes'"):
        assert field in text, f"{field} missing from:\n{text}"
    assert text.count("\n  - ") == 11


def test_config_from_dict_rejects_unknown_keys_and_reads_json_lists(tiny_model):
    with pytest.raises(ValueError, match="invalid training config") as err:
        parse_train_config({"base_model": "m", "lora_rank": 8, "lr": 1e-4, "lora_r": 8.0})
    assert "lora_rank=8: is not a known field" in str(err.value) and "lr=0.0001: is not a known field" in str(err.value)
    assert parse_train_config({"base_model": "m", "lora_r": 8.0}).lora_r == 8  # KFP's Struct turns 8 into 8.0
    cfg = parse_train_config(json.loads(json.dumps({"base_model": "m", "skip_quantization": ["lm_head"]})))
    assert cfg.skip_quantization == ("lm_head",)
    assert parse_train_config(json.loads(json.dumps(small_config(tiny_model).__dict__))) == small_config(tiny_model)


# ---- batch plan

def test_batch_plan_is_a_deterministic_permutation_per_seed_and_epoch():
    lengths = list(np.random.default_rng(0).integers(40, 300, size=203))
    plan = batch_plan(lengths, 4, seed=1, epoch=0)
    assert plan == batch_plan(lengths, 4, seed=1, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(203))
    assert all(len(b) <= 4 for b in plan) and sum(len(b) < 4 for b in plan) <= 1
    assert plan != batch_plan(lengths, 4, seed=1, epoch=1)
    assert plan != batch_plan(lengths, 4, seed=2, epoch=0)
    # Different epochs give different batches, not only a different order of the same batches.
    assert {tuple(sorted(b)) for b in plan} != {tuple(sorted(b)) for b in batch_plan(lengths, 4, seed=1, epoch=1)}


def test_batch_plan_groups_by_length():
    lengths = list(np.random.default_rng(0).integers(40, 300, size=400))

    def padding(batches):
        return sum(max(lengths[i] for i in b) - lengths[i] for b in batches for i in b)

    order = np.random.default_rng(1).permutation(len(lengths)).tolist()
    random_split = [order[k:k + 8] for k in range(0, len(order), 8)]
    assert padding(batch_plan(lengths, 8, seed=0, epoch=0)) < 0.5 * padding(random_split)


# ---- too-long examples

@pytest.fixture(scope="module")
def encoder_and_records(tiny_model, dataset):
    _, processor, family = load_model_and_processor(tiny_model, quantize_4bit=False, device=torch.device("cpu"),
                                                    image_token_budget=70)
    encoder = PromptEncoder(processor, family, data_lib.read_manifest(dataset)["instruction"])
    return encoder, data_lib.read_split(dataset, "train")


def test_sequence_length_is_the_encoded_length(encoder_and_records, dataset):
    encoder, records = encoder_and_records
    for record in records[:3]:
        batch = encoder.encode([data_lib.load_image(dataset, record)], [record["label"]])
        assert sequence_length(encoder, record) == batch["input_ids"].shape[1]


def test_too_long_examples_error_names_them_and_the_fix(encoder_and_records):
    encoder, records = encoder_and_records
    lengths = [sequence_length(encoder, r) for r in records]
    limit = sorted(lengths)[len(lengths) // 2]
    too_long = [r["id"] for r, n in zip(records, lengths) if n > limit]
    assert too_long, "the synthetic images should give sequences of several lengths"
    with pytest.raises(ValueError) as err:
        select_examples(records, encoder, limit, "error")
    text = str(err.value)
    assert f"{len(too_long)} training example(s) exceed max_length={limit}" in text
    assert all(i in text for i in too_long)
    assert "on_too_long=drop" in text and "Raise max_length" in text


def test_too_long_examples_dropped_are_counted_not_truncated(encoder_and_records):
    encoder, records = encoder_and_records
    lengths = [sequence_length(encoder, r) for r in records]
    limit = sorted(lengths)[len(lengths) // 2]
    kept, kept_lengths, dropped = select_examples(records, encoder, limit, "drop")
    assert dropped == [r["id"] for r, n in zip(records, lengths) if n > limit]
    assert len(kept) + len(dropped) == len(records)
    assert kept_lengths == [n for n in lengths if n <= limit]
    assert select_examples(records, encoder, max(lengths), "error")[2] == []


# ---- a run and its outputs

def test_outputs_adapter_processor_metrics_and_plot(uninterrupted, tiny_model):
    out, metrics, messages = uninterrupted
    adapter = out / "adapter"
    assert (adapter / ADAPTER_FILE).is_file()
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    targets = adapter_config["target_modules"]
    assert sorted(targets) == metrics["lora_target_modules"]
    assert all(t.startswith("model.") for t in targets)  # explicit module paths, not bare names
    assert any(t.startswith("model.vision_tower.") and t.endswith(".linear") for t in targets)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert [s for s, _ in metrics["loss"]] == list(range(1, 7))
    assert all(np.isfinite(v) for _, v in metrics["loss"])
    assert metrics["tokens_per_s"] > 0 and metrics["peak_memory_gib"] > 0
    assert metrics["wall_time_s"] >= metrics["train_time_s"] > 0
    assert metrics["quantized_4bit"] is False and metrics["optimizer"] == "adamw"
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("without 4-bit quantization on cpu" in m for m in messages)
    assert any(m.startswith("step 3/6") for m in messages)  # progress on the console


def test_adapter_loads_back_onto_the_base_model(uninterrupted, tiny_model):
    from peft import PeftModel, get_peft_model_state_dict

    from petqlora.gemma.processors import load_processor

    out, _, _ = uninterrupted
    base, _, _ = load_model_and_processor(tiny_model, quantize_4bit=False, device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, out / "adapter")
    saved = adapter_tensors(out)
    loaded = get_peft_model_state_dict(model)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert load_processor(out / "adapter", "gemma4").tokenizer.convert_tokens_to_ids("<turn|>") is not None


def test_loss_falls_on_a_learnable_set(uninterrupted):
    losses = [v for _, v in uninterrupted[1]["loss"]]
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < 0.75 * first, losses


# ---- checkpoints and resume

def test_checkpoints_keep_the_last_k_and_no_partial_ones(uninterrupted):
    out = uninterrupted[0]
    # Steps 2 and 4 and (not the final step 6): the last 2 are kept.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert not list(out.rglob("*.tmp"))
    ckpt = out / "checkpoints" / "step-0000004"
    assert {p.name for p in ckpt.iterdir()} == {"adapter.safetensors", "optimizer.pt", "rng.safetensors", "state.json"}
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 2, 2)  # 8 micro-batches, 3 per epoch


def test_resumed_run_ends_with_the_same_adapter(uninterrupted, tiny_model, dataset, tmp_path):
    out_a, metrics_a, _ = uninterrupted
    cfg = small_config(tiny_model)
    # Stopped after step 3, between checkpoints: the resume repeats step 3 from the step-2 checkpoint.
    stopped, _ = run_logged(dataset, tmp_path, cfg, stop_after_steps=3)
    assert stopped == {"stopped_at_step": 3}
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "metrics.json").exists()

    # The same output with another config is refused, naming the field, before anything is trained.
    with pytest.raises(ValueError, match=r"learning_rate: 0.01 there, 0.02 now.*new --output folder"):
        train_adapter(dataset, tmp_path, small_config(tiny_model, learning_rate=2e-2))

    metrics_b, messages = run_logged(dataset, tmp_path, cfg, task_attempt=1)
    assert any("resuming from step-0000002 (step 2/6, epoch 1, task attempt 1)" in m for m in messages)
    assert_same_adapter(out_a, tmp_path)
    assert metrics_b["loss"] == metrics_a["loss"]
    assert metrics_b["task_attempt"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_rerun_of_a_finished_output_returns_it_without_training(uninterrupted, tiny_model, dataset):
    out, metrics, _ = uninterrupted
    before = (out / "adapter" / ADAPTER_FILE).stat().st_mtime_ns
    again, messages = run_logged(dataset, out, small_config(tiny_model, log_every=3))  # bookkeeping may differ
    assert again == metrics
    assert any("already holds a finished run" in m for m in messages)
    assert not any(m.startswith("step ") for m in messages)
    assert (out / "adapter" / ADAPTER_FILE).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"lora_r: 4 there, 8 now"):
        train_adapter(dataset, out, small_config(tiny_model, lora_r=8))


def test_unreadable_newest_checkpoint_falls_back_to_the_older_one(uninterrupted, tiny_model, dataset, tmp_path):
    # Run A's config with other bookkeeping: checkpoints every step, 3 kept.
    cfg = small_config(tiny_model, checkpoint_every=1, keep_checkpoints=3)
    run_logged(dataset, tmp_path, cfg, stop_after_steps=3)
    (tmp_path / "checkpoints" / "step-0000003" / "optimizer.pt").write_bytes(b"half written")
    (tmp_path / "checkpoints" / "step-0000004.tmp").mkdir()  # what a kill during a save leaves
    metrics, messages = run_logged(dataset, tmp_path, cfg)
    assert any("step-0000003 cannot be read (" in m for m in messages)
    assert any("resuming from step-0000002" in m for m in messages)
    assert metrics["loss"] == uninterrupted[1]["loss"]
    assert_same_adapter(uninterrupted[0], tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


# ---- 4-bit on CPU, asked for explicitly

def test_4bit_on_cpu_when_asked_explicitly(tiny_model, dataset, tmp_path):
    pytest.importorskip("bitsandbytes")
    # The tiny model's quantized layers (language model: in 64/128, out 32/64/128) meet bitsandbytes'
    # CPU constraint: input a multiple of 64, output a multiple of 32; the vision tower stays unquantized.
    cfg = small_config(tiny_model, quantize="4bit", max_steps=2, grad_accum=1, checkpoint_every=0)
    metrics, messages = run_logged(dataset, tmp_path, cfg)
    assert metrics["quantized_4bit"] is True and metrics["quantized_layers"] > 0
    assert all(np.isfinite(v) for _, v in metrics["loss"])
    assert any("4-bit NF4 on cpu because quantize=4bit was asked for explicitly" in m for m in messages)
    assert (tmp_path / "adapter" / ADAPTER_FILE).is_file()


# ---- a real kill of the entrypoint

def _command(dataset: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "petqlora.train.train_adapter", "--dataset", str(dataset), "--output", str(out),
            "--config", str(config)]


@pytest.mark.integration
def test_killed_entrypoint_resumes_to_the_same_adapter(tiny_model, dataset, tmp_path):
    config = tmp_path / "train.json"
    values = small_config(tiny_model, max_steps=8, grad_accum=1, checkpoint_every=2).__dict__
    config.write_text(json.dumps({**values, "skip_quantization": list(values["skip_quantization"])}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLOUD_RUN_TASK_ATTEMPT": "0"}
    # The uninterrupted reference and the run to kill, side by side (one thread each).
    reference = subprocess.Popen(_command(dataset, tmp_path / "ref", config), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(_command(dataset, tmp_path / "out", config), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "out" / "checkpoints" / "step-0000004").exists():
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "metrics.json").exists()

    resumed = subprocess.run(_command(dataset, tmp_path / "out", config), env={**env, "CLOUD_RUN_TASK_ATTEMPT": "1"},
                             capture_output=True, text=True, timeout=300)
    ref_log = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, ref_log[-3000:]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from step-00000" in resumed.stderr and "task attempt 1" in resumed.stderr  # logs go to stderr
    assert_same_adapter(tmp_path / "ref", tmp_path / "out")
    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    out_metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert out_metrics["loss"] == ref_metrics["loss"] and out_metrics["task_attempt"] == 1
    assert not list((tmp_path / "out").rglob("*.tmp"))
