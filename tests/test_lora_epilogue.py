"""The fused LoRA epilogue on 4-bit layers (gemma/lora_epilogue.py): the loss and gradients of PEFT's own
forward, on a tiny Gemma 4 whose linear layers are bitsandbytes NF4 on the CPU (float32 activations), and one
layer under bf16 autocast (the GPU's arithmetic) within bf16 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.lora_epilogue import _fast_path_adapter, fuse_lora_epilogue
from petqlora.gemma.modeling import load_model_and_processor, quantize_linears_4bit
from petqlora.train.config import TrainConfig
from petqlora.train.loop import forward_backward, prepare_for_training

pytest.importorskip("bitsandbytes")
CPU = torch.device("cpu")


def _model(path, fused: bool, dropout: float = 0.0):
    model, processor, _ = load_model_and_processor(path, quantize_4bit=False, device=CPU, image_token_budget=70)
    assert quantize_linears_4bit(model) > 10
    cfg = TrainConfig(base_model=str(path), lora_r=4, lora_alpha=8, lora_dropout=dropout, adapt_vision=False,
                      max_steps=1, image_token_budget=70, device="cpu", fuse_lora_epilogue=fused)
    torch.manual_seed(1)  # the same LoRA initialisation in both
    model, _ = prepare_for_training(model, cfg, CPU, quantized=True)
    with torch.no_grad():  # LoRA B starts at zero: give it values, so LoRA's output counts
        gen = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model, processor


def _layers(model):
    from peft.tuners.lora.bnb import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def test_fused_epilogue_gives_peft_s_loss_and_gradients(tiny_checkpoint, monkeypatch):
    from petqlora.gemma import lora_epilogue

    served = []  # which adapter each call of a patched layer served itself (None: PEFT's forward)
    real = lora_epilogue._fast_path_adapter
    monkeypatch.setattr(lora_epilogue, "_fast_path_adapter", lambda *a: served.append(real(*a)) or served[-1])
    path = tiny_checkpoint("gemma4-31b")
    peft_model, processor = _model(path, fused=False)
    fused_model, _ = _model(path, fused=True)
    layers = _layers(fused_model)
    assert layers and all("forward" in vars(m) for m in layers)  # every 4-bit LoRA layer patched
    assert not any("forward" in vars(m) for m in _layers(peft_model))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 80), (90, 50)]]
    batch = PromptEncoder(processor, "gemma4", "Which breed is this?").encode(images, ["Abyssinian", "pug"])
    loss_peft, _ = forward_backward(peft_model, [batch], CPU, autocast=False)
    loss_fused, _ = forward_backward(fused_model, [batch], CPU, autocast=False)
    assert len(served) >= len(layers) and set(served) == {"default"}  # every call took the fused epilogue
    assert loss_fused == pytest.approx(loss_peft, rel=1e-6)
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    fused_grads = {n: p.grad for n, p in fused_model.named_parameters() if p.requires_grad}
    assert grads.keys() == fused_grads.keys() and len(grads) > 10
    scale = max(g.abs().max().item() for g in grads.values())
    assert scale > 0 and max((grads[n] - fused_grads[n]).abs().max().item() for n in grads) <= 1e-5 * scale


def test_fused_epilogue_under_bf16_autocast_is_peft_s_sum_rounded_once(tiny_checkpoint):
    path = tiny_checkpoint("gemma4-31b")
    peft_model, _ = _model(path, fused=False)
    fused_model, _ = _model(path, fused=True)
    x = torch.randn(2, 7, _layers(peft_model)[0].in_features, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _layers(peft_model)[0](x)
        got = _layers(fused_model)[0](x)
        base = _layers(fused_model)[0].base_layer(x)
    assert got.dtype == want.dtype
    lora = (want.float() - base.float()).abs().max()
    assert lora > 0.05  # LoRA's part is large enough that a wrong scale would show
    assert (got.float() - want.float()).abs().max() <= 2e-2 * want.float().abs().max()


def test_other_cases_go_to_peft_s_forward(tiny_checkpoint):
    path = tiny_checkpoint("gemma4-31b")
    model, _ = _model(path, fused=True, dropout=0.1)
    layer = _layers(model)[0]
    assert _fast_path_adapter(layer, (), {}) is None  # dropout: PEFT's forward
    plain, _ = _model(path, fused=True)
    layer = _layers(plain)[0]
    assert _fast_path_adapter(layer, (), {}) == "default"
    assert _fast_path_adapter(layer, (), {"adapter_names": ["default"]}) is None
    with plain.disable_adapter():
        assert _fast_path_adapter(layer, (), {}) is None
    assert fuse_lora_epilogue(plain) == 0  # patched once only
