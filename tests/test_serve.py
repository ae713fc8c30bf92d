"""The classifier server (petqlora.serve) on a tiny random Gemma 4 + a real trained adapter, on CPU, behind a
real uvicorn server on localhost: health before and after loading, predictions equal to evaluate's scorer,
concurrent requests (the bad requests are test_serve_requests.py), Vertex's AIP_*
environment (a subprocess of `python -m petqlora.serve`), a gs:// adapter and gs:// instances through the
Cloud Storage emulator, and a model that cannot load stopping the process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from petqlora.data import dataset as data_lib
from petqlora.serve import contract
from petqlora.serve.config import ServeConfig, read_config
from petqlora.serve.parity import free_port, http_json, softmax
from petqlora.serve.predictor import load_predictor, prediction
from petqlora.serve.serving_info import read_serving_info

from serve_support import SRC, ThreadServer, adapter, b64, dataset, image_files, png, served  # noqa: F401  (fixtures)


# ---- serving.json -----------------------------------------------------------------------------------------

def test_train_adapter_writes_what_the_server_needs(adapter, dataset, tiny_checkpoint):
    info = read_serving_info(adapter)
    manifest = data_lib.read_manifest(dataset)
    assert info.classes == manifest["classes"] and info.instruction == manifest["instruction"]
    assert info.base_model == str(tiny_checkpoint("gemma4-31b")) and info.family == "gemma4"
    assert info.image_token_budget == 70 and info.dataset_hash == manifest["dataset_hash"]


def test_a_folder_without_serving_json_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"serving.json: no such file.*fix: train it again"):
        read_serving_info(tmp_path)


# ---- health and predictions -------------------------------------------------------------------------------

def test_health_is_503_while_loading_and_200_once_loaded(adapter):
    cfg = ServeConfig(adapter=str(adapter), device="cpu")
    gate = threading.Event()

    def load_after_the_gate():
        assert gate.wait(60)
        return load_predictor(cfg)

    with ThreadServer(cfg, load_after_the_gate) as server:
        assert server.health() == (503, {"status": "loading"})
        status, body = server.predict({"instances": [b64(png(64, 64))]})
        assert status == 503 and "still loading" in body["error"]
        gate.set()
        ready = server.wait_ready()
        assert ready["status"] == "ready" and ready["model_version"].startswith("adapter-sha256:")
        assert server.predict({"instances": [b64(png(64, 64))]})[0] == 200


def test_predictions_equal_evaluate_scorer_on_the_same_images(served, adapter, dataset):
    """The served answer against evaluate's own loader and scorer, run here in the test."""
    from petqlora.evaluation.evaluate import EvalConfig, load_for_eval
    from petqlora.evaluation.scorers import candidate_ids, score_classes_packed
    from petqlora.gemma.encoding import PromptEncoder

    info = read_serving_info(adapter)
    files = image_files(dataset)[:4]
    model, processor, family, _ = load_for_eval(EvalConfig(name="check", base_model=info.base_model,
                                                           adapter=str(adapter), image_token_budget=70, device="cpu"))
    encoder = PromptEncoder(processor, family, info.instruction)
    candidates = candidate_ids(encoder, info.classes)
    # the server's batch size is 3: the same packed batches here
    scores = np.concatenate([score_classes_packed(model, encoder, [data_lib.load_image(dataset, r) for r, _ in chunk],
                                                  candidates) for chunk in (files[:3], files[3:])])
    n = len(info.classes)
    status, body = served.predict({"instances": [b64(f) for _, f in files], "parameters": {"top_k": n}})
    assert status == 200, body
    assert len(body["predictions"]) == 4
    for row, served_one in zip(scores, body["predictions"]):
        assert served_one["breed"] == info.classes[int(np.argmax(row))]
        expected = softmax(row)
        assert list(served_one["probabilities"]) == [info.classes[i] for i in np.argsort(-expected, kind="stable")]
        for c, p in zip(info.classes, expected):
            assert abs(served_one["probabilities"][c] - p) < 1e-6
        assert abs(sum(served_one["probabilities"].values()) - 1) < 1e-9
    # the default top_k (3) gives the 3 most likely, most likely first
    status, body = served.predict({"instances": [b64(files[0][1])]})
    first = body["predictions"][0]
    assert status == 200 and len(first["probabilities"]) == 3
    assert list(first["probabilities"])[0] == first["breed"]
    assert first["model_version"] == served.health()[1]["model_version"]


