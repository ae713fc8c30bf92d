"""Label masking from token boundaries: pure functions over token ids.

A training sequence is the family's rendered generation prompt (user turn with the images and the
instruction, then the model-turn opener, which for Gemma 4 31B/26B ends with an empty thought channel)
+ the answer + the end-of-turn token. Only the answer and the end-of-turn token are supervised.

The boundary is read off the ids: the *last* start-of-turn id must begin the model-turn opener, and the
supervised span runs from the end of that opener to the first end-of-turn id after it, inclusive. It is
never computed from the length of a separate tokenization or from a fixed count of image tokens, so it
holds for any number of soft tokens per image, any number of images, and either padding side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

IGNORE_INDEX = -100


class BoundaryError(ValueError):
    """A sequence whose supervised span cannot be found exactly."""


@dataclass(frozen=True)
class TurnTokens:
    """The ids that mark turns and images for one chat family (read from its processor)."""

    start_of_turn: int
    end_of_turn: int
    model_opener: tuple[int, ...]  # from start_of_turn to the end of the generation prompt
    begin_image: int
    end_image: int
    image: int
    pad: int

    def __post_init__(self) -> None:
        if not self.model_opener or self.model_opener[0] != self.start_of_turn:
            raise ValueError(f"model_opener {self.model_opener} must start with start_of_turn {self.start_of_turn}")


def supervised_span(ids: Sequence[int], tokens: TurnTokens) -> tuple[int, int]:
    """The half-open range [start, end) of the answer and its end-of-turn token in an unpadded sequence."""
    ids = list(ids)
    starts = [i for i, t in enumerate(ids) if t == tokens.start_of_turn]
    if not starts:
        raise BoundaryError("no model-turn opener: the sequence has no start-of-turn token")
    last = starts[-1]
    opener = list(tokens.model_opener)
    if ids[last:last + len(opener)] != opener:
        raise BoundaryError(
            f"the last turn does not open with the model-turn opener {opener}: found "
            f"{ids[last:last + len(opener)]} (the answer may have merged with the opener, or the last turn is "
            "not the model's)")
    start = last + len(opener)
    try:
        end = ids.index(tokens.end_of_turn, start)
    except ValueError:
        raise BoundaryError("the answer is truncated: no end-of-turn token after the model-turn opener") from None
    if end == start:
        raise BoundaryError("the answer is empty: end-of-turn follows the model-turn opener directly")
    return start, end + 1


def labels_for_sequence(ids: Sequence[int], tokens: TurnTokens) -> list[int]:
    """Labels for one unpadded sequence: the ids on the supervised span, IGNORE_INDEX elsewhere."""
    start, end = supervised_span(ids, tokens)
    return [t if start <= i < end else IGNORE_INDEX for i, t in enumerate(ids)]


def labels_for_batch(input_ids: Sequence[Sequence[int]], attention_mask: Sequence[Sequence[int]],
                     tokens: TurnTokens) -> list[list[int]]:
    """Labels for a padded batch (left or right padding): padding is never supervised."""
    out = []
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
        kept = [i for i, m in enumerate(mask) if m]
        if not kept or kept != list(range(kept[0], kept[-1] + 1)):
            raise BoundaryError(f"row {row}: the attention mask is not one contiguous block of real tokens")
        row_labels = [IGNORE_INDEX] * len(ids)
        start, end = supervised_span([ids[i] for i in kept], tokens)
        for i in kept[start:end]:
            row_labels[i] = ids[i]
        out.append(row_labels)
    return out


def image_token_counts(ids: Sequence[int], tokens: TurnTokens) -> list[int]:
    """The number of soft tokens inside each begin/end image pair, in order.

    Raises when a begin has no end, an end has no begin, pairs nest, or a soft token lies outside a pair.
    """
    counts: list[int] = []
    inside = False
    for pos, t in enumerate(ids):
        if t == tokens.begin_image:
            if inside:
                raise BoundaryError(f"position {pos}: an image begins inside another image")
            inside, n = True, 0
        elif t == tokens.end_image:
            if not inside:
                raise BoundaryError(f"position {pos}: an image ends that never began")
            inside = False
            counts.append(n)
        elif t == tokens.image:
            if not inside:
                raise BoundaryError(f"position {pos}: an image soft token outside a begin/end image pair")
            n += 1
    if inside:
        raise BoundaryError("the last image has no end-of-image token (truncated inside an image)")
    return counts
