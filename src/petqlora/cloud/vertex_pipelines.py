"""Vertex AI Pipelines runs: check a run's arguments against the compiled pipeline, build the SDK's
PipelineJob, and submit it, optionally into a Vertex AI experiment (or print the CreatePipelineJob request
and the experiment's requests around it, dry run). Schedules (vertex_schedules) reuse the checks and the
job session."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from petqlora.cloud.vertex_common import (
    Out,
    anonymous_credentials,
    check_experiment,
    check_labels,
    check_project_region,
    print_json,
    rest_request,
    to_json_dict,
    vertex_session,
)
from petqlora.problems import Problems

if TYPE_CHECKING:  # the SDK is only needed at call time
    from google.cloud import aiplatform

__all__ = ["build_pipeline_job", "check_job_args", "pipeline_job_session", "pipeline_run_link", "submit_pipeline"]

_SERVICE_ACCOUNT_RE = re.compile(r"^[^@\s]+@[^@\s]+\.gserviceaccount\.com$")
_NETWORK_RE = re.compile(r"^projects/[^/\s]+/global/networks/[^/\s]+$")
_GCS_URI_RE = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9](/.*)?$")


def _template_parameters(template_path: str) -> set[str] | None:
    """Parameter names the compiled pipeline accepts, or None when the template is not a local IR file."""
    import yaml

    spec = yaml.safe_load(Path(template_path).read_text())
    if not isinstance(spec, dict):
        return None
    spec = spec.get("pipelineSpec", spec)  # a PipelineJob JSON wraps the IR
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return set(params)


def _is_remote(template_path: Any) -> bool:
    return isinstance(template_path, str) and template_path.startswith(("https://", "gs://"))


def _is_local_file(template_path: Any) -> bool:
    return isinstance(template_path, str) and not _is_remote(template_path) and Path(template_path).is_file()


def _check_template_path(p: Problems, template_path: Any) -> None:
    if not isinstance(template_path, str) or not template_path:
        p.add("template_path", template_path, "must be a path to a compiled pipeline YAML",
              "compile the pipeline to YAML first (kfp.compiler.Compiler().compile) and pass its path")
    elif not _is_remote(template_path) and not Path(template_path).is_file():
        p.add("template_path", template_path, "file not found",
              "compile the pipeline first, or pass the path of the compiled YAML")


def _check_parameter_values(p: Problems, template_path: Any, parameter_values: Any) -> None:
    if not isinstance(parameter_values, Mapping) or not all(isinstance(k, str) for k in parameter_values):
        p.add("parameter_values", parameter_values, "must be a dict keyed by pipeline parameter name",
              "pass e.g. {'epochs': 3}")
        return
    if not _is_local_file(template_path):
        return  # a remote template's parameters are checked by Vertex
    try:
        known = _template_parameters(template_path)
    except Exception as err:  # noqa: BLE001 - any parse failure means the same fix
        p.add("template_path", template_path, f"is not a compiled pipeline YAML ({type(err).__name__})",
              "pass the file written by kfp.compiler.Compiler().compile")
        known = None
    unknown = sorted(set(parameter_values) - known) if known is not None else []
    if unknown:
        p.add("parameter_values", unknown, f"not parameters of the pipeline (it takes {sorted(known)})",
              "fix the names or recompile the pipeline")


def check_job_args(
    p: Problems,
    *,
    template_path: Any,
    project: Any,
    region: Any,
    pipeline_root: Any,
    parameter_values: Any,
    service_account: Any = None,
    network: Any = None,
    labels: Any = None,
    display_name: Any = None,
) -> None:
    """Adds to `p` every problem with the arguments of a pipeline run (submitted or scheduled)."""
    check_project_region(p, project, region)
    _check_template_path(p, template_path)
    if not isinstance(pipeline_root, str) or not _GCS_URI_RE.match(pipeline_root):
        p.add("pipeline_root", pipeline_root,
              "Vertex AI Pipelines needs a Cloud Storage URI (bucket names are 3-63 chars)",
              "pass gs://<bucket>/<prefix> in the same region as the run")
    _check_parameter_values(p, template_path, parameter_values)
    if service_account is not None and (
        not isinstance(service_account, str) or not _SERVICE_ACCOUNT_RE.match(service_account)
    ):
        p.add("service_account", service_account, "must be a service account email",
              "pass e.g. trainer@my-project.iam.gserviceaccount.com")
    if network is not None and (not isinstance(network, str) or not _NETWORK_RE.match(network)):
        p.add("network", network, "must be a full VPC network name",
              "pass projects/<project-number>/global/networks/<network>")
    if display_name is not None and (not isinstance(display_name, str) or not 0 < len(display_name) <= 128):
        p.add("display_name", display_name, "must be 1-128 characters", "shorten it")
    check_labels(p, "labels", labels)


def build_pipeline_job(
    *, template_path: str, project: str, region: str, pipeline_root: str, parameter_values: dict,
    display_name: str | None = None, labels: dict | None = None, enable_caching: bool | None = None,
    credentials: Any = None,
) -> "aiplatform.PipelineJob":
    """The SDK's PipelineJob for the compiled pipeline (nothing is sent until submit)."""
    p = Problems("arguments for build_pipeline_job")
    check_job_args(
        p, template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, labels=labels, display_name=display_name,
    )
    if enable_caching is not None and not isinstance(enable_caching, bool):
        p.add("enable_caching", enable_caching, "must be True, False or None (use the compiled settings)",
              "pass a bool")
    p.raise_if_any()
    from google.cloud import aiplatform

    if display_name is None:
        import yaml

        spec = yaml.safe_load(Path(template_path).read_text()) if Path(template_path).is_file() else {}
        spec = spec.get("pipelineSpec", spec) if isinstance(spec, dict) else {}
        display_name = spec.get("pipelineInfo", {}).get("name") or "petqlora"
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=template_path,
        pipeline_root=pipeline_root,
        parameter_values=dict(parameter_values),
        enable_caching=enable_caching,
        labels=dict(labels) if labels else None,
        credentials=credentials,
        project=project,
        location=region,
    )


