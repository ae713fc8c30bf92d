"""The contrastive baseline: a SigLIP / SigLIP 2 / CLIP checkpoint classifying zero-shot by image-text
similarity, scored on the same split as the Gemma models (evaluate() branches here for such a checkpoint).

Every class becomes one prompt (PROMPT_TEMPLATE); the prompts are encoded once, each batch of images once,
and an image's score for a class is the model's own image-text logit: the cosine similarity of the two
normalized embeddings times ``exp(logit_scale)``, plus ``logit_bias`` for SigLIP. SigLIP turns a logit into a
probability with a sigmoid per class, CLIP with a softmax over the classes; both are monotonic in the logit,
so the prediction (argmax) and top-k are read off the logits, which are what the scores hold. No sampling,
nothing random: the same checkpoint and images give the same scores.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petqlora.params import CONTRASTIVE_MODEL_TYPES as MODEL_TYPES

log = logging.getLogger("petqlora.evaluation.contrastive")

FAMILY = "contrastive"
# One prompt per class, as in CLIP's and open_clip's pet evaluations; lowercased, since SigLIP 2 was trained on
# lowercased text (SigLIP's and CLIP's tokenizers lowercase anyway).
PROMPT_TEMPLATE = "a photo of a {label}, a type of pet."
# SigLIP's text tower reads a fixed 64 tokens, padded to that length as in training (what transformers'
# zero-shot-image-classification pipeline does); CLIP pads to the longest prompt.
SIGLIP_TEXT_LENGTH = 64


def model_type(path: str | Path) -> str:
    """config.json's model_type of a checkpoint folder or Hub id (the Hub's config only; no weights)."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type", "")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), trust_remote_code=False).model_type


def is_contrastive(path: str | Path) -> bool:
    return model_type(path) in MODEL_TYPES


def class_prompts(classes: list[str], template: str = PROMPT_TEMPLATE) -> list[str]:
    """One prompt per class: "yorkshire_terrier" -> "a photo of a yorkshire terrier, a type of pet."."""
    return [template.format(label=" ".join(c.replace("_", " ").split())).lower() for c in classes]


@dataclass
class ContrastiveModel:
    model: torch.nn.Module
    processor: object
    model_type: str
    device: torch.device


def load_contrastive(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> ContrastiveModel:
    """The checkpoint's model and processor (safetensors only, no remote code), in eval mode on `device`.
    float32 by default: the baseline is small next to Gemma, and full precision keeps it comparable with
    published zero-shot figures."""
    from transformers import AutoModel, AutoProcessor

    kind = model_type(path)
    if kind not in MODEL_TYPES:
        raise ValueError(f"contrastive baseline {path}: model_type {kind!r} is not a contrastive image-text model; "
                         f"fix: give a checkpoint of type {', '.join(MODEL_TYPES)}, e.g. "
                         "google/siglip2-so400m-patch14-384")
    model = AutoModel.from_pretrained(str(path), dtype=dtype, trust_remote_code=False, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    return ContrastiveModel(model.to(device).eval(), processor, kind, device)


def _text_kwargs(cm: ContrastiveModel) -> dict:
    if cm.model_type == "clip":
        return {"padding": True}
    return {"padding": "max_length", "max_length": SIGLIP_TEXT_LENGTH}


def _normalized(embeds: torch.Tensor) -> torch.Tensor:
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


@torch.no_grad()
def encode_prompts(cm: ContrastiveModel, prompts: list[str]) -> torch.Tensor:
    """The prompts' normalized text embeddings [n_classes, dim]. A prompt longer than the text tower reads
    is refused, never truncated: truncation could make two classes' prompts the same."""
    tokenizer = cm.processor.tokenizer
    kwargs = _text_kwargs(cm)
    limit = kwargs.get("max_length") or tokenizer.model_max_length
    too_long = [(p, n) for p in prompts if (n := len(tokenizer(p)["input_ids"])) > limit]
    if too_long:
        prompt, n = too_long[0]
        raise ValueError(f"class prompt {prompt!r} is {n} tokens; the {cm.model_type} text tower reads {limit}: "
                         "fix: shorten the class name or the prompt template")
    inputs = tokenizer(prompts, return_tensors="pt", **kwargs).to(cm.device)
    return _normalized(cm.model.get_text_features(**inputs).pooler_output)


@torch.no_grad()
def score_images(cm: ContrastiveModel, images: list, text_embeds: torch.Tensor) -> np.ndarray:
    """Image-text logits [n_images, n_classes] (the model's logits_per_image, prompts encoded once)."""
    inputs = cm.processor.image_processor(images=images, return_tensors="pt").to(cm.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(next(cm.model.parameters()).dtype)
    image_embeds = _normalized(cm.model.get_image_features(**inputs).pooler_output)
    logits = image_embeds @ text_embeds.t().to(image_embeds.dtype) * cm.model.logit_scale.exp()
    bias = getattr(cm.model, "logit_bias", None)  # SigLIP's; CLIP has none
    if bias is not None:
        logits = logits + bias
    return logits.float().cpu().numpy()


def score_split(dataset_dir: str | Path, records: list[dict], classes: list[str], *, checkpoint: str,
                device: torch.device, batch_size: int, name: str) -> dict:
    """Score `records` against every class: what evaluate() summarizes (its keyword arguments)."""
    from petqlora.data import dataset as data_lib

    load_started = time.perf_counter()
    cm = load_contrastive(checkpoint, device)
    load_seconds = time.perf_counter() - load_started
    started = time.perf_counter()
    text_embeds = encode_prompts(cm, class_prompts(classes))
    y_true, y_pred, all_scores, rows = [], [], [], []
    for first in range(0, len(records), batch_size):
        chunk = records[first:first + batch_size]
        scores = score_images(cm, [data_lib.load_image(dataset_dir, rec) for rec in chunk], text_embeds)
        for rec, row in zip(chunk, scores):
            pred = classes[int(np.argmax(row))]
            y_true.append(rec["label"])
            y_pred.append(pred)
            all_scores.append(row)
            rows.append({"id": rec["id"], "label": rec["label"], "prediction": pred, "generated": None,
                         "scores": [round(float(v), 4) for v in row]})
        log.info("%s: %d/%d evaluated, accuracy so far %.3f", name, first + len(chunk), len(records),
                 np.mean([a == b for a, b in zip(y_true, y_pred)]))
    return {"family": FAMILY, "y_true": y_true, "y_pred": y_pred, "all_scores": all_scores, "rows": rows,
            "seconds": time.perf_counter() - started, "load_seconds": load_seconds, "device": device,
            "extra": {"model_type": cm.model_type, "prompt_template": PROMPT_TEMPLATE,
                      "scores": "image-text logits (argmax and top-k read off them)"}}
