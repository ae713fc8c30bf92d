"""Image + text processors for both families, loaded the same way for tiny and real checkpoints.

`Gemma4Processor` also wants a video processor (which needs torchvision) and an audio feature
extractor; this project only sends images, so `Gemma4ImageTextProcessor` takes just the image
processor and the tokenizer. It keeps Gemma 4's own placeholder expansion, so the soft-token count of
every image is what the library computes for its size and budget.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Gemma3Processor, Gemma4Processor
from transformers.processing_utils import ProcessorMixin

from petqlora.params import DEFAULTS, IMAGE_TOKEN_BUDGETS

SUPPORTED_BUDGETS = IMAGE_TOKEN_BUDGETS


class Gemma4ImageTextProcessor(Gemma4Processor):
    """Gemma 4's processor without the video and audio front ends."""

    def __init__(self, image_processor, tokenizer, chat_template=None, image_seq_length: int = DEFAULTS.image_token_budget, **kwargs):
        # Gemma4Processor.__init__ insists on the video/audio front ends, so set what its methods read
        # and initialise the mixin with the two parts we have.
        self.image_seq_length = image_seq_length
        self.image_token_id = tokenizer.image_token_id
        self.boi_token = tokenizer.boi_token
        self.eoi_token = tokenizer.eoi_token
        self.image_token = tokenizer.image_token
        self.video_token = self.video_token_id = None
        self.audio_seq_length, self.audio_ms_per_token = 750, 40
        self.audio_token_id = getattr(tokenizer, "audio_token_id", None)
        self.audio_token = getattr(tokenizer, "audio_token", None)
        self.boa_token = getattr(tokenizer, "boa_token", None)
        self.eoa_token = getattr(tokenizer, "eoa_token", None)
        ProcessorMixin.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=chat_template, **kwargs)


def family_of(model_type: str) -> str:
    if model_type.startswith("gemma4"):
        return "gemma4"
    if model_type.startswith("gemma3"):
        return "gemma3"
    raise ValueError(f"model type {model_type!r} is neither Gemma 4 nor Gemma 3: this project fine-tunes and "
                     "evaluates those two families only")


def make_processor(family: str, tokenizer, max_soft_tokens: int = DEFAULTS.image_token_budget):
    """A processor for a freshly built tokenizer (tiny checkpoints)."""
    if family == "gemma4":
        from transformers import Gemma4ImageProcessorPil

        image_processor = Gemma4ImageProcessorPil(patch_size=8, max_soft_tokens=max_soft_tokens, pooling_kernel_size=3)
        return Gemma4ImageTextProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    from transformers import Gemma3ImageProcessorPil

    image_processor = Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
    return Gemma3Processor(image_processor, tokenizer, chat_template=tokenizer.chat_template, image_seq_length=256)


def load_processor(path: str | Path, family: str, max_soft_tokens: int | None = None):
    """Load the processor saved with a checkpoint; `max_soft_tokens` sets Gemma 4's image budget."""
    if family == "gemma4":
        processor = Gemma4ImageTextProcessor.from_pretrained(str(path))
        if max_soft_tokens is not None:
            if max_soft_tokens not in SUPPORTED_BUDGETS:
                raise ValueError(f"image_token_budget={max_soft_tokens} is not supported by Gemma 4: "
                                 f"use one of {SUPPORTED_BUDGETS}")
            processor.image_processor.max_soft_tokens = max_soft_tokens
        return processor
    processor = Gemma3Processor.from_pretrained(str(path))
    return processor
