"""The model-evaluation part of the Vertex AI REST fake (tests/fakes/vertex_api.py). It is a fake, not Vertex.

ImportModelEvaluation (POST .../models/ID@V/evaluations:import), ListModelEvaluations and
GetModelEvaluation, per model version. A classification evaluation is checked against the fields of
gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml (the v1 REST type
SchemaModelevaluationMetricsClassificationEvaluationMetrics): unknown fields, a confusion matrix whose
rows do not match its annotation specs, negative counts or rates outside [0, 1] are answered 400, as a
schema check would.
"""

from __future__ import annotations

from typing import Any, Callable

from fakes.vertex_api_common import LOCATION, ApiError, now

CLASSIFICATION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
_METRICS_FIELDS = {"auPrc", "auRoc", "logLoss", "confidenceMetrics", "confusionMatrix"}
_RATES = {"recall", "precision", "f1Score", "falsePositiveRate", "recallAt1", "precisionAt1", "f1ScoreAt1",
          "falsePositiveRateAt1", "f1ScoreMicro", "f1ScoreMacro", "confidenceThreshold"}
_COUNTS = {"truePositiveCount", "falsePositiveCount", "falseNegativeCount", "trueNegativeCount"}
_CONFIDENCE_FIELDS = _RATES | _COUNTS | {"maxPredictions", "confusionMatrix"}
_MODEL = rf"{LOCATION}/models/(?P<model>[^/:]+)"


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", f"model_evaluation.metrics: {message}")


def _check_confusion_matrix(matrix: Any) -> None:
    if not isinstance(matrix, dict) or set(matrix) - {"annotationSpecs", "rows"}:
        raise _bad(f"confusionMatrix must have only annotationSpecs and rows, got {matrix!r}")
    specs, rows = matrix.get("annotationSpecs", []), matrix.get("rows", [])
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) - {"id", "displayName"}:
            raise _bad(f"annotationSpecs entries have only id and displayName, got {spec!r}")
    if len(rows) != len(specs) or any(not isinstance(r, list) or len(r) != len(specs) for r in rows):
        raise _bad(f"confusionMatrix rows must be {len(specs)} x {len(specs)} (one per annotation spec)")
    if any(not isinstance(c, (int, float)) or c < 0 for r in rows for c in r):
        raise _bad("confusionMatrix counts must be numbers >= 0")


def check_classification_metrics(metrics: Any) -> None:
    if not isinstance(metrics, dict):
        raise _bad("must be an object")
    unknown = set(metrics) - _METRICS_FIELDS
    if unknown:
        raise _bad(f"unknown fields {sorted(unknown)} for {CLASSIFICATION_SCHEMA}")
    if "confusionMatrix" in metrics:
        _check_confusion_matrix(metrics["confusionMatrix"])
    for entry in metrics.get("confidenceMetrics", []):
        unknown = set(entry) - _CONFIDENCE_FIELDS
        if unknown:
            raise _bad(f"unknown confidenceMetrics fields {sorted(unknown)}")
        for key in _RATES & set(entry):
            if not isinstance(entry[key], (int, float)) or not 0 <= entry[key] <= 1:
                raise _bad(f"confidenceMetrics.{key}={entry[key]!r} must be in [0, 1]")
        if "confusionMatrix" in entry:
            _check_confusion_matrix(entry["confusionMatrix"])


class EvaluationsFake:
    """Mixed into FakeVertexAPI: model evaluations, kept per (model id, version id)."""

    def _init_evaluations(self) -> None:
        self.evaluations: dict[tuple[str, str], list[dict]] = {}

    def evaluation_routes(self) -> list[tuple[str, str, Callable[..., dict]]]:
        return [
            ("POST", rf"^{_MODEL}/evaluations:import$", self.import_model_evaluation),
            ("GET", rf"^{_MODEL}/evaluations$", self.list_model_evaluations),
            ("GET", rf"^{_MODEL}/evaluations/(?P<eid>[^/:]+)$", self.get_model_evaluation),
        ]

    def _version_key(self, model: str) -> tuple[str, str]:
        model_id, version = self._resolve(model)  # 404 for an unknown model, version or alias
        return model_id, version["versionId"]

    def import_model_evaluation(self, *, project: str, location: str, model: str, body: dict, **_: Any) -> dict:
        evaluation = body.get("modelEvaluation") or {}
        schema = evaluation.get("metricsSchemaUri", "")
        if not schema:
            raise ApiError(400, "INVALID_ARGUMENT", "model_evaluation.metrics_schema_uri is required")
        if schema == CLASSIFICATION_SCHEMA:
            check_classification_metrics(evaluation.get("metrics"))
        key = self._version_key(model)
        name = f"{self._model_name(project, location, key[0])}/evaluations/{next(self._ids)}"
        stored = {**evaluation, "name": name, "createTime": now()}
        self.evaluations.setdefault(key, []).append(stored)
        return stored

    def list_model_evaluations(self, *, model: str, **_: Any) -> dict:
        return {"modelEvaluations": list(self.evaluations.get(self._version_key(model), []))}

    def get_model_evaluation(self, *, model: str, eid: str, **_: Any) -> dict:
        for evaluation in self.evaluations.get(self._version_key(model), []):
            if evaluation["name"].endswith(f"/evaluations/{eid}"):
                return evaluation
        raise ApiError(404, "NOT_FOUND", f"evaluation {eid} of model {model} not found")
