"""Registration as Vertex expects it: a complete serving container spec, the evaluation imported as a
classification ModelEvaluation of the version, and register_model's output a google.VertexModel artifact
that names the version. Pure builders against literals; the rest through the real SDK and the fake."""

# No `from __future__ import annotations`: kfp reads the component's annotations as real types.
import functools
import json
import re

import pytest
from google.api_core import exceptions as api_exceptions
from kfp.dsl import Artifact, Dataset, Markdown, Model

from petqlora.cloud import vertex_models
from petqlora.cloud.vertex_artifacts import VertexModel, record_registration, vertex_model_uri
from petqlora.cloud.vertex_common import rest_request, to_json_dict
from petqlora.cloud.vertex_evaluations import CLASSIFICATION_METRICS_SCHEMA, classification_evaluation

from vertex_support import ALT, LOCATION, PROJECT, REGION, cloud, fake, no_credentials  # noqa: F401

IMAGE = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"
EVALUATION = {  # evaluation.json as run_evaluate writes it (two breeds, four test images)
    "models": {"finetuned": {"accuracy": 0.75, "macro_f1": 0.7333, "n_eval": 4, "top3_accuracy": 1.0},
               "gemma4_baseline": {"accuracy": 0.5, "macro_f1": 0.3333, "n_eval": 4, "top3_accuracy": 1.0},
               "gemma3_baseline": {"accuracy": 0.25, "macro_f1": 0.2, "n_eval": 4, "top3_accuracy": 1.0}},
    "classes": ["beagle", "pug"], "confusion_matrix": [[2, 0], [1, 1]], "register": True,
    "reason": "registered: fine-tuned accuracy 0.750 beats gemma4_baseline 0.500 by 0.250",
}


def test_serving_container_spec_is_complete_and_pinned():
    assert to_json_dict(vertex_models.serving_container_spec(IMAGE)) == {
        "image_uri": IMAGE, "command": ["python", "-m", "petqlora.serve"],
        "args": ["--adapter", "$(AIP_STORAGE_URI)"], "ports": [{"container_port": 8080}],
        "predict_route": "/predict", "health_route": "/health"}


@pytest.mark.parametrize("image", ["us-docker.pkg.dev/p/r/serve:latest", "us-docker.pkg.dev/p/r/serve", ""])
def test_register_refuses_an_unpinned_serving_image(image):
    with pytest.raises(ValueError, match="serving_container_image_uri="):
        vertex_models.register_vertex_model(
            project=PROJECT, region=REGION, display_name="m", artifact_uri="gs://b/adapter",
            serving_container_image_uri=image, parent_model=None, version_aliases=[], labels={}, run_id="r",
            dry_run=True, out=lambda _: None)


def test_the_evaluation_import_request_is_built_purely():
    from google.cloud.aiplatform.compat.types import model_service

    evaluation = classification_evaluation(EVALUATION, run_id="run-7")
    request = model_service.ImportModelEvaluationRequest(parent=f"{LOCATION}/models/42@3", model_evaluation=evaluation)
    assert rest_request("model_service", "ImportModelEvaluation", request) == {
        "method": "ImportModelEvaluation", "http": f"POST /v1/{LOCATION}/models/42%403/evaluations:import",  # "@" escaped
        "query": ALT,
        "body": {"modelEvaluation": {
            "displayName": "test split, pipeline run run-7",
            "metricsSchemaUri": CLASSIFICATION_METRICS_SCHEMA,
            "metrics": {
                "confidenceMetrics": [
                    {"confidenceThreshold": 0.0, "maxPredictions": 1.0, "recall": 0.75, "precision": 0.75,
                     "f1Score": 0.75, "recallAt1": 0.75, "precisionAt1": 0.75, "f1ScoreAt1": 0.75,
                     "f1ScoreMacro": 0.7333},
                    # top-3 of two breeds: both labels for each image, one of them right
                    {"confidenceThreshold": 0.0, "maxPredictions": 2.0, "recall": 1.0, "precision": 0.5,
                     "f1Score": 2 / 3}],
                "confusionMatrix": {"annotationSpecs": [{"id": "0", "displayName": "beagle"},
                                                        {"id": "1", "displayName": "pug"}],
                                    "rows": [[2.0, 0.0], [1.0, 1.0]]}},
            "metadata": {"pipeline_job": "run-7", "evaluated_images": 4.0, "decision": EVALUATION["reason"],
                         "compared_with": {"gemma4_baseline": {"accuracy": 0.5, "macro_f1": 0.3333},
                                           "gemma3_baseline": {"accuracy": 0.25, "macro_f1": 0.2}}}}}}


