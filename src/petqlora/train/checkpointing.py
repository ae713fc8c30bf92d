"""Selective activation checkpointing: which decoder layers of the language model recompute their activations.

Gradient checkpointing (transformers' per-layer `gradient_checkpointing` flags) keeps only each layer's input
and recomputes the layer's forward during backward: a third more matrix-product FLOPs for the least memory.
When memory is left over (31B at batch 16 peaked at 27.7 of 40 GiB), some layers can keep their
activations instead. `checkpoint_layers=N` leaves the flag on for the first N decoder layers and turns it
off for the rest; the arithmetic is the same either way, only what is stored and what is recomputed differ.
The vision tower keeps the model-wide setting.
"""

from __future__ import annotations

from petqlora.gemma.modeling import base_model


def decoder_layers(model) -> list:
    """The language model's decoder layers, under a PEFT wrapper or not (Gemma 4 and Gemma 3)."""
    inner = base_model(model)
    return list(inner.model.language_model.layers)


def select_checkpointed_layers(model, checkpoint_layers: int) -> tuple[int, int]:
    """Keep checkpointing on for the first `checkpoint_layers` decoder layers, off for the others.

    Call after `gradient_checkpointing_enable`. Returns (layers recomputing, layers keeping activations).
    """
    layers = decoder_layers(model)
    if checkpoint_layers > len(layers):
        raise ValueError(f"checkpoint_layers={checkpoint_layers} is more than the model's {len(layers)} decoder "
                         f"layers: set it to at most {len(layers)}, or leave it unset to checkpoint all of them")
    if not all(hasattr(layer, "_gradient_checkpointing_func") for layer in layers):
        raise ValueError("checkpoint_layers needs gradient checkpointing enabled first: set gradient_checkpointing=true")
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < checkpoint_layers
    return checkpoint_layers, len(layers) - checkpoint_layers
