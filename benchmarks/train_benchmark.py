"""QLoRA training throughput: the published reference recipe against the project's training path.

    PYTHONUNBUFFERED=1 python benchmarks/train_benchmark.py --out benchmarks/results --tag h200_31b \
        --text-layers 60 --vision-layers 27

Writes benchmarks/results/h200_31b/train.json (after every variant, so a timeout keeps what ran).

Every variant trains the same random-weight Gemma 4 (31B widths, NF4 + double quant, bf16 compute; see
bench_model.py), from the same LoRA initialisation (r=64, alpha=64, every linear layer), with paged 8-bit
AdamW at lr 5e-5, on the same samples in the same optimizer steps of 16 samples each:

- reference: the published recipe (Google's Cloud Run sample through TRL's SFTTrainer): batch 1 x
  grad-accum 16, each sample alone (no padding), the model's own loss (logits over the whole vocabulary at
  every position), gradient checkpointing, peft's prepare_model_for_kbit_training, bf16 autocast, LoRA
  dropout 0.05. Written here, since the project does not train this way.
- ours_*: the project's own code (train.loop's prepare_for_training, forward_backward, build_optimizer,
  batch_plan, PromptEncoder.encode, modeling.supervised_logits), with the TrainConfig options named in the
  variant. Each step's 16 samples are grouped by length into batches with batch_plan.
- `<variant>_keep<K>`: that variant with selective activation checkpointing: the last K decoder layers keep
  their activations (TrainConfig.checkpoint_layers = text layers - K), the others recompute them.
- `<variant>_liger`: that variant (fuse_elementwise off) with Liger-Kernel's Gemma 4 RMSNorm and GeGLU
  kernels (`liger_kernel.transformers.apply_liger_kernel_to_gemma4`, patched into the built model) in place
  of the project's fused ones; recorded as not run, with the reason, when liger_kernel cannot be imported.
  Its fused linear cross-entropy is left off: the project's loss already projects only the answer positions.

The first optimizer step of each variant is a warm-up and is not timed. Loss per step is recorded for
every variant (the step-1 loss is the initial model's on the same 16 samples: equal up to rounding).
MFU = 6 x parameters x tokens / time / 790 TFLOP/s (the H200's measured bf16 matrix rate); tokens are the
real (unpadded) ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model  # noqa: E402

from petqlora.data import dataset as data_lib  # noqa: E402
from petqlora.gemma.encoding import PromptEncoder  # noqa: E402
from petqlora.gemma.lora import LoraSettings, build_lora_config  # noqa: E402
from petqlora.gemma.masking import IGNORE_INDEX  # noqa: E402
from petqlora.train.config import TrainConfig  # noqa: E402
from petqlora.train.examples import batch_plan  # noqa: E402
from petqlora.train.feature_cache import ImageFeatureCache  # noqa: E402
from petqlora.train.loop import build_optimizer, forward_backward, prepare_for_training, uses_autocast  # noqa: E402

PEAK_FLOPS = 790e12
SAMPLES_PER_STEP = 16

# TrainConfig overrides per variant; the common part is in `ours_config`.
VARIANTS = {
    # The project's path before this benchmark: supervised-only logits and batches of 8, but fp32
    # upcasts, no autocast, LoRA dropout 0.05, LoRA on the vision tower.
    "ours_as_was_b8": dict(batch_size=8, grad_accum=2, lora_dropout=0.05, upcast_frozen_fp32=True,
                           autocast_bf16=False),
    "ours_bf16_b8": dict(batch_size=8, grad_accum=2, lora_dropout=0.0),
    "ours_bf16_b8_frozen_vision": dict(batch_size=8, grad_accum=2, lora_dropout=0.0, adapt_vision=False),
    "ours_bf16_b16": dict(batch_size=16, grad_accum=1, lora_dropout=0.0),
    "ours_bf16_b16_frozen_vision": dict(batch_size=16, grad_accum=1, lora_dropout=0.0, adapt_vision=False),
    "ours_bf16_b16_fused": dict(batch_size=16, grad_accum=1, lora_dropout=0.0, fuse_elementwise=True),
    "ours_bf16_b16_frozen_vision_fused": dict(batch_size=16, grad_accum=1, lora_dropout=0.0, adapt_vision=False,
                                              fuse_elementwise=True),
    # PEFT's clone of each 4-bit output dropped, LoRA's scale-and-add in one kernel (gemma/lora_epilogue.py).
    "ours_bf16_b16_frozen_vision_fused_epilogue": dict(batch_size=16, grad_accum=1, lora_dropout=0.0,
                                                       adapt_vision=False, fuse_elementwise=True,
                                                       fuse_lora_epilogue=True),
    # Steady state of epochs 2+: the features of every sample are cached before the timed steps (the fill
    # is timed apart and spread over 3 epochs for the amortized figure).
    "ours_bf16_b16_frozen_vision_fused_cached": dict(batch_size=16, grad_accum=1, lora_dropout=0.0,
                                                     adapt_vision=False, fuse_elementwise=True,
                                                     cache_image_features=True),
    # Every lever that paid at once: cached features, the LoRA epilogue (+ `_keep<K>` for selective checkpointing).
    "ours_bf16_b16_frozen_vision_fused_cached_epilogue": dict(batch_size=16, grad_accum=1, lora_dropout=0.0,
                                                              adapt_vision=False, fuse_elementwise=True,
                                                              cache_image_features=True, fuse_lora_epilogue=True),
}
DEFAULT_VARIANTS = ("reference", "ours_bf16_b16_frozen_vision", "ours_bf16_b16_frozen_vision_fused",
                    "ours_bf16_b16_frozen_vision_fused_cached", "ours_bf16_b16_fused")


def variant_options(name: str, text_layers: int) -> tuple[dict, bool]:
    """(TrainConfig overrides, Liger on?) for a variant name: a VARIANTS key, optionally + `_keep<K>` and/or
    + `_liger` (in that order)."""
    liger = name.endswith("_liger")
    base = name.removesuffix("_liger")
    keep = re.fullmatch(r"(.+)_keep(\d+)", base)
    if keep:
        base = keep.group(1)
    if base not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: a name from {', '.join(VARIANTS)}, optionally followed by "
                         "_keep<K> and/or _liger")
    options = dict(VARIANTS[base])
    if keep:
        k = int(keep.group(2))
        if not 0 <= k <= text_layers:
            raise ValueError(f"variant {name!r} keeps {k} layers' activations; the model has {text_layers}")
        options.update(gradient_checkpointing=True, checkpoint_layers=text_layers - k)
    if liger:
        options["fuse_elementwise"] = False  # Liger's kernels take the place of the project's
    return options, liger


def liger_missing() -> str | None:
    """Why Liger-Kernel cannot be used here, or None when it can."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_gemma4  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or triton failing to load without a GPU
        return f"liger_kernel not importable ({type(exc).__name__}: {exc}); install liger-kernel==0.8.5 with triton"
    return None


