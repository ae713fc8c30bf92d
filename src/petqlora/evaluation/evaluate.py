"""evaluate: score a model (a baseline, or a base model + LoRA adapter) on a held-out split.

    python -m petqlora.evaluation.evaluate --dataset DIR --output DIR --config CONFIG.json   (EvalConfig fields)

The default mode scores every class name as a continuation of the prompt and takes the most likely:
deterministic, and it cannot produce an unparseable answer. The prompt (with its image) is encoded once
and its key/value cache is shared by all the candidates. `mode: generate` decodes greedily (never
sampling) and matches the normalized text, for comparison with published numbers. A SigLIP / CLIP
checkpoint (the contrastive baseline) is scored by image-text similarity instead (evaluation/contrastive.py).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from petqlora import schema
from petqlora.data import dataset as data_lib
from petqlora.entrypoint import run_step
from petqlora.gemma.encoding import PromptEncoder
from petqlora.evaluation.contrastive import is_contrastive, score_split
from petqlora.evaluation.metrics import classification_result
from petqlora.evaluation.scorers import candidate_ids, score_classes_packed
from petqlora.gemma.modeling import load_model_and_processor, resolve_device
from petqlora.params import SCORING_MODES, PipelineParams
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as

log = logging.getLogger("petqlora.evaluation.evaluate")

UNPARSEABLE = "<unparseable>"


@dataclass(frozen=True)
class EvalConfig:
    name: str = required("The approach evaluated, e.g. finetuned, gemma4_baseline or gemma3_baseline.")
    base_model: str = required("Checkpoint folder or Hub id of the model evaluated (a SigLIP / CLIP one is "
                               "scored by image-text similarity, whatever the mode).", nonempty=True,
                               fix="e.g. google/gemma-4-31b-it")
    adapter: str | None = field(None, "LoRA adapter folder; None evaluates the base model as is.")
    split: str = field("test", "Split evaluated.", allowed=data_lib.SPLITS)
    mode: str = field("score", "score (class likelihoods, deterministic) or generate (greedy, normalized match).",
                      allowed=SCORING_MODES)
    image_token_budget: int = same_as(PipelineParams, "image_token_budget")
    quantize: str = field("auto", "auto (4-bit on GPU), 4bit or none.", allowed=("auto", "4bit", "none"))
    max_examples: int | None = field(None, "Evaluate only this many examples; None: the whole split.", low=1)
    batch_size: int = field(8, "Images per forward pass of the packed class scorer.", low=1)
    device: str = field("auto", "auto (cuda when available), cpu or cuda[:N].")

    def __post_init__(self) -> None:
        problems = Problems("evaluation config")
        bad = schema.check(self, problems)
        if "name" not in bad:
            problems.check(self.name.isascii() and self.name.replace("_", "").isalnum(), "name", self.name,
                           "must be ASCII letters, digits and underscores", "e.g. finetuned or gemma4_baseline")
        if "adapter" not in bad and self.adapter is not None:
            problems.check(bool(self.adapter.strip()), "adapter", self.adapter,
                           "must be the adapter folder", "leave it out (null) for a baseline")
        if "device" not in bad:
            problems.check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", self.device,
                           "must be auto, cpu or cuda[:N]")
        problems.raise_if_any()


def normalize_answer(text: str) -> str:
    """Compatibility forms folded (NFKC), case folded, '_' and '-' as spaces, other punctuation dropped,
    whitespace collapsed: "  Yorkshire_Terrier." -> "yorkshire terrier". Letters keep their accents."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = text.replace("_", " ").replace("-", " ")
    return " ".join("".join(ch for ch in text if ch.isalnum() or ch.isspace()).split())


def match_answer(text: str, classes: list[str]) -> str:
    """The class the generated text names exactly (after normalization), else UNPARSEABLE."""
    by_norm: dict[str, str] = {}
    for c in classes:
        other = by_norm.setdefault(normalize_answer(c), c)
        if other != c:
            raise ValueError(f"classes {other!r} and {c!r} normalize to the same answer "
                             f"{normalize_answer(c)!r}: generated text could not tell them apart; rename one")
    return by_norm.get(normalize_answer(text), UNPARSEABLE)


@torch.no_grad()
def generate_answer(model, encoder: PromptEncoder, image, max_new_tokens: int) -> str:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encoder.encode([image], None).items()}
    tok = encoder.processor.tokenizer
    stop = [encoder.tokens.end_of_turn] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    out = model.generate(**batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                         eos_token_id=stop, pad_token_id=encoder.tokens.pad)
    return encoder.processor.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak GiB: CUDA allocations since the evaluation began, or the process's peak resident set on CPU
    (ru_maxrss, KiB on Linux: a lifetime peak, which is this model's as the entrypoint runs one per process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "CPU RSS"


def load_for_eval(cfg: EvalConfig):
    device = resolve_device(cfg.device)
    quantize = cfg.quantize == "4bit" or (cfg.quantize == "auto" and device.type == "cuda")
    model, processor, family = load_model_and_processor(cfg.base_model, quantize_4bit=quantize, device=device,
                                                        image_token_budget=cfg.image_token_budget)
    if cfg.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=False)
    model.eval()
    return model, processor, family, device


