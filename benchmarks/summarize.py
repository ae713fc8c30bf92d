"""Write benchmarks/results/summary.json from the raw results, so that every headline figure has a source.

    python benchmarks/summarize.py --train h200_31b_fused_6steps --eval h200_31b_packed

Each run's results are in benchmarks/results/<tag>/. The training figures are the named variants of one
train_benchmark.py run (<tag>/train.json, side by side with its reference); the evaluation figures those of
one eval_benchmark.py run (<tag>/eval.json); agreement from one scorer_agreement.py run
(<tag>/scorer_agreement.json). summary.json names each file it read by its path under benchmarks/results.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="the tag of a train_benchmark.py run (its folder)")
    parser.add_argument("--eval", required=True, help="the tag of an eval_benchmark.py run (its folder)")
    parser.add_argument("--agreement", default="h200_scorer_agreement", help="the tag of a scorer_agreement.py run")
    parser.add_argument("--best", default="ours_bf16_b16_frozen_vision_fused")
    parser.add_argument("--cached", default="ours_bf16_b16_frozen_vision_fused_cached")
    parser.add_argument("--vision-lora", default="ours_bf16_b16_fused")
    args = parser.parse_args()
    train_file = f"{args.train}/train.json"
    eval_file = f"{args.eval}/eval.json"
    agreement_file = f"{args.agreement}/scorer_agreement.json"
    train = json.loads((RESULTS / train_file).read_text())
    evaluation = json.loads((RESULTS / eval_file).read_text())
    agreement = json.loads((RESULTS / agreement_file).read_text())
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
        "eval_run": {"file": eval_file, "date": evaluation["date"], "command": evaluation["command"]},
        "eval_variant": "petqlora.evaluation.evaluate.score_classes_packed, batch 8 (one forward per 8 images, all classes packed)",
        "eval_speedup": evaluation["packed_speedup"],
        "eval_reference_images_per_s": evaluation["reference"]["images_per_s"],
        "eval_ours_images_per_s": evaluation["packed"]["images_per_s"],
        "eval_reference_peak_memory_gib": evaluation["reference"]["peak_memory_gib"],
        "eval_ours_peak_memory_gib": evaluation["packed"]["peak_memory_gib"],
        "eval_cached_scorer_speedup": evaluation["speedup"],
        "eval_agreement_with_full_sequence": {
            layers: {"packed_max_abs_diff": a["packed_vs_full"], "cached_max_abs_diff": a["cached_vs_full"],
                     "score_scale": a["score_scale"], "packed_argmax_agreement": a["argmax_agree_packed_full"],
                     "cached_argmax_agreement": a["argmax_agree_cached_full"]} for layers, a in agreement.items()},
        "targets": TARGETS,
    }
    summary["targets_met"] = {
        "train_speedup": summary["train_speedup"] >= TARGETS["train_speedup_min"],
        "train_mfu": summary["train_mfu"] >= TARGETS["train_mfu_min"],
        "train_peak_memory": summary["train_peak_memory_gib"] <= TARGETS["train_peak_memory_gib_max"],
        "eval_speedup": summary["eval_speedup"] >= TARGETS["eval_speedup_min"],
    }
    summary["sources"] = sorted({train_file, eval_file, agreement_file})
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