def apply_liger(model) -> dict[str, int]:
    """Liger's Gemma 4 RMSNorm and GeGLU kernels on the built (LoRA-wrapped) model's language model.

    Liger also swaps the classes in transformers' gemma4 module for models built later; they are put back,
    so that the next variant's model is built as every other one is.
    """
    from liger_kernel.transformers import apply_liger_kernel_to_gemma4
    from transformers.models.gemma4 import modeling_gemma4

    from petqlora.gemma.modeling import base_model

    saved = {k: getattr(modeling_gemma4, k) for k in ("Gemma4RMSNorm", "Gemma4TextMLP")}
    try:
        apply_liger_kernel_to_gemma4(rope=False, cross_entropy=False, fused_linear_cross_entropy=False,
                                     rms_norm=True, geglu=True, model=base_model(model))
    finally:
        for k, v in saved.items():
            setattr(modeling_gemma4, k, v)
    names = [m._get_name() for m in base_model(model).model.language_model.modules()]  # Liger renames what it patched
    return {"rms_norm": names.count("LigerRMSNorm"), "geglu": names.count("LigerGEGLUMLP")}


def ours_config(**overrides) -> TrainConfig:
    values = dict(base_model="in-memory random weights", lora_r=64, lora_alpha=64, learning_rate=5e-5,
                  warmup_ratio=0.0, max_grad_norm=1.0, quantize="4bit", optimizer="paged_adamw_8bit",
                  gradient_checkpointing=True, image_token_budget=280, max_length=1024, device="cuda",
                  fuse_elementwise=False)  # on by default with a GPU: the *_fused variants turn it on
    values.update(overrides)
    return TrainConfig(**values)


