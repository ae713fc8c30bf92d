from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, HTML, Input, Markdown, Metrics, Model, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    adapter: Input[Model],
    base_model: str,
    gemma4_baseline: str,
    gemma3_baseline: str,
    contrastive_baseline: str,
    gate_on_contrastive: bool,
    image_token_budget: int,
    scoring: str,
    win_margin: float,
    registry: str,
    model_name: str,
    backend: dict,
    project: str,
    region: str,
    run_id: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    selection: Input[Artifact] = None,
) -> str:
    """Evaluate the fine-tuned model, the Gemma 4 baseline, the Gemma 3 baseline, the contrastive (SigLIP /
    CLIP) baseline when one is named, and the current registered version, if any, on the same held-out split.
    Returns "register" or "skip"; the reason is in the report and the evaluation artifact. The HTML report is
    also saved as report.html in the evaluation artifact, to open in a browser. selection: select_trial's; a
    sweep's trials table joins the report."""
    import os

    from petqlora.backends import Backend
    from petqlora.logs import setup_logging
    from petqlora.steps import run_evaluate

    setup_logging(os.environ)

    result = run_evaluate(
        dataset.path, adapter.path, evaluation.path, base_model=base_model, gemma4_baseline=gemma4_baseline,
        gemma3_baseline=gemma3_baseline, contrastive_baseline=contrastive_baseline,
        gate_on_contrastive=gate_on_contrastive, image_token_budget=image_token_budget, mode=scoring,
        win_margin=win_margin, registry=registry, model_name=model_name, backend=Backend(project=project, region=region, **backend),
        task_id=f"{run_id}-evaluate", report_html=report.path, summary_md=summary.path, run_id=run_id,
        selection_json=selection.path if selection is not None else None)
    for name, values in result["models"].items():
        metrics.log_metric(f"{name}_accuracy", values["accuracy"])
        metrics.log_metric(f"{name}_macro_f1", values["macro_f1"])
    confusion_matrix.log_confusion_matrix(result["classes"], result["confusion_matrix"])
    evaluation.metadata.update({"sha256": result["evaluation_sha256"], "register": result["register"],
                                "reason": result["reason"]})
    return "register" if result["register"] else "skip"