def test_an_unanswered_image_lowers_precision_not_recall_and_no_top3_without_scores():
    unparseable = {**EVALUATION, "confusion_matrix": [[2, 0], [0, 1]],  # one pug answered no breed at all
                   "models": {"finetuned": {"accuracy": 0.75, "macro_f1": 0.8, "n_eval": 4, "top3_accuracy": None}}}
    (top1,) = to_json_dict(classification_evaluation(unparseable, run_id="r"))["metrics"]["confidenceMetrics"]
    assert (top1["recall"], top1["precision"]) == (0.75, 1.0)  # 3 of 4 images right; every answer given was


@pytest.mark.parametrize("change, words", [
    ({"confusion_matrix": [[1, 1], [1, 1]]}, "disagrees with the confusion matrix (2 of 4 on the diagonal)"),
    ({"confusion_matrix": [[2, 0, 0], [1, 1, 0]]}, "must be 2 x 2 counts"),
    ({"confusion_matrix": [[5, 0], [1, 1]]}, "counts more answers than the 4 images evaluated"),
    ({"classes": ["pug", "pug"]}, "must be 2+ distinct class names"),
], ids=["diagonal", "ragged", "too-many", "classes"])
def test_an_inconsistent_evaluation_is_refused_before_any_request(change, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        classification_evaluation({**EVALUATION, **change}, run_id="r")


def _register(fake, run_id="run-1", **overrides):
    args = dict(project=PROJECT, region=REGION, display_name="petqlora-gemma4", artifact_uri=f"gs://b/{run_id}/adapter",
                serving_container_image_uri=IMAGE, parent_model=None, version_aliases=["candidate"],
                labels={"finetuned_accuracy": 0.75}, run_id=run_id, evaluation=EVALUATION, out=lambda _: None)
    return vertex_models.register_vertex_model(**{**args, **overrides}, **cloud(fake))


def test_register_sends_the_container_spec_and_imports_the_evaluation_once(fake):
    first = _register(fake)
    model_id = first["resource_name"].rsplit("/", 1)[1]
    assert fake.models[model_id][1]["containerSpec"] == {
        "imageUri": IMAGE, "command": ["python", "-m", "petqlora.serve"], "args": ["--adapter", "$(AIP_STORAGE_URI)"],
        "ports": [{"containerPort": 8080}], "predictRoute": "/predict", "healthRoute": "/health"}
    (stored,) = fake.evaluations[(model_id, "1")]
    assert first["evaluation"] == stored["name"] and stored["metricsSchemaUri"] == CLASSIFICATION_METRICS_SCHEMA
    assert stored["metrics"]["confusionMatrix"]["annotationSpecs"][1] == {"id": "1", "displayName": "pug"}
    assert _register(fake)["evaluation"] == first["evaluation"]  # a retried step: same version, same evaluation
    assert fake.count("POST", "evaluations:import") == 1 and fake.count("POST", "models:upload") == 1
    second = _register(fake, "run-2")
    assert second["version_id"] == "2" and len(fake.evaluations[(model_id, "2")]) == 1
    assert fake.evaluations[(model_id, "1")] == [stored]  # each version keeps its own evaluation


def test_the_fake_checks_the_classification_schema(fake):
    # "accuracy" is not a field of classification_metrics_1.0.0.yaml: Vertex (and the fake) answer 400
    first = _register(fake)
    bad = classification_evaluation(EVALUATION, run_id="other-run")
    bad.metrics = {**dict(bad.metrics), "accuracy": 0.75}
    from google.cloud.aiplatform.compat.types import model_service

    from petqlora.cloud.vertex_common import vertex_session

    with vertex_session(PROJECT, REGION, **cloud(fake)), pytest.raises(api_exceptions.BadRequest, match="accuracy"):
        client = vertex_models._model_client(first["resource_name"], project=PROJECT, region=REGION,
                                             credentials=cloud(fake)["credentials"])
        client.import_model_evaluation(request=model_service.ImportModelEvaluationRequest(
            parent=f"{first['resource_name']}@1", model_evaluation=bad))


def test_an_evaluation_of_another_model_in_the_answer_is_not_trusted(fake, monkeypatch):
    first = _register(fake)
    original = fake.import_model_evaluation

    def elsewhere(**kw):
        return {**original(**kw), "name": f"{LOCATION}/models/999/evaluations/1"}

    monkeypatch.setattr(fake, "import_model_evaluation", elsewhere)
    with pytest.raises(RuntimeError, match="not one of that model"):
        _register(fake, "run-2", parent_model=first["resource_name"])


def test_dry_run_register_prints_upload_lookups_and_the_evaluation(no_credentials):
    lines = []
    payload = vertex_models.register_vertex_model(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4", artifact_uri="gs://b/adapter",
        serving_container_image_uri=IMAGE, parent_model=None, version_aliases=["candidate"],
        labels={"finetuned_accuracy": 0.8734}, run_id="tiny-pipeline-2026", evaluation=EVALUATION, dry_run=True,
        out=lines.append)
    assert json.loads(lines[0]) == payload
    assert (payload["method"], payload["http"], payload["query"]) == (
        "UploadModel", f"POST /v1/{LOCATION}/models:upload", ALT)
    model = payload["model"]
    assert model["labels"] == {"finetuned_accuracy": "0_8734", "run_id": "tiny-pipeline-2026"}
    assert model["version_aliases"] == ["candidate", "run-tiny-pipeline-2026", "default"]
    assert model["container_spec"] == to_json_dict(vertex_models.serving_container_spec(IMAGE))
    assert "parent_model" not in payload  # not known offline: the lookup below finds it
    assert payload["parent_model_lookup"]["query"] == {"filter": 'display_name="petqlora-gemma4"', **ALT}
    assert payload["run_check"]["method"] == "ListModelVersions" and "needs_lookup" in payload["run_check"]
    assert payload["evaluation_import"]["model_evaluation"] == to_json_dict(
        classification_evaluation(EVALUATION, run_id="tiny-pipeline-2026"))
    assert "its parent is the version UploadModel creates" in payload["evaluation_import"]["needs_lookup"]


def test_register_creates_parent_then_adds_versions_and_is_idempotent(fake):
    from google.cloud.aiplatform import initializer

    config_before = initializer.global_config
    first = _register(fake, "run-1")
    assert first["version_id"] == "1" and not first["reused"]
    assert first["labels"] == {"finetuned_accuracy": "0_75", "run_id": "run-1"}
    assert set(first["aliases"]) == {"candidate", "run-run-1", "default"}

    second = _register(fake, "run-2")
    assert second["resource_name"] == first["resource_name"]  # same parent model
    assert second["version_id"] == "2"
    assert set(second["aliases"]) == {"candidate", "run-run-2", "default"}

    again = _register(fake, "run-2", artifact_uri="gs://b/elsewhere")
    assert again["reused"] and again["version_id"] == "2"
    assert fake.count("POST", "models:upload") == 2  # the retry did not upload

    model_id = first["resource_name"].rsplit("/", 1)[1]
    v1 = fake.models[model_id][1]
    assert v1["versionAliases"] == ["run-run-1"]  # "candidate" and "default" moved to version 2
    assert fake.models[model_id][2]["containerSpec"]["imageUri"] == IMAGE
    assert initializer.global_config is config_before  # the SDK's global config is left as it was


def test_register_under_an_explicit_parent_and_without_default(fake):
    first = _register(fake, "run-1")
    other = _register(fake, "run-9", parent_model=first["resource_name"].rsplit("/", 1)[1],
                      display_name="renamed", version_aliases=[], make_default=False)
    assert other["resource_name"] == first["resource_name"] and other["version_id"] == "2"
    assert other["aliases"] == ["run-run-9"]
    assert "default" in fake.models[first["resource_name"].rsplit("/", 1)[1]][1]["versionAliases"]


def test_register_refuses_an_ambiguous_display_name(fake):
    _register(fake, "run-1")
    _register(fake, "run-2", parent_model=None, display_name="petqlora-gemma4-b")
    fake.models[max(fake.models)][1]["displayName"] = "petqlora-gemma4"  # two models, one name
    with pytest.raises(ValueError, match="parent_model"):
        _register(fake, "run-3")


# ------------------------------------------------------------------------------------------ the output artifact


def test_vertex_model_artifact_names_the_version():
    assert VertexModel.schema_title == "google.VertexModel"
    name = f"{LOCATION}/models/1000@2"
    assert vertex_model_uri(name) == f"https://us-central1-aiplatform.googleapis.com/v1/{name}"
    with pytest.raises(ValueError, match="not a Vertex model resource name"):
        vertex_model_uri("petqlora-gemma4-pets@2")


def _component_inputs(tmp_path, monkeypatch):
    """register_model's input artifacts, as KFP hands them over (local URIs, their metadata). Its Markdown
    summary is the report's (tested with it): here a stand-in, so these tests need only the evaluation."""
    from petqlora import steps

    monkeypatch.setattr(steps, "registration_summary", lambda evaluation_dir, ref: f"registered {ref}\n")
    train, evaluation = tmp_path / "train", tmp_path / "evaluate"
    (train / "adapter").mkdir(parents=True)
    (train / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    evaluation.mkdir()
    (evaluation / "evaluation.json").write_text(json.dumps(EVALUATION))
    return dict(
        dataset=Dataset(uri=str(tmp_path / "dataset"), metadata={"dataset_hash": "d" * 64, "source": "synthetic"}),
        token_report=Artifact(uri=str(tmp_path / "records"), metadata={"sha256": "b" * 64}),
        adapter=Model(uri=str(train), metadata={"sha256": "a" * 64, "base_model": "tiny"}),
        evaluation=Artifact(uri=str(evaluation), metadata={"sha256": "e" * 64}),
        model_name="petqlora-gemma4", project=PROJECT, region=REGION, serving_image=IMAGE, code_revision="3f2a9c1",
        run_id="run-1", summary=Markdown(uri=str(tmp_path / "summary.md")))


def test_register_model_component_outputs_a_vertex_model_on_vertex(tmp_path, fake, monkeypatch):
    from components.register_model import register_model
    from petqlora import steps

    # the component's own call, pointed at the fake (Vertex gives the step its credentials)
    monkeypatch.setattr(steps, "run_register_model", functools.partial(steps.run_register_model, **cloud(fake)))
    inputs = _component_inputs(tmp_path, monkeypatch)
    inputs["adapter"].uri = "gs://my-bucket/root/train/adapter"  # Vertex reads the adapter from Cloud Storage
    registered = VertexModel(uri=str(tmp_path / "registered"))
    ref = register_model.python_func(**inputs, registry="vertex", registered=registered)
    assert ref == f"{LOCATION}/models/1000@1"
    assert registered.metadata["resourceName"] == ref
    assert registered.uri == f"https://us-central1-aiplatform.googleapis.com/v1/{ref}"
    assert len(fake.evaluations[("1000", "1")]) == 1
    assert not (tmp_path / "registered").exists()  # nothing behind an https URI


def test_register_model_component_outputs_the_local_ref_locally(tmp_path, monkeypatch):
    from components.register_model import register_model

    registered = VertexModel(uri=str(tmp_path / "registered"))
    ref = register_model.python_func(**_component_inputs(tmp_path, monkeypatch), registry=str(tmp_path / "registry.sqlite"),
                                     registered=registered)
    assert ref == "petqlora-gemma4@1" and registered.metadata["resourceName"] == ref
    assert registered.uri == str(tmp_path / "registered")  # KFP's local URI kept, the record written there
    assert json.loads((tmp_path / "registered").read_text())["model_version"] == ref


def test_record_registration_on_vertex_writes_nothing(tmp_path):
    artifact = VertexModel(uri=str(tmp_path / "out"))
    record_registration(artifact, f"{LOCATION}/models/7@1", metadata={"model_version": "x"}, record={"a": 1})
    assert artifact.metadata == {"model_version": "x", "resourceName": f"{LOCATION}/models/7@1"}
    assert not (tmp_path / "out").exists()
