"""steps: the registration decision, the champion, run_evaluate and run_register_model.

The local registry is the real SQLite one; Vertex registration goes through the real
google-cloud-aiplatform client to the local fake of the Vertex API (tests/fakes/vertex_api.py). Evaluation
runs the real evaluate entrypoint in-process on tiny random models, CPU only.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from petqlora.backends import Backend, GpuRunsError
from petqlora.cloud import vertex_models
from petqlora.registry.lineage import format_lineage
from petqlora.registry.local import LocalRegistry
from petqlora.steps import (
    APPROACHES,
    champion_adapter,
    registration_decision,
    run_evaluate,
    run_register_model,
    sha256_file,
)

from fakes.vertex_api import FakeVertexAPI

NAME = "petqlora-gemma4-pets"
PROJECT, REGION = "my-proj", "us-central1"
DATASET_HASH = "d5" * 32


# ------------------------------------------------------------------------------------------ the decision


def acc(ft, g4, g3=0.2, champion=None) -> dict:
    values = {"finetuned": ft, "gemma4_baseline": g4, "gemma3_baseline": g3}
    return values if champion is None else {**values, "champion": champion}


@pytest.mark.parametrize("accuracy, margin, registered, words", [
    # wins against both baselines by more than the margin, no champion yet
    (acc(0.80, 0.60), 0.02, True, ["registered: fine-tuned accuracy 0.800 beats gemma4_baseline 0.600 by 0.200"]),
    # the best baseline is the one named, whichever it is
    (acc(0.80, 0.40, g3=0.70), 0.02, True, ["beats gemma3_baseline 0.700 by 0.100"]),
    # exactly the margin is enough ("at least")
    (acc(0.62, 0.60), 0.02, True, ["registered:"]),
    # below the margin
    (acc(0.61, 0.60), 0.02, False,
     ["not registered:", "0.610", "does not beat the best baseline (gemma4_baseline 0.600) by the margin 0.020"]),
    # a tie with the best baseline does not beat it
    (acc(0.60, 0.60), 0.02, False, ["not registered:", "gemma4_baseline 0.600"]),
    # worse than a baseline
    (acc(0.30, 0.20, g3=0.50), 0.02, False, ["not registered:", "gemma3_baseline 0.500"]),
    # champion present and beaten
    (acc(0.80, 0.60, champion=0.70), 0.02, True,
     ["registered:", "beats gemma4_baseline 0.600", "and the current version 0.700"]),
    # champion equal: not registered, and it says so
    (acc(0.80, 0.60, champion=0.80), 0.02, False,
     ["not registered:", "does not beat the current registered version (0.800) on the same split"]),
    # champion better
    (acc(0.80, 0.60, champion=0.90), 0.02, False, ["current registered version (0.900)"]),
    # both fail: the baseline, checked first, is the reason given
    (acc(0.61, 0.60, champion=0.90), 0.02, False, ["best baseline (gemma4_baseline 0.600)"]),
], ids=["wins", "best-is-gemma3", "exactly-margin", "below-margin", "tie", "worse", "champion-beaten",
        "champion-equal", "champion-better", "baseline-reason-first"])
def test_registration_decision_table(accuracy, margin, registered, words):
    decision, reason = registration_decision(accuracy, margin)
    assert decision is registered
    assert reason.startswith("registered: " if registered else "not registered: ")
    for w in words:
        assert w in reason, (w, reason)


def test_registration_decision_exact_margin_is_not_lost_to_float_rounding():
    # 3/10 vs 1/10 with a margin of 0.2: 0.1 + 0.2 > 0.3 in floating point
    assert registration_decision(acc(0.3, 0.1, g3=0.0), 0.2)[0] is True


def test_registration_decision_a_tie_never_beats_even_with_no_margin():
    decision, reason = registration_decision(acc(0.5, 0.5), 0.0)
    assert decision is False and reason.startswith("not registered:")


def test_registration_decision_refuses_a_negative_margin():
    with pytest.raises(ValueError, match="win_margin"):
        registration_decision(acc(0.1, 0.5), -0.5)  # would register a model worse than the baseline


# ------------------------------------------------------------------------------------------ register_model


def _write_run(root: Path, *, register: bool = True, reason: str = "registered: fine-tuned accuracy 0.800 beats "
               "gemma4_baseline 0.500 by 0.300") -> dict:
    """The outputs register_model reads: the train step's folder (adapter/ inside) and evaluation.json."""
    adapter_dir = root / "train"
    (adapter_dir / "adapter").mkdir(parents=True)
    (adapter_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    evaluation_dir = root / "evaluate"
    evaluation_dir.mkdir()
    models = {"finetuned": {"accuracy": 0.8, "macro_f1": 0.75, "n_eval": 10, "top3_accuracy": 1.0},
              "gemma4_baseline": {"accuracy": 0.5, "macro_f1": 0.4, "n_eval": 10, "top3_accuracy": 0.9},
              "gemma3_baseline": {"accuracy": 0.3, "macro_f1": 0.2, "n_eval": 10, "top3_accuracy": 0.8}}
    (evaluation_dir / "evaluation.json").write_text(json.dumps({
        "register": register, "reason": reason, "models": models, "classes": ["beagle", "pug"],
        "confusion_matrix": [[5, 0], [2, 3]]}))  # the fine-tuned model's: 8 of 10 right
    lineage = {  # what components/register_model.py builds from its input artifacts
        "dataset": {"uri": str(root / "dataset"), "sha256": DATASET_HASH, "inputs": {"source": "synthetic"}},
        "token_boundary_report": {"uri": str(root / "records"), "sha256": "b" * 64,
                                  "inputs": {"dataset": str(root / "dataset")}},
        "adapter": {"uri": str(adapter_dir), "sha256": sha256_file(adapter_dir / "adapter" / "adapter_model.safetensors"),
                    "inputs": {"dataset": str(root / "dataset"), "base_model": "tiny"}},
        "evaluation": {"uri": str(evaluation_dir), "sha256": sha256_file(evaluation_dir / "evaluation.json"),
                       "inputs": {"adapter": str(adapter_dir), "dataset": str(root / "dataset")}},
    }
    return dict(adapter_dir=str(adapter_dir), adapter_uri="gs://my-bucket/root/train/adapter",
                evaluation_dir=str(evaluation_dir), lineage=lineage, model_name=NAME, project=PROJECT,
                region=REGION, serving_image="us-docker.pkg.dev/p/r/serve:0.1.0", code_revision="3f2a9c1",
                dry_run=False)


def test_register_locally_with_lineage_labels_and_metrics(tmp_path):
    args = _write_run(tmp_path)
    registry = str(tmp_path / "registry.sqlite")
    ref = run_register_model(**args, run_id="run-1", registry=registry)
    assert ref == f"{NAME}@1"
    version = LocalRegistry(registry).get(ref)
    assert version.artifact_uri == str(Path(args["adapter_dir"]) / "adapter")
    assert version.run_id == "run-1"
    assert set(version.aliases) == {"candidate", "default"}
    assert version.labels == {"dataset_hash": DATASET_HASH[:63], "code_revision": "3f2a9c1",
                              "config_fingerprint": "unknown"}  # the lineage here records no fingerprint
    assert version.metrics == {"finetuned_accuracy": 0.8, "gemma4_baseline_accuracy": 0.5,
                               "gemma3_baseline_accuracy": 0.3, "finetuned_macro_f1": 0.75}
    assert version.lineage == args["lineage"]
    text = format_lineage(version)  # what `python pipeline.py lineage NAME@1` prints
    order = [text.index(t) for t in ("dataset\n", "token-boundary report", "adapter\n", "evaluation\n",
                                     f"registered version {NAME}@1")]
    assert order == sorted(order) and "(not recorded)" not in text
    for link in args["lineage"].values():
        assert link["sha256"] in text


def test_the_same_run_registers_once(tmp_path):
    args = _write_run(tmp_path)
    registry = str(tmp_path / "registry.sqlite")
    first = run_register_model(**args, run_id="run-1", registry=registry)
    again = run_register_model(**args, run_id="run-1", registry=registry)  # a retried step
    assert first == again == f"{NAME}@1"
    assert [v.version for v in LocalRegistry(registry).list_versions(NAME)] == [1]
    assert run_register_model(**args, run_id="run-2", registry=registry) == f"{NAME}@2"  # the next run
    assert LocalRegistry(registry).get(NAME).version == 2  # the new version is the default


def test_register_refuses_when_the_evaluation_said_no(tmp_path):
    reason = "not registered: fine-tuned accuracy 0.500 does not beat the best baseline (gemma4_baseline 0.600)"
    args = _write_run(tmp_path, register=False, reason=reason)
    registry = tmp_path / "registry.sqlite"
    with pytest.raises(ValueError) as err:
        run_register_model(**args, run_id="run-1", registry=str(registry))
    assert reason in str(err.value)
    assert not registry.exists()  # nothing written


def test_register_locally_accepts_any_code_revision(tmp_path):
    # e.g. `git describe`: a dot is not allowed in a label value, so it must be sanitised, not fail the run
    args = {**_write_run(tmp_path), "code_revision": "v0.1.0-3-gABC"}
    ref = run_register_model(**args, run_id="run-1", registry=str(tmp_path / "registry.sqlite"))
    assert LocalRegistry(tmp_path / "registry.sqlite").get(ref).labels["code_revision"] == "v0_1_0-3-gabc"


def test_register_dry_run_writes_nothing_locally(tmp_path):
    args = {**_write_run(tmp_path), "dry_run": True}
    run_register_model(**args, run_id="run-1", registry=str(tmp_path / "registry.sqlite"))
    assert not (tmp_path / "registry.sqlite").exists()


def test_register_dry_run_on_vertex_prints_the_upload_request(tmp_path, capsys):
    args = {**_write_run(tmp_path), "dry_run": True}
    run_register_model(**args, run_id="run-1", registry="vertex")  # needs no credentials, sends nothing
    request = json.loads(capsys.readouterr().out)
    assert request["method"] == "UploadModel"
    assert request["model"]["artifact_uri"] == args["adapter_uri"] + "/adapter"


# ------------------------------------------------------------------------------------------ on Vertex (fake)


@pytest.fixture
def fake():
    with FakeVertexAPI() as api:
        yield api


def _register_on_vertex(fake, monkeypatch, **kwargs) -> str:
    """run_register_model(registry="vertex") through the real SDK, pointed at the fake."""
    from google.auth.credentials import AnonymousCredentials

    return run_register_model(**kwargs, registry="vertex", credentials=AnonymousCredentials(),
                              api_endpoint=fake.endpoint)


def test_register_on_vertex_through_the_sdk_is_idempotent(tmp_path, fake, monkeypatch):
    args = _write_run(tmp_path)
    ref = _register_on_vertex(fake, monkeypatch, **args, run_id="petqlora-gemma4-pets-20261128")
    resource, version = ref.split("@")
    assert resource.startswith(f"projects/{PROJECT}/locations/{REGION}/models/") and version == "1"
    model_id = resource.rsplit("/", 1)[1]
    sent = fake.models[model_id][1]
    assert sent["displayName"] == NAME
    assert sent["artifactUri"] == args["adapter_uri"] + "/adapter"  # the folder with the adapter's files
    assert sent["containerSpec"]["imageUri"] == args["serving_image"]
    assert sent["labels"] == {  # one short metric label; the metrics are the version's evaluation
        "dataset_hash": DATASET_HASH[:63], "code_revision": "3f2a9c1", "run_id": "petqlora-gemma4-pets-20261128",
        "finetuned_accuracy": "0_8", "config_fingerprint": "unknown"}
    (evaluation,) = fake.evaluations[(model_id, "1")]
    assert evaluation["metrics"]["confusionMatrix"]["rows"] == [[5, 0], [2, 3]]
    assert evaluation["metadata"]["compared_with"]["gemma4_baseline"]["accuracy"] == 0.5
    assert set(sent["versionAliases"]) == {"candidate", "default", "run-petqlora-gemma4-pets-20261128"}
    assert sent["description"].startswith("registered: fine-tuned accuracy 0.800")

    again = _register_on_vertex(fake, monkeypatch, **args, run_id="petqlora-gemma4-pets-20261128")
    assert again == ref
    assert fake.count("POST", "models:upload") == 1  # the retry found its version
    nxt = _register_on_vertex(fake, monkeypatch, **args, run_id="petqlora-gemma4-pets-20261205")
    assert nxt == f"{resource}@2"
    assert fake.models[model_id][1]["versionAliases"] == ["run-petqlora-gemma4-pets-20261128"]  # default moved


def test_register_on_vertex_refuses_when_the_evaluation_said_no(tmp_path, fake, monkeypatch):
    args = _write_run(tmp_path, register=False, reason="not registered: no")
    with pytest.raises(ValueError, match="not registered: no"):
        _register_on_vertex(fake, monkeypatch, **args, run_id="run-1")
    assert fake.calls == []  # refused before any request


# ------------------------------------------------------------------------------------------ the champion


def test_champion_on_vertex_is_the_default_versions_adapter_through_the_bucket_mount(tmp_path, fake, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    cloud = {"credentials": AnonymousCredentials(), "api_endpoint": fake.endpoint}
    monkeypatch.setattr(vertex_models, "default_version_artifact_uri",
                        functools.partial(vertex_models.default_version_artifact_uri, **cloud))
    assert champion_adapter("vertex", NAME, PROJECT, REGION) is None  # the first run has no champion
    args = _write_run(tmp_path)
    _register_on_vertex(fake, monkeypatch, **args, run_id="run-1")
    assert champion_adapter("vertex", NAME, PROJECT, REGION) == "/gcs/my-bucket/root/train/adapter/adapter"
    _register_on_vertex(fake, monkeypatch, **{**args, "adapter_uri": "gs://my-bucket/root2/train/adapter"},
                        run_id="run-2")
    assert champion_adapter("vertex", NAME, PROJECT, REGION) == "/gcs/my-bucket/root2/train/adapter/adapter"



def test_champion_adapter_is_the_default_versions_artifact(tmp_path):
    db = tmp_path / "registry.sqlite"
    assert champion_adapter(str(db), NAME) is None  # no registry yet: the first run has no champion
    assert not db.exists()  # and asking did not create one
    assert champion_adapter("", NAME) is None
    reg = LocalRegistry(db)
    reg.register("another-model", "runs/x/adapter", run_id="r0", metrics={})
    assert champion_adapter(str(db), NAME) is None
    reg.register(NAME, "runs/1/train/adapter", run_id="r1", metrics={"finetuned_accuracy": 0.7})
    assert champion_adapter(str(db), NAME) == "runs/1/train/adapter"
    reg.register(NAME, "runs/2/train/adapter", run_id="r2", metrics={}, make_default=False)
    assert champion_adapter(str(db), NAME) == "runs/1/train/adapter"  # not the default: not the champion
    reg.register(NAME, "runs/3/train/adapter", run_id="r3", metrics={})
    assert champion_adapter(str(db), NAME) == "runs/3/train/adapter"


# ------------------------------------------------------------------------------------------ run_evaluate


@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory) -> dict:
    """Tiny Gemma 4, Gemma 3 and SigLIP, a synthetic pets set, and a train step's output with a random LoRA
    adapter."""
    from peft import get_peft_model

    from petqlora.gemma.lora import LoraSettings, build_lora_config
    from petqlora.gemma.modeling import load_model
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
    from petqlora.data.synthetic import generate_synthetic_pets
    from petqlora.evaluation.tiny_contrastive import build_tiny_contrastive
    from petqlora.gemma.tiny_models import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("evaluate")
    gemma4 = build_tiny_checkpoint("gemma4-31b", root / "gemma4-31b")
    gemma3 = build_tiny_checkpoint("gemma3", root / "gemma3")
    siglip = build_tiny_contrastive("siglip", root / "siglip")
    source = generate_synthetic_pets(root / "source", per_class=4, seed=0)
    prepare_data(PrepareDataConfig(source=str(source)), root / "dataset")
    model = load_model(gemma4, quantize_4bit=False, device=torch.device("cpu"))
    peft_model = get_peft_model(model, build_lora_config(model, LoraSettings(r=4, alpha=8, dropout=0.0)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    train = root / "train"
    peft_model.save_pretrained(train / "adapter")
    (train / "metrics.json").write_text(json.dumps({"loss": [[1, 2.0], [2, 1.5]], "steps": 2, "wall_time_s": 3.0}))
    return {"gemma4": str(gemma4), "gemma3": str(gemma3), "siglip": str(siglip), "dataset": str(root / "dataset"),
            "train": str(train)}


def test_run_evaluate_scores_every_model_and_the_champion_on_the_same_split(evaluation_inputs, tmp_path):
    calls = []

    class InProcess(Backend):
        """The local backend's entrypoint, run in this process rather than a subprocess (seconds, not minutes);
        one at a time (max_parallel=1): in one process, the entrypoints would share the logging set-up."""

        def run(self, module, args, task_id, **_):
            calls.append((module, task_id, args))
            config = Path(args[args.index("--config") + 1])
            config.write_text(json.dumps({**json.loads(config.read_text()), "device": "cpu", "quantize": "none"}))
            assert importlib.import_module(module).main(args) == 0

    # The champion: the registry's default version is this same adapter, copied where an earlier run left it.
    champion = tmp_path / "earlier-run" / "train" / "adapter"
    shutil.copytree(Path(evaluation_inputs["train"]) / "adapter", champion)
    registry = tmp_path / "registry.sqlite"
    LocalRegistry(registry).register(NAME, str(champion), run_id="earlier-run", metrics={"finetuned_accuracy": 0.5})

    out = tmp_path / "evaluation"
    summary = run_evaluate(
        evaluation_inputs["dataset"], evaluation_inputs["train"], str(out), base_model=evaluation_inputs["gemma4"],
        gemma4_baseline=evaluation_inputs["gemma4"], gemma3_baseline=evaluation_inputs["gemma3"],
        contrastive_baseline=evaluation_inputs["siglip"], gate_on_contrastive=False,
        image_token_budget=70, mode="score", win_margin=0.02, registry=str(registry), model_name=NAME,
        backend=InProcess(max_parallel=1), task_id="run-2-evaluate", report_html=str(tmp_path / "report.html"),
        summary_md=str(tmp_path / "summary.md"))

    assert [task for _, task, _ in calls] == [f"run-2-evaluate-{k}" for k in (
        "finetuned", "gemma4_baseline", "gemma3_baseline", "contrastive_baseline", "champion")]
    configs = {task.rsplit("-", 1)[1]: json.loads(Path(args[args.index("--config") + 1]).read_text())
               for _, task, args in calls}
    adapters = {name: config["adapter"] for name, config in configs.items()}
    assert {name: (config["name"], config["image_token_budget"], config["mode"]) for name, config in configs.items()} \
        == {name: (name, 70, "score") for name in configs}
    assert adapters == {"finetuned": f"{evaluation_inputs['train']}/adapter", "champion": str(champion),
                        "gemma4_baseline": None, "gemma3_baseline": None, "contrastive_baseline": None}
    assert configs["contrastive_baseline"]["base_model"] == evaluation_inputs["siglip"]
    models = summary["models"]
    assert set(models) == set(APPROACHES)
    assert {m["n_eval"] for m in models.values()} == {6}  # the same held-out split for all
    assert models["champion"]["accuracy"] == models["finetuned"]["accuracy"]  # the same adapter scores the same
    first = {k: json.loads((out / k / "predictions.jsonl").read_text().splitlines()[0])["scores"] for k in models}
    assert first["finetuned"] == first["champion"] != first["gemma4_baseline"]  # the adapter was applied

    # A tie with the champion never registers; the reason is the decision's own words.
    assert summary["register"] is False
    assert (summary["register"], summary["reason"]) == registration_decision(
        {k: m["accuracy"] for k, m in models.items()}, 0.02, gate_on_contrastive=False)
    assert "(contrastive_baseline " in summary["reason"] and "not gated" in summary["reason"]
    assert json.loads((out / "contrastive_baseline" / "result.json").read_text())["family"] == "contrastive"
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["register"] is False and saved["reason"] == summary["reason"]
    assert summary["evaluation_sha256"] == sha256_file(out / "evaluation.json")
    summary_md = (tmp_path / "summary.md").read_text()
    assert "**Decision:** Not registered: fine-tuned accuracy" in summary_md
    assert "- base model: " in summary_md and "- dataset hash: " in summary_md  # the run details
    page = (tmp_path / "report.html").read_text()
    assert "Current registered version" in page and "<h2>Run details</h2>" in page
    assert "Contrastive baseline (SigLIP / CLIP, zero-shot)" in page and "Contrastive baseline" in summary["table"]
    assert "- contrastive baseline: " in summary_md and "does not gate registration" in summary_md
    assert (out / "report.html").read_text() == page  # the copy a browser opens by its name


def _evaluate(inputs: dict, tmp_path: Path, backend: Backend) -> dict:
    """run_evaluate of the three models (no registry: no champion) on `backend`."""
    return run_evaluate(
        inputs["dataset"], inputs["train"], str(tmp_path / "evaluation"), base_model=inputs["gemma4"],
        gemma4_baseline=inputs["gemma4"], gemma3_baseline=inputs["gemma3"], image_token_budget=70, mode="score",
        win_margin=0.02, registry=str(tmp_path / "no-registry.sqlite"), model_name=NAME, backend=backend,
        task_id="run-3-evaluate", report_html=str(tmp_path / "report.html"), summary_md=str(tmp_path / "summary.md"))


def test_run_evaluate_runs_the_models_at_once(evaluation_inputs, tmp_path):
    barrier, one_at_a_time, started = threading.Barrier(3, timeout=60), threading.Lock(), []

    class Overlapping(Backend):
        """Each model's run waits until all three have started (run one after another, the first would wait out
        the barrier and fail), then runs the real entrypoint in this process, one at a time."""

        def run(self, module, args, task_id, **_):
            started.append(task_id)
            barrier.wait()
            with one_at_a_time:
                config = Path(args[args.index("--config") + 1])
                config.write_text(json.dumps({**json.loads(config.read_text()), "device": "cpu", "quantize": "none"}))
                assert importlib.import_module(module).main(args) == 0

    summary = _evaluate(evaluation_inputs, tmp_path, Overlapping())
    assert sorted(started) == [f"run-3-evaluate-{k}" for k in ("finetuned", "gemma3_baseline", "gemma4_baseline")]
    assert set(summary["models"]) == {"finetuned", "gemma4_baseline", "gemma3_baseline"}
    assert {m["n_eval"] for m in summary["models"].values()} == {6}


def test_run_evaluate_names_the_model_whose_run_failed(evaluation_inputs, tmp_path):
    class Failing(Backend):
        def run(self, module, args, task_id, **_):
            if task_id.endswith("-gemma3_baseline"):
                raise RuntimeError("CUDA out of memory")

    with pytest.raises(GpuRunsError, match=r"1 of 3 runs failed \(gemma3_baseline\); the others were stopped:\n"
                                           r"  - gemma3_baseline: CUDA out of memory"):
        _evaluate(evaluation_inputs, tmp_path, Failing())


@pytest.mark.integration
def test_run_evaluate_on_the_local_backend_runs_each_model_in_its_own_subprocess_at_once(evaluation_inputs,
                                                                                        tmp_path, monkeypatch):
    """The real local backend: three `python -m petqlora.evaluation.evaluate` subprocesses, all launched before
    any of them has ended. The lifetimes come from the processes themselves (launch and exit), not from their
    first log line, which a loaded machine delays by the seconds an import of torch takes."""
    import subprocess

    import petqlora.backends as backends

    lifetimes: dict[int, list[float]] = {}
    real_popen = subprocess.Popen

    class Timed(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, cmd, *args, **kwargs):
            super().__init__(cmd, *args, **kwargs)
            lifetimes[self.pid] = [time.monotonic(), float("inf"), cmd]

        def wait(self, *args, **kwargs):
            code = super().wait(*args, **kwargs)
            lifetimes[self.pid][1] = min(lifetimes[self.pid][1], time.monotonic())
            return code

    monkeypatch.setattr(backends.subprocess, "Popen", Timed)
    summary = _evaluate(evaluation_inputs, tmp_path, Backend())
    assert {m["n_eval"] for m in summary["models"].values()} == {6}
    evaluations = [(start, end) for start, end, cmd in lifetimes.values() if "petqlora.evaluation.evaluate" in cmd]
    assert len(evaluations) == 3, lifetimes
    assert max(start for start, _ in evaluations) < min(end for _, end in evaluations), lifetimes
