"""The training options that only change speed: fused element-wise kernels and the image-feature cache.

Each must leave the arithmetic as it was: the same loss and gradients (fused), the same adapter (cache).
On CPU the fused functions are traced by torch.compile with the "aot_eager" backend (no C++ toolchain in
CI); the GPU tier (tests/test_gpu.py) runs them through inductor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.modeling import fuse_elementwise, load_model_and_processor
from petqlora.gemma.tiny_models import build_tiny_checkpoint
from petqlora.train.config import TrainConfig
from petqlora.train.loop import forward_backward, prepare_for_training
from petqlora.train.train_adapter import train_adapter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("gemma4-31b", tmp_path_factory.mktemp("model") / "gemma4-31b")


def config(model: Path, **overrides) -> TrainConfig:
    values = dict(base_model=str(model), lora_r=4, lora_alpha=4, lora_dropout=0.0, adapt_vision=False,
                  batch_size=4, grad_accum=2, max_steps=6, learning_rate=1e-2, warmup_ratio=0.0,
                  image_token_budget=70, checkpoint_every=0, log_every=1, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def lora_model(path: Path, cfg: TrainConfig, fuse: bool):
    model, processor, _ = load_model_and_processor(path, quantize_4bit=False, device=CPU, image_token_budget=70)
    torch.manual_seed(1)  # the same LoRA initialisation for both
    model, _ = prepare_for_training(model, cfg, CPU, quantized=False)
    counts = fuse_elementwise(model, backend="aot_eager") if fuse else None
    return model, processor, counts


def test_fused_elementwise_gives_the_same_loss_and_gradients(tiny_model):
    cfg = config(tiny_model)
    eager, processor, _ = lora_model(tiny_model, cfg, fuse=False)
    fused, _, counts = lora_model(tiny_model, cfg, fuse=True)
    norms = [m for m in eager.modules() if type(m).__name__ == "Gemma4RMSNorm"]
    assert norms and not any("forward" in vars(m) for m in norms)  # fuse_elementwise=None: off on a CPU
    layers = eager.get_base_model().config.get_text_config().num_hidden_layers
    # 4 residual norms + q/k/v norms per layer (k/v absent where keys are shared), and the final norm.
    assert counts["gelu_mul"] == layers and 4 * layers + 1 < counts["rms_norm"] <= 7 * layers + 1
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 80), (90, 50)]]
    batch = PromptEncoder(processor, "gemma4", "Which breed is this?").encode(images, ["Abyssinian", "pug"])
    loss_eager, _ = forward_backward(eager, [batch], CPU, autocast=False)
    loss_fused, _ = forward_backward(fused, [batch], CPU, autocast=False)
    assert loss_fused == pytest.approx(loss_eager, rel=1e-6)
    grads = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    fused_grads = {n: p.grad for n, p in fused.named_parameters() if p.requires_grad}
    assert grads.keys() == fused_grads.keys() and all(g is not None for g in fused_grads.values())
    scale = max(g.abs().max().item() for g in grads.values())
    assert max((grads[n] - fused_grads[n]).abs().max().item() for n in grads) <= 1e-5 * scale


def test_fused_elementwise_refuses_a_model_without_gemma4_norms(tmp_path):
    model, _, _ = load_model_and_processor(build_tiny_checkpoint("gemma3", tmp_path / "gemma3"),
                                           quantize_4bit=False, device=CPU)
    with pytest.raises(ValueError, match="supports Gemma 4 language models only; set fuse_elementwise=false"):
        fuse_elementwise(model, backend="aot_eager")


def test_cache_needs_a_frozen_vision_tower_of_gemma4(tiny_model, tmp_path):
    from petqlora.train.feature_cache import ImageFeatureCache

    with pytest.raises(ValueError, match="cache_image_features=True: needs adapt_vision=false"):
        config(tiny_model, adapt_vision=True, cache_image_features=True)
    trained_vision, _, _ = lora_model(tiny_model, config(tiny_model, adapt_vision=True), fuse=False)
    with pytest.raises(ValueError, match="needs a frozen vision tower, but .*vision_tower.* train: set adapt_vision=false"):
        ImageFeatureCache(trained_vision)
    gemma3, _, _ = load_model_and_processor(build_tiny_checkpoint("gemma3", tmp_path / "gemma3"),
                                            quantize_4bit=False, device=CPU)
    with pytest.raises(ValueError, match="supports Gemma 4 only"):
        ImageFeatureCache(gemma3)


def test_cached_image_features_train_the_same_adapter(tiny_model, pets_dataset, tmp_path):
    """6 steps over 12 images in batches of 4: epoch 1 fills the cache, epochs 2-4 read it."""
    dataset = pets_dataset(4)
    plain = train_adapter(dataset, tmp_path / "plain", config(tiny_model))
    cached = train_adapter(dataset, tmp_path / "cached", config(tiny_model, cache_image_features=True))
    assert plain["image_feature_cache"] is None
    assert cached["image_feature_cache"]["images"] == cached["image_feature_cache"]["misses"] == 12
    assert cached["image_feature_cache"]["hits"] == 36 and cached["image_feature_cache"]["host_gib"] > 0
    assert [x[1] for x in cached["loss"]] == pytest.approx([x[1] for x in plain["loss"]], rel=1e-5)
    a = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
