"""Data-parallel scaling of QLoRA training: the same global batch on 1 GPU, then on N, under torchrun.

    PYTHONUNBUFFERED=1 python benchmarks/ddp_benchmark.py --out benchmarks/results --tag h200x2_31b_ddp \
        --text-layers 60 --vision-layers 27 --gpus 1,2

Writes <out>/<tag>/ddp.json (after every GPU count, so a timeout keeps what ran): per GPU count, samples/s
and tokens/s over the timed steps, each step's time and loss, peak memory per GPU (allocated and reserved),
and the scaling factor (samples/s against the smallest count's) with its efficiency (scaling / GPUs).

Each GPU count is one `python -m torch.distributed.run --standalone --nproc-per-node N` of this file in its
worker role. Every rank builds the same random-weight Gemma 4 at the real 31B widths on its own GPU
(bench_model.py; NF4 + double quant, bf16 compute), wraps it with the project's LoRA
(train.loop.prepare_for_training: r=64, alpha=64, dropout 0, gradient checkpointing, fused kernels; the
vision tower frozen unless --adapt-vision), and trains with the project's loop (train.loop.train_steps, so
the step's shares, the token-count all-reduce and the LoRA gradient all-reduce of train/distributed.py are
what is timed) on the project's synthetic pets, batch_size x grad_accum samples per optimizer step on every
GPU count. One process (N=1) is the single-GPU path itself: no process group. The first optimizer step warms
up (kernels, allocator, compiled norms, optimizer state) and is not timed.

`--device cpu` tries the script without a GPU: N gloo processes on the CPU, float32 without 4-bit (the CPU
training path), e.g. `--device cpu --widths narrow --text-layers 1 --vision-layers 1 --lora-r 4`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model  # noqa: E402

# NVLink multicast stays off on the shared GPU hosts (it can take a host's GPUs out of service): kept set in
# the environment of every process this starts.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def parse_gpus(text: str) -> list[int]:
    """"1,2" -> [1, 2]: the GPU (process) counts to run, increasing, each >= 1."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: must be comma-separated whole numbers, e.g. 1,2") from None
    if not counts or any(c < 1 for c in counts) or counts != sorted(set(counts)):
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: must be increasing counts >= 1, e.g. 1,2")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_model_arguments(parser, tag="h200x2_31b_ddp")
    parser.add_argument("--gpus", type=parse_gpus, default=[1, 2],
                        help="GPU counts, e.g. 1,2 (processes with --device cpu)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps, after one warm-up step")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2, help="with --batch-size: the global batch, on every count")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--adapt-vision", action="store_true", help="LoRA on the vision tower too (default: frozen)")
    parser.add_argument("--image-token-budget", type=int, default=280)
    parser.add_argument("--per-class", type=int, default=14, help="synthetic images per breed (6 breeds)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--timeout-s", type=float, default=540, help="per GPU count")
    parser.add_argument("--work", default="/tmp/petqlora_ddp_bench")
    # The worker role, started by torchrun (not for direct use).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def train_config(args, max_steps: int):
    from petqlora.train.config import TrainConfig

    cuda = args.device == "cuda"
    return TrainConfig(base_model="in-memory random weights", lora_r=args.lora_r, lora_alpha=args.lora_r,
                       lora_dropout=0.0, adapt_vision=args.adapt_vision, max_steps=max_steps, learning_rate=5e-5,
                       warmup_ratio=0.0, batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=1024,
                       on_too_long="drop", image_token_budget=args.image_token_budget,
                       quantize="4bit" if cuda else "none", checkpoint_every=0, log_every=1, seed=0,
                       device=args.device)


def check_arguments(args) -> None:
    """Every GPU count must split the global batch evenly (the training step's own rule)."""
    from petqlora.train.config import check_world_size

    cfg = train_config(args, args.steps + 1)
    for n in args.gpus:
        check_world_size(cfg, n)
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be >= 1 (timed steps after the warm-up)")


def worker_command(args, gpus: int, dataset: Path, result: Path) -> list[str]:
    """torchrun with `gpus` processes on this file's worker role, with the run's own arguments."""
    forwarded = ["--text-layers", str(args.text_layers), "--vision-layers", str(args.vision_layers),
                 "--widths", args.widths, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                 "--grad-accum", str(args.grad_accum), "--lora-r", str(args.lora_r),
                 "--image-token-budget", str(args.image_token_budget), "--device", args.device]
    if args.adapt_vision:
        forwarded.append("--adapt-vision")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            str(Path(__file__).resolve()), "--worker", "--dataset", str(dataset), "--result", str(result), *forwarded]


