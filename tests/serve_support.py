"""The classifier server's test kit, shared by test_serve.py and test_serve_requests.py: a real train_adapter
output on a tiny random Gemma 4, a real uvicorn server in a thread (ThreadServer) and one loaded server with
small caps (`served`), and the request helpers. Test modules import the fixtures they use."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from PIL import Image

from petqlora.data import dataset as data_lib
from petqlora.serve.app import create_app
from petqlora.serve.config import ServeConfig
from petqlora.serve.parity import free_port, http_json
from petqlora.serve.predictor import load_predictor
from petqlora.train.config import TrainConfig
from petqlora.train.train_adapter import train_adapter

# what the server's subprocesses put on PYTHONPATH
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    return pets_dataset(4)


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint, dataset, tmp_path_factory) -> Path:
    """A real train_adapter output (2 steps), so the folder is what registration points at."""
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(base_model=str(tiny_checkpoint("gemma4-31b")), lora_r=4, lora_alpha=4, lora_dropout=0.0,
                      batch_size=4, grad_accum=1, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0,
                      image_token_budget=70, checkpoint_every=0, log_every=1, seed=3)
    train_adapter(dataset, out, cfg)
    return out / "adapter"


def image_files(dataset: Path, split: str = "test") -> list[tuple[dict, Path]]:
    return [(r, dataset / r["image"]) for r in data_lib.read_split(dataset, split)]


def b64(path_or_bytes) -> dict:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return {"b64": base64.b64encode(data).decode()}


def png(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


class ThreadServer:
    """A real uvicorn server on 127.0.0.1 in a thread, serving create_app(cfg, load)."""

    def __init__(self, cfg: ServeConfig, load):
        self.cfg = replace(cfg, host="127.0.0.1", port=free_port())
        self.url = f"http://127.0.0.1:{self.cfg.port}"
        app = create_app(self.cfg, load)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.cfg.port, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def health(self) -> tuple[int, dict]:
        return http_json(self.url + self.cfg.health_route, timeout=30)

    def predict(self, payload) -> tuple[int, dict]:
        return http_json(self.url + self.cfg.predict_route, payload, timeout=120)

    def post_raw(self, body: bytes, method: str = "POST", content_type: str | None = "application/json"
                 ) -> tuple[int, dict]:
        """`body` as it is, with this Content-Type or none (urllib would add a form's)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.cfg.port, timeout=60)
        try:
            connection.request(method, self.cfg.predict_route, body=body,
                               headers={"Content-Type": content_type} if content_type else {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.health()
            if status == 200:
                return body
            assert body["status"] == "loading", body
            time.sleep(0.1)
        raise AssertionError("the model did not load")


LIMITS = dict(max_instances=4, max_image_bytes=300_000, max_image_pixels=1_000_000, max_request_bytes=2_000_000,
              allowed_gcs_prefixes=("gs://pets-uploads/ok",), device="cpu", batch_size=3, top_k=3)


@pytest.fixture(scope="module")
def served(adapter):
    """One loaded server for the module: the limits above, a batch size that splits a 4-image request."""
    cfg = ServeConfig(adapter=str(adapter), **LIMITS)
    with ThreadServer(cfg, lambda: load_predictor(cfg)) as server:
        server.wait_ready()
        yield server
# a request the served server answers 200: what each bad request is followed by
GOOD = {"instances": [{"b64": base64.b64encode(png(40, 30)).decode()}]}
