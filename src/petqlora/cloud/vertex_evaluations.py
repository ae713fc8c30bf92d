"""Vertex AI model evaluations: the evaluate step's result as a classification ModelEvaluation of the
registered version, so the Model Registry's Evaluate tab shows the fine-tuned model's precision, recall,
F1 and confusion matrix over the breeds (instead of metrics squeezed into labels).

``classification_evaluation`` is a pure builder (tested against a literal); ``import_evaluation`` sends it
with ``ModelServiceClient.import_model_evaluation`` once per pipeline run (a retried step finds its own).

The fields are those classification_metrics_1.0.0.yaml defines. It has no "accuracy": for one predicted
class per image at confidence threshold 0, recall (= recallAt1) is the accuracy; precision counts only
answers that name a class (greedy generation can answer none). Scores are not calibrated probabilities,
so no curve (auPrc, auRoc, logLoss) is claimed.
"""

from __future__ import annotations

import math
from typing import Any

from petqlora.problems import Problems

__all__ = ["CLASSIFICATION_METRICS_SCHEMA", "RUN_KEY", "classification_evaluation", "import_evaluation"]

CLASSIFICATION_METRICS_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
)
# The evaluation's metadata key naming the pipeline run that imported it: one evaluation per run.
RUN_KEY = "pipeline_job"


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


def _check(evaluation: Any, run_id: Any) -> None:
    """evaluation.json as run_evaluate writes it: a square count matrix over the classes, the fine-tuned
    model's scores in [0, 1], and an accuracy that the matrix's diagonal agrees with."""
    p = Problems("evaluation for a Vertex model evaluation")
    p.check(isinstance(run_id, str) and bool(run_id), "run_id", run_id, "must be a non-empty string",
            "pass the pipeline run's job id")
    models = evaluation.get("models") if isinstance(evaluation, dict) else None
    ft = models.get("finetuned") if isinstance(models, dict) else None
    if not p.check(isinstance(ft, dict), "models.finetuned", ft, "is missing", "pass run_evaluate's evaluation.json"):
        p.raise_if_any()
    classes, matrix = evaluation.get("classes"), evaluation.get("confusion_matrix")
    if p.check(isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
               and len(set(classes)) == len(classes), "classes", classes, "must be 2+ distinct class names"):
        p.check(isinstance(matrix, list) and len(matrix) == len(classes) and all(
            isinstance(r, list) and len(r) == len(classes)
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in r) for r in matrix),
            "confusion_matrix", matrix, f"must be {len(classes)} x {len(classes)} counts >= 0 (rows: true class)")
    for key in ("accuracy", "macro_f1"):
        p.check(_is_fraction(ft.get(key)), f"models.finetuned.{key}", ft.get(key), "must be a number in [0, 1]")
    top3 = ft.get("top3_accuracy")
    p.check(top3 is None or _is_fraction(top3), "models.finetuned.top3_accuracy", top3, "must be None or in [0, 1]")
    n_eval = ft.get("n_eval")
    if p.check(isinstance(n_eval, int) and not isinstance(n_eval, bool) and n_eval > 0, "models.finetuned.n_eval",
               n_eval, "must be a positive count") and not p:
        answered = sum(map(sum, matrix))
        p.check(answered <= n_eval, "confusion_matrix", f"<{answered} answers>",
                f"counts more answers than the {n_eval} images evaluated")
        correct = sum(matrix[i][i] for i in range(len(classes)))
        p.check(abs(correct / n_eval - ft["accuracy"]) < 1e-6, "models.finetuned.accuracy", ft["accuracy"],
                f"disagrees with the confusion matrix ({correct} of {n_eval} on the diagonal)")
    p.raise_if_any()


def classification_evaluation(evaluation: dict, *, run_id: str) -> Any:
    """The ModelEvaluation (aiplatform v1 type) to import for the fine-tuned model of one pipeline run.

    `evaluation` is evaluation.json from run_evaluate: the confusion matrix is the fine-tuned model's; the
    other models' accuracies and the decision go in the evaluation's metadata, beside the run's id.
    """
    from google.cloud.aiplatform.compat.types import model_evaluation

    _check(evaluation, run_id)
    ft, classes, matrix = evaluation["models"]["finetuned"], evaluation["classes"], evaluation["confusion_matrix"]
    n_eval, answered = ft["n_eval"], sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(classes)))
    recall = correct / n_eval
    precision = correct / answered if answered else 0.0
    top1 = {"confidenceThreshold": 0.0, "maxPredictions": 1, "recall": recall, "precision": precision,
            "f1Score": _f1(precision, recall), "recallAt1": recall, "precisionAt1": precision,
            "f1ScoreAt1": _f1(precision, recall), "f1ScoreMacro": ft["macro_f1"]}
    confidence = [top1]
    if ft.get("top3_accuracy") is not None:  # each image gets min(3, classes) labels, one of them may be right
        k = min(3, len(classes))
        top3_precision = ft["top3_accuracy"] / k
        confidence.append({"confidenceThreshold": 0.0, "maxPredictions": k, "recall": ft["top3_accuracy"],
                           "precision": top3_precision, "f1Score": _f1(top3_precision, ft["top3_accuracy"])})
    metrics = {
        "confidenceMetrics": confidence,
        "confusionMatrix": {
            "annotationSpecs": [{"id": str(i), "displayName": name} for i, name in enumerate(classes)],
            "rows": [list(row) for row in matrix],
        },
    }
    others = {k: {"accuracy": v.get("accuracy"), "macro_f1": v.get("macro_f1")}
              for k, v in evaluation["models"].items() if k != "finetuned"}
    return model_evaluation.ModelEvaluation(
        display_name=f"test split, pipeline run {run_id}"[:128],
        metrics_schema_uri=CLASSIFICATION_METRICS_SCHEMA,
        metrics=metrics,
        metadata={RUN_KEY: run_id, "evaluated_images": n_eval, "compared_with": others,
                  "decision": str(evaluation.get("reason", ""))},
    )


def import_evaluation(client: Any, version_name: str, evaluation: Any) -> tuple[str, bool]:
    """Import `evaluation` into the model version `version_name` (projects/.../models/ID@V) unless this
    pipeline run already did; returns (the evaluation's resource name, reused?). `client` is a
    ModelServiceClient. The answer is checked: an evaluation of another model is refused."""
    from google.cloud.aiplatform.compat.types import model_service

    run_id = dict(evaluation.metadata).get(RUN_KEY)
    listed = client.list_model_evaluations(request=model_service.ListModelEvaluationsRequest(parent=version_name))
    for existing in listed:
        if existing.metadata and dict(existing.metadata).get(RUN_KEY) == run_id:
            return existing.name, True
    imported = client.import_model_evaluation(
        request=model_service.ImportModelEvaluationRequest(parent=version_name, model_evaluation=evaluation))
    model = version_name.split("@", 1)[0]
    if not imported.name.startswith((f"{model}/evaluations/", f"{version_name}/evaluations/")):
        raise RuntimeError(f"Vertex answered ImportModelEvaluation on {version_name} with an evaluation named "
                           f"{imported.name!r}, not one of that model; nothing was recorded about it")
    return imported.name, False