def scaling(configs: dict[str, dict]) -> dict[str, dict]:
    """Per GPU count that ran: samples/s against the smallest count that ran, and that over the GPU ratio."""
    ran = sorted((c["gpus"], c) for c in configs.values() if "samples_per_s" in c)
    if not ran:
        return {}
    base_gpus, base = ran[0]
    return {str(n): {"scaling": c["samples_per_s"] / base["samples_per_s"],
                     "efficiency": c["samples_per_s"] / base["samples_per_s"] / (n / base_gpus),
                     "max_loss_gap": max(abs(a - b) / max(abs(b), 1e-12)
                                         for a, b in zip(c["losses"], base["losses"])),
                     "against_gpus": base_gpus} for n, c in ran}


def prepared_dataset(root: Path, per_class: int) -> Path:
    """The synthetic pets prepared under `root`, reused when an earlier run prepared them."""
    if (root / "dataset" / "manifest.json").is_file():
        return root / "dataset"
    return bench_model.synthetic_dataset(root, per_class=per_class)


def run_config(args, gpus: int, dataset: Path, folder: Path) -> dict:
    """One torchrun of `gpus` processes; its result, or why there is none."""
    result = folder / f"ddp_{gpus}gpu.part.json"
    result.unlink(missing_ok=True)
    cmd = worker_command(args, gpus, dataset, result)
    env = {**os.environ, **MULTICAST_OFF, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # one thread a process, whatever the count: a fair comparison
    started = time.perf_counter()
    print(f"{gpus} {'GPU' if args.device == 'cuda' else 'process'}(es): {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=args.timeout_s)
        returncode, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        returncode = "timeout"
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
    print(output, flush=True)
    out = {"gpus": gpus, "command": " ".join(cmd), "returncode": returncode,
           "wall_s": time.perf_counter() - started}
    if returncode == 0 and result.exists():
        out.update(json.loads(result.read_text()))
        result.unlink()
    else:
        out["error"] = "\n".join(output.splitlines()[-40:])
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        check_arguments(args)
    except ValueError as exc:
        print(f"ddp_benchmark: refused: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    folder = bench_model.run_folder(args.out, args.tag)
    path = folder / "ddp.json"
    dataset = prepared_dataset(Path(args.work) / f"pets{args.per_class}", args.per_class)
    report = {"device": args.device, "text_layers": args.text_layers, "vision_layers": args.vision_layers,
              "widths": args.widths, "global_batch": args.batch_size * args.grad_accum,
              "batch_size": args.batch_size, "grad_accum": args.grad_accum, "lora_r": args.lora_r,
              "adapt_vision": args.adapt_vision, "timed_steps": args.steps,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
              "configs": {}, "scaling": {}}
    for n in args.gpus:
        report["configs"][str(n)] = run_config(args, n, dataset, folder)
        report["scaling"] = scaling(report["configs"])
        path.write_text(json.dumps(report, indent=1))  # after every count: a timeout keeps what ran
    report["total_s"] = time.perf_counter() - started
    path.write_text(json.dumps(report, indent=1))
    for n, c in report["configs"].items():
        s = report["scaling"].get(n, {})
        peak = max((x for x in c.get("peak_memory_gib_per_gpu") or [] if x is not None), default=None)
        print(f"{n} GPU(s): " + (f"{c['samples_per_s']:.3f} samples/s, scaling {s['scaling']:.3f} "
                                  f"(efficiency {s['efficiency']:.3f}), peak "
                                  + ("n/a" if peak is None else f"{peak:.2f} GiB") + " per GPU"
                                  if "samples_per_s" in c else f"failed ({c['returncode']})"))
    print(f"wrote {path}")
    return 0 if all("samples_per_s" in c for c in report["configs"].values()) else 1


# ---- the worker: one rank of one GPU count


def _step_samples(lengths: list[int], cfg, steps: int) -> list[int]:
    """Samples in each of the first `steps` optimizer steps (an epoch's last batch may be short)."""
    from petqlora.train.examples import micro_batches

    stream = micro_batches(lengths, cfg.batch_size, cfg.seed, 0, 0)
    return [sum(len(next(stream)[2]) for _ in range(cfg.grad_accum)) for _ in range(steps)]


def worker(args) -> int:
    import torch

    from petqlora.logs import setup_logging
    from petqlora.train import distributed

    setup_logging(os.environ)
    with distributed.session(os.environ, args.device) as ranks:
        device = ranks.device or torch.device(args.device)
        result = train_and_time(args, ranks, device)
        if ranks.main:
            Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


def _build(args, ranks, device):
    """The model (the same random weights on every rank), LoRA, optimizer and examples: a Trainer."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from petqlora.data import dataset as data_lib
    from petqlora.gemma.encoding import PromptEncoder
    from petqlora.train import distributed
    from petqlora.train.examples import TrainingExamples, select_examples
    from petqlora.train.loop import Trainer, build_optimizer, prepare_for_training, uses_autocast

    cfg = train_config(args, args.steps + 1)
    processor = bench_model.build_processor(args.image_token_budget)
    encoder = PromptEncoder(processor, "gemma4", bench_model.oxford_instruction())
    config = bench_model.gemma4_31b_config(processor.tokenizer, args.text_layers, args.vision_layers, args.widths)
    cuda = device.type == "cuda"
    model, n_params = bench_model.build_model(config, device=str(device), seed=0, quantize=cuda)
    if not cuda:
        model = model.float()  # the CPU training path's dtype
    records = data_lib.read_split(args.dataset, "train")
    records, lengths, _ = select_examples(records, encoder, cfg.max_length, cfg.on_too_long)
    torch.manual_seed(1)  # the same LoRA initialisation on every rank and count
    model, _ = prepare_for_training(model, cfg, device, quantized=cuda)
    trainable = [p for p in model.parameters() if p.requires_grad]
    distributed.broadcast_from_main(ranks, trainable)
    optimizer, _ = build_optimizer(trainable, cfg, device)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, cfg.max_steps)
    trainer = Trainer(model, trainable, optimizer, scheduler, device, uses_autocast(cfg, device), None, ranks)
    examples = TrainingExamples(args.dataset, encoder, records, lengths)
    return cfg, trainer, examples, n_params, sum(p.numel() for p in trainable)


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train_and_time(args, ranks, device) -> dict:
    """One warm-up step, then `steps` timed ones through the training loop; rank 0's view of the run."""
    import gc

    import torch

    from petqlora.train import distributed
    from petqlora.train.checkpoints import TrainState
    from petqlora.train.loop import train_steps

    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    cfg, trainer, examples, n_params, n_trainable = _build(args, ranks, device)
    build_s = time.perf_counter() - t0
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # the bf16 build before quantization is not training's
    weights_gib = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    state, times = TrainState(), []
    for step in range(args.steps + 1):  # one step per call: each is timed on its own
        if cuda:
            torch.cuda.synchronize(device)
        distributed.barrier(ranks)
        tokens_before, t = state.tokens_seen, time.perf_counter()
        train_steps(trainer, examples, state, cfg, state.global_step + 1, save=lambda s: None)
        if cuda:
            torch.cuda.synchronize(device)
        distributed.barrier(ranks)
        times.append((time.perf_counter() - t, state.tokens_seen - tokens_before))
    timed = times[1:]
    samples = _step_samples(examples.lengths, cfg, args.steps + 1)[1:]
    seconds = sum(dt for dt, _ in timed)
    memory = distributed.gather_objects(ranks, {
        "allocated": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else _peak_rss_gib(),
        "reserved": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None})
    return {"world_size": ranks.world_size, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__, "parameters": n_params, "trainable_parameters": n_trainable,
            "examples": len(examples.records), "weights_gib": weights_gib, "build_s": build_s,
            "step_times_s": [dt for dt, _ in times], "losses": [loss for _, loss in state.losses],
            "timed_samples": sum(samples), "samples_per_s": sum(samples) / seconds,
            "tokens_per_s": sum(n for _, n in timed) / seconds,
            "memory_kind": "GPU (allocated)" if cuda else "CPU RSS",
            "peak_memory_gib_per_gpu": [m["allocated"] for m in memory],
            "peak_reserved_gib_per_gpu": [m["reserved"] for m in memory]}


if __name__ == "__main__":
    sys.exit(main())
