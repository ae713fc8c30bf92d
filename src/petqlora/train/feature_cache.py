"""ImageFeatureCache: the frozen Gemma 4 vision tower's soft-token features of each training image, computed
once and kept in host memory, so later epochs skip the tower (cache_image_features=true)."""

from __future__ import annotations

import torch

from petqlora.gemma.modeling import base_model


class ImageFeatureCache:
    """Soft-token features of each training image from the frozen Gemma 4 vision tower, kept across epochs.

    Keyed by the record id (one image per training example). A batch whose images are all known skips the
    vision tower: its features go to the model as `mm_encoder_outputs`, transformers' input for precomputed
    encoder outputs; a batch with any new image runs the tower once for the whole batch and stores each
    image's features on the host.
    """

    def __init__(self, model) -> None:
        inner = base_model(model).model
        trainable = [n for n, p in model.named_parameters()
                     if p.requires_grad and ("vision_tower" in n or "embed_vision" in n)]
        if not hasattr(inner, "embed_vision"):
            raise ValueError(f"cache_image_features supports Gemma 4 only ({type(inner).__name__} has no "
                             "embed_vision): set cache_image_features=false for this model")
        if trainable:
            raise ValueError(f"cache_image_features needs a frozen vision tower, but {trainable[0]} (and "
                             f"{len(trainable) - 1} more) train: set adapt_vision=false, or cache_image_features=false")
        self._inner = inner
        self._features: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._features)

    def substitute(self, batch: dict, keys: list[str]) -> dict:
        """The batch with `pixel_values` replaced by the cached (or now computed) image features."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if len(keys) != batch["pixel_values"].shape[0]:
            raise ValueError(f"{len(keys)} image keys for {batch['pixel_values'].shape[0]} images")
        if all(k in self._features for k in keys):
            self.hits += len(keys)
            device = batch["input_ids"].device
            features = tuple(self._features[k].to(device, non_blocking=True) for k in keys)
        else:
            self.misses += len(keys)
            with torch.no_grad():
                features = self._inner.get_image_features(batch["pixel_values"], batch["image_position_ids"],
                                                          return_dict=True).pooler_output
            for k, f in zip(keys, features):
                if k not in self._features:
                    self._features[k] = f.to("cpu", copy=True)
                    self.nbytes += f.numel() * f.element_size()
        batch = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_position_ids")}
        batch["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return batch
