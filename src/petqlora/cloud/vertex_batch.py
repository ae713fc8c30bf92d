"""Batch prediction of a registered version over images in Cloud Storage: a BatchPredictionJob running the
version's serving container (python -m petqlora.serve) on a ServingMachine, its predictions written as
JSON Lines under a gs:// prefix.

The input is one of Vertex's batch input formats:
  jsonl      a *.jsonl file of instances, one a line, in the server's shape: {"b64": "<image bytes>"};
  file-list  a *.txt file of gs:// image URIs, one a line: Vertex reads each file and sends its bytes as
             {"b64": ...}, the same instance shape;
  a folder   gs://.../images/ (ending in "/"): its images are listed into a file list written under the
             output prefix (OUTPUT/inputs/file-list.txt), then read as file-list.
Instances go to the server 16 a request (at most the server's cap, serve.contract.MAX_INSTANCES). ``batch_prediction_request``
builds the request purely; ``batch_prediction_requests`` is the dry run (vertex_endpoints explains the
lookups).
"""

from __future__ import annotations

from typing import Any, Mapping

from petqlora.cloud.serving_machines import ServingMachine
from petqlora.cloud.vertex_common import (
    Out,
    check_project_region,
    print_json,
    rest_request,
    to_vertex_labels,
    vertex_session,
)
from petqlora.cloud.vertex_endpoints import (
    ModelRef,
    check_gs_uri,
    checked_machine,
    lookup_requests,
    parse_model_ref,
    resolve_version,
    with_lookup,
)
from petqlora.problems import Problems
from petqlora.serve.contract import MAX_INSTANCES

