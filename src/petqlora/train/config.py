"""The typed training config (TrainConfig), its validation, and the run fingerprint that ties a checkpoint
or a finished output to the config and dataset that made it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from petqlora.gemma.modeling import DEFAULT_SKIP_QUANTIZATION
from petqlora import schema
from petqlora.params import DEFAULTS, PipelineParams
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as


def _shared(name: str):
    return same_as(PipelineParams, name)


@dataclass(frozen=True)
class TrainConfig:
    base_model: str = required("Checkpoint folder (a GCS mount in the cloud) or Hub id to fine-tune.", nonempty=True,
                               fix="give a checkpoint folder or a hub id")
    lora_r: int = _shared("lora_r")
    lora_alpha: int = _shared("lora_alpha")
    lora_dropout: float = _shared("lora_dropout")
    adapt_vision: bool = field(True, "LoRA on the vision tower too (through Gemma4ClippableLinear.linear).")
    epochs: float = field(DEFAULTS.epochs, "Passes over the training split; 0 with max_steps set.", low=0)
    max_steps: int | None = field(None, "Optimizer steps; overrides epochs when set.", low=1)
    learning_rate: float = _shared("learning_rate")
    warmup_ratio: float = field(0.03, "Share of the steps the learning rate warms up over.", low=0, high=1,
                                high_open=True)
    weight_decay: float = field(0.0, "AdamW weight decay.", low=0)
    max_grad_norm: float = field(1.0, "Gradient-norm clipping.", low=0)
    batch_size: int = _shared("batch_size")
    grad_accum: int = _shared("grad_accum")
    max_length: int = _shared("max_length")
    on_too_long: str = field("error", "An example over max_length: refuse the run, or drop it (never truncated).",
                             allowed=("error", "drop"))
    image_token_budget: int = _shared("image_token_budget")
    quantize: str = field("auto", "auto (4-bit on GPU, none on CPU), 4bit or none.", allowed=("auto", "4bit", "none"))
    skip_quantization: tuple[str, ...] = field(DEFAULT_SKIP_QUANTIZATION, "Module-path prefixes kept in bf16.")
    gradient_checkpointing: bool | None = field(None, "None: on with a GPU.")
    # Selective checkpointing (train/checkpointing.py): the first N decoder layers recompute their
    # activations in backward, the rest keep them (faster, more memory). The same arithmetic.
    checkpoint_layers: int | None = field(None, "Decoder layers that recompute activations under gradient "
                                          "checkpointing (the first N; the rest keep them); None: all.", low=0)
    # peft's prepare_model_for_kbit_training casts every frozen bf16 weight (embeddings, vision tower,
    # norms) to fp32: 5.6 GB more for 31B's embeddings and fp32 matrix products in the vision tower.
    # Off keeps them bf16 (the loss is the same: see BENCHMARKS.md).
    upcast_frozen_fp32: bool = field(False, "Cast frozen bf16 weights to fp32 as peft's kbit preparation does.")
    autocast_bf16: bool | None = field(None, "Products in bf16, LoRA's master weights fp32; None: on with a GPU.")
    # Gemma 4: compile the language model's RMSNorms and gelu(gate) * up into fused kernels (same
    # arithmetic, the rest stays eager; the first step compiles for ~12 s).
    fuse_elementwise: bool | None = field(None, "Fused Gemma 4 norm and MLP kernels; None: on with a GPU for Gemma 4.")
    # PEFT clones each 4-bit layer's output before adding LoRA's (a copy for nothing) and scales LoRA's output
    # in a pass of its own; this adds it with the scaling in one kernel (gemma/lora_epilogue.py).
    fuse_lora_epilogue: bool = field(False, "Add LoRA's scaled output to each 4-bit layer's in one kernel, no clone.")
    # Gemma 4 with adapt_vision=false: each training image's soft-token features are computed by the frozen
    # vision tower once and kept in host memory (~3 MB per image at budget 280, 31B width); later epochs skip
    # the tower. The features are what the tower would compute again (no augmentation): nothing changes but time.
    cache_image_features: bool = field(False, "Run the frozen vision tower once per image (needs adapt_vision=false).")
    optimizer: str = field("auto", "auto (paged 8-bit AdamW on GPU, AdamW on CPU), adamw or paged_adamw_8bit.",
                           allowed=("auto", "adamw", "paged_adamw_8bit"))
    seed: int = _shared("seed")
    checkpoint_every: int = field(50, "Optimizer steps between checkpoints; 0 disables them.", low=0)
    keep_checkpoints: int = field(2, "Checkpoints kept.", low=1)
    log_every: int = field(5, "Optimizer steps between progress lines.", low=1)
    device: str = field("auto", "auto, cpu, cuda or cuda:N.")
    export_merged: bool = field(False, "Also write OUTPUT/merged: the base in bf16 with the adapter merged in, as "
                                "safetensors with the processor, for vLLM and other servers without LoRA.")

    def __post_init__(self) -> None:
        problems = Problems("training config")
        wrong = schema.check(self, problems)
        _check_values(self, problems, wrong)
        problems.raise_if_any()


# Fields that change only bookkeeping, not the trained adapter: a resume may change them.
_BOOKKEEPING_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every", "export_merged")


def parse_train_config(values: dict) -> TrainConfig:
    """A TrainConfig from JSON or KFP values (unknown keys, types and rules all checked, raised once)."""
    return schema.from_mapping(TrainConfig, values, "training config")


def _check_values(cfg: TrainConfig, problems: Problems, wrong: set[str]) -> None:
    """The rules that join fields; fields of the wrong type or range were reported already."""
    if not {"epochs", "max_steps"} & wrong:
        problems.check(cfg.epochs > 0 or bool(cfg.max_steps), "epochs", cfg.epochs, "must be > 0",
                       "raise epochs, or set max_steps")
    if not {"cache_image_features", "adapt_vision"} & wrong:
        problems.check(cfg.cache_image_features is not True or cfg.adapt_vision is False, "cache_image_features",
                       cfg.cache_image_features,
                       "needs adapt_vision=false: with a LoRA on the vision tower its features change at every step",
                       "set adapt_vision=false or cache_image_features=false")
    if not {"checkpoint_layers", "gradient_checkpointing"} & wrong:
        problems.check(cfg.checkpoint_layers is None or cfg.gradient_checkpointing is not False, "checkpoint_layers",
                       cfg.checkpoint_layers, "chooses layers for gradient checkpointing, which is off",
                       "set gradient_checkpointing=true, or leave checkpoint_layers unset")
    if "device" not in wrong:
        problems.check(_is_device(cfg.device), "device", cfg.device, "must be auto, cpu, cuda or cuda:N")


def _is_device(name: object) -> bool:
    try:
        if name != "auto":
            torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def check_world_size(cfg: TrainConfig, world_size: int, problems: Problems | None = None) -> None:
    """Data parallelism over `world_size` processes (GPUs) shares each optimizer step's batch_size x grad_accum
    samples evenly: refuses a world size that does not divide them. With `problems`, adds to them instead
    of raising (the run checks gather every problem of a run)."""
    p = problems if problems is not None else Problems("data-parallel training")
    per_step = cfg.batch_size * cfg.grad_accum
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        p.add("world_size", world_size, "must be a whole number of processes >= 1", "run 1 or more processes")
    else:
        divisors = [d for d in range(2, per_step + 1) if per_step % d == 0 and d <= 8]
        every = world_size // math.gcd(world_size, cfg.batch_size)  # grad_accum must be a multiple of this
        grad_accum = -(-cfg.grad_accum // every) * every
        p.check(per_step % world_size == 0, "world_size", world_size,
                f"must divide batch_size x grad_accum = {cfg.batch_size} x {cfg.grad_accum} = {per_step}, the "
                "samples of one optimizer step that the processes share evenly",
                f"make batch_size x grad_accum a multiple of {world_size} (e.g. grad_accum={grad_accum}), or run "
                f"on a number of GPUs that divides {per_step}"
                + (f" ({', '.join(map(str, divisors))})" if divisors else ""))
    if problems is None:
        p.raise_if_any()


def train_config_values(train_options: dict, **pipeline_fields) -> dict:
    """The training config's values as the train step builds them: ``train_options`` (any other TrainConfig
    field) and the pipeline parameters that are TrainConfig fields. A parameter repeated in train_options is
    refused, not silently overridden."""
    p = Problems("train_options")
    for key in sorted(set(train_options) & set(pipeline_fields)):
        p.add(f"train_options.{key}", train_options[key], f"repeats the pipeline parameter {key}, which sets it",
              f"drop it from train_options and set the parameter {key}")
    p.raise_if_any()
    return {**train_options, **pipeline_fields}


def run_fingerprint(cfg: TrainConfig, dataset_hash: str | None) -> dict:
    """What must match for a checkpoint or a finished output to belong to this run."""
    values = {k: v for k, v in asdict(cfg).items() if k not in _BOOKKEEPING_FIELDS}
    values["skip_quantization"] = list(values["skip_quantization"])  # as JSON reads it back
    return {"config": values, "dataset_hash": dataset_hash}


def check_same_run(found: dict | None, expected: dict, where: Path) -> None:
    """Raises, naming each differing field, unless `found` (a saved fingerprint) is `expected`."""
    if found == expected:
        return
    found = found or {}
    diffs = [f"{k}: {found.get('config', {}).get(k)!r} there, {v!r} now"
             for k, v in expected["config"].items() if found.get("config", {}).get(k) != v]
    if found.get("dataset_hash") != expected["dataset_hash"]:
        diffs.append(f"dataset_hash: {found.get('dataset_hash')!r} there, {expected['dataset_hash']!r} now")
    raise ValueError(f"{where} was made by a different training run ({'; '.join(diffs) or 'no run record'}): "
                     "give this run a new --output folder, or delete that one to start over")
