"""Turning records into model inputs, the same way for training, validation and evaluation.

Evaluation sees the rendered generation prompt; training sees that same text followed by the answer and
the end-of-turn token, so both share one prefix by construction (validate_token_boundaries checks it on
the ids). Sequences are never truncated: an example longer than `max_length` is refused or dropped and
counted, so no answer is ever cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from petqlora.gemma.masking import IGNORE_INDEX, TurnTokens, labels_for_batch
from petqlora.gemma.prompts import build_messages


def turn_tokens(processor, family: str) -> TurnTokens:
    """Read the turn and image ids of `processor`'s family from its tokenizer and chat template."""
    tok = processor.tokenizer
    if family == "gemma4":
        sot, eot, boi, eoi, img = "<|turn>", "<turn|>", tok.boi_token, tok.eoi_token, tok.image_token
    else:
        sot, eot, boi, eoi, img = "<start_of_turn>", "<end_of_turn>", tok.boi_token, tok.eoi_token, tok.image_token
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           [("sot", sot), ("eot", eot), ("boi", boi), ("eoi", eoi), ("img", img)]}
    missing = [name for name, i in ids.items() if i is None or i == tok.unk_token_id]
    if missing:
        raise ValueError(f"the {family} tokenizer lacks the special tokens {missing}: load the processor saved "
                         "with the checkpoint")
    # The generation prompt's tail after its last start-of-turn is the model-turn opener (with the empty
    # thought channel when the template writes one).
    prompt = processor.apply_chat_template(build_messages("x", None, n_images=0), add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    last = max(i for i, t in enumerate(prompt_ids) if t == ids["sot"])
    return TurnTokens(start_of_turn=ids["sot"], end_of_turn=ids["eot"], model_opener=tuple(prompt_ids[last:]),
                      begin_image=ids["boi"], end_image=ids["eoi"], image=ids["img"], pad=tok.pad_token_id)


@dataclass
class PromptEncoder:
    """Renders and encodes prompts (evaluation) and prompt + answer sequences (training) for one family."""

    processor: object
    family: str
    instruction: str
    tokens: TurnTokens = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = turn_tokens(self.processor, self.family)
        self.end_of_turn_text = self.processor.tokenizer.convert_ids_to_tokens(self.tokens.end_of_turn)
        self._prompt = self.processor.apply_chat_template(
            build_messages(self.instruction, None), add_generation_prompt=True, tokenize=False)

    @property
    def prompt_text(self) -> str:
        return self._prompt

    def training_text(self, label: str) -> str:
        return self._prompt + label + self.end_of_turn_text

    def image_tokens(self, width: int, height: int) -> int:
        """Soft tokens the processor gives an image of this size (Gemma 3: always its fixed count)."""
        if self.family == "gemma3":
            return int(self.processor.image_seq_length)
        data = self.processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
        return int(data.num_image_tokens[0])

    def encode(self, images: list[Image.Image], labels: list[str] | None, padding_side: str = "right"):
        """A padded batch; with `labels`, the training sequences and their masked labels."""
        texts = [self._prompt] * len(images) if labels is None else [self.training_text(lab) for lab in labels]
        tok = self.processor.tokenizer
        old_side, tok.padding_side = tok.padding_side, padding_side
        try:
            batch = self.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
        finally:
            tok.padding_side = old_side
        if labels is not None:
            batch["labels"] = torch.tensor(
                labels_for_batch(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), self.tokens))
        return batch


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """(row, position) pairs whose *next* token is supervised: where a causal LM's logits are needed."""
    shifted = labels[:, 1:] != IGNORE_INDEX
    return shifted.nonzero(as_tuple=False)
