"""The training entrypoint on the GPU with real 4-bit NF4: loss, checkpoint, kill, resume.

    PYTHONUNBUFFERED=1 python benchmarks/entrypoint_check.py --out benchmarks/results --tag h200_entrypoint

Writes benchmarks/results/h200_entrypoint/entrypoint.json (after each model, so a timeout keeps what ran).

For each model (the tiny `gemma4-31b`, and a random Gemma 4 at the real 31B widths with 4 text + 2 vision
layers, saved as a checkpoint folder by bench_model.py), three runs of
`python -m petqlora.train.train_adapter --dataset D --output O --config C.json` as subprocesses:

1. uninterrupted, into O1;
2. into O2, killed with SIGKILL as soon as its first checkpoint (step 10) is complete, as a lost Cloud Run
   task would be;
3. into O2 again with CLOUD_RUN_TASK_ATTEMPT=1: it must resume from step 10 and finish.

Records each run's metrics.json (loss per step, tokens/s, peak GPU memory, time per step) and the log line
that says where it resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model  # noqa: E402


def entrypoint(dataset: Path, output: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "petqlora.train.train_adapter", "--dataset", str(dataset), "--output", str(output),
            "--config", str(config)]


def run(cmd: list[str], log: Path, env: dict | None = None, kill_when: Path | None = None) -> dict:
    """Run `cmd`; with `kill_when`, SIGKILL it once that path exists. Returns exit code, time, the log tail."""
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        killed = False
        while proc.poll() is None:
            if kill_when is not None and kill_when.exists():
                proc.send_signal(signal.SIGKILL)
                killed = True
                proc.wait()
                break
            time.sleep(0.05)
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if "petqlora" in ln]
    return {"command": " ".join(cmd), "returncode": proc.returncode, "killed": killed,
            "seconds": time.perf_counter() - started, "log": lines[-12:]}


def summary(output: Path) -> dict:
    m = json.loads((output / "metrics.json").read_text())
    losses = [v for _, v in m["loss"]]
    return {"steps": m["steps"], "first_losses": losses[:3], "last_losses": losses[-3:],
            "loss_falls": sum(losses[-3:]) < 0.75 * sum(losses[:3]), "final_loss": m["final_loss"],
            "quantized_layers": m["quantized_layers"], "optimizer": m["optimizer"],
            "tokens_per_s": m["tokens_per_s"], "train_time_s": m["train_time_s"],
            "step_time_s": m["train_time_s"] / m["steps"], "wall_time_s": m["wall_time_s"],
            "peak_memory_gib": m["peak_memory_gib"], "memory_kind": m["memory_kind"], "loss": m["loss"]}


def check(name: str, model_dir: Path, dataset: Path, work: Path, config: dict) -> dict:
    cfg_path = work / f"{name}.json"
    cfg_path.write_text(json.dumps({"base_model": str(model_dir), **config}))
    o1, o2 = work / f"{name}-uninterrupted", work / f"{name}-killed"
    first = config["checkpoint_every"]
    result = {"config": config}
    result["uninterrupted"] = run(entrypoint(dataset, o1, cfg_path), work / f"{name}-1.log")
    result["killed"] = run(entrypoint(dataset, o2, cfg_path), work / f"{name}-2.log",
                           kill_when=o2 / "checkpoints" / f"step-{first:07d}" / "state.json")
    result["checkpoints_after_kill"] = sorted(p.name for p in (o2 / "checkpoints").iterdir())
    result["resumed"] = run(entrypoint(dataset, o2, cfg_path), work / f"{name}-3.log",
                            env={"CLOUD_RUN_TASK_ATTEMPT": "1"})
    result["resumed_from_log"] = [ln for ln in result["resumed"]["log"] if "resuming from" in ln]
    for key, out in (("uninterrupted", o1), ("resumed", o2)):
        if (out / "metrics.json").exists():
            result[key]["metrics"] = summary(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_model.add_out_arguments(parser, "h200_entrypoint")
    parser.add_argument("--work", default="/tmp/petqlora_entrypoint")
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--models", default="mid,tiny", help="mid (31B widths) runs first: it matters most")
    parser.add_argument("--eager", action="store_true",
                        help="fuse_elementwise=false: no compiled norm and gelu kernels (on by default with a GPU)")
    parser.add_argument("--cpu-trial", action="store_true", help="try the script here: no GPU, no 4-bit")
    args = parser.parse_args()
    import torch

    from petqlora.gemma.tiny_models import build_tiny_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = bench_model.synthetic_dataset(work, per_class=10)
    report = {"machine": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv), "models": {}}
    common = dict(quantize="4bit", optimizer="paged_adamw_8bit", epochs=1.0, max_steps=30, warmup_ratio=0.0,
                  checkpoint_every=10, keep_checkpoints=2, log_every=5, seed=3, device="cuda")
    if args.eager:
        common.update(fuse_elementwise=False)
    if args.cpu_trial:
        common.update(quantize="none", optimizer="adamw", device="cpu", max_steps=12, checkpoint_every=5)
    out = bench_model.run_folder(args.out, args.tag) / "entrypoint.json"
    if "mid" in args.models:
        built = bench_model.save_checkpoint_folder(work / "gemma4-31b-widths", args.text_layers, args.vision_layers,
                                                   "cuda" if torch.cuda.is_available() else "cpu")
        report["mid_model"] = built
        report["models"]["gemma4_31b_widths"] = check(
            "mid", Path(built["path"]), dataset, work,
            dict(common, lora_r=16, lora_alpha=16, lora_dropout=0.0, batch_size=8, grad_accum=1,
                 learning_rate=1e-3, image_token_budget=280))
        out.write_text(json.dumps(report, indent=1))
    if "tiny" in args.models:
        tiny = build_tiny_checkpoint("gemma4-31b", work / "tiny-gemma4-31b")
        report["models"]["tiny_gemma4_31b"] = check(
            "tiny", tiny, dataset, work, dict(common, lora_r=8, lora_alpha=8, lora_dropout=0.05, batch_size=4,
                                              grad_accum=1, learning_rate=1e-2, image_token_budget=70))
        out.write_text(json.dumps(report, indent=1))
    print(json.dumps({name: {k: (v.get("metrics", {}).get("first_losses"), v.get("metrics", {}).get("last_losses"),
                                 v.get("metrics", {}).get("peak_memory_gib"), v.get("metrics", {}).get("step_time_s"),
                                 v["returncode"]) for k, v in r.items() if isinstance(v, dict) and "returncode" in v}
                      for name, r in report["models"].items()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
