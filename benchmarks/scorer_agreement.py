"""Do the two class scorers agree, and how far apart is any pair of exact methods at this depth in bf16?

    PYTHONUNBUFFERED=1 python benchmarks/scorer_agreement.py --text-layers 4 60 --vision-layers 27
    PYTHONUNBUFFERED=1 python benchmarks/scorer_agreement.py --family gemma3 --text-layers 62 --vision-layers 27 \
        --tag h200_scorer_agreement_gemma3

Writes benchmarks/results/<tag>/scorer_agreement.json (after each depth: a timeout keeps what ran).
Gemma 3 is built at 27B widths (bench_model.gemma3_27b_config); `--widths narrow --device cpu` tries the
script on a CPU.

Scores the same images three ways, each exact in real arithmetic: `score_classes` (prompt cache shared),
`score_classes_packed` (one forward per batch), and full sequences (prompt + candidate, no cache). On a
deep random-weight model in bf16, rounding differences grow with depth; the spread between the cached
and the full-sequence scores shows how much of a packed-vs-cached gap is rounding, not a bug.
"""

import argparse
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
from petqlora.gemma.modeling import base_model, head_logits  # noqa: E402


@torch.no_grad()
def full_sequence_scores(model, encoder, image, classes) -> np.ndarray:
    """Each training sequence (prompt + class + end of turn) through the model, one padded batch of all
    classes; log-probabilities of the supervised tokens summed. The head runs at those positions only (as
    the model's forward would, with its soft-capping): 37 rows x 420 positions x 262k entries would be 16 GB."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encoder.encode([image] * len(classes), classes).items()}
    labels = batch.pop("labels")
    inner = base_model(model)
    hidden = inner.model(**batch, use_cache=False).last_hidden_state
    pos = (labels[:, 1:] != -100).nonzero()
    logp = torch.log_softmax(head_logits(inner, hidden[pos[:, 0], pos[:, 1]]).float(), dim=-1)
    picked = logp.gather(-1, labels[pos[:, 0], pos[:, 1] + 1][:, None])[:, 0]
    return torch.zeros(len(classes), device=device).index_add_(0, pos[:, 0], picked).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_out_arguments(parser, "h200_scorer_agreement")
    parser.add_argument("--family", default="gemma4", choices=("gemma4", "gemma3"))
    parser.add_argument("--text-layers", type=int, nargs="+", default=[4, 60])
    parser.add_argument("--vision-layers", type=int, default=27)
    parser.add_argument("--widths", default="31b", choices=("31b", "narrow"))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    started = time.perf_counter()
    classes = bench_model.OXFORD_CLASSES
    if args.family == "gemma4":
        processor = bench_model.build_processor(280)
    else:
        processor = bench_model.build_gemma3_processor()
    encoder = PromptEncoder(processor, args.family, bench_model.oxford_instruction())
    dataset = bench_model.synthetic_dataset("/tmp/petqlora_bench")
    # Images from the narrowest to the widest (Gemma 4: different soft-token counts in one packed batch).
    test = sorted((data_lib.load_image(dataset, r) for r in data_lib.read_split(dataset, "test")),
                  key=lambda im: im.size[0] / im.size[1])
    images = [test[i] for i in np.linspace(0, len(test) - 1, args.images).round().astype(int)]
    path = bench_model.run_folder(args.out, args.tag) / "scorer_agreement.json"
    report = {}
    for layers in args.text_layers:
        build = bench_model.gemma4_31b_config if args.family == "gemma4" else bench_model.gemma3_27b_config
        config = build(processor.tokenizer, layers, args.vision_layers, args.widths)
        model, _ = bench_model.build_model(config, device=args.device, seed=0)
        model.eval()
        cands = candidate_ids(encoder, classes)
        cached = np.stack([score_classes(model, encoder, im, cands) for im in images])
        packed = score_classes_packed(model, encoder, images, cands)
        full = np.stack([full_sequence_scores(model, encoder, im, classes) for im in images])
        report[layers] = {
            "family": args.family, "images": len(images), "image_sizes": [im.size for im in images],
            "cached_vs_full": float(np.abs(cached - full).max()), "packed_vs_full": float(np.abs(packed - full).max()),
            "packed_vs_cached": float(np.abs(packed - cached).max()), "score_scale": float(np.abs(full).mean()),
            "argmax_agree_cached_full": float((cached.argmax(1) == full.argmax(1)).mean()),
            "argmax_agree_packed_full": float((packed.argmax(1) == full.argmax(1)).mean()),
            # How far the best class leads the second, per image (full sequences): an argmax can only be
            # trusted to agree where this exceeds the gaps above.
            "full_top2_margin": [float(m) for m in np.diff(np.sort(full, axis=1)[:, -2:], axis=1)[:, 0]],
            "elapsed_s": time.perf_counter() - started}
        print(layers, report[layers], flush=True)
        path.write_text(json.dumps(report, indent=1))
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