def load_samples(dataset: Path, n: int, encoder: PromptEncoder) -> list[dict]:
    records = data_lib.read_split(dataset, "train")
    records = (records * (n // len(records) + 1))[:n]
    samples = [{"image": data_lib.load_image(dataset, r), "label": r["label"]} for r in records]
    for x in samples:
        x["length"] = int(encoder.encode([x["image"]], [x["label"]])["attention_mask"].sum())
    return samples


def encode_steps(encoder: PromptEncoder, samples: list[dict], steps: int, batch_size: int | None):
    """Per optimizer step, its micro-batches: one sample each (batch_size None) or length-grouped batches.

    Each micro-batch carries `image_keys`, one per sample position (as distinct as the images of an epoch).
    """
    out = []
    for s in range(steps):
        first = s * SAMPLES_PER_STEP
        window = samples[first:first + SAMPLES_PER_STEP]
        if batch_size is None:
            groups = [[i] for i in range(len(window))]
        else:
            groups = batch_plan([x["length"] for x in window], batch_size, seed=0, epoch=s)  # sorts the 16 by length, then cuts
        batches = [encoder.encode([window[i]["image"] for i in g], [window[i]["label"] for i in g]) for g in groups]
        for b, g in zip(batches, groups):
            b["image_keys"] = [f"sample-{first + i}" for i in g]
        out.append(batches)
    return out


def fill_cache(cache: ImageFeatureCache, plan: list[list[dict]], device, autocast: bool) -> None:
    """Epoch 1's vision work: every sample's features into the cache, as the training loop's first epoch does."""
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for micro_batches in plan:
            for b in micro_batches:
                cache.substitute({k: v.to(device) for k, v in b.items() if k not in ("labels", "image_keys")},
                                 b["image_keys"])


def reference_step(model, micro_batches: list[dict], device) -> tuple[float, int]:
    """Batch 1 x grad-accum 16 with the model's own full-vocabulary loss, weighted per supervised token."""
    n_sup = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    total, seen = 0.0, 0
    for b in micro_batches:
        batch = {k: v.to(device) for k, v in b.items() if k != "image_keys"}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(**batch, use_cache=False)
        k = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = out.loss * k / n_sup  # TRL's num_items_in_batch weighting: the mean over the step's tokens
        loss.backward()
        total += loss.item()
        seen += int(b["attention_mask"].sum())
        del out, loss
    return total, seen


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _gib(stat: str, device) -> float | None:
    return getattr(torch.cuda, stat)() / 2**30 if device.type == "cuda" else None


def run_variant(name: str, args, config, encoder, samples) -> dict:
    device = torch.device(args.device)  # cpu only to try the script: 4-bit on CPU, AdamW
    reference = name == "reference"
    steps = args.ref_steps if reference else args.steps
    on_cpu = dict(device="cpu", optimizer="adamw") if device.type == "cpu" else {}
    options, liger = (None, False) if reference else variant_options(name, args.text_layers)
    cfg = None if reference else ours_config(**{**options, **on_cpu})
    started = time.perf_counter()
    plan = encode_steps(encoder, samples, steps, None if reference else cfg.batch_size)
    encode_s = time.perf_counter() - started
    model, n_params = bench_model.build_model(config, device=device.type, seed=0)
    build_s = time.perf_counter() - started - encode_s
    _sync(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the bf16 build before quantization is not training's
    weights_gib = _gib("memory_allocated", device)
    torch.manual_seed(1)  # the same LoRA initialisation in every variant
    if reference:
        from peft import get_peft_model, prepare_model_for_kbit_training

        lora = build_lora_config(model, LoraSettings(r=64, alpha=64, dropout=0.05, adapt_vision=True))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, lora)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        import bitsandbytes as bnb

        optimizer = (bnb.optim.PagedAdamW8bit(trainable, lr=5e-5, weight_decay=0.0) if device.type == "cuda"
                     else torch.optim.AdamW(trainable, lr=5e-5, weight_decay=0.0))
        step_fn = lambda mbs: reference_step(model, mbs, device)  # noqa: E731
    else:
        model, _ = prepare_for_training(model, cfg, device, quantized=True)
        liger_counts = apply_liger(model) if liger else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer, _ = build_optimizer(trainable, cfg, device)
        autocast = uses_autocast(cfg, device)
        cache = ImageFeatureCache(model) if cfg.cache_image_features else None
        if cache is not None:
            _sync(device)
            t0 = time.perf_counter()
            fill_cache(cache, plan, device, autocast)
            _sync(device)
            fill_s = time.perf_counter() - t0
        step_fn = lambda mbs: forward_backward(model, mbs, device, autocast, cache)  # noqa: E731
    n_trainable = sum(p.numel() for p in trainable)
    losses, times, tokens, padded = [], [], [], []
    for s, micro_batches in enumerate(plan):
        _sync(device)
        t0 = time.perf_counter()
        loss, seen = step_fn(micro_batches)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        tokens.append(seen)
        padded.append(sum(b["input_ids"].numel() for b in micro_batches))
        print(f"  {name} step {s + 1}/{steps}: loss {loss:.4f}, {times[-1]:.2f}s", flush=True)
    timed = slice(1, None)  # step 1 warms up (kernels, allocator, optimizer state)
    t = sum(times[timed])
    n_samples = SAMPLES_PER_STEP * len(times[timed])
    result = {
        "variant": name, "config": None if reference else {k: v for k, v in vars(cfg).items()},
        "recipe": ("batch 1 x grad-accum 16, full-vocabulary logits (model loss), gradient checkpointing, "
                   "prepare_model_for_kbit_training, bf16 autocast, LoRA dropout 0.05, paged 8-bit AdamW")
        if reference else "petqlora.train.train_adapter path",
        "parameters": n_params, "trainable_parameters": n_trainable, "weights_gib": weights_gib,
        "steps": steps, "timed_steps": len(times[timed]), "step_times_s": times, "losses": losses,
        "samples_per_s": n_samples / t, "tokens_per_s": sum(tokens[timed]) / t,
        "padded_tokens_per_s": sum(padded[timed]) / t, "tokens_per_sample": sum(tokens) / (SAMPLES_PER_STEP * steps),
        "padding_fraction": 1 - sum(tokens) / sum(padded),
        "mfu": 6 * n_params * sum(tokens[timed]) / t / PEAK_FLOPS,
        # Medians over the timed steps: robust to a slow step while allocator and kernels settle.
        "median_step_s": statistics.median(times[timed]),
        "samples_per_s_median": SAMPLES_PER_STEP / statistics.median(times[timed]),
        "mfu_median": statistics.median(6 * n_params * n / dt / PEAK_FLOPS for n, dt in zip(tokens[timed], times[timed])),
        "peak_memory_gib": _gib("max_memory_allocated", device),
        "peak_reserved_gib": _gib("max_memory_reserved", device),
        "encode_s": encode_s, "build_s": build_s,
    }
    if liger:
        result["liger_patched"] = liger_counts
    if not reference and cfg.cache_image_features:
        # Per sample: a cached step's time plus the vision work of filling the cache, spread over 3 epochs.
        fill_per_sample = fill_s / (SAMPLES_PER_STEP * steps)
        per_sample_3 = t / n_samples + fill_per_sample / 3
        result.update(cache_fill_s=fill_s, cache_fill_images_per_s=1 / fill_per_sample,
                      cache_host_gib=cache.nbytes / 2**30, samples_per_s_3_epochs=1 / per_sample_3,
                      mfu_3_epochs=result["mfu"] * (t / n_samples) / per_sample_3)
    if args.profile == name:
        result["profile"] = profile_step(lambda: step_fn(plan[-1]), optimizer, device)
    result["wall_s"] = time.perf_counter() - started
    model = optimizer = trainable = step_fn = None  # free the 31B model before the next variant builds one
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


KERNEL_KINDS = (  # substrings of CUDA kernel names, first match wins
    ("dequantize (bitsandbytes)", ("dequantize", "kDequant")),
    ("attention", ("fmha", "flash", "attention", "softmax")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "wgmma")),
    ("fused (triton, torch.compile)", ("triton",)),
    ("optimizer (8-bit AdamW)", ("optimizer", "adam")),
    ("element-wise, reductions, copies", ("elementwise", "reduce", "copy", "cat", "index", "scatter", "gather",
                                          "fill", "memcpy", "memset")),
)


def profile_step(step, optimizer, device) -> dict:
    """One more step under torch.profiler: GPU time per kind of kernel and the busiest kernels (on a CPU,
    operator times, only to try the script)."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU]) as prof:
        step()
        _sync(device)
    wall = time.perf_counter() - t0
    optimizer.zero_grad(set_to_none=True)
    attr = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    kinds: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        kind = next((k for k, subs in KERNEL_KINDS if any(x.lower() in name for x in subs)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + getattr(e, attr) / 1e6
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:25]
    return {"step_wall_s": wall, "gpu_busy_s": sum(kinds.values()),
            "gpu_s_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "kernel_launches": sum(e.count for e in events),
            "top_kernels": [{"name": e.key[:160], "gpu_s": getattr(e, attr) / 1e6, "calls": e.count} for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per ours_* variant (first untimed)")
    parser.add_argument("--ref-steps", type=int, default=2, help="optimizer steps for the reference")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from: reference, {', '.join(VARIANTS)}; each optionally + _keep<K> "
                             "(the last K decoder layers keep their activations) and/or + _liger")
    parser.add_argument("--profile", default="", help="variant to profile for one extra step (kernel time by kind)")
    parser.add_argument("--deadline-s", type=float, default=420, help="start no variant after this many seconds")
    parser.add_argument("--work", default="/tmp/petqlora_bench")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    for name in args.variants.split(","):  # a typo ends the run here, not after minutes of other variants
        try:
            name == "reference" or variant_options(name, args.text_layers)
        except ValueError as exc:
            parser.error(str(exc))
    started = time.perf_counter()
    path = bench_model.run_folder(args.out, args.tag) / "train.json"
    processor = bench_model.build_processor(280)
    encoder = PromptEncoder(processor, "gemma4", bench_model.oxford_instruction())
    config = bench_model.gemma4_31b_config(processor.tokenizer, args.text_layers, args.vision_layers, args.widths)
    dataset = bench_model.synthetic_dataset(args.work)
    samples = load_samples(dataset, SAMPLES_PER_STEP * max(args.steps, args.ref_steps), encoder)
    report = {"machine": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "text_layers": args.text_layers, "vision_layers": args.vision_layers, "widths": args.widths,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
              "samples_per_step": SAMPLES_PER_STEP, "peak_flops": PEAK_FLOPS, "variants": {}, "not_run": {}}
    for name in args.variants.split(","):
        if time.perf_counter() - started > args.deadline_s:
            report["not_run"][name] = "deadline reached"
            continue
        print(f"variant {name}", flush=True)
        if name.endswith("_liger") and (why := liger_missing()):
            print(f"  skipped: {why}", flush=True)
            report["not_run"][name] = why
            path.write_text(json.dumps(report, indent=1))
            continue
        try:
            report["variants"][name] = run_variant(name, args, config, encoder, samples)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' figures
            import traceback

            traceback.print_exc()
            report["not_run"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        path.write_text(json.dumps(report, indent=1))  # after every variant: a timeout keeps what ran
    ref = report["variants"].get("reference")
    for v in report["variants"].values():
        if ref:
            v["speedup_vs_reference"] = v["samples_per_s"] / ref["samples_per_s"]
            v["loss_step1_minus_reference"] = v["losses"][0] - ref["losses"][0]
            if len(ref["losses"]) > 1 and len(v["losses"]) > 1:
                v["loss_step2_minus_reference"] = v["losses"][1] - ref["losses"][1]
        print(f"{v['variant']:40s} {v['samples_per_s']:7.3f} samples/s  {v['tokens_per_s']:8.0f} tok/s  "
              f"MFU {v['mfu']:.3f}  peak {v['peak_memory_gib'] or 0:6.2f} GiB  losses {[round(x, 4) for x in v['losses']]}")
        print(f"{'':40s} median step {v['median_step_s']:.2f}s: {v['samples_per_s_median']:.3f} samples/s, "
              f"MFU {v['mfu_median']:.3f}")
        if "samples_per_s_3_epochs" in v:
            print(f"{'':40s} {v['samples_per_s_3_epochs']:7.3f} samples/s over 3 epochs (cache fill "
                  f"{v['cache_fill_images_per_s']:.1f} images/s)  MFU {v['mfu_3_epochs']:.3f}")
    report["total_s"] = time.perf_counter() - started
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
