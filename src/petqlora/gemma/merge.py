"""The merged export: the base model with the LoRA adapter folded into its weights, saved as plain bf16
safetensors (plus the processor), for servers that take one set of weights and no adapter.

vLLM's Gemma 4 LoRA support applies multimodal adapters to the language model only, and adapters have been
reported loaded yet ignored (REFERENCE.md); a merged checkpoint has no such gap: every adapted layer,
vision tower included, is an ordinary weight. The base is loaded in bf16, not in 4-bit: merging into NF4
weights would round the adapter away and save a quantized checkpoint; QLoRA trained the adapter against
the dequantized base, whose bf16 original is the nearest full-precision model. For Gemma 4 31B the folder
is about 62 GB (bf16), and loading needs that much memory on the device.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from petqlora.gemma.modeling import load_model, model_family, resolve_device
from petqlora.gemma.processors import load_processor

log = logging.getLogger(__name__)

__all__ = ["export_merged"]



def export_merged(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, device: str = "auto",
                  dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `out_dir`: `base_model` loaded in `dtype` (bf16; not 4-bit), the adapter of `adapter_dir`
    merged in (``merge_and_unload``), saved as safetensors with the adapter's processor (its image-token
    budget). Written to a sibling temporary folder and renamed, so `out_dir` is never half written."""
    from peft import PeftModel

    out_dir, adapter_dir = Path(out_dir), Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"adapter_dir={str(adapter_dir)!r}: no adapter_config.json there; fix: pass the folder "
                         "train_adapter wrote (OUTPUT/adapter)")
    family = model_family(base_model)
    model = load_model(base_model, quantize_4bit=False, device=resolve_device(device), dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    load_processor(adapter_dir, family).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log.info("merged %s into %s (%s, safetensors): %s", adapter_dir, base_model, str(dtype).removeprefix("torch."),
             out_dir)
    return out_dir
