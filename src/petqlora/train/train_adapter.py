"""train_adapter: QLoRA fine-tuning of a Gemma 4 (or Gemma 3) model on the prepared dataset.

The same entrypoint runs in the Cloud Run Job container and, for the embedded default, as a local
subprocess:

    python -m petqlora.train.train_adapter --dataset DATASET_DIR --output OUTPUT_DIR --config CONFIG.json

Outputs, all under OUTPUT_DIR:

    adapter/          adapter_model.safetensors + adapter_config.json (explicit module paths) + the processor
    metrics.json      loss per step, tokens/s, peak memory, wall time; written last: it marks a finished run
    loss_curve.png
    checkpoints/step-NNNNNNN/   adapter, optimizer + scheduler, RNG state, data position (the last K kept)

Restarts. A retried Cloud Run task (CLOUD_RUN_TASK_ATTEMPT > 0) or a re-run with the same output resumes
from the newest complete checkpoint, and ends with the same adapter as an uninterrupted run (bit-identical
on CPU). A re-run of a *finished* output (metrics.json and the adapter present) returns the existing
metrics without training again. Either way the checkpoint or output must have been made with the same
training config and dataset; otherwise the run stops and says which fields differ.

No checkpoint is written at the final step: the adapter and metrics.json are the final state, and a kill
before metrics.json is written only repeats the steps after the last checkpoint.
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

from petqlora.data import dataset as data_lib
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.lora import LoraSettings, build_lora_config
from petqlora.gemma.masking import IGNORE_INDEX
from petqlora.gemma.modeling import (DEFAULT_SKIP_QUANTIZATION, base_model, fuse_elementwise, has_gemma4_norms,
                               load_model_and_processor, resolve_device, supervised_logits)

log = logging.getLogger("petqlora.train.train_adapter")

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
    # peft's prepare_model_for_kbit_training casts every frozen bf16 weight (embeddings, vision tower,
    # norms) to fp32: 5.6 GB more for 31B's embeddings and fp32 matrix products in the vision tower.
    # Off keeps them bf16 (the loss is the same: see BENCHMARKS.md).
    upcast_frozen_fp32: bool = False
    autocast_bf16: bool | None = None    # None: on with a GPU; products in bf16, LoRA's master weights fp32
    # Gemma 4: compile the language model's RMSNorms and gelu(gate) * up into fused kernels (same
    # arithmetic, the rest stays eager; the first step compiles for ~12 s). None: on with a GPU for Gemma 4.
    fuse_elementwise: bool | None = None
    # Gemma 4 with adapt_vision=false: each training image's soft-token features are computed by the frozen
    # vision tower once and kept in host memory (~3 MB per image at budget 280, 31B width); later epochs skip
    # the tower. The features are what the tower would compute again (no augmentation): nothing changes but time.
    cache_image_features: bool = False
    optimizer: str = "auto"              # auto (paged 8-bit AdamW on GPU, AdamW on CPU) | adamw | paged_adamw_8bit
    seed: int = 42
    checkpoint_every: int = 50           # optimizer steps between checkpoints; 0 disables
    keep_checkpoints: int = 2
    log_every: int = 5
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        # Type errors first (a JSON config can say "8" for 8); a field of the wrong type skips its range check.
        bad = set()
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool)) and not (name == "max_steps" and value is None):
                problems.append(f"{name}={value!r} must be an integer" + (" or null" if name == "max_steps" else ""))
                bad.add(name)
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                problems.append(f"{name}={value!r} must be a finite number")
                bad.add(name)
        optional_bools = tuple(n for n in ("gradient_checkpointing", "autocast_bf16", "fuse_elementwise")
                               if getattr(self, n) is not None)
        for name in ("adapt_vision", "upcast_frozen_fp32", "cache_image_features") + optional_bools:
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.base_model, str) or not self.base_model:
            problems.append("base_model is empty: give a checkpoint folder or a hub id")
        if not isinstance(self.skip_quantization, tuple) or not all(isinstance(m, str) for m in self.skip_quantization):
            problems.append(f"skip_quantization={self.skip_quantization!r} must be a list of module-path prefixes")
        ok = lambda name: name not in bad  # noqa: E731
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "keep_checkpoints", "log_every"):
            if ok(name) and getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if ok("seed") and self.seed < 0:
            problems.append(f"seed={self.seed} must be >= 0")
        if ok("lora_dropout") and not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if ok("epochs") and ok("max_steps") and self.epochs <= 0 and not self.max_steps:
            problems.append(f"epochs={self.epochs} must be > 0 (or set max_steps)")
        if ok("max_steps") and self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} must be >= 1 or null")
        if ok("learning_rate") and not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate={self.learning_rate} must be in (0, 1)")
        if ok("warmup_ratio") and not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        for name in ("weight_decay", "max_grad_norm"):
            if ok(name) and getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.on_too_long not in ("error", "drop"):
            problems.append(f"on_too_long={self.on_too_long!r} must be 'error' or 'drop'")
        if ok("image_token_budget") and self.image_token_budget not in (70, 140, 280, 560, 1120):
            problems.append(f"image_token_budget={self.image_token_budget} must be one of 70, 140, 280, 560, 1120")
        if self.quantize not in ("auto", "4bit", "none"):
            problems.append(f"quantize={self.quantize!r} must be auto, 4bit or none")
        if self.optimizer not in ("auto", "adamw", "paged_adamw_8bit"):
            problems.append(f"optimizer={self.optimizer!r} must be auto, adamw or paged_adamw_8bit")
        if self.cache_image_features is True and self.adapt_vision is not False:
            problems.append("cache_image_features=true needs adapt_vision=false: with a LoRA on the vision tower "
                            "its features change at every step; set adapt_vision=false or cache_image_features=false")
        if ok("checkpoint_every") and self.checkpoint_every < 0:
            problems.append(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        try:
            if self.device != "auto":
                torch.device(self.device)
        except (RuntimeError, TypeError):
            problems.append(f"device={self.device!r} must be auto, cpu, cuda or cuda:N")
        if problems:
            raise ValueError("invalid training config:\n- " + "\n- ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("skip_quantization"), list):
            values["skip_quantization"] = tuple(values["skip_quantization"])
        return cls(**values)


_INT_FIELDS = ("lora_r", "lora_alpha", "max_steps", "batch_size", "grad_accum", "max_length", "image_token_budget",
               "seed", "checkpoint_every", "keep_checkpoints", "log_every")
_FLOAT_FIELDS = ("lora_dropout", "epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm")
# Fields that change only bookkeeping, not the trained adapter: a resume may change them.
_BOOKKEEPING_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every")


def run_fingerprint(cfg: TrainConfig, dataset_hash: str | None) -> dict:
    """What must match for a checkpoint or a finished output to belong to this run."""
    values = {k: v for k, v in asdict(cfg).items() if k not in _BOOKKEEPING_FIELDS}
    values["skip_quantization"] = list(values["skip_quantization"])  # as JSON reads it back
    return {"config": values, "dataset_hash": dataset_hash}


def _check_same_run(found: dict | None, expected: dict, where: Path) -> None:
    if found == expected:
        return
    found = found or {}
    diffs = [f"{k}: {found.get('config', {}).get(k)!r} there, {v!r} now"
             for k, v in expected["config"].items() if found.get("config", {}).get(k) != v]
    if found.get("dataset_hash") != expected["dataset_hash"]:
        diffs.append(f"dataset_hash: {found.get('dataset_hash')!r} there, {expected['dataset_hash']!r} now")
    raise ValueError(f"{where} was made by a different training run ({'; '.join(diffs) or 'no run record'}): "
                     "give this run a new --output folder, or delete that one to start over")


@dataclass
class TrainState:
    """Where training is: saved with every checkpoint so a restarted task continues exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # forward passes already consumed in `epoch`
    losses: list = field(default_factory=list)  # [step, loss]
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # time spent in training steps, over all attempts (for tokens/s)


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches grouped by length (little padding), in an order that depends only on (seed, epoch).

    Shuffle, cut into "mega-batches" of 16 batches, sort each by length, cut into batches, shuffle the
    batches. A resumed run recomputes the plan of its epoch and skips the batches already consumed, so the
    plan must not depend on anything but its arguments (no global RNG).
    """
    rng = np.random.default_rng([seed, epoch])  # a seed sequence: distinct for every (seed, epoch) pair
    order = rng.permutation(len(lengths)).tolist()
    mega = batch_size * 16
    batches = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i:i + mega], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[p] for p in rng.permutation(len(batches)).tolist()]


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
    fuse = cfg.fuse_elementwise
    if fuse is None:
        fuse = device.type == "cuda" and has_gemma4_norms(model)
    if fuse:
        log.info("fused element-wise kernels (torch.compile): %s", fuse_elementwise(model))
    model.train()
    return model, targets


def uses_autocast(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.autocast_bf16 if cfg.autocast_bf16 is not None else device.type == "cuda"


class ImageFeatureCache:
    """Soft-token features of each training image from the frozen Gemma 4 vision tower, kept across epochs.

    Keyed by the record id (one image per training example). A batch whose images are all known skips the
    vision tower: its features go to the model as `mm_encoder_outputs`, transformers' input for precomputed
    encoder outputs; a batch with any new image runs the tower once for the whole batch and stores each
    image's features on the host.
    """

    def __init__(self, model) -> None:
        inner = base_model(model).model
        trainable = [n for n, p in model.named_parameters()
                     if p.requires_grad and ("vision_tower" in n or "embed_vision" in n)]
        if not hasattr(inner, "embed_vision"):
            raise ValueError(f"cache_image_features supports Gemma 4 only ({type(inner).__name__} has no "
                             "embed_vision): set cache_image_features=false for this model")
        if trainable:
            raise ValueError(f"cache_image_features needs a frozen vision tower, but {trainable[0]} (and "
                             f"{len(trainable) - 1} more) train: set adapt_vision=false, or cache_image_features=false")
        self._inner = inner
        self._features: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._features)

    def substitute(self, batch: dict, keys: list[str]) -> dict:
        """The batch with `pixel_values` replaced by the cached (or now computed) image features."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if len(keys) != batch["pixel_values"].shape[0]:
            raise ValueError(f"{len(keys)} image keys for {batch['pixel_values'].shape[0]} images")
        if all(k in self._features for k in keys):
            self.hits += len(keys)
            device = batch["input_ids"].device
            features = tuple(self._features[k].to(device, non_blocking=True) for k in keys)
        else:
            self.misses += len(keys)
            with torch.no_grad():
                features = self._inner.get_image_features(batch["pixel_values"], batch["image_position_ids"],
                                                          return_dict=True).pooler_output
            for k, f in zip(keys, features):
                if k not in self._features:
                    self._features[k] = f.to("cpu", copy=True)
                    self.nbytes += f.numel() * f.element_size()
        batch = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_position_ids")}
        batch["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return batch


def forward_backward(model, encoded: list[dict], device: torch.device, autocast: bool,
                     cache: ImageFeatureCache | None = None) -> tuple[float, int]:
    """Forward and backward over one optimizer step's micro-batches; returns (loss, tokens attended).

    The loss is the mean over every supervised token of the step, however they fall into micro-batches.
    With a `cache`, each micro-batch carries `image_keys` (its record ids) and the cache stands in for the
    vision tower.
    """
    n_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in encoded)
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


