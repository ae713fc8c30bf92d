"""Tiny random Gemma 4 / Gemma 3 checkpoints, built offline, for the embedded default and the tests.

Each checkpoint is a real `save_pretrained` folder (config, safetensors weights, tokenizer, processor
config, chat template) so that the same loading code serves a tiny model here and
`google/gemma-4-31b-it` in the cloud. The tokenizers carry the real special tokens and turn markers;
their vocabulary is small (bytes, characters and a few merges), so breed names take several tokens
as they do in the real vocabulary.

Variants:
- ``gemma4-e``: an E2B-like Gemma 4 (per-layer inputs; vision tower built from
  ``Gemma4ClippableLinear`` with *finite* clip bounds, so clipping is observable in tests);
  its template writes no thought channel.
- ``gemma4-31b``: a 31B-like Gemma 4 (``attention_k_eq_v``: full-attention layers have no ``v_proj``;
  vision without clipping, ``standardize``); its template ends the generation prompt with the empty
  thought channel ``<|channel>thought\\n<channel|>``.
- ``gemma3``: a Gemma 3 (256 soft tokens per image, ``<start_of_turn>`` / ``<end_of_turn>``).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

VARIANTS = ("gemma4-e", "gemma4-31b", "gemma3")

# Ids 0-4 follow the real Gemma vocabularies (pad, eos, bos, unk, mask).
_BASE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
GEMMA4_SPECIALS = [
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>",
    "<|audio>", "<audio|>", "<|audio|>", "<|video|>", "<|channel>", "<channel|>",
]
GEMMA3_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]

# Frequent pieces of the prompts, so sequences stay short; breed names stay multi-token.
MERGE_WORDS = ["user", "model", "thought", "▁the", "▁breed", "▁this", "▁image", "▁list", "▁one", "▁is"]

# Gemma 4 chat templates reduced to what this project renders: a user turn of images and text, an
# optional model turn, and the generation prompt. They render the same strings as the published ones
# for these messages.
GEMMA4_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{THOUGHT}{% endif %}"
)
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def vocab_and_merges(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """build_tokenizer's vocabulary (token -> id) and BPE merges, in rank order.

    The vocabulary: the base specials, `specials`, the 256 byte-fallback tokens, the printable characters
    other than whitespace, "▁" and a newline, then every prefix of each MERGE_WORDS entry; the merges build
    each entry left to right, one character at a time (a pair two entries share is listed once per entry).
    """
    tokens = list(_BASE_SPECIALS) + specials + [f"<0x{i:02X}>" for i in range(256)]
    chars = [c for c in string.printable if c not in " \t\n\r\x0b\x0c"] + ["▁", "\n"]
    tokens += [c for c in chars if c not in tokens]
    merges: list[tuple[str, str]] = []
    for word in MERGE_WORDS:
        piece = word[0]
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            if piece not in tokens:
                tokens.append(piece)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tokenizer(family: str, chat_template: str):
    """A `GemmaTokenizer` (BPE with byte fallback, "▁" for spaces) over a hand-written vocabulary."""
    from transformers import GemmaTokenizer

    if family == "gemma4":
        specials = GEMMA4_SPECIALS
        named = {
            "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
            "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
            "sot_token": "<|turn>", "eot_token": "<turn|>", "soc_token": "<|channel>", "eoc_token": "<channel|>",
        }
    else:
        specials = GEMMA3_SPECIALS
        named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    vocab, merges = vocab_and_merges(specials)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=named, chat_template=chat_template)
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def _gemma4_config(variant: str, vocab_size: int, tok):
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           [("boi", "<|image>"), ("eoi", "<image|>"), ("image", "<|image|>"), ("video", "<|video|>"),
            ("boa", "<|audio>"), ("eoa", "<audio|>"), ("audio", "<|audio|>")]}
    text = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=512,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=4096, pad_token_id=0, eos_token_id=[1, tok.convert_tokens_to_ids("<turn|>")],
        bos_token_id=2, final_logit_softcapping=30.0,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, patch_size=8, pooling_kernel_size=3, position_embedding_size=512,
    )
    if variant == "gemma4-e":
        text.update(hidden_size_per_layer_input=16, vocab_size_per_layer_input=vocab_size)
        vision.update(use_clipped_linears=True)
    else:
        text.update(attention_k_eq_v=True, hidden_size_per_layer_input=0, global_head_dim=64,
                    num_global_key_value_heads=1)
        vision.update(use_clipped_linears=False, standardize=True)
    return Gemma4Config(
        text_config=Gemma4TextConfig(**text), vision_config=Gemma4VisionConfig(**vision), audio_config=None,
        boi_token_id=ids["boi"], eoi_token_id=ids["eoi"], image_token_id=ids["image"],
        video_token_id=ids["video"], boa_token_id=ids["boa"], eoa_token_index=ids["eoa"],
        audio_token_id=ids["audio"],
    )


def _gemma3_config(vocab_size: int, tok):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=512,
        max_position_embeddings=4096, pad_token_id=0, eos_token_id=[1, tok.convert_tokens_to_ids("<end_of_turn>")],
        bos_token_id=2,
    )
    # 64 px / patch 4 = 16 x 16 patches = 256 soft tokens per image, as in the real model.
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=2, image_size=64, patch_size=4, vision_use_head=False)
    return Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=256,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )


def set_clip_bounds(model: torch.nn.Module, bound: float) -> int:
    """Give every clipped linear finite input/output bounds (checkpoints load them; random init has +-inf)."""
    n = 0
    for module in model.modules():
        if type(module).__name__ == "Gemma4ClippableLinear" and module.use_clipped_linears:
            module.input_min.fill_(-bound * 4)
            module.input_max.fill_(bound * 4)
            module.output_min.fill_(-bound)
            module.output_max.fill_(bound)
            n += 1
    return n


def build_tiny_checkpoint(variant: str, out_dir: str | Path, seed: int = 0, clip_bound: float = 0.5,
                          embedding_std: float = 0.5, patch_std: float = 0.5) -> Path:
    """Write a tiny random checkpoint of `variant` to `out_dir` and return the folder."""
    from transformers import Gemma3ForConditionalGeneration, Gemma4ForConditionalGeneration

    from petqlora.gemma.processors import make_processor

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny model variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    family = "gemma3" if variant == "gemma3" else "gemma4"
    if family == "gemma4":
        thought = "<|channel>thought\n<channel|>" if variant == "gemma4-31b" else ""
        tok = build_tokenizer("gemma4", GEMMA4_TEMPLATE.replace("{THOUGHT}", thought))
        vocab_size = ((len(tok) + 63) // 64) * 64
        model = Gemma4ForConditionalGeneration(_gemma4_config(variant, vocab_size, tok))
        if variant == "gemma4-e":
            set_clip_bounds(model, clip_bound)
    else:
        tok = build_tokenizer("gemma3", _GEMMA3_TEMPLATE)
        vocab_size = ((len(tok) + 63) // 64) * 64
        model = Gemma3ForConditionalGeneration(_gemma3_config(vocab_size, tok))
    # Trained vocabularies have embeddings far larger than the 0.02 init; with tied 0.02 embeddings no
    # hidden state can produce a confident logit, and no adapter could learn the answer.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, embedding_std)
        # Likewise a trained patch embedder carries the pixels; at 0.02 the position embeddings drown them
        # and every image looks alike to the language model.
        for name, param in model.named_parameters():
            if ("patch_embedder.input_proj" in name or "patch_embedding" in name) and param.dim() > 1:
                param.normal_(0.0, patch_std)
            # Gemma 3 initialises its image projection to zeros: a random model would then see no image.
            if name.endswith("mm_input_projection_weight"):
                param.normal_(0.0, 0.1)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    processor = make_processor(family, tok, max_soft_tokens=70)
    processor.save_pretrained(out)
    return out
