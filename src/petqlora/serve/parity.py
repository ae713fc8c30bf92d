"""Serving parity: the server, started as a real subprocess on the registered artifact, must answer the test
split over HTTP as evaluate did. The check_serving pipeline step (components/check_serving.py) runs it.

For every test image the served ``breed`` must be evaluate's prediction (finetuned/predictions.jsonl) and
every class probability must be within PROBABILITY_TOLERANCE of the softmax of evaluate's scores. The server
is started with evaluate's batch size and the images are sent in evaluate's order and batches, so both
score the same packed batches; what remains is that predictions.jsonl rounds each log-likelihood to 4
decimals (|error| <= 5e-5, which moves a probability p by at most p * (e^1e-4 - 1) <= 1e-4), plus float noise
between two processes (other thread counts: ~1e-6 on CPU). Hence 2e-4 absolute.

Where it runs: locally, when the registry is a local path (the registered folder is on this machine and
the tiny models fit the pipeline's CPU). With registry=vertex the step records that it was skipped: the
31B base model does not fit the pipeline's CPU image; run this module by hand on a GPU machine instead:

    python -m petqlora.serve.parity --adapter DIR --dataset DIR --evaluation DIR [--model-version REF]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from petqlora.data import dataset as data_lib
from petqlora.serve import contract

log = logging.getLogger("petqlora.serve.parity")

PROBABILITY_TOLERANCE = 2e-4


class ParityError(RuntimeError):
    """The server answered differently from evaluate (the message lists the image ids) or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
    """(status, JSON body) of a GET (no payload) or a POST of `payload`; 4xx/5xx are returned, not raised."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except json.JSONDecodeError:
            return exc.code, {"error": body.decode(errors="replace")}


class ServerProcess:
    """`python -m petqlora.serve ARGS` on 127.0.0.1:<free port>, its log in a file; a context manager that
    waits for health 200 on entry and stops the server on exit."""

    def __init__(self, args: list[str], *, timeout_s: float = 600, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the routes as flags: AIP_* routes in this environment (a serving container) must not move them
        self.args = [sys.executable, "-m", "petqlora.serve", *args, "--host", "127.0.0.1", "--port", str(self.port),
                     "--health-route", contract.HEALTH_ROUTE, "--predict-route", contract.PREDICT_ROUTE]
        self.timeout_s = timeout_s
        self.env = {**os.environ, **(env or {}), "PETQLORA_LOG_FORMAT": "text"}
        self.log_path = Path(tempfile.mkdtemp(prefix="petqlora-serve-")) / "server.log"
        self.process: subprocess.Popen | None = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "ServerProcess":
        with open(self.log_path, "w") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ParityError(f"the server exited with code {self.process.returncode} before it was ready:\n"
                                  f"{self.log_tail()}")
            try:
                if http_json(self.url + contract.HEALTH_ROUTE, timeout=5)[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise ParityError(f"the server was not ready after {self.timeout_s:.0f}s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def softmax(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    p = np.exp(s - s.max())
    return p / p.sum()


def compare(rows: list[dict], predictions: list[dict], classes: list[str], tolerance: float) -> dict:
    """evaluate's rows against the served predictions (same order): the ids that differ, and the largest gap."""
    wrong_class, wrong_prob, largest = [], [], 0.0
    for row, served in zip(rows, predictions, strict=True):
        if served["breed"] != row["prediction"]:
            wrong_class.append(f"{row['id']} (evaluate {row['prediction']!r}, served {served['breed']!r})")
        expected = softmax(row["scores"])
        gap = max(abs(served["probabilities"].get(c, -1.0) - float(p)) for c, p in zip(classes, expected))
        largest = max(largest, gap)
        if gap > tolerance:
            wrong_prob.append(f"{row['id']} (gap {gap:.2e})")
    return {"n": len(rows), "max_abs_probability_gap": largest, "tolerance": tolerance,
            "different_class": wrong_class, "different_probabilities": wrong_prob}