# ---- checkpoints: written to a temporary folder, then renamed, so a kill never leaves half of one.

def _checkpoint_dirs(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (the step number is zero-padded, so names sort by step)."""
    root = output / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp"))


def _remove_partial_checkpoints(output: Path) -> None:
    """Delete step-N.tmp folders a killed run left half-written."""
    root = output / CHECKPOINTS
    for tmp in root.glob("step-*.tmp") if root.exists() else []:
        log.info("removing the partial checkpoint %s left by an interrupted run", tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(output: Path, model, optimizer, scheduler, state: TrainState, keep: int,
                    fingerprint: dict | None = None) -> Path:
    """Write checkpoints/step-N atomically (into step-N.tmp, then one rename) and keep the newest `keep`.

    Called after the optimizer step, so the RNG state saved is the one the *next* step starts from.
    """
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
    # Only torch's generators drive training randomness (LoRA dropout); the data order comes from
    # batch_plan(seed, epoch) and the position in state.json, so Python's and numpy's RNGs need no saving.
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**asdict(state), "run": fingerprint}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read into memory; raises when one is missing or damaged."""
    from safetensors.torch import load_file

    saved = json.loads((path / "state.json").read_text())
    return {
        "run": saved.pop("run", None),
        "state": TrainState(**saved),
        "adapter": load_file(str(path / "adapter.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),  # tensors and numbers: no pickled code
        "rng": load_file(str(path / "rng.safetensors")),
    }


def restore_checkpoint(ckpt: dict, model, optimizer, scheduler) -> TrainState:
    """Put a read checkpoint's adapter, optimizer, scheduler and RNG state in place; returns the position."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, ckpt["adapter"])
    optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
    scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    return ckpt["state"]


def _write_json_atomically(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def finished_metrics(output: Path) -> dict | None:
    """The metrics of a finished run in `output` (metrics.json is written last), or None."""
    metrics_file = output / "metrics.json"
    if metrics_file.is_file() and (output / "adapter" / "adapter_model.safetensors").is_file():
        return json.loads(metrics_file.read_text())
    return None


def _count_4bit_layers(model) -> int:
    return sum(type(m).__name__ == "Linear4bit" for m in model.modules())


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train_adapter(dataset_dir: str | Path, output_dir: str | Path, cfg: TrainConfig,
                  stop_after_steps: int | None = None, task_attempt: int = 0) -> dict:
    """Train the LoRA adapter; writes OUTPUT/adapter, loss_curve.png and metrics.json; returns the metrics.

    Resumes from the newest checkpoint in OUTPUT, and returns the existing metrics when OUTPUT already
    holds a finished run of the same config and dataset (see the module docstring). `task_attempt` is
    the Cloud Run task attempt, for the log and the metrics. `stop_after_steps` ends the run early (as a
    kill would) after that many optimizer steps in this call, leaving its checkpoints: tests use it to
    show that resuming gives the same adapter.
    """
    from transformers import get_cosine_schedule_with_warmup

    if stop_after_steps is not None and stop_after_steps < 1:
        raise ValueError(f"stop_after_steps={stop_after_steps} must be >= 1 or None")
    started = time.perf_counter()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    manifest = data_lib.read_manifest(dataset_dir)
    fingerprint = run_fingerprint(cfg, manifest.get("dataset_hash"))

    done = finished_metrics(output)
    if done is not None:
        _check_same_run(done.get("run"), fingerprint, output / "metrics.json")
        log.info("%s already holds a finished run (%d steps, final loss %s): returning its metrics without "
                 "training again", output, done["steps"], done["final_loss"])
        return done

    device = resolve_device(cfg.device)
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
    encoder = PromptEncoder(processor, family, manifest["instruction"])
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
    optimizer, opt_name = _optimizer(trainable, cfg, device)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    state = TrainState()
    _remove_partial_checkpoints(output)
    checkpoints = _checkpoint_dirs(output)
    for path in reversed(checkpoints):
        try:
            ckpt = read_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - json, safetensors and torch.load raise their own types
            # Damaged outside our control (a bucket mount's non-atomic rename, a full disk): an older
            # checkpoint still restores everything. Nothing was applied yet, so the model is untouched.
            log.warning("checkpoint %s cannot be read (%s: %s): trying an older one", path.name,
                        type(exc).__name__, exc)
            continue
        _check_same_run(ckpt["run"], fingerprint, path)  # a different run's checkpoint is an error, not damage
        state = restore_checkpoint(ckpt, model, optimizer, scheduler)
        log.info("resuming from %s (step %d/%d, epoch %d, task attempt %d)", path.name, state.global_step,
                 total_steps, state.epoch, task_attempt)
        break
    else:
        if checkpoints or task_attempt > 0:
            log.warning("task attempt %d: no readable checkpoint in %s, starting from step 0", task_attempt, output)

    def micro_batches():
        epoch, start = state.epoch, state.batch_in_epoch
        while True:
            plan = batch_plan(lengths, cfg.batch_size, cfg.seed, epoch)
            for b in range(start, len(plan)):
                yield epoch, b, plan[b]
            epoch, start = epoch + 1, 0

    stream = micro_batches()
    steps_here, time_here = 0, 0.0
    log.info("training %d steps (%d examples, %d per step) from step %d with %s on %s", total_steps, len(records),
             cfg.batch_size * cfg.grad_accum, state.global_step, opt_name, device)
    while state.global_step < total_steps:
        step_started = time.perf_counter()
        group = [next(stream) for _ in range(cfg.grad_accum)]
        encoded = []
        for _, _, idx in group:
            recs = [records[i] for i in idx]
            images = [data_lib.load_image(dataset_dir, r) for r in recs]
            encoded.append(encoder.encode(images, [r["label"] for r in recs]))
            if cache is not None:
                encoded[-1]["image_keys"] = [r["id"] for r in recs]
        total, seen = forward_backward(model, encoded, device, autocast, cache)
        state.tokens_seen += seen
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
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
            save_checkpoint(output, model, optimizer, scheduler, state, cfg.keep_checkpoints, fingerprint)
        if stop_after_steps is not None and steps_here >= stop_after_steps and state.global_step < total_steps:
            log.info("stopping after %d steps as asked (checkpoints kept for resume)", steps_here)
            return {"stopped_at_step": state.global_step}

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
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(adapter_tmp, adapter_dir)
    try:
        from petqlora.evaluation.report import loss_curve_png

        loss_curve_png([tuple(x) for x in state.losses], output / "loss_curve.png")
    except Exception as exc:  # a missing plot must not lose a trained adapter
        log.warning("could not draw the loss curve: %s", exc)
    train_time = state.elapsed_s
    metrics = {
        "base_model": cfg.base_model, "family": family, "quantized_4bit": quantize, "quantized_layers": n_4bit,
        "optimizer": opt_name, "device": str(device), "steps": state.global_step, "examples": len(records),
        "dropped_too_long": len(dropped), "dropped_too_long_ids": dropped,
        "loss": state.losses, "final_loss": state.losses[-1][1] if state.losses else None,
        "tokens_per_s": state.tokens_seen / train_time if train_time else None,
        "train_time_s": train_time,  # time in training steps, summed over attempts
        "wall_time_s": time.perf_counter() - started,  # this attempt, model loading and checkpoints included
        "peak_memory_gib": _peak_memory_gib(device), "memory_kind": "GPU" if device.type == "cuda" else "CPU RSS",
        "lora_target_modules": targets, "config": asdict(cfg), "task_attempt": task_attempt,
        "image_feature_cache": None if cache is None else {
            "images": len(cache), "host_gib": cache.nbytes / 2**30, "hits": cache.hits, "misses": cache.misses},
        "run": fingerprint,
    }
    metrics = json.loads(json.dumps(metrics))  # what a re-run reads back (tuples become lists)
    _write_json_atomically(output / "metrics.json", metrics)  # last: its presence marks a finished run
    log.info("adapter written to %s (%d steps, final loss %s, %.1fs training)", adapter_dir, state.global_step,
             metrics["final_loss"], train_time)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petqlora.train.train_adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="prepared dataset folder (gs:// is read through /gcs)")
    parser.add_argument("--output", required=True, help="output folder: adapter, checkpoints, metrics")
    parser.add_argument("--config", required=True, help="training config JSON file (TrainConfig fields)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    from petqlora.cloud.storage import local_path

    config_path = Path(local_path(args.config))
    if not config_path.exists():
        parser.error(f"--config {args.config}: no such file; write the TrainConfig JSON there first")
    cfg = TrainConfig.from_dict(json.loads(config_path.read_text()))
    # The runtime contract is read here, not in the library: Cloud Run numbers a task's retries from 0.
    attempt = int(os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "0") or 0)
    train_adapter(local_path(args.dataset), local_path(args.output), cfg, task_attempt=attempt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