def test_gemma3_is_scored_in_packed_batches_as_evaluate_does(tiny_checkpoint, dataset):
    """Gemma 3 takes the packed scorer, evaluate's path for both families (here against score_classes, the
    per-image cached scorer, which gives the same scores in float32)."""
    from petqlora.evaluation.scorers import candidate_ids, score_classes
    from petqlora.gemma.encoding import PromptEncoder
    from petqlora.gemma.modeling import load_model_and_processor
    from petqlora.serve.predictor import Predictor

    model, processor, family = load_model_and_processor(tiny_checkpoint("gemma3"), quantize_4bit=False,
                                                        device=torch.device("cpu"))
    manifest = data_lib.read_manifest(dataset)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    candidates = candidate_ids(encoder, manifest["classes"])
    images = [data_lib.load_image(dataset, r) for r, _ in image_files(dataset)[:2]]
    predictor = Predictor(model=model, encoder=encoder, family=family, classes=manifest["classes"],
                          candidates=candidates, batch_size=8, model_version="v")
    expected = np.stack([score_classes(model, encoder, im, candidates) for im in images])
    np.testing.assert_allclose(predictor.log_likelihoods(images), expected, rtol=0, atol=1e-4)


def test_prediction_is_the_first_argmax_and_a_softmax_over_the_classes():
    out = prediction(np.array([-2.0, -1.0, -1.0, -5.0]), ["a", "b", "c", "d"], 2, "v1")
    assert out["breed"] == "b" and list(out["probabilities"]) == ["b", "c"]
    total = np.exp([-2.0, -1.0, -1.0, -5.0]).sum()
    assert out["probabilities"]["b"] == pytest.approx(np.exp(-1.0) / total, abs=1e-12)
    assert out["model_version"] == "v1"


def test_scores_that_are_not_finite_are_a_scoring_failure_not_an_answer():
    """A NaN score (an fp16 overflow on a GPU) must fail the request as a JSON 500, not reach the JSON encoder,
    which refuses NaN outside the app's error handling (a plain-text 500) or, lenient, sends invalid JSON."""
    for scores in ([np.nan, -1.0, -2.0], [-np.inf, -np.inf, -np.inf]):
        with pytest.raises(ValueError, match="the model's class scores are not all finite"):
            prediction(np.array(scores), ["a", "b", "c"], 2, "v1")
    assert prediction(np.array([-np.inf, -1.0, -2.0]), ["a", "b", "c"], 3, "v1")["probabilities"]["a"] == 0.0


def test_concurrent_requests_get_the_answers_of_serial_ones(served, dataset):
    files = [f for _, f in image_files(dataset)[:4]]
    serial = [served.predict({"instances": [b64(f)]})[1]["predictions"][0] for f in files]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda f: served.predict({"instances": [b64(f)]}), files * 2))
    assert all(status == 200 for status, _ in answers)
    for i, (_, body) in enumerate(answers):
        got, want = body["predictions"][0], serial[i % 4]
        assert got["breed"] == want["breed"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_concurrent_requests_hold_at_most_two_decoded_requests_in_memory(served, dataset, monkeypatch):
    """Scoring is one at a time, so requests past the one scoring and the one decoded next wait with their body
    undecoded: their images do not sit in memory decoded (8 x 4 images here, 32 x 20 MP allowed)."""
    from petqlora.serve import app as app_module
    from petqlora.serve.predictor import Predictor

    alive, peak, guard = [0], [0], threading.Lock()
    parse, predict = app_module.parse_request, Predictor.predict

    def counted_parse(*args, **kwargs):
        with guard:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return parse(*args, **kwargs)

    def counted_predict(self, *args, **kwargs):
        try:
            return predict(self, *args, **kwargs)
        finally:
            with guard:
                alive[0] -= 1

    monkeypatch.setattr(app_module, "parse_request", counted_parse)
    monkeypatch.setattr(Predictor, "predict", counted_predict)
    payload = {"instances": [b64(f) for _, f in image_files(dataset)[:4]]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: served.predict(payload), range(8)))
    assert [status for status, _ in answers] == [200] * 8
    assert alive[0] == 0 and peak[0] <= 2, peak[0]


