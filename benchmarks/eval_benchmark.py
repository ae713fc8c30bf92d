"""Evaluation throughput: greedy `generate` (the published sample's method at its best) against class scoring.

    PYTHONUNBUFFERED=1 python benchmarks/eval_benchmark.py --out benchmarks/results --tag h200_31b \
        --text-layers 60 --vision-layers 27

Writes benchmarks/results/h200_31b/eval.json.

One random-weight Gemma 4 at 31B widths (NF4, as bench_model.py builds it) with a LoRA adapter attached
(r=64 on every linear layer, as the fine-tuned model is evaluated), the 37 Oxford breeds in the prompt:

- reference: the sample's method at its best case, deterministic: greedy `generate` (do_sample=False,
  num_beams=1) in left-padded batches of 8, then substring matching; `max_new_tokens` is the longest class's
  token count (end-of-turn included) and generation stops at end-of-turn / eos, so a trained model that
  names a class and stops costs no more; random weights never stop early, so every batch runs to that cap.
  Run `--repeats` times (default 3); the median is the reference figure;
- ours, as it was: `petqlora.evaluation.scorers.score_classes`, one image at a time, the prompt's cache shared;
- ours, packed: `petqlora.evaluation.scorers.score_classes_packed`, every class of a batch of images in one
  forward (what `evaluate` uses), at each of `--batches` images per forward, `--repeats` times each (median);
  checked against score_classes on the same images first.

Every method runs once untimed on two images first (kernels, allocator). Peak memory is measured per method.
eval.json is written after each method, so a timeout keeps what ran; `--widths narrow --device cpu` tries
the script on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
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


def stop_ids(encoder) -> list[int]:
    """End of turn and the tokenizer's eos: where a greedy answer ends."""
    eos = encoder.processor.tokenizer.eos_token_id
    return sorted({encoder.tokens.end_of_turn, *([eos] if eos is not None else [])})


def run_generate(model, encoder, images, classes, max_new: int, batch: int, device) -> list[str | None]:
    tok = encoder.processor.tokenizer
    preds = []
    for i in range(0, len(images), batch):
        enc = encoder.encode(images[i:i + batch], None, padding_side="left")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=max_new,
                                 eos_token_id=stop_ids(encoder), pad_token_id=encoder.tokens.pad)
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


def measure(fn, images: int, repeats: int, device) -> dict:
    """`fn` run `repeats` times: images/s of each run, their median, the peak memory, the last output."""
    runs, peak = [], None
    for _ in range(repeats):
        out, seconds, run_peak = timed(fn, device)
        runs.append(seconds)
        peak = run_peak if peak is None else max(peak, run_peak)
    per_s = [images / t for t in runs]
    return {"seconds": runs, "runs_images_per_s": per_s, "images_per_s": statistics.median(per_s),
            "peak_memory_gib": peak, "preds": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="images per generate batch, and the packed batch "
                                                            "evaluate uses by default")
    parser.add_argument("--batches", default="8,16,32", help="packed scorer: images per forward, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the reference and of each packed batch")
    parser.add_argument("--skip-cached", action="store_true", help="leave out score_classes (one image at a time)")
    parser.add_argument("--work", default="/tmp/petqlora_bench")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.batch not in batches:
        batches.insert(0, args.batch)
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
    max_new = max(len(c) for c in candidates)  # the longest class name and its end of turn
    prompt_tokens = [int(encoder.encode([im], None)["attention_mask"].sum()) for im in images]
    path = bench_model.run_folder(args.out, args.tag) / "eval.json"
    report = {
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
        "text_layers": args.text_layers, "vision_layers": args.vision_layers, "widths": args.widths,
        "parameters": n_params, "images": len(images), "classes": len(classes),
        "candidate_tokens": [len(c) for c in candidates], "max_new_tokens": max_new, "stop_ids": stop_ids(encoder),
        "prompt_tokens_mean": float(np.mean(prompt_tokens)), "repeats": args.repeats,
    }

    def save() -> None:
        report["total_s"] = time.perf_counter() - started
        path.write_text(json.dumps(report, indent=1))

    # The packed scorer must give score_classes' scores (up to bf16 rounding) before its speed counts.
    check = [score_classes(model, encoder, im, candidates) for im in images[:2]]
    packed_check = score_classes_packed(model, encoder, images[:2], candidates)
    agreement = {"max_abs_diff": float(np.abs(np.stack(check) - packed_check).max()),
                 "same_argmax": bool((np.stack(check).argmax(1) == packed_check.argmax(1)).all()),
                 "score_scale": float(np.abs(np.stack(check)).mean())}
    print("packed vs score_classes:", agreement, flush=True)

    run_generate(model, encoder, images[:2], classes, max_new, args.batch, device)  # warm-up, untimed
    gen = measure(lambda: run_generate(model, encoder, images, classes, max_new, args.batch, device),
                  len(images), args.repeats, device)
    report["reference"] = {
        "method": f"greedy generate (do_sample=False, num_beams=1), batch {args.batch}, max_new_tokens {max_new}, "
                  "stops at end of turn / eos, substring match; median of the runs",
        "unparsed_rate": float(np.mean([p is None for p in gen.pop("preds")])), **gen}
    print("reference (greedy generate):", report["reference"], flush=True)
    save()

    score_preds = None
    if not args.skip_cached:
        run_score(model, encoder, images[:2], classes, candidates)  # warm-up
        ours = measure(lambda: run_score(model, encoder, images, classes, candidates), len(images), 1, device)
        score_preds = ours.pop("preds")
        report["ours"] = {"method": "petqlora.evaluation.scorers.score_classes, one image at a time, shared prompt cache",
                          "unparsed_rate": 0.0, **ours}
        report["speedup"] = ours["images_per_s"] / report["reference"]["images_per_s"]
        print("score_classes:", report["ours"], flush=True)
        save()

    report["packed_by_batch"] = {}
    for b in batches:
        run_score_packed(model, encoder, images[:b], classes, candidates, b)  # warm-up at this batch's shapes
        packed = measure(lambda: run_score_packed(model, encoder, images, classes, candidates, b),
                         len(images), args.repeats, device)
        preds = packed.pop("preds")
        packed.update(method=f"petqlora.evaluation.scorers.score_classes_packed: all classes of {b} images in one "
                             "forward; median of the runs", batch=b,
                      speedup=packed["images_per_s"] / report["reference"]["images_per_s"])
        if score_preds is not None:
            packed["same_predictions_as_score_classes"] = float(np.mean([x == y for x, y in zip(preds, score_preds)]))
        report["packed_by_batch"][str(b)] = packed
        print(f"packed, batch {b}:", packed, flush=True)
        if b == args.batch:
            report["packed"] = {**packed, "agreement_with_score_classes": agreement}
            report["packed_speedup"] = packed["speedup"]
        save()
    best = max(report["packed_by_batch"].values(), key=lambda v: v["images_per_s"])
    report["packed_best"] = best
    save()
    print(json.dumps({k: report.get(k) for k in ("reference", "ours", "packed_best", "packed_speedup", "max_new_tokens",
                                                 "total_s")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