def evaluate(dataset_dir: str | Path, output_dir: str | Path, cfg: EvalConfig) -> dict:
    """Evaluate one model; writes OUTPUT/predictions.jsonl and OUTPUT/result.json; returns the result."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    manifest = data_lib.read_manifest(dataset_dir)
    classes = manifest["classes"]
    records = data_lib.read_split(dataset_dir, cfg.split)[: cfg.max_examples]
    if resolve_device(cfg.device).type == "cuda":  # the peak of this evaluation, the model load included
        torch.cuda.reset_peak_memory_stats(resolve_device(cfg.device))
    if is_contrastive(cfg.base_model):  # SigLIP / CLIP: image-text similarity (evaluation/contrastive.py)
        return _write_result(output, cfg, classes, records, **score_split(
            dataset_dir, records, classes, checkpoint=cfg.base_model, device=resolve_device(cfg.device),
            batch_size=cfg.batch_size, name=cfg.name))
    load_started = time.perf_counter()
    model, processor, family, device = load_for_eval(cfg)
    load_seconds = time.perf_counter() - load_started
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    candidates = candidate_ids(encoder, classes)
    # Room for the longest class spelled differently ("Yorkshire_Terrier." takes more tokens than the
    # canonical "yorkshire terrier"); generation stops at the end of the turn in any case.
    max_new = 2 * max(len(c) for c in candidates) + 8
    y_true, y_pred, all_scores, rows = [], [], [], []
    # Both families score a batch of images in one forward, all classes packed after each prompt: the scores
    # of full sequences (tests/test_evaluate.py), faster than them or the per-image prompt-cache scorer.
    packed = cfg.mode == "score"
    step = cfg.batch_size if packed else 1
    started = time.perf_counter()
    for first in range(0, len(records), step):
        chunk = records[first:first + step]
        images = [data_lib.load_image(dataset_dir, rec) for rec in chunk]
        if packed:
            chunk_scores = list(score_classes_packed(model, encoder, images, candidates))
        for i, rec in enumerate(chunk):
            if cfg.mode == "score":
                scores = chunk_scores[i]
                pred, text = classes[int(np.argmax(scores))], None
                all_scores.append(scores)
            else:
                text = generate_answer(model, encoder, images[i], max_new)
                pred = match_answer(text, classes)
            y_true.append(rec["label"])
            y_pred.append(pred)
            rows.append({"id": rec["id"], "label": rec["label"], "prediction": pred, "generated": text,
                         "scores": None if cfg.mode != "score" else [round(float(v), 4) for v in scores]})
        done = first + len(chunk)
        if done % 20 < step or done == len(records):
            log.info("%s: %d/%d evaluated, accuracy so far %.3f", cfg.name, done, len(records),
                     np.mean([a == b for a, b in zip(y_true, y_pred)]))
    seconds = time.perf_counter() - started
    return _write_result(output, cfg, classes, records, family=family, y_true=y_true, y_pred=y_pred,
                         all_scores=all_scores, rows=rows, seconds=seconds, load_seconds=load_seconds, device=device)


def _write_result(output: Path, cfg: EvalConfig, classes: list[str], records: list[dict], *, family: str,
                  y_true: list, y_pred: list, all_scores: list, rows: list, seconds: float, load_seconds: float,
                  device: torch.device, extra: dict | None = None) -> dict:
    """OUTPUT/predictions.jsonl and OUTPUT/result.json (the same keys for every family); returns the result."""
    result = classification_result(y_true, y_pred, classes, np.stack(all_scores) if all_scores else None)
    peak, kind = _peak_memory(device)
    summary = {
        "name": cfg.name, "config": asdict(cfg), "family": family, "n_eval": len(records),
        "accuracy": result.accuracy, "macro_f1": result.macro_f1, "top3_accuracy": result.top3_accuracy,
        "unparseable_rate": float(np.mean([p == UNPARSEABLE for p in y_pred])) if y_pred else 0.0,
        "seconds": seconds, "load_seconds": load_seconds,
        "images_per_s": len(records) / seconds if seconds else None,
        "peak_memory_gib": peak, "memory_kind": kind, "classes": classes, "result": result.to_dict(),
        **(extra or {}),
    }
    with open(output / "predictions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (output / "result.json").write_text(json.dumps(summary, indent=1))
    log.info("%s: accuracy %.3f, macro-F1 %.3f on %d %s examples in %.1fs", cfg.name, result.accuracy,
             result.macro_f1, len(records), cfg.split, seconds)
    return summary


def _evaluate_mapped(dataset: str, output: str, cfg: EvalConfig) -> dict:
    """Model and adapter paths may be gs:// URIs: read them through their /gcs mount."""
    from petqlora.cloud.storage import local_path

    adapter = local_path(cfg.adapter) if cfg.adapter else None
    return evaluate(dataset, output, replace(cfg, base_model=local_path(cfg.base_model), adapter=adapter))


def main(argv: list[str] | None = None) -> int:
    return run_step(argv, prog="petqlora.evaluation.evaluate", description=__doc__.split("\n\n")[0],
                    config_cls=EvalConfig, step=_evaluate_mapped)


if __name__ == "__main__":
    sys.exit(main())
