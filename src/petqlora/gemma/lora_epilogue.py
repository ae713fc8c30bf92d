"""LoRA's epilogue on 4-bit layers: no defensive copy of the 4-bit output, LoRA's scaling inside the add.

PEFT's `lora.bnb.Linear4bit.forward` clones the 4-bit layer's output before adding LoRA's to it
(`result = result.clone()`, then `result = result + lora_B(lora_A(dropout(x))) * scaling`). The add is out of
place, so the clone copies every output for nothing, and the scaling is one more pass over LoRA's output.
`fuse_lora_epilogue` gives each such layer a forward that computes `torch.add(base(x), lora_B(lora_A(x)),
alpha=scaling)`: one kernel where there were three. Under autocast the sum is rounded once instead of after
the product and again after the add; without autocast it is PEFT's arithmetic (LoRA in its weights' dtype,
cast to the output's). Any other case (several or no active adapters, dropout, DoRA and other variants,
merged or disabled adapters, per-sample adapter names) goes to PEFT's own forward.
"""

from __future__ import annotations

import types

import torch


def _fast_path_adapter(layer, args: tuple, kwargs: dict) -> str | None:
    """The one plain LoRA adapter the fused epilogue can serve, or None for PEFT's own forward."""
    if layer.disable_adapters or layer.merged or args or kwargs:  # extra arguments: adapter_names and others
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A.keys()]
    if len(active) != 1 or active[0] in layer.lora_variant:
        return None
    if not isinstance(layer.lora_dropout[active[0]], torch.nn.Identity):
        return None
    return active[0]


def _epilogue_forward(layer, peft_forward, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _fast_path_adapter(layer, args, kwargs)
    if name is None:
        return peft_forward(x, *args, **kwargs)
    result = layer.base_layer(x)
    lora_A, lora_B, scaling = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
    if torch.is_autocast_enabled(x.device.type):
        return torch.add(result, lora_B(lora_A(x)), alpha=scaling)
    # PEFT's conversion: LoRA in its weights' dtype, its scaled output cast to the 4-bit output's dtype
    lora = lora_B(lora_A(layer._cast_input_dtype(x, lora_A.weight.dtype)))
    if lora.dtype == result.dtype:
        return torch.add(result, lora, alpha=scaling)
    return result + (lora * scaling).to(result.dtype)


def fuse_lora_epilogue(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA layer over a bitsandbytes 4-bit layer the fused epilogue; returns how many."""
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # no bitsandbytes: there are no 4-bit layers to patch
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and "forward" not in vars(module):
            peft_forward = module.forward
            module.forward = types.MethodType(
                lambda self, x, *a, _peft=peft_forward, **k: _epilogue_forward(self, _peft, x, *a, **k), module)
            n += 1
    return n