# ---- config, environment, process -------------------------------------------------------------------------

def test_flags_win_over_the_aip_environment_which_wins_over_defaults():
    env = {"AIP_HTTP_PORT": "9001", "AIP_HEALTH_ROUTE": "/ready", "AIP_PREDICT_ROUTE": "/v1/predict",
           "AIP_STORAGE_URI": "gs://b/models/adapter"}
    cfg = read_config([], env)
    assert (cfg.port, cfg.health_route, cfg.predict_route, cfg.adapter) == (9001, "/ready", "/v1/predict",
                                                                            "gs://b/models/adapter")
    assert read_config(["--port", "9002"], env).port == 9002
    default = read_config(["--adapter", "x"], {})
    assert (default.port, default.health_route, default.predict_route) == (
        contract.SERVING_PORT, contract.HEALTH_ROUTE, contract.PREDICT_ROUTE)


def test_a_bad_aip_variable_is_named_in_one_line():
    """On Vertex the values come from AIP_* variables, not flags: the message says which one to fix."""
    with pytest.raises(ValueError) as err:
        read_config([], {"AIP_HTTP_PORT": "http", "AIP_STORAGE_URI": "gs://b/m"})
    assert err.value.problems == ("port='http': must be an integer (from AIP_HTTP_PORT)",)
    with pytest.raises(ValueError) as err:
        read_config(["--adapter", "a"], {"AIP_HEALTH_ROUTE": "health"})
    assert err.value.problems == ("health_route='health': must be a path starting with /; fix: e.g. /health "
                                  "(from AIP_HEALTH_ROUTE)",)
    with pytest.raises(ValueError) as err:  # Vertex sets AIP_STORAGE_URI only for a model with an artifact
        read_config([], {"AIP_HTTP_PORT": "8080"})
    assert err.value.problems == ("adapter=None: is required; fix: pass --adapter runs/latest/pipeline_root/<run>/"
                                  "train-adapter/adapter/adapter, or on Vertex register the model with its "
                                  "artifact URI (AIP_STORAGE_URI)",)
    with pytest.raises(ValueError) as err:  # a flag wins, so the flag is what is named
        read_config(["--port", "0"], {"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": "gs://b/m"})
    assert err.value.problems == ("port=0: must be in [1, 65535]",)


def test_config_names_every_wrong_field():
    with pytest.raises(ValueError) as err:
        ServeConfig(adapter="a", health_route="health", predict_route="/p", device="tpu",
                    allowed_gcs_prefixes=("s3://x",))
    text = str(err.value)
    assert "health_route='health': must be a path starting with /" in text
    assert "device='tpu'" in text and "allowed_gcs_prefixes='s3://x'" in text
    with pytest.raises(ValueError, match="predict_route='/h': must differ from health_route"):
        ServeConfig(adapter="a", health_route="/h", predict_route="/h")


def test_registration_declares_the_servers_contract():
    from petqlora.cloud import vertex_models

    spec = vertex_models.serving_container_spec("europe-docker.pkg.dev/p/r/trainer:1.0.0")
    assert list(spec.command) == ["python", "-m", "petqlora.serve"]
    assert list(spec.args) == ["--adapter", "$(AIP_STORAGE_URI)"]
    assert spec.ports[0].container_port == contract.SERVING_PORT
    assert (spec.predict_route, spec.health_route) == (contract.PREDICT_ROUTE, contract.HEALTH_ROUTE)


