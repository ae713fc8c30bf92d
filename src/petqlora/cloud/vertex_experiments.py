"""Vertex AI Experiments: a pipeline run joins an experiment, and Vertex shows it there as a row with the
run's parameters (its system.Run execution) and every system.Metrics artifact it writes (evaluate logs
each model's accuracy and macro-F1: the fine-tuned model and both baselines).

An experiment is an ML Metadata context (schema system.Experiment); a run joins it when the run's
system.PipelineRun context becomes its child (AddContextChildren). Two ways in, one mechanism:

- a submitted run: ``PipelineJob.submit(experiment=NAME)`` (vertex_pipelines) gets or creates the
  experiment before creating the run, then waits for the run's context and adds it;
- a scheduled run is created by Vertex, so no client is there to do that: the pipeline's
  ``add_to_experiment`` step (when the ``experiment`` parameter is set) adds its own run with
  ``add_run_to_experiment``, the same get-or-create and AddContextChildren.

``experiment_requests`` is the dry run of the first: the SDK's requests, built offline.
"""

from __future__ import annotations

import re
from typing import Any

from petqlora.cloud.vertex_common import (
    check_experiment,
    check_project_region,
    needs_lookup,
    rest_request,
    vertex_session,
)
from petqlora.problems import Problems

__all__ = ["add_run_to_experiment", "experiment_requests"]

_PIPELINE_JOB_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/pipelineJobs/[^/]+$")


def _store(project: str, region: str) -> str:
    return f"projects/{project}/locations/{region}/metadataStores/default"


def experiment_requests(*, project: str, region: str, experiment: str, pipeline_job: str) -> dict:
    """What PipelineJob.submit(experiment=...) sends around CreatePipelineJob, as REST calls: before it, get
    (or create) the default metadata store and the experiment's context; after it, poll the run until it
    has a pipeline-run context and add that context to the experiment (not built: its name is Vertex's)."""
    from google.cloud.aiplatform.compat.types import context as gca_context
    from google.cloud.aiplatform.compat.types import metadata_service, metadata_store, pipeline_service
    from google.cloud.aiplatform.metadata import constants

    parent, store = f"projects/{project}/locations/{region}", _store(project, region)
    create_context = metadata_service.CreateContextRequest(
        parent=store, context_id=experiment,
        context=gca_context.Context(
            display_name=experiment, schema_title=constants.SYSTEM_EXPERIMENT,
            schema_version=constants.SCHEMA_VERSIONS[constants.SYSTEM_EXPERIMENT],
            metadata=constants.EXPERIMENT_METADATA))
    return {
        "name": experiment,
        "before_create": [
            rest_request("metadata_service", "GetMetadataStore", metadata_service.GetMetadataStoreRequest(name=store)),
            {**rest_request("metadata_service", "CreateMetadataStore", metadata_service.CreateMetadataStoreRequest(
                parent=parent, metadata_store_id="default", metadata_store=metadata_store.MetadataStore())),
             "only_if": "GetMetadataStore answers 404 (the project's first use of ML Metadata)"},
            rest_request("metadata_service", "GetContext",
                         metadata_service.GetContextRequest(name=f"{store}/contexts/{experiment}")),
            {**rest_request("metadata_service", "CreateContext", create_context),
             "only_if": "GetContext answers 404 (a new experiment)"},
        ],
        "after_create": [
            {**rest_request("pipeline_service", "GetPipelineJob",
                            pipeline_service.GetPipelineJobRequest(name=f"{parent}/pipelineJobs/{pipeline_job}")),
             "until": "job_detail.pipeline_run_context is set (the run has started)"},
            needs_lookup("AddContextChildren", f"its child is the run's pipeline_run_context, which Vertex "
                         f"names once the run starts; its context is {store}/contexts/{experiment}"),
        ],
    }


def add_run_to_experiment(
    *, pipeline_job: str, experiment: str, project: str, region: str, credentials: Any = None,
    api_endpoint: str | None = None,
) -> str:
    """Add the running pipeline `pipeline_job` (its resource name) to `experiment` (created if new), once.

    Returns the experiment's context name. Raises RuntimeError when Vertex's answers do not add up (no run
    context, or one outside this project's metadata store).
    """
    p = Problems("arguments for add_run_to_experiment")
    check_project_region(p, project, region)
    check_experiment(p, experiment)
    p.check(isinstance(pipeline_job, str) and bool(_PIPELINE_JOB_RE.match(pipeline_job)), "pipeline_job",
            pipeline_job, "must be projects/<p>/locations/<r>/pipelineJobs/<id>",
            "pass dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER")
    p.raise_if_any()
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer, utils

    with vertex_session(project, region, credentials, api_endpoint):
        target = aiplatform.Experiment.get_or_create(experiment, project=project, location=region,
                                                     credentials=credentials)
        job = aiplatform.PipelineJob.get(pipeline_job, project=project, location=region, credentials=credentials)
        run_context = job.gca_resource.job_detail.pipeline_run_context
        if not run_context.name.startswith(_store(project, region) + "/contexts/"):
            raise RuntimeError(f"pipeline job {pipeline_job} has no pipeline-run context in "
                               f"{_store(project, region)} (got {run_context.name!r}); it cannot join "
                               f"experiment {experiment}")
        if target.resource_name in run_context.parent_contexts:
            return target.resource_name  # a retried step: already there
        client = initializer.global_config.create_client(
            client_class=utils.MetadataClientWithOverride, credentials=credentials, location_override=region)
        client.add_context_children(context=target.resource_name, child_contexts=[run_context.name])
    return target.resource_name
