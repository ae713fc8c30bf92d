from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.images import PIPELINE_IMAGE
from petqlora.cloud.vertex_artifacts import VertexModel


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register_model(
    dataset: Input[Dataset],
    token_report: Input[Artifact],
    adapter: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    registry: str,
    project: str,
    region: str,
    serving_image: str,
    code_revision: str,
    run_id: str,
    registered: Output[VertexModel],
    summary: Output[Markdown],
) -> str:
    """Register model: a new version of the adapter in the model registry (Vertex AI Model Registry, or the
    local registry), with aliases, the dataset hash and the full lineage. On Vertex the version serves with
    `serving_image` (python -m petqlora.serve), its evaluation is imported as a classification evaluation,
    and the output links to the version in the Model Registry (google.VertexModel)."""
    import os

    from petqlora.cloud.vertex_artifacts import record_registration
    from petqlora.logs import setup_logging
    from petqlora.steps import registration_summary, run_register_model

    setup_logging(os.environ)

    def link(artifact, **inputs):
        return {"uri": artifact.uri, "sha256": artifact.metadata.get("sha256", ""), "inputs": inputs}

    lineage = {
        "dataset": {"uri": dataset.uri, "sha256": dataset.metadata.get("dataset_hash", ""),
                    "inputs": {"source": dataset.metadata.get("source", ""),
                               "source_fingerprint": dataset.metadata.get("source_fingerprint", "")}},
        "token_boundary_report": link(token_report, dataset=dataset.uri),
        "adapter": link(adapter, dataset=dataset.uri, base_model=adapter.metadata.get("base_model", ""),
                        config_fingerprint=adapter.metadata.get("config_fingerprint", "")),
        "evaluation": link(evaluation, adapter=adapter.uri, dataset=dataset.uri),
    }
    ref = run_register_model(adapter_dir=adapter.path, adapter_uri=adapter.uri, evaluation_dir=evaluation.path,
                             lineage=lineage, run_id=run_id, model_name=model_name, registry=registry,
                             project=project, region=region, serving_image=serving_image,
                             code_revision=code_revision, dry_run=False)
    record_registration(registered, ref, metadata={"model_version": ref, **{k: v["sha256"] for k, v in lineage.items()}},
                        record={"model_version": ref, "adapter_uri": adapter.uri, "lineage": lineage})
    with open(summary.path, "w") as f:  # evaluate's summary, now naming the version created
        f.write(registration_summary(evaluation.path, ref))
    return ref
