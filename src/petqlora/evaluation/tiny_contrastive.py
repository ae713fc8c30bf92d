"""Tiny random SigLIP and CLIP checkpoints, built offline: the contrastive baseline locally and in tests.

It has the layout of ``google/siglip2-so400m-patch14-384`` (the cloud default): a ``SiglipModel`` whose
tokenizer is a Gemma tokenizer (tokenizer.json, no sentencepiece) and a SigLIP image processor (the PIL
backend: torchvision is not installed), saved with safetensors, so the loader that reads the real
checkpoint reads this one. The vocabulary is the tiny Gemma checkpoints' hand-written one (bytes and
characters). ``clip`` is a ``CLIPModel`` with a byte-level CLIP tokenizer (softmax scores, no logit bias).
The weights are random: their accuracy is about chance, a floor the fine-tuned model must clear.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VARIANTS = ("siglip", "clip")
_SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def build_tokenizer():
    """A `GemmaTokenizer` over gemma.tiny_models' hand-written vocabulary (no Gemma turn markers)."""
    from transformers import GemmaTokenizer

    from petqlora.gemma.tiny_models import vocab_and_merges

    vocab, merges = vocab_and_merges([])
    return GemmaTokenizer(vocab=vocab, merges=merges)


def build_clip_tokenizer():
    """A `CLIPTokenizer` (byte-level BPE, words end in "</w>") over the 256 byte symbols, each alone and as a
    word end, and the start/end markers: every text tokenizes, one byte a token, as CLIP's does with no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def _siglip(tok):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    from petqlora.evaluation.contrastive import SIGLIP_TEXT_LENGTH

    config = SiglipConfig(
        text_config=dict(vocab_size=((len(tok) + 63) // 64) * 64, max_position_embeddings=SIGLIP_TEXT_LENGTH,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         **_SIZE),
        vision_config=dict(image_size=32, patch_size=8, **_SIZE),  # 32 px in patches of 8: 16 patches an image
    )
    model = SiglipModel(config)
    with torch.no_grad():  # SigLIP's initial temperature and bias (log 10, -10), not the library's randn
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model, SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                  tokenizer=tok)


def _clip(tok):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"))}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=ids["bos"],
                         eos_token_id=ids["eos"], pad_token_id=ids["eos"], **_SIZE),
        vision_config=dict(image_size=32, patch_size=8, **_SIZE), projection_dim=16,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def build_tiny_contrastive(variant: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `variant` to `out_dir` and return the folder."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny contrastive variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    model, processor = _siglip(build_tokenizer()) if variant == "siglip" else _clip(build_clip_tokenizer())
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
