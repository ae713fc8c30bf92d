"""train_adapter: QLoRA fine-tuning of a Gemma 4 (or Gemma 3) model on the prepared dataset.

The same entrypoint runs in the Cloud Run Job container and, for the embedded default, as a local
subprocess:

    python -m petqlora.train.train_adapter --dataset DATASET_DIR --output OUTPUT_DIR --config CONFIG.json

Outputs, all under OUTPUT_DIR:

    adapter/          adapter_model.safetensors + adapter_config.json (explicit module paths) + the processor
                      + serving.json (classes, instruction, base model: what `python -m petqlora.serve` reads)
    metrics.json      loss per step, tokens/s, peak memory, wall time; written last: it marks a finished run
    progress.json     step, total steps, epoch, loss, samples/s, ETA, replaced at every log step: the pipeline
                      step logs it while the run goes on (train/progress.py)
    loss_curve.png
    checkpoints/step-NNNNNNN/   adapter, optimizer + scheduler, RNG state, data position (the last K kept)

Restarts. A retried Cloud Run task (CLOUD_RUN_TASK_ATTEMPT > 0) or a re-run with the same output resumes
from the newest complete checkpoint, and ends with the same adapter as an uninterrupted run (bit-identical
on CPU). A re-run of a *finished* output (metrics.json and the adapter present) returns the existing
metrics without training again. Either way the checkpoint or output must have been made with the same
training config and dataset; otherwise the run stops and says which fields differ.

Data parallelism. Under `torchrun --nproc-per-node N` the same entrypoint trains on N processes (one GPU
each; gloo on a CPU), each holding the whole model: every optimizer step's batch_size x grad_accum samples,
in the one-process order, are shared evenly, the LoRA gradients summed, and the loss stays the mean over
the step's supervised tokens (train/distributed.py). N must divide batch_size x grad_accum. Rank 0 alone
writes the checkpoints, progress, adapter and metrics and logs; every rank resumes from the same checkpoint.

No checkpoint is written at the final step: the adapter and metrics.json are the final state, and a kill
before metrics.json is written only repeats the steps after the last checkpoint.

This module orchestrates; the parts live next to it: config.py (TrainConfig, run fingerprint),
examples.py (selection, batch plan), loop.py (optimizer, LoRA wrapping, the steps), checkpoints.py,
feature_cache.py and loss_curve.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from petqlora.data import dataset as data_lib
from petqlora.entrypoint import run_step
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.modeling import load_model_and_processor, resolve_device
from petqlora.serve.serving_info import write_serving_info
from petqlora.train.checkpoints import (TrainState, finished_metrics, resume_latest, save_checkpoint,
                                       write_json_atomically)
from petqlora.train import distributed
from petqlora.train.config import TrainConfig, check_same_run, check_world_size, run_fingerprint
from petqlora.train.distributed import SINGLE, Ranks
from petqlora.train.examples import TrainingExamples, select_examples
from petqlora.train.feature_cache import ImageFeatureCache
from petqlora.train.loop import Trainer, build_optimizer, prepare_for_training, train_steps, uses_autocast
from petqlora.train.loss_curve import loss_curve_png
from petqlora.train.progress import TrainProgress, write_progress

log = logging.getLogger("petqlora.train.train_adapter")


def train_adapter(dataset_dir: str | Path, output_dir: str | Path, cfg: TrainConfig,
                  stop_after_steps: int | None = None, task_attempt: int = 0, ranks: Ranks = SINGLE) -> dict:
    """Train the LoRA adapter; writes OUTPUT/adapter, loss_curve.png and metrics.json; returns the metrics.

    Resumes from the newest checkpoint in OUTPUT, and returns the existing metrics when OUTPUT already
    holds a finished run of the same config and dataset (see the module docstring). `task_attempt` is
    the Cloud Run task attempt, for the log and the metrics. `stop_after_steps` ends the run early (as a
    kill would) after that many optimizer steps in this call, leaving its checkpoints: tests use it to
    show that resuming gives the same adapter. `ranks`: this process's place in a data-parallel run
    (distributed.session); every rank calls this, and rank 0 alone writes.
    """
    if stop_after_steps is not None and stop_after_steps < 1:
        raise ValueError(f"stop_after_steps={stop_after_steps} must be >= 1 or None")
    check_world_size(cfg, ranks.world_size)
    started = time.perf_counter()
    output = Path(output_dir)
    if ranks.main:
        output.mkdir(parents=True, exist_ok=True)
    manifest = data_lib.read_manifest(dataset_dir)
    fingerprint = run_fingerprint(cfg, manifest.get("dataset_hash"))

    done = finished_metrics(output)
    if done is not None:
        check_same_run(done.get("run"), fingerprint, output / "metrics.json")
        log.info("%s already holds a finished run (%d steps, final loss %s): returning its metrics without "
                 "training again", output, done["steps"], done["final_loss"])
        return done

    run = _prepare_run(dataset_dir, manifest["instruction"], cfg, ranks)
    trainer = run.trainer
    state = resume_latest(output, fingerprint, trainer.model, trainer.optimizer, trainer.scheduler,
                          run.total_steps, task_attempt, rank=ranks.rank)
    distributed.check_agree(ranks, state.global_step, "the step to resume from")
    log.info("training %d steps (%d examples, %d per step%s) from step %d with %s on %s", run.total_steps,
             len(run.examples.records), cfg.batch_size * cfg.grad_accum,
             f" over {ranks.world_size} processes" if ranks.parallel else "", state.global_step,
             run.optimizer_name, run.device)

    def save(s: TrainState) -> None:
        rng = distributed.gather_rng_states(ranks)  # every rank's, for rank 0 to save: all take part
        if ranks.main:
            save_checkpoint(output, trainer.model, trainer.optimizer, trainer.scheduler, s, cfg.keep_checkpoints,
                            fingerprint, rng=rng)

    on_log = (lambda progress: _write_progress(output, progress)) if ranks.main else None
    finished = train_steps(trainer, run.examples, state, cfg, run.total_steps, stop_after_steps=stop_after_steps,
                           save=save, on_log=on_log)
    if not finished:
        distributed.barrier(ranks)
        return {"stopped_at_step": state.global_step}

    peaks = distributed.gather_objects(ranks, _peak_memory_gib(run.device))  # each GPU's, for the metrics
    if ranks.main:
        adapter_dir = _write_adapter(output, trainer.model, run.processor, cfg, run.targets,
                                     serving={"family": run.family, "manifest": manifest})
        try:
            loss_curve_png([tuple(x) for x in state.losses], output / "loss_curve.png")
        except Exception as exc:  # a missing plot must not lose a trained adapter
            log.warning("could not draw the loss curve: %s", exc)
    metrics = _metrics(run, cfg, state, started, task_attempt, fingerprint, ranks, peaks)
    if ranks.main and cfg.export_merged:  # OUTPUT/merged, bf16 safetensors; before metrics.json marks the run finished
        from petqlora.gemma.merge import export_merged

        export_merged(cfg.base_model, adapter_dir, output / "merged", device=cfg.device)
    if ranks.main:
        write_json_atomically(output / "metrics.json", metrics)  # last: its presence marks a finished run
        log.info("adapter written to %s (%d steps, final loss %s, %.1fs training)", adapter_dir, state.global_step,
                 metrics["final_loss"], state.elapsed_s)
    distributed.barrier(ranks)  # every rank returns once the outputs are there
    return metrics


@dataclass
class _Run:
    """What is built before the first step; the metrics report most of it."""

    device: torch.device
    quantize: bool
    quantized_layers: int
    family: str
    processor: object
    examples: TrainingExamples
    dropped: list[str]
    targets: list[str]
    trainer: Trainer
    optimizer_name: str
    total_steps: int


def _prepare_run(dataset_dir: str | Path, instruction: str, cfg: TrainConfig, ranks: Ranks = SINGLE) -> _Run:
    """Seed, load the base model, select the examples, wrap the model with LoRA, and build the optimizer."""
    from transformers import get_cosine_schedule_with_warmup

    device = ranks.device or resolve_device(cfg.device)
    quantize = cfg.quantize == "4bit" or (cfg.quantize == "auto" and device.type == "cuda")
    if not quantize:
        log.info("training without 4-bit quantization on %s (quantize=%s): the same LoRA, full-precision base",
                 device, cfg.quantize)
    elif device.type != "cuda":
        log.info("training with 4-bit NF4 on %s because quantize=4bit was asked for explicitly (slow)", device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # LoRA's initial weights; a resume replaces them and the RNG state

    records = data_lib.read_split(dataset_dir, "train")
    model, processor, family = load_model_and_processor(
        cfg.base_model, quantize_4bit=quantize, device=device, image_token_budget=cfg.image_token_budget,
        skip_modules=cfg.skip_quantization)
    n_4bit = _count_4bit_layers(model)
    if quantize:
        log.info("4-bit NF4: %d linear layers quantized (kept in %s: %s)", n_4bit,
                 next(p for p in model.parameters() if p.is_floating_point()).dtype, ", ".join(cfg.skip_quantization))
    encoder = PromptEncoder(processor, family, instruction)
    records, lengths, dropped = select_examples(records, encoder, cfg.max_length, cfg.on_too_long)
    if not records:
        raise ValueError(f"no training example fits max_length={cfg.max_length}: raise max_length")
    if dropped:
        log.warning("dropped %d example(s) longer than max_length=%d: %s", len(dropped), cfg.max_length, dropped)

    model, targets = prepare_for_training(model, cfg, device, quantize)
    autocast = uses_autocast(cfg, device)
    cache = ImageFeatureCache(model) if cfg.cache_image_features else None
    batches_per_epoch = math.ceil(len(records) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))
    trainable = [p for p in model.parameters() if p.requires_grad]
    distributed.broadcast_from_main(ranks, trainable)  # one initial adapter on every rank
    distributed.seed_rank(ranks, cfg.seed)  # then a dropout stream of each rank's own
    optimizer, opt_name = build_optimizer(trainable, cfg, device)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    trainer = Trainer(model, trainable, optimizer, scheduler, device, autocast, cache, ranks)
    return _Run(device, quantize, n_4bit, family, processor, TrainingExamples(dataset_dir, encoder, records, lengths),
                dropped, targets, trainer, opt_name, total_steps)


def _write_adapter(output: Path, model, processor, cfg: TrainConfig, targets: list[str], serving: dict) -> Path:
    """OUTPUT/adapter: the LoRA weights, its config with explicit module paths, the processor, the training config,
    and serving.json (classes, instruction, base model: what the server needs beyond the folder)."""
    # The adapter is written into adapter.tmp and renamed, so `adapter/` is never a half-written mix.
    adapter_dir, adapter_tmp = output / "adapter", output / "adapter.tmp"
    shutil.rmtree(adapter_tmp, ignore_errors=True)
    # PEFT condenses a list of 20+ targets in place into the shortest suffixes that match the same modules
    # ("linear", "2.mlp.up_proj"); write the explicit module paths instead, which say what was adapted.
    model.peft_config[model.active_adapter].target_modules = targets
    model.save_pretrained(adapter_tmp, safe_serialization=True)
    processor.save_pretrained(adapter_tmp)
    (adapter_tmp / "petqlora_training.json").write_text(
        json.dumps({"config": asdict(cfg), "targets": targets}, indent=1))
    write_serving_info(adapter_tmp, base_model=cfg.base_model, image_token_budget=cfg.image_token_budget, **serving)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(adapter_tmp, adapter_dir)
    return adapter_dir


def _metrics(run: _Run, cfg: TrainConfig, state: TrainState, started: float, task_attempt: int,
             fingerprint: dict, ranks: Ranks = SINGLE, peaks: list[float] | None = None) -> dict:
    """metrics.json of a finished run, as JSON reads it back."""
    train_time, device, cache = state.elapsed_s, run.device, run.trainer.cache
    metrics = {
        "base_model": cfg.base_model, "family": run.family, "quantized_4bit": run.quantize,
        "quantized_layers": run.quantized_layers, "optimizer": run.optimizer_name, "device": str(device),
        "steps": state.global_step, "examples": len(run.examples.records),
        "dropped_too_long": len(run.dropped), "dropped_too_long_ids": run.dropped,
        "loss": state.losses, "final_loss": state.losses[-1][1] if state.losses else None,
        "tokens_per_s": state.tokens_seen / train_time if train_time else None,
        "train_time_s": train_time,  # time in training steps, summed over attempts
        "wall_time_s": time.perf_counter() - started,  # this attempt, model loading and checkpoints included
        "peak_memory_gib": peaks[0] if peaks else _peak_memory_gib(device),
        "memory_kind": "GPU" if device.type == "cuda" else "CPU RSS",
        "world_size": ranks.world_size, "peak_memory_gib_per_rank": peaks,  # tokens_per_s: all ranks together
        "lora_target_modules": run.targets, "config": asdict(cfg), "task_attempt": task_attempt,
        "image_feature_cache": None if cache is None else {
            "images": len(cache), "host_gib": cache.nbytes / 2**30, "hits": cache.hits, "misses": cache.misses},
        "run": fingerprint,
    }
    return json.loads(json.dumps(metrics))  # what a re-run reads back (tuples become lists)


def _write_progress(output: Path, progress: TrainProgress) -> None:
    # OUTPUT/progress.json is what the pipeline step shows while this runs (train/progress.py); a failed
    # write (a storage hiccup on the bucket mount) must not end the training it reports on.
    try:
        write_progress(output, progress)
    except OSError as exc:
        log.warning("could not write %s: %s", output / "progress.json", exc)


def _count_4bit_layers(model) -> int:
    return sum(type(m).__name__ == "Linear4bit" for m in model.modules())


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _train_this_attempt(dataset: str, output: str, cfg: TrainConfig) -> dict:
    # The runtime contract is read here, not in the library: Cloud Run numbers a task's retries from 0.
    attempt = int(os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "0") or 0)
    # torchrun's variables make this process one rank of a data-parallel run; without them, the only one.
    with distributed.session(os.environ, cfg.device) as ranks:
        return train_adapter(dataset, output, cfg, task_attempt=attempt, ranks=ranks)


def main(argv: list[str] | None = None) -> int:
    return run_step(argv, prog="petqlora.train.train_adapter", description=__doc__.split("\n\n")[0],
                    config_cls=TrainConfig, step=_train_this_attempt)


if __name__ == "__main__":
    sys.exit(main())
