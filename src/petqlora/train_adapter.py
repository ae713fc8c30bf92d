"""train_adapter: QLoRA fine-tuning of a Gemma 4 (or Gemma 3) model on the prepared dataset.

The same entrypoint runs in the Cloud Run Job container and, for the embedded default, as a local
subprocess:

    python -m petqlora.train_adapter --dataset DATASET_DIR --output OUTPUT_DIR --config CONFIG.json

It resumes from the newest complete checkpoint under OUTPUT_DIR/checkpoints when there is one (a retried
Cloud Run task, whose CLOUD_RUN_TASK_ATTEMPT is > 0, or a re-run with the same output), and a resumed run
ends with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from petqlora import data as data_lib
from petqlora.encoding import PromptEncoder
from petqlora.lora import LoraSettings, build_lora_config
from petqlora.masking import IGNORE_INDEX
from petqlora.modeling import DEFAULT_SKIP_QUANTIZATION, load_model_and_processor, resolve_device, supervised_logits

log = logging.getLogger("petqlora.train_adapter")

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    base_model: str                      # checkpoint folder (a GCS mount in the cloud) or a hub id
    lora_r: int = 64
    lora_alpha: int = 64                 # alpha usually = rank
    lora_dropout: float = 0.05           # 0 removes a random mask per adapted layer (faster)
    adapt_vision: bool = True            # LoRA on the vision tower too (through Gemma4ClippableLinear.linear)
    epochs: float = 3.0
    max_steps: int | None = None         # optimizer steps; overrides epochs when set
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8                  # examples per forward pass
    grad_accum: int = 2                  # forward passes per optimizer step
    max_length: int = 1024               # tokens; longer examples are refused or dropped, never truncated
    on_too_long: str = "error"           # error | drop
    image_token_budget: int = 280        # Gemma 4 soft tokens per image: 70, 140, 280, 560 or 1120
    quantize: str = "auto"               # auto (4-bit on GPU, none on CPU) | 4bit | none
    skip_quantization: tuple[str, ...] = DEFAULT_SKIP_QUANTIZATION  # module-path prefixes kept in bf16
    gradient_checkpointing: bool | None = None  # None: on with a GPU
    optimizer: str = "auto"              # auto (paged 8-bit AdamW on GPU, AdamW on CPU) | adamw | paged_adamw_8bit
    seed: int = 42
    checkpoint_every: int = 50           # optimizer steps between checkpoints; 0 disables
    keep_checkpoints: int = 2
    log_every: int = 5
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if not self.base_model:
            problems.append("base_model is empty: give a checkpoint folder or a hub id")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.epochs <= 0 and not self.max_steps:
            problems.append(f"epochs={self.epochs} must be > 0 (or set max_steps)")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} must be >= 1 or null")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate={self.learning_rate} must be in (0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.on_too_long not in ("error", "drop"):
            problems.append(f"on_too_long={self.on_too_long!r} must be 'error' or 'drop'")
        if self.image_token_budget not in (70, 140, 280, 560, 1120):
            problems.append(f"image_token_budget={self.image_token_budget} must be one of 70, 140, 280, 560, 1120")
        if self.quantize not in ("auto", "4bit", "none"):
            problems.append(f"quantize={self.quantize!r} must be auto, 4bit or none")
        if self.optimizer not in ("auto", "adamw", "paged_adamw_8bit"):
            problems.append(f"optimizer={self.optimizer!r} must be auto, adamw or paged_adamw_8bit")
        if self.checkpoint_every < 0:
            problems.append(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        if problems:
            raise ValueError("invalid training config:\n- " + "\n- ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if "skip_quantization" in values:
            values["skip_quantization"] = tuple(values["skip_quantization"])
        return cls(**values)


@dataclass
class TrainState:
    """Where training is: saved with every checkpoint so a restarted task continues exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # forward passes already consumed in `epoch`
    losses: list = field(default_factory=list)  # [step, loss]
    tokens_seen: int = 0
    elapsed_s: float = 0.0


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches grouped by length (little padding), in an order that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mega = batch_size * 16
    batches = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i:i + mega], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[p] for p in perm]


