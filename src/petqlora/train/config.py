"""The typed training config (TrainConfig), its validation, and the run fingerprint that ties a checkpoint
or a finished output to the config and dataset that made it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from petqlora.gemma.modeling import DEFAULT_SKIP_QUANTIZATION
from petqlora.problems import Problems


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
        problems = Problems("training config")
        wrong_type = _check_types(self, problems)
        _check_values(self, problems, wrong_type)
        problems.raise_if_any()

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
_BOOL_FIELDS = ("adapt_vision", "upcast_frozen_fp32", "cache_image_features")
_OPTIONAL_BOOL_FIELDS = ("gradient_checkpointing", "autocast_bf16", "fuse_elementwise")  # None: chosen by device
_IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
# Fields that change only bookkeeping, not the trained adapter: a resume may change them.
_BOOKKEEPING_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every")


def _check_types(cfg: TrainConfig, problems: Problems) -> set[str]:
    """Adds the fields of the wrong type (a JSON config can say "8" for 8); returns their names, whose range
    checks are skipped."""
    wrong = set()
    for name in _INT_FIELDS:
        value = getattr(cfg, name)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not is_int and not (name == "max_steps" and value is None):
            problems.add(name, value, "must be an integer" + (" or null" if name == "max_steps" else ""))
            wrong.add(name)
    for name in _FLOAT_FIELDS:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            problems.add(name, value, "must be a finite number")
            wrong.add(name)
    for name in _BOOL_FIELDS + tuple(n for n in _OPTIONAL_BOOL_FIELDS if getattr(cfg, n) is not None):
        problems.check(isinstance(getattr(cfg, name), bool), name, getattr(cfg, name), "must be true or false")
    problems.check(isinstance(cfg.base_model, str) and bool(cfg.base_model), "base_model", cfg.base_model,
                   "must name the base model", "give a checkpoint folder or a hub id")
    problems.check(isinstance(cfg.skip_quantization, tuple) and all(isinstance(m, str) for m in cfg.skip_quantization),
                   "skip_quantization", cfg.skip_quantization, "must be a list of module-path prefixes")
    return wrong


def _check_values(cfg: TrainConfig, problems: Problems, wrong_type: set[str]) -> None:
    """Adds the fields whose value breaks its rule; fields of the wrong type were reported already."""

    def rule(name: str, holds, text: str, fix: str | None = None) -> None:
        if name not in wrong_type:
            problems.check(holds(getattr(cfg, name)), name, getattr(cfg, name), text, fix)

    for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "keep_checkpoints", "log_every"):
        rule(name, lambda v: v >= 1, "must be >= 1")
    rule("seed", lambda v: v >= 0, "must be >= 0")
    rule("lora_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)")
    rule("epochs", lambda v: v > 0 or "max_steps" in wrong_type or bool(cfg.max_steps), "must be > 0",
         "raise epochs, or set max_steps")
    rule("max_steps", lambda v: v is None or v >= 1, "must be >= 1 or null")
    rule("learning_rate", lambda v: 0 < v < 1, "must be in (0, 1)")
    rule("warmup_ratio", lambda v: 0 <= v < 1, "must be in [0, 1)")
    rule("weight_decay", lambda v: v >= 0, "must be >= 0")
    rule("max_grad_norm", lambda v: v >= 0, "must be >= 0")
    rule("on_too_long", lambda v: v in ("error", "drop"), "must be 'error' or 'drop'")
    rule("image_token_budget", lambda v: v in _IMAGE_TOKEN_BUDGETS,
         "must be one of " + ", ".join(map(str, _IMAGE_TOKEN_BUDGETS)))
    rule("quantize", lambda v: v in ("auto", "4bit", "none"), "must be auto, 4bit or none")
    rule("optimizer", lambda v: v in ("auto", "adamw", "paged_adamw_8bit"), "must be auto, adamw or paged_adamw_8bit")
    rule("cache_image_features", lambda v: v is not True or cfg.adapt_vision is False,
         "needs adapt_vision=false: with a LoRA on the vision tower its features change at every step",
         "set adapt_vision=false or cache_image_features=false")
    rule("checkpoint_every", lambda v: v >= 0, "must be >= 0", "0 disables checkpoints")
    rule("device", _is_device, "must be auto, cpu, cuda or cuda:N")


def _is_device(name: object) -> bool:
    try:
        if name != "auto":
            torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


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