def test_the_entrypoint_honours_vertex_environment(adapter, dataset):
    """python -m petqlora.serve with no flags: Vertex's variables say the port, routes and adapter."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/v1/ready",
           "AIP_PREDICT_ROUTE": "/v1/models/pets:predict", "AIP_STORAGE_URI": str(adapter)}
    process = subprocess.Popen([sys.executable, "-m", "petqlora.serve", "--host", "127.0.0.1", "--device", "cpu"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            exited = process.poll() is not None
            assert not exited and time.monotonic() < deadline, process.stdout.read() if exited else "not ready"
            try:
                if http_json(url + "/v1/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        status, body = http_json(url + "/v1/models/pets:predict", {"instances": [b64(image_files(dataset)[0][1])]})
        assert status == 200 and body["predictions"][0]["breed"] in read_serving_info(adapter).classes
        assert http_json(url + "/health")[0] == 404  # the default route is not served when Vertex names another
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_model_that_cannot_load_stops_the_server_with_exit_1(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "petqlora.serve", "--adapter", str(tmp_path), "--host", "127.0.0.1",
                             "--port", str(free_port())], env={**os.environ, "PYTHONPATH": SRC},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "serving.json: no such file" in result.stderr


def test_bad_arguments_exit_2_naming_the_field():
    result = subprocess.run([sys.executable, "-m", "petqlora.serve", "--adapter", "x", "--port", "http"],
                            env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "port='http': must be an integer" in result.stderr
    result = subprocess.run([sys.executable, "-m", "petqlora.serve"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": SRC, "AIP_HTTP_PORT": "80a", "AIP_STORAGE_URI": "x"})
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert "serve: bad arguments: port='80a': must be an integer (from AIP_HTTP_PORT)" in result.stderr


# ---- Cloud Storage: a gs:// adapter (AIP_STORAGE_URI) and gs:// instances -----------------------------------

def test_gs_adapter_and_gs_instances_through_the_storage_emulator(adapter, dataset, tmp_path, monkeypatch):
    from gcp_storage_emulator.server import create_server

    from petqlora.cloud import storage

    emulator = create_server("127.0.0.1", 0, in_memory=True, default_bucket="pets-models")
    emulator.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{emulator._api._httpd.server_address[1]}")
        monkeypatch.setattr(storage, "_default_client", None)
        storage.upload_dir(adapter, "gs://pets-models/run-1/adapter")
        record, image = image_files(dataset)[0]
        storage.upload_file(image, "gs://pets-models/uploads/cat.img")
        (tmp_path / "huge.jpg").write_bytes(bytes(200_000))
        storage.upload_file(tmp_path / "huge.jpg", "gs://pets-models/uploads/huge.jpg")
        cfg = ServeConfig(adapter="gs://pets-models/run-1/adapter", device="cpu", cache_dir=str(tmp_path / "cache"),
                          allowed_gcs_prefixes=("gs://pets-models/uploads",), max_image_bytes=100_000)
        with ThreadServer(cfg, lambda: load_predictor(cfg)) as server:
            server.wait_ready()
            assert (tmp_path / "cache" / "adapter" / "serving.json").is_file()  # no /gcs mount: downloaded
            by_uri = server.predict({"instances": [{"gcs_uri": "gs://pets-models/uploads/cat.img"}]})
            inline = server.predict({"instances": [b64(image)]})
            assert by_uri[0] == inline[0] == 200
            assert by_uri[1]["predictions"][0]["probabilities"] == pytest.approx(
                inline[1]["predictions"][0]["probabilities"], abs=1e-6)
            status, body = server.predict({"instances": [{"gcs_uri": "gs://pets-models/uploads/missing.jpg"}]})
            assert status == 404 and "cannot be read" in body["error"] and "no such object" in body["error"], body
            status, body = server.predict({"instances": [{"gcs_uri": "gs://pets-models/uploads/huge.jpg"}]})
            assert status == 413 and "over the limit of 100000 bytes per image" in body["error"], body
        # a base model recorded at its training job's /gcs mount, read where nothing is mounted
        from petqlora.serve.predictor import local_folder

        assert local_folder("/gcs/pets-models/run-1/adapter", tmp_path / "base") == str(tmp_path / "base")
        assert (tmp_path / "base" / "adapter_model.safetensors").is_file()
    finally:
        emulator.stop()