def _sequence_length(encoder: PromptEncoder, record: dict) -> int:
    text = encoder.training_text(record["label"])
    tok = encoder.processor.tokenizer
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])
    # The placeholder becomes begin + soft tokens + end (Gemma 3 adds blank lines around them).
    if encoder.family == "gemma4":
        return n_text - 1 + encoder.image_tokens(record["width"], record["height"]) + 2
    expanded = text.replace(tok.boi_token, encoder.processor.full_image_sequence, 1)
    return len(tok(expanded, add_special_tokens=False)["input_ids"])


def select_examples(records: list[dict], encoder: PromptEncoder, max_length: int, on_too_long: str):
    """Records that fit, their lengths, and the ids of those dropped; too long + 'error' raises naming them."""
    lengths = [_sequence_length(encoder, r) for r in records]
    too_long = [(r["id"], n) for r, n in zip(records, lengths) if n > max_length]
    if too_long and on_too_long == "error":
        shown = ", ".join(f"{i} ({n} tokens)" for i, n in too_long[:10])
        raise ValueError(f"{len(too_long)} training example(s) exceed max_length={max_length} and would lose "
                         f"their answer: {shown}. Raise max_length, lower image_token_budget, or set "
                         "on_too_long=drop to drop and count them")
    keep = [k for k, n in enumerate(lengths) if n <= max_length]
    return [records[k] for k in keep], [lengths[k] for k in keep], [i for i, _ in too_long]


def _optimizer(params, cfg: TrainConfig, device: torch.device):
    name = cfg.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if device.type == "cuda" else "adamw"
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay), name
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay), name


# ---- checkpoints: written to a temporary folder, then renamed, so a kill never leaves half of one.

def _checkpoint_dirs(output: Path) -> list[Path]:
    root = output / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp"))


