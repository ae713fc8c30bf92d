"""Which training examples a run uses and in what order: sequence lengths, the max_length selection, the
length-grouped batch plan of each epoch, the stream of micro-batches from a resume position, and the
encoding of one micro-batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petqlora.data import dataset as data_lib
from petqlora.gemma.encoding import PromptEncoder


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches grouped by length (little padding), in an order that depends only on (seed, epoch).

    Shuffle, cut into "mega-batches" of 16 batches, sort each by length, cut into batches, shuffle the
    batches. A resumed run recomputes the plan of its epoch and skips the batches already consumed, so the
    plan must not depend on anything but its arguments (no global RNG).
    """
    rng = np.random.default_rng([seed, epoch])  # a seed sequence: distinct for every (seed, epoch) pair
    order = rng.permutation(len(lengths)).tolist()
    mega = batch_size * 16
    batches = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i:i + mega], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[p] for p in rng.permutation(len(batches)).tolist()]


def micro_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  start: int) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch number, example indices) from batch `start` of `epoch` on, endlessly."""
    while True:
        plan = batch_plan(lengths, batch_size, seed, epoch)
        for b in range(start, len(plan)):
            yield epoch, b, plan[b]
        epoch, start = epoch + 1, 0


def sequence_length(encoder: PromptEncoder, record: dict) -> int:
    """The length in tokens of the record's encoded training example, without loading its image."""
    text = encoder.training_text(record["label"])
    tok = encoder.processor.tokenizer
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])
    # The placeholder becomes begin + soft tokens + end (Gemma 3 adds blank lines around them).
    if encoder.family == "gemma4":
        return n_text - 1 + encoder.image_tokens(record["width"], record["height"]) + 2
    expanded = text.replace(tok.boi_token, encoder.processor.full_image_sequence, 1)
    return len(tok(expanded, add_special_tokens=False)["input_ids"])


def select_examples(records: list[dict], encoder: PromptEncoder, max_length: int, on_too_long: str):
    """Records that fit, their lengths, and the ids of those dropped; too long + 'error' raises naming them."""
    lengths = [sequence_length(encoder, r) for r in records]
    too_long = [(r["id"], n) for r, n in zip(records, lengths) if n > max_length]
    if too_long and on_too_long == "error":
        shown = ", ".join(f"{i} ({n} tokens)" for i, n in too_long[:10])
        raise ValueError(f"{len(too_long)} training example(s) exceed max_length={max_length} and would lose "
                         f"their answer: {shown}. Raise max_length, lower image_token_budget, or set "
                         "on_too_long=drop to drop and count them")
    keep = [k for k, n in enumerate(lengths) if n <= max_length]
    return [records[k] for k in keep], [lengths[k] for k in keep], [i for i, _ in too_long]


@dataclass
class TrainingExamples:
    """The selected training records, their lengths (for the batch plan), and how one micro-batch is encoded."""

    dataset_dir: str | Path
    encoder: PromptEncoder
    records: list[dict]
    lengths: list[int]

    def encode(self, indices: list[int], with_image_keys: bool) -> dict:
        """The model inputs of records `indices`; with their ids as `image_keys` for the feature cache."""
        recs = [self.records[i] for i in indices]
        images = [data_lib.load_image(self.dataset_dir, r) for r in recs]
        batch = self.encoder.encode(images, [r["label"] for r in recs])
        if with_image_keys:
            batch["image_keys"] = [r["id"] for r in recs]
        return batch
