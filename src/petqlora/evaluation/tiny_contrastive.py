"""A tiny random SigLIP checkpoint, built offline, standing in for the contrastive baseline locally and in tests.

It has the layout of ``google/siglip2-so400m-patch14-384`` (the cloud default): a ``SiglipModel`` whose
tokenizer is a Gemma tokenizer (tokenizer.json, no sentencepiece) and a SigLIP image processor (the PIL
backend: torchvision is not installed), saved with safetensors, so the loader that reads the real
checkpoint reads this one. The vocabulary is the tiny Gemma checkpoints' hand-written one (bytes and
characters). The weights are random: its accuracy is about chance, a floor the fine-tuned model must clear.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VARIANTS = ("siglip",)


def build_tokenizer():
    """A `GemmaTokenizer` over gemma.tiny_models' hand-written vocabulary (no Gemma turn markers)."""
    from transformers import GemmaTokenizer

    from petqlora.gemma.tiny_models import vocab_and_merges

    vocab, merges = vocab_and_merges([])
    return GemmaTokenizer(vocab=vocab, merges=merges)


def build_tiny_contrastive(variant: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `variant` to `out_dir` and return the folder."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    from petqlora.evaluation.contrastive import SIGLIP_TEXT_LENGTH

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny contrastive variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    tok = build_tokenizer()
    config = SiglipConfig(
        text_config=dict(vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=SIGLIP_TEXT_LENGTH,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        # 32 px in patches of 8: 16 patches per image.
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP's initial temperature and bias (log 10, -10), not the library's randn
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)
    return out
