"""Load on the classifier server: concurrent clients against `python -m petqlora.serve` on a tiny model, CPU.

    PYTHONPATH=src python benchmarks/serve_load.py --out benchmarks/results --tag serve_load_cpu

Writes benchmarks/results/serve_load_cpu/serve_load.json.

A tiny random Gemma 4 (31B-like, as the local pipeline uses) with a LoRA adapter trained for a few steps by
train_adapter on a generated pets set, served by a real subprocess on localhost exactly as check_serving
starts it. After one warm-up request, CLIENTS threads each send REQUESTS requests of one image (the test and
validation images in turn, base64), back to back. Recorded: every request's status and latency, the
errors, and the server's resident memory (VmRSS of its process) at the start, every 0.5 s, and at the end,
to show whether it stays flat. Scoring is serialized in the server (one model, one lock), so latency under
load is mostly queueing: p50 ~ CLIENTS x the time of one scoring.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from petqlora.data import dataset as data_lib
from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
from petqlora.data.synthetic import generate_synthetic_pets
from petqlora.gemma.tiny_models import build_tiny_checkpoint
from petqlora.serve.parity import ServerProcess, http_json
from petqlora.train.config import TrainConfig
from petqlora.train.train_adapter import train_adapter


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def build_artifact(work: Path) -> tuple[Path, list[bytes]]:
    """A trained tiny adapter (with serving.json) and the image files to send."""
    model = build_tiny_checkpoint("gemma4-31b", work / "model")
    source = generate_synthetic_pets(work / "source", per_class=6, seed=0)
    dataset = prepare_data(PrepareDataConfig(source=str(source)), work / "dataset").path
    train_adapter(dataset, work / "train", TrainConfig(
        base_model=str(model), lora_r=4, lora_alpha=4, lora_dropout=0.0, batch_size=4, grad_accum=1, max_steps=3,
        learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=0, log_every=1, seed=0))
    images = [(Path(dataset) / r["image"]).read_bytes()
              for split in ("test", "validation") for r in data_lib.read_split(dataset, split)]
    return work / "train" / "adapter", images


def run_load(server: ServerProcess, images: list[bytes], clients: int, requests: int) -> dict:
    bodies = [{"instances": [{"b64": base64.b64encode(b).decode()}]} for b in images]
    pid = server.process.pid
    assert http_json(f"{server.url}/predict", bodies[0])[0] == 200  # warm-up: first-call allocations
    rss = [(0.0, rss_mib(pid))]
    started = time.perf_counter()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss.append((time.perf_counter() - started, rss_mib(pid)))

    def client(k: int) -> list[tuple[int, float, str | None]]:
        out = []
        for i in range(requests):
            t = time.perf_counter()
            try:
                status, body = http_json(f"{server.url}/predict", bodies[(k * requests + i) % len(bodies)], timeout=120)
                error = None if status == 200 and len(body.get("predictions", [])) == 1 else str(body)[:200]
            except Exception as exc:  # a refused connection, a timeout: counted, not fatal
                status, error = -1, f"{type(exc).__name__}: {exc}"
            out.append((status, time.perf_counter() - t, error))
        return out

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rows in pool.map(client, range(clients)) for r in rows]
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    rss.append((wall, rss_mib(pid)))
    latency_ms = np.array([seconds * 1000 for _, seconds, _ in results])
    errors = [{"status": s, "error": e} for s, _, e in results if e is not None]
    after_first_quarter = [m for t, m in rss if t >= wall / 4]
    return {
        "clients": clients, "requests_per_client": requests, "requests": len(results), "errors": len(errors),
        "error_examples": errors[:5], "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 2),
        "latency_ms": {q: round(float(np.percentile(latency_ms, p)), 1)
                       for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"mean": round(float(latency_ms.mean()), 1), "max": round(float(latency_ms.max()), 1)},
        "rss_mib": {"start": round(rss[0][1], 1), "end": round(rss[-1][1], 1), "max": round(max(m for _, m in rss), 1),
                    # flat: the last three quarters of the run move within this band
                    "band_after_first_quarter": round(max(after_first_quarter) - min(after_first_quarter), 1)},
        "rss_samples": [[round(t, 1), round(m, 1)] for t, m in rss],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="serve_load_cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        adapter, images = build_artifact(Path(tmp))
        env = {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(sys.path)}
        with ServerProcess(["--adapter", str(adapter), "--device", "cpu"], env=env) as server:
            result = run_load(server, images, args.clients, args.requests)
    result.update(model="tiny random gemma4-31b + LoRA r=4 (train_adapter, 3 steps)", image_token_budget=70,
                  images_per_request=1, distinct_images=len(images), server_torch_threads=args.threads,
                  device="cpu", cpu_count=os.cpu_count(), python=platform.python_version())
    out = Path(args.out) / args.tag
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=1))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
