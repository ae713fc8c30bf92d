"""Selective activation checkpointing (TrainConfig.checkpoint_layers): the first N decoder layers recompute
their forward in backward, the rest keep their activations; gradients are those of full checkpointing and
of none (float32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.modeling import load_model_and_processor
from petqlora.train.checkpointing import decoder_layers, select_checkpointed_layers
from petqlora.train.config import TrainConfig
from petqlora.train.loop import forward_backward, prepare_for_training

CPU = torch.device("cpu")


def _config(path, **overrides) -> TrainConfig:
    values = dict(base_model=str(path), lora_r=4, lora_alpha=4, lora_dropout=0.0, adapt_vision=True, batch_size=2,
                  grad_accum=1, max_steps=1, image_token_budget=70, device="cpu")
    return TrainConfig(**{**values, **overrides})


def _gradients(path, family: str, **overrides) -> tuple[float, dict, list[int]]:
    """Loss, LoRA gradients and, per decoder layer, how often its MLP ran in one forward + backward."""
    model, processor, _ = load_model_and_processor(path, quantize_4bit=False, device=CPU, image_token_budget=70)
    torch.manual_seed(1)  # the same LoRA initialisation for every variant
    model, _ = prepare_for_training(model, _config(path, **overrides), CPU, quantized=False)
    with torch.no_grad():  # LoRA B starts at zero; give it values so every LoRA weight has a gradient
        gen = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    runs = [0] * len(decoder_layers(model))
    for i, layer in enumerate(decoder_layers(model)):
        layer.mlp.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 80), (90, 50)]]
    batch = PromptEncoder(processor, family, "Which breed is this?").encode(images, ["Abyssinian", "pug"])
    loss, _ = forward_backward(model, [batch], CPU, autocast=False)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, runs


@pytest.mark.parametrize("variant", ["gemma4-31b", "gemma3"])
def test_selective_checkpointing_gives_the_gradients_of_full_and_of_no_checkpointing(variant, tiny_checkpoint):
    path = tiny_checkpoint(variant)
    family = "gemma3" if variant == "gemma3" else "gemma4"
    n = len(decoder_layers(load_model_and_processor(path, quantize_4bit=False, device=CPU)[0]))
    loss_none, none, runs_none = _gradients(path, family, gradient_checkpointing=False)
    loss_all, full, runs_all = _gradients(path, family, gradient_checkpointing=True)
    loss_some, some, runs_some = _gradients(path, family, gradient_checkpointing=True, checkpoint_layers=1)
    # what recomputes: every layer, none, or only the first one
    assert runs_none == [1] * n and runs_all == [2] * n and runs_some == [2] + [1] * (n - 1)
    assert loss_some == pytest.approx(loss_none, rel=1e-6) and loss_all == pytest.approx(loss_none, rel=1e-6)
    assert none.keys() == full.keys() == some.keys() and len(none) > 8
    scale = max(g.abs().max().item() for g in none.values())
    assert scale > 0
    for other in (full, some):
        assert max((none[k] - other[k]).abs().max().item() for k in none) <= 1e-5 * scale


def test_checkpoint_layers_refuses_more_layers_than_the_model_has(tiny_checkpoint):
    path = tiny_checkpoint("gemma4-31b")
    model, _, _ = load_model_and_processor(path, quantize_4bit=False, device=CPU)
    with pytest.raises(ValueError, match="checkpoint_layers=5 is more than the model's 4 decoder layers"):
        prepare_for_training(model, _config(path, gradient_checkpointing=True, checkpoint_layers=5), CPU, False)


def test_checkpoint_layers_needs_gradient_checkpointing(tiny_checkpoint):
    with pytest.raises(ValueError, match="checkpoint_layers.*set gradient_checkpointing=true"):
        _config("/m", gradient_checkpointing=False, checkpoint_layers=2)
    model, _, _ = load_model_and_processor(tiny_checkpoint("gemma4-31b"), quantize_4bit=False, device=CPU)
    with pytest.raises(ValueError, match="needs gradient checkpointing enabled first"):
        select_checkpointed_layers(model, 2)
