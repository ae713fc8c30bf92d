"""The QLoRA training loop: the optimizer, the model made ready for training (LoRA, gradient checkpointing,
fused kernels), one optimizer step's forward and backward over its micro-batches, and the steps from a
TrainState to the last one, with progress logging and checkpoints. Under data parallelism each rank runs its
share of every step and the sums go through train/distributed.py."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from petqlora.gemma.lora import LoraSettings, build_lora_config
from petqlora.gemma.lora_epilogue import fuse_lora_epilogue
from petqlora.gemma.masking import IGNORE_INDEX
from petqlora.gemma.modeling import fuse_elementwise, has_gemma4_norms, supervised_logits
from petqlora.train.checkpointing import select_checkpointed_layers
from petqlora.train.checkpoints import TrainState
from petqlora.train.config import TrainConfig
from petqlora.train.distributed import SINGLE, Ranks, reduce_gradients, shard_step, sum_numbers
from petqlora.train.examples import TrainingExamples, micro_batches
from petqlora.train.feature_cache import ImageFeatureCache
from petqlora.train.progress import TrainProgress

# The training step's one logger, whichever module of it speaks: its log lines read as they always did.
log = logging.getLogger("petqlora.train.train_adapter")


def build_optimizer(params, cfg: TrainConfig, device: torch.device):
    """The optimizer `cfg.optimizer` names ("auto": paged 8-bit AdamW on a GPU, AdamW otherwise), and its name."""
    name = cfg.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if device.type == "cuda" else "adamw"
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay), name
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay), name


def prepare_for_training(model, cfg: TrainConfig, device: torch.device, quantized: bool):
    """Wrap the base model with LoRA as `cfg` says; returns the PEFT model and the adapted module paths.

    Benchmarks call this too, so that what they time is the training path itself.
    """
    from peft import get_peft_model

    lora_config = build_lora_config(model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.adapt_vision))
    targets = sorted(lora_config.target_modules)
    log.info("LoRA r=%d alpha=%d on %d modules (%d vision): %s%s", cfg.lora_r, cfg.lora_alpha, len(targets),
             sum("vision_tower" in t for t in targets), ", ".join(targets[:4]), " ..." if len(targets) > 4 else "")
    if quantized and cfg.upcast_frozen_fp32:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # LoRA weights are made fp32 (PEFT's autocast_adapter_dtype): the optimizer updates full-precision masters.
    model = get_peft_model(model, lora_config)
    grad_ckpt = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda"
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.checkpoint_layers is not None:
            recompute, keep = select_checkpointed_layers(model, cfg.checkpoint_layers)
            log.info("gradient checkpointing on %d decoder layers; %d keep their activations", recompute, keep)
    if cfg.fuse_lora_epilogue:
        log.info("LoRA epilogue fused on %d 4-bit layers", fuse_lora_epilogue(model))
    fuse = cfg.fuse_elementwise
    if fuse is None:
        fuse = device.type == "cuda" and has_gemma4_norms(model)
    if fuse:
        log.info("fused element-wise kernels (torch.compile): %s", fuse_elementwise(model))
    model.train()
    return model, targets


def uses_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.autocast_bf16 if cfg.autocast_bf16 is not None else device.type == "cuda"


def supervised_tokens(encoded: list[dict]) -> int:
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in encoded)


def forward_backward(model, encoded: list[dict], device: torch.device, autocast: bool,
                     cache: ImageFeatureCache | None = None, n_tokens: int | None = None) -> tuple[float, int]:
    """Forward and backward over one optimizer step's micro-batches; returns (loss, tokens attended).

    The loss is the mean over every supervised token of the step, however they fall into micro-batches.
    With a `cache`, each micro-batch carries `image_keys` (its record ids) and the cache stands in for the
    vision tower. `n_tokens`: the step's supervised tokens over all data-parallel ranks (None: those of
    `encoded`), so that the ranks' losses and gradients add up to the one-process ones.
    """
    n_tokens = supervised_tokens(encoded) if n_tokens is None else n_tokens
    total, seen = 0.0, 0
    for b in encoded:
        batch = {k: v.to(device) for k, v in b.items() if k not in ("labels", "image_keys")}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if cache is not None:
                batch = cache.substitute(batch, b["image_keys"])
            logits, answer_ids = supervised_logits(model, batch, b["labels"].to(device))
        loss = torch.nn.functional.cross_entropy(logits.float(), answer_ids, reduction="sum") / n_tokens
        loss.backward()
        total += loss.item()
        seen += int(b["attention_mask"].sum())
    return total, seen


@dataclass
class Trainer:
    """What an optimizer step changes: the PEFT model, its trainable parameters, optimizer and scheduler."""

    model: object
    trainable: list
    optimizer: object
    scheduler: object
    device: torch.device
    autocast: bool
    cache: ImageFeatureCache | None = None
    ranks: Ranks = SINGLE  # data parallelism: this process's rank and the world size


def optimizer_step(trainer: Trainer, encoded: list[dict], max_grad_norm: float) -> tuple[float, int]:
    """Forward, backward, clip and step over one step's micro-batches; returns (loss, tokens attended).

    Data-parallel: `encoded` is this rank's share; the loss, the tokens and the LoRA gradients are summed
    over the ranks before clipping, so every rank takes the same step.
    """
    ranks = trainer.ranks
    n_tokens = int(sum_numbers(ranks, supervised_tokens(encoded))[0]) if ranks.parallel else None
    total, seen = forward_backward(trainer.model, encoded, trainer.device, trainer.autocast, trainer.cache,
                                   n_tokens=n_tokens)
    if ranks.parallel:
        reduce_gradients(ranks, trainer.trainable)
        total, seen = sum_numbers(ranks, total, seen)
        seen = int(seen)
    torch.nn.utils.clip_grad_norm_(trainer.trainable, max_grad_norm)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return total, seen


def train_steps(trainer: Trainer, examples: TrainingExamples, state: TrainState, cfg: TrainConfig,
                total_steps: int, save: Callable[[TrainState], object], stop_after_steps: int | None = None,
                on_log: Callable[[TrainProgress], object] | None = None) -> bool:
    """Optimizer steps from `state` (updated in place) to `total_steps`; `save(state)` writes a checkpoint;
    `on_log(progress)` is called at every log step (the trainer writes progress.json with it).

    Returns False when it stopped after `stop_after_steps` steps of this call, as asked, before the last.
    No checkpoint is written at the last step: the caller's outputs are the final state.
    """
    stream = micro_batches(examples.lengths, cfg.batch_size, cfg.seed, state.epoch, state.batch_in_epoch)
    batches_per_epoch = math.ceil(len(examples.lengths) / cfg.batch_size)
    steps_here, time_here, samples_here = 0, 0.0, 0
    while state.global_step < total_steps:
        step_started = time.perf_counter()
        group = [next(stream) for _ in range(cfg.grad_accum)]
        mine = shard_step([idx for _, _, idx in group], trainer.ranks)  # all of it with one process
        encoded = [examples.encode(idx, with_image_keys=trainer.cache is not None) for idx in mine]
        total, seen = optimizer_step(trainer, encoded, cfg.max_grad_norm)
        state.tokens_seen += seen
        samples_here += sum(len(idx) for _, _, idx in group)
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
            eta = (total_steps - state.global_step) / max(rate, 1e-9)
            log.info("step %d/%d  epoch %d  loss %.4f  %.2f steps/s  eta %.0fs", state.global_step, total_steps,
                     state.epoch, total, rate, eta)
            if on_log is not None:
                on_log(TrainProgress(
                    step=state.global_step, total_steps=total_steps,
                    epoch=round(state.epoch + state.batch_in_epoch / batches_per_epoch, 4),
                    total_epochs=round(total_steps * cfg.grad_accum / batches_per_epoch, 4), loss=round(total, 6),
                    samples_per_s=round(samples_here / time_here, 4), eta_s=round(eta, 1),
                    elapsed_s=round(state.elapsed_s, 1)))
        if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and state.global_step < total_steps:
            save(state)
        if stop_after_steps is not None and steps_here >= stop_after_steps and state.global_step < total_steps:
            log.info("stopping after %d steps as asked (checkpoints kept for resume)", steps_here)
            return False
    return True
