"""Write benchmarks/results/summary.json from the raw results, so that every headline figure has a source.

    python benchmarks/summarize.py --train h200_31b_fused_6steps --eval h200_31b_packed
    python benchmarks/summarize.py --train h200_round2_train --eval h200_round2_eval \
        --agreement h200_round2_eval --agreement-gemma3 h200_round2_eval/gemma3

Each run's results are in benchmarks/results/<tag>/. The training figures are the named variants of one
train_benchmark.py run (<tag>/train.json, side by side with its reference); the evaluation figures those of
one eval_benchmark.py run (<tag>/eval.json); agreement from one scorer_agreement.py run
(<tag>/scorer_agreement.json). summary.json names each file it read by its path under benchmarks/results.
`--results` reads the run folders from elsewhere (e.g. the device tool's output folder); summary.json is
written beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"train_speedup_min": 5, "train_mfu_min": 0.4, "train_peak_memory_gib_max": 40, "eval_speedup_min": 3}
OXFORD_SAMPLES = 3680 * 3          # training images x epochs
OXFORD_TOKENS_PER_SAMPLE = 507     # with the real tokenizer (issue 7); the benchmark's prompt is shorter
RTX_PRO_6000_SLOWDOWN = 989 / 500  # dense bf16 TFLOP/s, H200 datasheet over RTX PRO 6000 (FP4 4,000 / 8)


def train_figures(variant: dict, reference: dict, prefix: str) -> dict:
    out = {f"{prefix}samples_per_s": variant["samples_per_s"],
           f"{prefix}speedup": variant["samples_per_s"] / reference["samples_per_s"],
           f"{prefix}mfu": variant["mfu"], f"{prefix}peak_memory_gib": variant["peak_memory_gib"],
           f"{prefix}samples_per_s_median": variant["samples_per_s_median"], f"{prefix}mfu_median": variant["mfu_median"],
           f"{prefix}loss_step1": variant["losses"][0]}
    hours = OXFORD_SAMPLES / variant.get("samples_per_s_3_epochs", variant["samples_per_s"]) \
        * OXFORD_TOKENS_PER_SAMPLE / variant["tokens_per_sample"] / 3600
    out[f"{prefix}oxford_hours_h200"] = hours
    out[f"{prefix}oxford_hours_rtx_pro_6000_by_flops"] = hours * RTX_PRO_6000_SLOWDOWN
    return out


def variant_table(variants: dict, reference: dict) -> dict:
    """Every variant of the run side by side: mean and median samples/s, MFU, peak memory, step-1 loss."""
    return {name: {"samples_per_s": v["samples_per_s"], "samples_per_s_median": v["samples_per_s_median"],
                   "speedup": v["samples_per_s"] / reference["samples_per_s"], "mfu": v["mfu"],
                   "mfu_median": v["mfu_median"], "peak_memory_gib": v["peak_memory_gib"], "loss_step1": v["losses"][0],
                   "checkpoint_layers": (v.get("config") or {}).get("checkpoint_layers")}
            for name, v in variants.items()}


def eval_figures(evaluation: dict) -> dict:
    """The evaluation's headline: the packed scorer at its fastest batch against the reference's median."""
    best = evaluation.get("packed_best", evaluation["packed"])  # runs before round 2 measured one batch
    ref = evaluation["reference"]
    out = {"eval_images_per_s": best["images_per_s"], "eval_batch_size": best.get("batch", 8),
           "eval_reference_images_per_s": ref["images_per_s"],
           "eval_reference_method": ref.get("method", "sampled generate (top-k 64, top-p 0.95), batch 8"),
           "eval_reference_runs_images_per_s": ref.get("runs_images_per_s", [ref["images_per_s"]]),
           "eval_speedup": best["images_per_s"] / ref["images_per_s"],
           "eval_ours_images_per_s": evaluation["packed"]["images_per_s"],
           "eval_ours_batch8_speedup": evaluation["packed"]["images_per_s"] / ref["images_per_s"],
           "eval_reference_peak_memory_gib": ref["peak_memory_gib"],
           "eval_ours_peak_memory_gib": best["peak_memory_gib"]}
    if "packed_by_batch" in evaluation:
        out["eval_packed_by_batch"] = {b: {"images_per_s": v["images_per_s"], "peak_memory_gib": v["peak_memory_gib"],
                                           "speedup": v["speedup"]} for b, v in evaluation["packed_by_batch"].items()}
    if "ours" in evaluation:
        out["eval_cached_scorer_speedup"] = evaluation["ours"]["images_per_s"] / ref["images_per_s"]
    return out


def agreement_figures(agreement: dict) -> dict:
    return {layers: {"packed_max_abs_diff": a["packed_vs_full"], "cached_max_abs_diff": a["cached_vs_full"],
                     "score_scale": a["score_scale"], "packed_argmax_agreement": a["argmax_agree_packed_full"],
                     "cached_argmax_agreement": a["argmax_agree_cached_full"]} for layers, a in agreement.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="the tag of a train_benchmark.py run (its folder)")
    parser.add_argument("--eval", required=True, help="the tag of an eval_benchmark.py run (its folder)")
    parser.add_argument("--agreement", default="h200_scorer_agreement", help="the tag of a scorer_agreement.py run")
    parser.add_argument("--best", default="ours_bf16_b16_frozen_vision_fused")
    parser.add_argument("--cached", default="ours_bf16_b16_frozen_vision_fused_cached")
    parser.add_argument("--vision-lora", default="ours_bf16_b16_fused")
    parser.add_argument("--agreement-gemma3", default=None, help="the tag of a scorer_agreement.py --family gemma3 run")
    parser.add_argument("--results", default=str(RESULTS), help="the folder holding the run folders")
    args = parser.parse_args()
    results = Path(args.results)
    train_file = f"{args.train}/train.json"
    eval_file = f"{args.eval}/eval.json"
    agreement_file = f"{args.agreement}/scorer_agreement.json"
    train = json.loads((results / train_file).read_text())
    evaluation = json.loads((results / eval_file).read_text())
    agreement = json.loads((results / agreement_file).read_text())
    variants = train["variants"]
    reference = variants["reference"]
    summary = {
        "machine": f"{train['machine']} (one GPU), torch {train['torch']}; transformers 5.24.0, peft 0.21.2, "
                   "bitsandbytes 0.50.2",
        "model": f"random-weight Gemma 4 at 31B widths, {train['text_layers']} text + {train['vision_layers']} "
                 f"vision layers, {reference['parameters'] / 1e9:.2f}B parameters, NF4 + double quant",
        "train_run": {"file": train_file, "date": train["date"], "command": train["command"]},
        "train_variant": args.best, **train_figures(variants[args.best], reference, "train_"),
        "train_reference_samples_per_s": reference["samples_per_s"],
        "train_reference_peak_memory_gib": reference["peak_memory_gib"],
        "train_reference_loss_step1": reference["losses"][0],
        "train_reference_oxford_hours_h200": train_figures(reference, reference, "")["oxford_hours_h200"],
        "tokens_per_sample": variants[args.best]["tokens_per_sample"],
        "train_cached_variant": args.cached, **train_figures(variants[args.cached], reference, "train_cached_"),
        "train_cached_samples_per_s_3_epochs": variants[args.cached]["samples_per_s_3_epochs"],
        "train_cached_mfu_3_epochs": variants[args.cached]["mfu_3_epochs"],
        "train_vision_lora_variant": args.vision_lora, **train_figures(variants[args.vision_lora], reference,
                                                                       "train_vision_lora_"),
        "train_samples_per_s_vision_lora": variants[args.vision_lora]["samples_per_s"],
        "train_variants": variant_table(variants, reference),
        "train_not_run": train.get("not_run", {}),
        "eval_run": {"file": eval_file, "date": evaluation["date"], "command": evaluation["command"]},
        "eval_variant": "petqlora.evaluation.scorers.score_classes_packed (all classes packed after each prompt, "
                        "one forward per batch of images)",
        **eval_figures(evaluation),
        "eval_agreement_with_full_sequence": agreement_figures(agreement),
        "targets": TARGETS,
    }
    summary["targets_met"] = {
        "train_speedup": summary["train_speedup"] >= TARGETS["train_speedup_min"],
        "train_mfu": summary["train_mfu"] >= TARGETS["train_mfu_min"],
        "train_peak_memory": summary["train_peak_memory_gib"] <= TARGETS["train_peak_memory_gib_max"],
        "eval_speedup": summary["eval_speedup"] >= TARGETS["eval_speedup_min"],
    }
    sources = {train_file, eval_file, agreement_file}
    if args.agreement_gemma3:
        gemma3_file = f"{args.agreement_gemma3}/scorer_agreement.json"
        summary["eval_agreement_with_full_sequence_gemma3"] = agreement_figures(
            json.loads((results / gemma3_file).read_text()))
        sources.add(gemma3_file)
    summary["sources"] = sorted(sources)
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