@contextlib.contextmanager
def pipeline_job_session(
    job_args: dict, credentials: Any = None, api_endpoint: str | None = None, *, dry_run: bool = False
) -> Iterator["aiplatform.PipelineJob"]:
    """build_pipeline_job(**job_args) inside its SDK session; a dry run's is anonymous and sends nothing."""
    if dry_run:
        credentials, api_endpoint = anonymous_credentials(), None
    with vertex_session(job_args["project"], job_args["region"], credentials, api_endpoint):
        yield build_pipeline_job(**job_args, credentials=credentials)


def pipeline_run_link(project: str, region: str, job_id: str) -> str:
    """The run's page in the Vertex AI Pipelines console."""
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/{job_id}"
        f"?project={project}"
    )


def _create_pipeline_job_request(job: Any, service_account: str | None, network: str | None) -> dict:
    """The CreatePipelineJobRequest that PipelineJob.submit sends: its REST call and its fields, as JSON."""
    from google.cloud.aiplatform.compat.types import pipeline_service

    # submit() sets these on the resource just before sending; do the same so the dry run shows them
    if service_account:
        job._gca_resource.service_account = service_account
    if network:
        job._gca_resource.network = network
    request = pipeline_service.CreatePipelineJobRequest(
        parent=job._parent, pipeline_job=job._gca_resource, pipeline_job_id=job.job_id
    )
    return {**rest_request("pipeline_service", "CreatePipelineJob", request, with_body=False),
            **to_json_dict(request)}


def submit_pipeline(
    *, template_path: str, project: str, region: str, pipeline_root: str, parameter_values: dict,
    service_account: str | None = None, network: str | None = None, labels: dict | None = None,
    watch: bool = False, dry_run: bool = False, out: Out = print, display_name: str | None = None,
    enable_caching: bool | None = None, credentials: Any = None, api_endpoint: str | None = None,
    experiment: str | None = None,
) -> dict:
    """Submit one run of the compiled pipeline to Vertex AI Pipelines (or print the request, dry_run).

    With `experiment`, the run joins that Vertex AI experiment (created if new): PipelineJob.submit gets
    the experiment before creating the run and adds the run once it starts (vertex_experiments), so the
    experiment shows the run's parameters and metrics. Returns the request (dry run) or
    {"name", "job_id", "link", "state", "experiment"}.
    """
    job_args = dict(
        template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, display_name=display_name, labels=labels,
    )
    p = Problems("arguments for submit_pipeline")
    check_job_args(p, **job_args, service_account=service_account, network=network)
    check_experiment(p, experiment)
    p.raise_if_any()
    job_args["enable_caching"] = enable_caching  # build_pipeline_job checks it
    if dry_run:
        with pipeline_job_session(job_args, dry_run=True) as job:
            request = _create_pipeline_job_request(job, service_account, network)
            if experiment:
                from petqlora.cloud.vertex_experiments import experiment_requests

                request["experiment"] = experiment_requests(project=project, region=region, experiment=experiment,
                                                            pipeline_job=job.job_id)
        print_json(out, request)
        return request

    with pipeline_job_session(job_args, credentials, api_endpoint) as job:
        job.submit(service_account=service_account, network=network, experiment=experiment or None)
        link = pipeline_run_link(project, region, job.job_id)
        out(f"Submitted {job.resource_name}\nView the run: {link}")
        if experiment:
            out(f"In experiment {experiment}: https://console.cloud.google.com/vertex-ai/experiments/locations/"
                f"{region}/experiments/{experiment}?project={project}")
        result = {"name": job.resource_name, "job_id": job.job_id, "link": link, "state": None,
                  "experiment": experiment or None}
        if watch:
            job.wait()
            result["state"] = job.state.name
            out(f"Run {job.job_id} finished: {result['state']}")
    return result