def save_checkpoint(output: Path, model, optimizer, scheduler, state: TrainState, keep: int) -> Path:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = output / CHECKPOINTS
    final = root / f"step-{state.global_step:07d}"
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")))
    opt = torch.load(path / "optimizer.pt", weights_only=True)  # tensors and numbers only: no pickled code
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return TrainState(**json.loads((path / "state.json").read_text()))


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train_adapter(dataset_dir: str | Path, output_dir: str | Path, cfg: TrainConfig,
                  stop_after_steps: int | None = None) -> dict:
    """Train the LoRA adapter; writes OUTPUT/adapter, metrics.json and loss_curve.png; returns the metrics.

    `stop_after_steps` ends the run early (as a kill would) after that many optimizer steps in this
    process, leaving its checkpoints: tests use it to show that resuming gives the same adapter.
    """
    from peft import get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    quantize = cfg.quantize == "4bit" or (cfg.quantize == "auto" and device.type == "cuda")
    if not quantize:
        log.info("training without 4-bit quantization on %s (quantize=%s): the same LoRA, full-precision base",
                 device, cfg.quantize)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    manifest = data_lib.read_manifest(dataset_dir)
    records = data_lib.read_split(dataset_dir, "train")
    model, processor, family = load_model_and_processor(
        cfg.base_model, quantize_4bit=quantize, device=device, image_token_budget=cfg.image_token_budget,
        skip_modules=cfg.skip_quantization)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    records, lengths, dropped = select_examples(records, encoder, cfg.max_length, cfg.on_too_long)
    if not records:
        raise ValueError(f"no training example fits max_length={cfg.max_length}: raise max_length")
    if dropped:
        log.warning("dropped %d example(s) longer than max_length=%d: %s", len(dropped), cfg.max_length, dropped)

    lora_config = build_lora_config(model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.adapt_vision))
    targets = list(lora_config.target_modules)
    log.info("LoRA r=%d alpha=%d on %d modules (%d vision): %s%s", cfg.lora_r, cfg.lora_alpha, len(targets),
             sum("vision_tower" in t for t in targets), ", ".join(targets[:4]), " ..." if len(targets) > 4 else "")
    if quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config)
    grad_ckpt = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda"
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    batches_per_epoch = math.ceil(len(records) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))
    optimizer, opt_name = _optimizer([p for p in model.parameters() if p.requires_grad], cfg, device)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    state = TrainState()
    existing = _checkpoint_dirs(output)
    attempt = os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "0")  # read here, in the entrypoint's process
    if existing:
        state = load_checkpoint(existing[-1], model, optimizer, scheduler)
        log.info("resuming from %s (step %d/%d, task attempt %s)", existing[-1].name, state.global_step,
                 total_steps, attempt)

    def micro_batches():
        epoch, start = state.epoch, state.batch_in_epoch
        while True:
            plan = batch_plan(lengths, cfg.batch_size, cfg.seed, epoch)
            for b in range(start, len(plan)):
                yield epoch, b, plan[b]
            epoch, start = epoch + 1, 0

    stream = micro_batches()
    steps_here, time_here = 0, 0.0
    while state.global_step < total_steps:
        step_started = time.perf_counter()
        group = [next(stream) for _ in range(cfg.grad_accum)]
        encoded = []
        for _, _, idx in group:
            recs = [records[i] for i in idx]
            images = [data_lib.load_image(dataset_dir, r) for r in recs]
            encoded.append(encoder.encode(images, [r["label"] for r in recs]))
        n_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in encoded)
        total = 0.0
        for b in encoded:
            labels = b.pop("labels")
            batch = {k: v.to(device) for k, v in b.items()}
            logits, answer_ids = supervised_logits(model, batch, labels.to(device))
            loss = torch.nn.functional.cross_entropy(logits, answer_ids, reduction="sum") / n_tokens
            loss.backward()
            total += loss.item()
            state.tokens_seen += int(b["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last_epoch, last_batch, _ = group[-1]
        state.global_step += 1
        state.epoch, state.batch_in_epoch = last_epoch, last_batch + 1
        state.losses.append([state.global_step, round(total, 6)])
        steps_here += 1
        step_time = time.perf_counter() - step_started
        time_here += step_time
        state.elapsed_s += step_time  # training time only: checkpoint writes are not counted
        if state.global_step % cfg.log_every == 0 or state.global_step == total_steps:
            rate = steps_here / time_here
            log.info("step %d/%d  epoch %d  loss %.4f  %.2f steps/s  eta %.0fs", state.global_step, total_steps,
                     state.epoch, total, rate, (total_steps - state.global_step) / max(rate, 1e-9))
        if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and state.global_step < total_steps:
            save_checkpoint(output, model, optimizer, scheduler, state, cfg.keep_checkpoints)
        if stop_after_steps is not None and steps_here >= stop_after_steps:
            log.info("stopping after %d steps as asked (checkpoints kept for resume)", steps_here)
            return {"stopped_at_step": state.global_step}

    wall = state.elapsed_s
    adapter_dir = output / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    processor.save_pretrained(adapter_dir)
    metrics = {
        "base_model": cfg.base_model, "family": family, "quantized_4bit": quantize, "optimizer": opt_name,
        "device": str(device), "steps": state.global_step, "examples": len(records), "dropped_too_long": dropped,
        "loss": state.losses, "final_loss": state.losses[-1][1] if state.losses else None,
        "tokens_per_s": state.tokens_seen / wall if wall else None, "wall_time_s": wall,
        "peak_memory_gib": _peak_memory_gib(device), "memory_kind": "GPU" if device.type == "cuda" else "CPU RSS",
        "lora_target_modules": targets, "config": asdict(cfg), "task_attempt": int(attempt),
    }
    (adapter_dir / "petqlora_training.json").write_text(json.dumps({"config": asdict(cfg), "targets": targets}, indent=1))
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    try:
        from petqlora.report import loss_curve_png

        loss_curve_png([tuple(x) for x in state.losses], output / "loss_curve.png")
    except Exception as exc:  # a missing plot must not lose a trained adapter
        log.warning("could not draw the loss curve: %s", exc)
    log.info("adapter written to %s (%d steps, final loss %s, %.1fs)", adapter_dir, state.global_step,
             metrics["final_loss"], wall)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petqlora.train_adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="prepared dataset folder (gs:// is read through /gcs)")
    parser.add_argument("--output", required=True, help="output folder: adapter, checkpoints, metrics")
    parser.add_argument("--config", required=True, help="training config JSON file (TrainConfig fields)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    from petqlora.storage import local_path

    config_path = Path(local_path(args.config))
    if not config_path.exists():
        parser.error(f"--config {args.config}: no such file; write the TrainConfig JSON there first")
    cfg = TrainConfig.from_dict(json.loads(config_path.read_text()))
    train_adapter(local_path(args.dataset), local_path(args.output), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
