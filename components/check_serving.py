from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def check_serving(
    dataset: Input[Dataset],
    evaluation: Input[Artifact],
    model_version: str,
    registry: str,
    report: Output[Markdown],
) -> str:
    """Check serving: start the classifier server (python -m petqlora.serve) on the version just registered,
    send it the test split over HTTP, and require evaluate's predicted class for every image and its class
    probabilities within 2e-4; the step fails listing the images that differ. Runs when the registry is a
    local path; with the Vertex registry it records that it was skipped (the base model needs a GPU)."""
    import os

    from petqlora.logs import setup_logging
    from petqlora.serve.parity import check_registered

    setup_logging(os.environ)
    result = check_registered(registry=registry, model_version=model_version, dataset_dir=dataset.path,
                              evaluation_dir=evaluation.path, report_md=report.path)
    return "skipped" if result.get("skipped") else "passed"
