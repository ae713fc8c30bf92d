from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def validate_token_boundaries(
    dataset: Input[Dataset],
    base_model: str,
    image_token_budget: int,
    max_length: int,
    sample: int,
    records: Output[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Validate token boundaries: for every example, the image soft tokens match the processor, and the
    supervised tokens are exactly the answer + end of turn. Fails the run, naming the examples, before
    any GPU is paid for. sample=0 checks every example."""
    from petqlora.steps import log_metrics, run_validate_token_boundaries

    values = run_validate_token_boundaries(dataset.path, records.path, report.path, base_model=base_model,
                                           image_token_budget=image_token_budget, max_length=max_length,
                                           sample=sample)
    records.metadata.update({"sha256": values.pop("records_sha256"), "dataset_hash": dataset.metadata.get("dataset_hash", ""),
                             "base_model": base_model, "image_token_budget": image_token_budget})
    log_metrics(metrics, values)  # with a file: the step's cache entry stays usable locally
