"""Evaluation throughput: the published sample's sampled `generate` against the project's class scoring.

    PYTHONUNBUFFERED=1 python benchmarks/eval_benchmark.py --out benchmarks/results --tag h200_31b \
        --text-layers 60 --vision-layers 27

Writes benchmarks/results/h200_31b/eval.json.

One random-weight Gemma 4 at 31B widths (NF4, as bench_model.py builds it) with a LoRA adapter attached
(r=64 on every linear layer, as the fine-tuned model is evaluated), the 37 Oxford breeds in the prompt:

- reference: the sample's method, sampled `generate` (top-k 64, top-p 0.95) in left-padded batches of 8,
  then substring matching; `max_new_tokens` is the longest class's token count (end-of-turn included) + 2,
  its best case (a trained model stops right after the name; random weights never stop early, so every
  batch runs to that cap);
- ours, as it was: `petqlora.evaluation.evaluate.score_classes`, one image at a time, the prompt's cache shared;
- ours, packed: `petqlora.evaluation.evaluate.score_classes_packed`, every class of a batch of images in one forward
  (what `evaluate` now uses for Gemma 4); checked against score_classes on the same images first.

Both run once untimed on two images first (kernels, allocator). Peak memory is measured per method.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model  # noqa: E402

from petqlora.data import dataset as data_lib  # noqa: E402
from petqlora.gemma.encoding import PromptEncoder  # noqa: E402
from petqlora.evaluation.scorers import candidate_ids, score_classes, score_classes_packed  # noqa: E402
from petqlora.gemma.lora import LoraSettings, build_lora_config  # noqa: E402


def substring_match(text: str, classes: list[str]) -> str | None:
    """The sample's parsing: the first class whose name occurs in the generated text."""
    low = text.lower().replace("_", " ")
    return next((c for c in classes if c in low), None)


def run_generate(model, encoder, images, classes, max_new: int, batch: int, device) -> list[str | None]:
    tok = encoder.processor.tokenizer
    preds = []
    for i in range(0, len(images), batch):
        enc = encoder.encode(images[i:i + batch], None, padding_side="left")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, top_k=64, top_p=0.95, max_new_tokens=max_new,
                                 eos_token_id=[1, encoder.tokens.end_of_turn], pad_token_id=encoder.tokens.pad)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        preds += [substring_match(t, classes) for t in texts]
    return preds


def run_score(model, encoder, images, classes, candidates) -> list[str]:
    return [classes[int(np.argmax(score_classes(model, encoder, im, candidates)))] for im in images]


@torch.no_grad()
def run_score_packed(model, encoder, images, classes, candidates, batch: int) -> list[str]:
    preds = []
    for i in range(0, len(images), batch):
        scores = score_classes_packed(model, encoder, images[i:i + batch], candidates)
        preds += [classes[int(k)] for k in scores.argmax(1)]
    return preds


def timed(fn, device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return out, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", default="/tmp/petqlora_bench")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    classes = bench_model.OXFORD_CLASSES
    processor = bench_model.build_processor(280)
    encoder = PromptEncoder(processor, "gemma4", bench_model.oxford_instruction())
    config = bench_model.gemma4_31b_config(processor.tokenizer, args.text_layers, args.vision_layers, args.widths)
    dataset = Path(args.work) / "dataset"
    if not (dataset / "manifest.json").exists():
        dataset = bench_model.synthetic_dataset(args.work)
    records = data_lib.read_split(dataset, "train") + data_lib.read_split(dataset, "test")
    images = [data_lib.load_image(dataset, r) for r in records[:args.images]]

    model, n_params = bench_model.build_model(config, device=device.type, seed=0)
    from peft import get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(model, build_lora_config(model, LoraSettings(r=64, alpha=64, dropout=0.0)))
    model.eval()
    candidates = candidate_ids(encoder, classes)
    max_new = max(len(c) for c in candidates) + 2
    prompt_tokens = [int(encoder.encode([im], None)["attention_mask"].sum()) for im in images]

    # The packed scorer must give score_classes' scores (up to bf16 rounding) before its speed counts.
    check = [score_classes(model, encoder, im, candidates) for im in images[:2]]
    packed_check = score_classes_packed(model, encoder, images[:2], candidates)
    agreement = {"max_abs_diff": float(np.abs(np.stack(check) - packed_check).max()),
                 "same_argmax": bool((np.stack(check).argmax(1) == packed_check.argmax(1)).all()),
                 "score_scale": float(np.abs(np.stack(check)).mean())}
    print("packed vs score_classes:", agreement, flush=True)

    # Warm-up, untimed.
    run_generate(model, encoder, images[:2], classes, max_new, args.batch, device)
    run_score(model, encoder, images[:2], classes, candidates)

    gen_preds, gen_s, gen_peak = timed(
        lambda: run_generate(model, encoder, images, classes, max_new, args.batch, device), device)
    score_preds, score_s, score_peak = timed(lambda: run_score(model, encoder, images, classes, candidates), device)
    packed_preds, packed_s, packed_peak = timed(
        lambda: run_score_packed(model, encoder, images, classes, candidates, args.batch), device)
    report = {
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
        "text_layers": args.text_layers, "vision_layers": args.vision_layers, "widths": args.widths,
        "parameters": n_params, "images": len(images), "classes": len(classes),
        "candidate_tokens": [len(c) for c in candidates], "max_new_tokens": max_new,
        "prompt_tokens_mean": float(np.mean(prompt_tokens)),
        "reference": {"method": f"sampled generate (top-k 64, top-p 0.95), batch {args.batch}, substring match",
                      "seconds": gen_s, "images_per_s": len(images) / gen_s, "peak_memory_gib": gen_peak,
                      "unparsed_rate": float(np.mean([p is None for p in gen_preds]))},
        "ours": {"method": "petqlora.evaluation.evaluate.score_classes, one image at a time, shared prompt cache",
                 "seconds": score_s, "images_per_s": len(images) / score_s, "peak_memory_gib": score_peak,
                 "unparsed_rate": 0.0},
        "packed": {
            "method": f"petqlora.evaluation.evaluate.score_classes_packed: all classes of {args.batch} images in one forward",
            "seconds": packed_s, "images_per_s": len(images) / packed_s, "peak_memory_gib": packed_peak,
            "agreement_with_score_classes": agreement,
            "same_predictions_as_score_classes": float(np.mean([a == b for a, b in zip(packed_preds, score_preds)]))},
    }
    report["speedup"] = report["ours"]["images_per_s"] / report["reference"]["images_per_s"]
    report["packed_speedup"] = report["packed"]["images_per_s"] / report["reference"]["images_per_s"]
    report["total_s"] = time.perf_counter() - started
    path = bench_model.run_folder(args.out, args.tag) / "eval.json"
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("reference", "ours", "packed", "speedup",
                                             "packed_speedup", "max_new_tokens", "total_s")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
