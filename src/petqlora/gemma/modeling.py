"""Loading base models (4-bit NF4 or full precision) with their processors, the same for tiny and real."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch

from petqlora.gemma.processors import family_of, load_processor

log = logging.getLogger(__name__)

# Kept in bf16 by default: the vision tower and its projection are small and precision-sensitive, and
# lm_head stays unquantized so logits can be computed at chosen positions only.
DEFAULT_SKIP_QUANTIZATION = ("model.vision_tower", "model.embed_vision", "lm_head")


def model_family(path: str | Path) -> str:
    config_file = Path(path) / "config.json"
    if config_file.exists():
        return family_of(json.loads(config_file.read_text())["model_type"])
    from transformers import AutoConfig

    return family_of(AutoConfig.from_pretrained(str(path), trust_remote_code=False).model_type)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def quantization_config(skip_modules: tuple[str, ...] = DEFAULT_SKIP_QUANTIZATION):
    """QLoRA's recipe: NF4 with double quantization, bf16 compute and storage."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16,
        llm_int8_skip_modules=list(skip_modules))


def load_model(path: str | Path, *, quantize_4bit: bool, device: torch.device,
               skip_modules: tuple[str, ...] = DEFAULT_SKIP_QUANTIZATION, dtype: torch.dtype | None = None):
    """The base model for training or evaluation; bf16 on GPU, fp32 on CPU unless `dtype` is given."""
    from transformers import AutoModelForImageTextToText

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = dict(dtype=dtype, trust_remote_code=False, use_safetensors=True)
    if quantize_4bit:
        kwargs["quantization_config"] = quantization_config(skip_modules)
        kwargs["device_map"] = {"": device}
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    if not quantize_4bit:
        model.to(device)
    model.generation_config.do_sample = False  # evaluation never samples
    return model


def _skipped(name: str, skip_modules: tuple[str, ...]) -> bool:
    # Prefixes of module paths, as `llm_int8_skip_modules` matches them in from_pretrained.
    return any(name == s or name.startswith(s + ".") for s in skip_modules)


def quantize_linears_4bit(model: torch.nn.Module,
                          skip_modules: tuple[str, ...] = DEFAULT_SKIP_QUANTIZATION) -> int:
    """Replace, in place on the GPU, each `nn.Linear` outside `skip_modules` by an NF4 `Linear4bit`.

    The same layers and settings as `load_model(..., quantize_4bit=True)`, for a model built in memory:
    benchmarks build random weights at the real widths on the GPU, where writing and reading a 58 GB
    checkpoint would cost minutes. Returns the number of layers replaced.
    """
    import bitsandbytes as bnb

    q = quantization_config(skip_modules)
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not _skipped(name, skip_modules)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=q.bnb_4bit_compute_dtype, compress_statistics=q.bnb_4bit_use_double_quant,
                                  quant_type=q.bnb_4bit_quant_type, quant_storage=q.bnb_4bit_quant_storage,
                                  device="meta")
        device = module.weight.device
        # Params4bit quantizes when moved to a device; done one layer at a time so memory only falls.
        layer.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type=q.bnb_4bit_quant_type,
                                         compress_statistics=q.bnb_4bit_use_double_quant,
                                         quant_storage=q.bnb_4bit_quant_storage, module=layer).to(device)
        if module.bias is not None:
            layer.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        setattr(parent, child, layer)
    model.is_loaded_in_4bit = True  # what PEFT reads to treat the model as k-bit
    return len(targets)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    # Gemma4RMSNorm.forward's arithmetic (fp32 inside, pow(-0.5)) on a 2-D view, for torch.compile.
    h = x.float()
    h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        h = h * weight.float()
    return h.type_as(x)


def _gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


@functools.cache
def _compiled(fn, backend: str):
    # One compiled function per kind, shared by every layer; dynamic shapes, so varying batch and sequence
    # lengths reuse one graph instead of recompiling.
    return torch.compile(fn, dynamic=True, backend=backend)


def _fused_norm_forward(norm, rms_norm, hidden_states: torch.Tensor) -> torch.Tensor:
    shape = hidden_states.shape
    return rms_norm(hidden_states.reshape(-1, shape[-1]), norm.weight if norm.with_scale else None, norm.eps).view(shape)


def _fused_mlp_forward(mlp, gelu_mul, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(gelu_mul(mlp.gate_proj(x), mlp.up_proj(x)))


def has_gemma4_norms(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "Gemma4RMSNorm" for m in base_model(model).model.language_model.modules())


def fuse_elementwise(model: torch.nn.Module, backend: str = "inductor") -> dict[str, int]:
    """Fuse the language model's RMSNorms and gated-GELU products into compiled kernels, in place.

    Eager, each Gemma 4 RMSNorm is about eight kernels over an fp32 copy of its input (cast, square, mean,
    power, two products, cast back) and its backward as many; a decoder layer has seven norms (four on the
    residual stream, q/k/v per head), run three times per step under gradient checkpointing. Compiled,
    each is one kernel forward and one backward with the same arithmetic; the MLP's gelu(gate) * up too.
    Only these small functions are compiled: the 4-bit and LoRA layers, attention and checkpointing stay
    eager. The vision tower is left as it is (forward only when frozen). Returns the counts patched.
    `backend` is torch.compile's; tests on a CPU without a C++ toolchain trace with "aot_eager".
    """
    text = base_model(model).model.language_model
    counts = {"rms_norm": 0, "gelu_mul": 0}
    for module in text.modules():
        kind = type(module).__name__
        if kind == "Gemma4RMSNorm":
            module.forward = functools.partial(_fused_norm_forward, module, _compiled(_rms_norm, backend))
            counts["rms_norm"] += 1
        elif kind == "Gemma4TextMLP" and module.config.hidden_activation == "gelu_pytorch_tanh":
            module.forward = functools.partial(_fused_mlp_forward, module, _compiled(_gelu_tanh_mul, backend))
            counts["gelu_mul"] += 1
    if not counts["rms_norm"]:
        raise ValueError(f"fuse_elementwise found no Gemma 4 RMSNorm in {type(text).__name__}: it supports Gemma 4 "
                         "language models only; set fuse_elementwise=false for this model")
    return counts


def load_model_and_processor(path: str | Path, *, quantize_4bit: bool, device: torch.device,
                             image_token_budget: int | None = None, **kwargs):
    family = model_family(path)
    processor = load_processor(path, family, max_soft_tokens=image_token_budget if family == "gemma4" else None)
    return load_model(path, quantize_4bit=quantize_4bit, device=device, **kwargs), processor, family


def supervised_logits(model, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the supervised positions only.

    Projecting every position onto a 262k vocabulary costs more memory than the rest of the step; the
    loss needs only the few answer positions. Works on a PEFT-wrapped or a plain model.
    """
    inner = base_model(model)
    hidden = inner.model(**batch, use_cache=False).last_hidden_state
    pos = (labels[:, 1:] != -100).nonzero(as_tuple=False)
    return head_logits(inner, hidden[pos[:, 0], pos[:, 1]]).float(), labels[pos[:, 0], pos[:, 1] + 1]


def base_model(model):
    """The transformers model under a PEFT wrapper (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_logits(inner, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head on chosen hidden states, with the family's final soft-capping, as the model's forward does."""
    logits = inner.lm_head(hidden)
    cap = inner.config.get_text_config().final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap is not None else logits