__all__ = ["IMAGE_SUFFIXES", "batch_predict", "batch_prediction_request", "batch_prediction_requests", "input_format"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# Instances per request batch prediction sends: the server refuses more than its max_instances.
INSTANCES_PER_REQUEST = 16
DISPLAY_NAME = "petqlora-batch-prediction"


def batch_prediction_request(project: str, region: str, model_version: str, *, input_uris: list[str],
                             instances_format: str, output_uri_prefix: str, machine: ServingMachine,
                             display_name: str, instances_per_request: int, labels: Mapping[str, str]) -> Any:
    from google.cloud.aiplatform.compat.types import batch_prediction_job as bpj
    from google.cloud.aiplatform.compat.types import io, job_service, machine_resources, manual_batch_tuning_parameters

    job = bpj.BatchPredictionJob(
        display_name=display_name, model=model_version, labels=dict(labels),
        input_config=bpj.BatchPredictionJob.InputConfig(instances_format=instances_format,
                                                        gcs_source=io.GcsSource(uris=list(input_uris))),
        output_config=bpj.BatchPredictionJob.OutputConfig(
            predictions_format="jsonl", gcs_destination=io.GcsDestination(output_uri_prefix=output_uri_prefix)),
        dedicated_resources=machine_resources.BatchDedicatedResources(
            machine_spec=machine.machine_spec(), starting_replica_count=machine.min_replica_count,
            max_replica_count=machine.max_replica_count),
        manual_batch_tuning_parameters=manual_batch_tuning_parameters.ManualBatchTuningParameters(
            batch_size=instances_per_request),
        service_account=machine.service_account)
    return job_service.CreateBatchPredictionJobRequest(parent=f"projects/{project}/locations/{region}",
                                                       batch_prediction_job=job)


def input_format(uri: str) -> str:
    """How Vertex reads `uri`: "jsonl" (*.jsonl: one instance per line), "file-list" (*.txt: one gs:// image
    URI per line) or "folder" (ends with "/": the images under it, listed into a file list first)."""
    if uri.endswith("/"):
        return "folder"
    if uri.endswith(".jsonl"):
        return "jsonl"
    if uri.endswith(".txt"):
        return "file-list"
    raise ValueError(f"input={uri!r}: not a .jsonl file of instances, a .txt file list or a folder ending in '/'; "
                     "fix: pass gs://BUCKET/instances.jsonl, gs://BUCKET/images.txt or gs://BUCKET/images/")


def _batch_args(ref: Any, project: Any, region: Any, machine: Any, input_uri: Any, output_uri_prefix: Any,
                instances_per_request: Any, display_name: Any, labels: Any) -> tuple[ModelRef, ServingMachine, str, dict]:
    p = Problems("arguments for batch-predict")
    check_project_region(p, project, region)
    model = parse_model_ref(p, ref, project, region)
    spec = checked_machine(p, machine)
    check_gs_uri(p, "input", input_uri, "pass a gs:// .jsonl, .txt file list or folder/")
    kind = ""
    if isinstance(input_uri, str) and input_uri.startswith("gs://"):
        try:
            kind = input_format(input_uri)
        except ValueError as exc:
            p.items.append(str(exc))
    check_gs_uri(p, "output", output_uri_prefix, "pass a gs://BUCKET/PREFIX where the predictions go")
    p.check(isinstance(instances_per_request, int) and not isinstance(instances_per_request, bool)
            and 1 <= instances_per_request <= MAX_INSTANCES, "instances_per_request", instances_per_request,
            f"must be an integer in 1-{MAX_INSTANCES} (the server refuses more than {MAX_INSTANCES} instances a "
            "request)", f"pass e.g. {INSTANCES_PER_REQUEST}")
    p.check(isinstance(display_name, str) and 0 < len(display_name) <= 128, "display_name", display_name,
            "must be 1-128 characters", "pass e.g. petqlora-batch")
    final = {}
    if labels:
        try:
            final = to_vertex_labels(labels)
        except (ValueError, AttributeError) as err:
            p.items.append(str(err))
    p.raise_if_any()
    return model, spec, kind, final


def _file_list_uri(output_uri_prefix: str) -> str:
    return f"{output_uri_prefix.rstrip('/')}/inputs/file-list.txt"


def batch_prediction_requests(ref: str, *, project: str, region: str, input_uri: str, output_uri_prefix: str,
                              machine: Any = None, instances_per_request: int = INSTANCES_PER_REQUEST,
                              display_name: str = DISPLAY_NAME,
                              labels: Mapping[str, Any] | None = None) -> dict:
    """The dry run of batch_predict: the lookups of the version, the folder's file list (when the input is a
    folder) and CreateBatchPredictionJob."""
    model, spec, kind, final = _batch_args(ref, project, region, machine, input_uri, output_uri_prefix,
                                           instances_per_request, display_name, labels)
    requests = lookup_requests(model, project, region)
    uris, fmt = [input_uri], kind
    if kind == "folder":
        uris, fmt = [_file_list_uri(output_uri_prefix)], "file-list"
        requests.append({"method": "storage: list and write", "lists": input_uri, "writes": uris[0],
                         "note": f"the objects under the folder ending in {', '.join(IMAGE_SUFFIXES)}, one URI a line"})
    request = batch_prediction_request(project, region, model.pinned or "", input_uris=uris, instances_format=fmt,
                                       output_uri_prefix=output_uri_prefix, machine=spec, display_name=display_name,
                                       instances_per_request=instances_per_request, labels=final)
    if model.pinned is None:
        requests.append(with_lookup("CreateBatchPredictionJob", "batch_prediction_job.model is the version GetModel "
                                     f"finds ({model.name}@{model.version})", request))
    else:
        requests.append(rest_request("job_service", "CreateBatchPredictionJob", request))
    return {"requests": requests}


def _write_file_list(folder: str, target: str, storage_client: Any) -> int:
    """The images under `folder`, one gs:// URI a line, written to `target`; returns how many."""
    import tempfile

    from petqlora.cloud.storage import list_objects, upload_file

    images = [o.uri for o in list_objects(folder, client=storage_client) if o.uri.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise ValueError(f"input={folder!r}: no image ({', '.join(IMAGE_SUFFIXES)}) under this folder; fix: pass the "
                         "folder that holds them, or a .jsonl / .txt input")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(images) + "\n")
        f.flush()
        upload_file(f.name, target, client=storage_client)
    return len(images)


def batch_predict(ref: str, *, project: str, region: str, input_uri: str, output_uri_prefix: str, machine: Any = None,
                  instances_per_request: int = INSTANCES_PER_REQUEST, display_name: str = DISPLAY_NAME,
                  labels: Mapping[str, Any] | None = None, dry_run: bool = False, out: Out = print,
                  credentials: Any = None, api_endpoint: str | None = None, storage_client: Any = None) -> dict:
    """Start a BatchPredictionJob of the version `ref` over `input_uri` (see input_format), its predictions
    (JSON Lines) under `output_uri_prefix`; returns {"name", "state", "model", "input", "format"}. It does
    not wait for the job, which takes as long as the images do: follow it by its name in the console."""
    model, spec, kind, final = _batch_args(ref, project, region, machine, input_uri, output_uri_prefix,
                                           instances_per_request, display_name, labels)
    if dry_run:
        payload = batch_prediction_requests(ref, project=project, region=region, input_uri=input_uri, machine=spec,
                                            output_uri_prefix=output_uri_prefix, display_name=display_name,
                                            instances_per_request=instances_per_request, labels=labels)
        print_json(out, payload)
        return payload
    from google.cloud.aiplatform import initializer, utils

    with vertex_session(project, region, credentials, api_endpoint):
        version = resolve_version(model, project=project, region=region, credentials=credentials)
        uris, fmt = [input_uri], kind
        if kind == "folder":
            uris, fmt = [_file_list_uri(output_uri_prefix)], "file-list"
            out(f"Listed {_write_file_list(input_uri, uris[0], storage_client)} images of {input_uri} into {uris[0]}")
        request = batch_prediction_request(
            project, region, f"{version.name.split('@', 1)[0]}@{version.version_id}", input_uris=uris,
            instances_format=fmt, output_uri_prefix=output_uri_prefix, machine=spec, display_name=display_name,
            instances_per_request=instances_per_request, labels=final)
        client = initializer.global_config.create_client(client_class=utils.JobClientWithOverride,
                                                         credentials=credentials, location_override=region)
        job = client.create_batch_prediction_job(request=request)
    out(f"Started batch prediction {job.name} ({job.state.name}); its predictions go to {output_uri_prefix}")
    return {"name": job.name, "state": job.state.name, "model": request.batch_prediction_job.model,
            "input": uris[0], "format": fmt}