def check_parity(*, adapter_dir: str, dataset_dir: str, evaluation_dir: str, model_version: str | None = None,
                 tolerance: float = PROBABILITY_TOLERANCE, timeout_s: float = 600) -> dict:
    """Serve `adapter_dir` and compare its answers on evaluate's split with EVALUATION/finetuned's predictions;
    returns the comparison, raises ParityError listing the ids that differ."""
    finetuned = Path(evaluation_dir, "finetuned")
    cfg = json.loads((finetuned / "result.json").read_text())["config"]
    if cfg["mode"] != "score":
        raise ParityError(f"evaluate ran with scoring={cfg['mode']!r}: its predictions have no class scores to "
                          "compare; parity needs scoring=score (what the server computes)")
    rows = [json.loads(line) for line in (finetuned / "predictions.jsonl").read_text().splitlines() if line]
    classes = data_lib.read_manifest(dataset_dir)["classes"]
    records = data_lib.read_split(dataset_dir, cfg["split"])[: cfg["max_examples"]]
    if [r["id"] for r in records] != [r["id"] for r in rows]:
        raise ParityError(f"{finetuned / 'predictions.jsonl'} does not list the {cfg['split']} split of {dataset_dir} "
                          "in order: pass the dataset that evaluation read")
    files = [Path(dataset_dir, r["image"]) for r in records]
    args = ["--adapter", adapter_dir, "--device", cfg["device"], "--quantize", cfg["quantize"],
            "--batch-size", str(cfg["batch_size"]), "--max-instances", str(cfg["batch_size"]),
            # every image evaluate read must be accepted, whatever the server's default caps
            "--max-image-bytes", str(max(10_000_000, *(f.stat().st_size for f in files))),
            "--max-image-pixels", str(max(20_000_000, *(r["width"] * r["height"] for r in records))),
            "--top-k", str(len(classes))]
    if model_version:
        args += ["--model-version", model_version]
    started = time.perf_counter()
    predictions = []
    with ServerProcess(args, timeout_s=timeout_s) as server:
        for first in range(0, len(files), cfg["batch_size"]):  # evaluate's batches, in its order
            batch = [{"b64": base64.b64encode(f.read_bytes()).decode()} for f in files[first:first + cfg["batch_size"]]]
            status, body = http_json(server.url + contract.PREDICT_ROUTE, {"instances": batch})
            if status != 200:
                raise ParityError(f"the server answered {status} to the images {first}-{first + len(batch) - 1}: "
                                  f"{body.get('error', body)}\n{server.log_tail()}")
            predictions.extend(body["predictions"])
    result = compare(rows, predictions, classes, tolerance)
    versions = sorted({p["model_version"] for p in predictions})
    result.update(model_version=versions[0] if len(versions) == 1 else versions, seconds=time.perf_counter() - started,
                  adapter=adapter_dir)
    if model_version and versions != [model_version]:
        raise ParityError(f"the server reported model_version {versions}, not {model_version!r}")
    if result["different_class"] or result["different_probabilities"]:
        ids = {d.split(" ", 1)[0] for d in result["different_class"] + result["different_probabilities"]}
        raise ParityError(
            f"the server differs from evaluate on {len(ids)} of {len(rows)} images; different class: "
            f"{'; '.join(result['different_class']) or 'none'}; probabilities off by more than {tolerance:g}: "
            f"{'; '.join(result['different_probabilities']) or 'none'}")
    log.info("serving parity: %d images, same class, probabilities within %.1e (largest gap %.2e)", len(rows),
             tolerance, result["max_abs_probability_gap"])
    return result


def parity_markdown(result: dict) -> str:
    if result.get("skipped"):
        return f"# Serving check\n\n**skipped**: {result['skipped']}\n"
    return ("# Serving check\n\nThe registered artifact, served over HTTP (`python -m petqlora.serve`), answers the "
            f"{result['n']} test images as evaluate did: the same class for every image, every class probability "
            f"within {result['tolerance']:g} of evaluate's (largest gap {result['max_abs_probability_gap']:.2e}).\n\n"
            f"- model_version: `{result['model_version']}`\n- adapter: `{result['adapter']}`\n"
            f"- {result['seconds']:.1f}s, the server's start included\n")


def check_registered(*, registry: str, model_version: str, dataset_dir: str, evaluation_dir: str,
                     report_md: str) -> dict:
    """The check_serving step: parity of the version `model_version` registered in `registry`, on its artifact.

    A local registry's artifact is a folder on this machine: checked here. registry=vertex is skipped with the
    reason (the base model does not fit the pipeline's CPU step; run `python -m petqlora.serve.parity` on a GPU
    machine). The Markdown report goes to `report_md` either way."""
    if registry.startswith("vertex"):
        result = {"skipped": "the registry is Vertex AI: serving the 31B base model needs a GPU, not this pipeline "
                             "step's CPU image. Check it by hand on a GPU machine with `python -m "
                             "petqlora.serve.parity --adapter <artifact> --dataset <dataset> --evaluation "
                             "<evaluation>`"}
    else:
        from petqlora.registry.local import LocalRegistry

        version = LocalRegistry(registry, read_only=True).get(model_version)
        result = check_parity(adapter_dir=version.artifact_uri, dataset_dir=dataset_dir,
                              evaluation_dir=evaluation_dir, model_version=version.ref)
    Path(report_md).write_text(parity_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    from petqlora.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m petqlora.serve.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="the adapter folder (the registered artifact)")
    parser.add_argument("--dataset", required=True, help="the prepared dataset evaluate read")
    parser.add_argument("--evaluation", required=True, help="evaluate's output folder (with finetuned/)")
    parser.add_argument("--model-version", default=None, help="the version the server must report")
    args = parser.parse_args(argv)
    setup_logging(os.environ)
    try:
        result = check_parity(adapter_dir=args.adapter, dataset_dir=args.dataset, evaluation_dir=args.evaluation,
                              model_version=args.model_version)
    except (ParityError, OSError, ValueError) as exc:
        log.error("serving parity failed: %s", exc)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
