"""The serving part of the Vertex AI REST fake (tests/fakes/vertex_api.py): endpoints and batch prediction jobs.
It is a fake, not Vertex.

Endpoints    GetEndpoint, CreateEndpoint (``?endpointId=`` as the REST transport sends it; a long-running
             operation done on its first poll), DeployModel (a long-running operation whose response is the
             DeployedModel with its new ID; the traffic split's "0" becomes that ID), UndeployModel (refused
             while the deployed model still has traffic).
Batch jobs   CreateBatchPredictionJob (answered at once, JOB_STATE_PENDING), GetBatchPredictionJob.

What Vertex refuses, it answers 400/404/409: an endpoint ID outside its rule or taken, a model version that
does not exist or has no serving container, dedicated resources without a machine type or with replica
counts out of order, a traffic split that does not sum to 100, batch input/output formats Vertex does not
read, URIs that are not gs://. Machine/accelerator pairs are not checked (Vertex checks them against
regional capacity, which a fake cannot model); the requests are kept in ``fake.requests`` for tests.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from fakes.vertex_api_common import LOCATION, TYPE_PREFIX, ApiError, now

_ENDPOINT_ID_RE = re.compile(r"^([a-z][a-z0-9-]{0,61}[a-z0-9]|[1-9][0-9]{0,8})$")
_INSTANCE_FORMATS = ("jsonl", "csv", "tf-record", "tf-record-gzip", "file-list", "bigquery")
_PREDICTION_FORMATS = ("jsonl", "csv", "bigquery")


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def _check_dedicated(resources: dict, where: str, first: str) -> None:
    """machineSpec with a type, and replica counts >= 1 and in order (first: min or starting count)."""
    spec = resources.get("machineSpec") or {}
    if not spec.get("machineType"):
        raise _bad(f"{where}.machine_spec.machine_type is required")
    if spec.get("acceleratorType") and int(spec.get("acceleratorCount", 0)) < 1:
        raise _bad(f"{where}.machine_spec.accelerator_count must be >= 1 with an accelerator_type")
    low = int(resources.get(first, 0))
    if low < 1:
        raise _bad(f"{where}.{first} must be >= 1")
    if int(resources.get("maxReplicaCount", low)) < low:
        raise _bad(f"{where}.max_replica_count must be >= {first}")


class EndpointsFake:
    """Mixed into FakeVertexAPI, which supplies models, _resolve, _operation and _ids."""

    def _init_endpoints(self) -> None:
        self.endpoints: dict[str, dict] = {}
        self.batch_jobs: dict[str, dict] = {}

    def endpoint_routes(self) -> list[tuple[str, str, Callable[..., dict]]]:
        return [
            ("GET", rf"^{LOCATION}/endpoints/(?P<eid>[^/:]+)$", self.get_endpoint),
            ("POST", rf"^{LOCATION}/endpoints$", self.create_endpoint),
            ("POST", rf"^{LOCATION}/endpoints/(?P<eid>[^/:]+):deployModel$", self.deploy_model),
            ("POST", rf"^{LOCATION}/endpoints/(?P<eid>[^/:]+):undeployModel$", self.undeploy_model),
            ("POST", rf"^{LOCATION}/batchPredictionJobs$", self.create_batch_prediction_job),
            ("GET", rf"^{LOCATION}/batchPredictionJobs/(?P<job>[^/:]+)$", self.get_batch_prediction_job),
        ]

    def _endpoint(self, project: str, location: str, eid: str) -> dict:
        name = f"projects/{project}/locations/{location}/endpoints/{eid}"
        if name not in self.endpoints:
            raise ApiError(404, "NOT_FOUND", f"endpoint {name} not found")
        return self.endpoints[name]

    def _serving_version(self, model: str, project: str, location: str, what: str) -> tuple[str, dict]:
        """The model version a deploy or batch job names (projects/.../models/ID[@V]), which must serve."""
        m = re.match(rf"^projects/{project}/locations/{location}/models/(?P<ref>[^/]+)$", model or "")
        if not m:
            raise _bad(f"{what} {model!r} is not a model of {project}/{location}")
        model_id, version = self._resolve(m["ref"])
        if not version.get("containerSpec", {}).get("imageUri"):
            raise _bad(f"{what} {model}: a model without a container spec cannot be served")
        return model_id, version

    def get_endpoint(self, *, project: str, location: str, eid: str, **_: Any) -> dict:
        return self._endpoint(project, location, eid)

    def create_endpoint(self, *, project: str, location: str, query: dict, body: dict, **_: Any) -> dict:
        eid = query.get("endpointId") or str(next(self._ids))
        if not _ENDPOINT_ID_RE.match(eid):
            raise _bad(f"endpoint_id {eid!r} does not match the endpoint ID rule")
        name = f"projects/{project}/locations/{location}/endpoints/{eid}"
        if name in self.endpoints:
            raise ApiError(409, "ALREADY_EXISTS", f"endpoint {name} already exists")
        if not body.get("displayName"):
            raise _bad("endpoint.display_name is required")
        stamp = now()
        self.endpoints[name] = {**body, "name": name, "deployedModels": [], "trafficSplit": {},
                                "createTime": stamp, "updateTime": stamp}
        response = {"@type": TYPE_PREFIX + "Endpoint", **self.endpoints[name]}
        return self._operation(project, location, "CreateEndpointOperationMetadata", response, done=False)

    def deploy_model(self, *, project: str, location: str, eid: str, body: dict, **_: Any) -> dict:
        endpoint = self._endpoint(project, location, eid)
        deployed = dict(body.get("deployedModel") or {})
        model_id, version = self._serving_version(deployed.get("model"), project, location, "deployed_model.model")
        if "dedicatedResources" not in deployed:
            raise _bad("deployed_model.dedicated_resources is required: this model does not support automatic resources")
        _check_dedicated(deployed["dedicatedResources"], "deployed_model.dedicated_resources", "minReplicaCount")
        deployed_id = str(next(self._ids))
        traffic = {deployed_id if k == "0" else k: int(v) for k, v in (body.get("trafficSplit") or {"0": 100}).items()}
        known = {d["id"] for d in endpoint["deployedModels"]} | {deployed_id}
        if set(traffic) - known or sum(traffic.values()) != 100:
            raise _bad(f"traffic_split {body.get('trafficSplit')} must name deployed models and sum to 100")
        deployed.update(id=deployed_id, model=f"projects/{project}/locations/{location}/models/{model_id}",
                        modelVersionId=version["versionId"], createTime=now())
        endpoint["deployedModels"].append(deployed)
        endpoint["trafficSplit"] = traffic
        response = {"@type": TYPE_PREFIX + "DeployModelResponse", "deployedModel": deployed}
        return self._operation(project, location, "DeployModelOperationMetadata", response, done=False)

    def undeploy_model(self, *, project: str, location: str, eid: str, body: dict, **_: Any) -> dict:
        endpoint = self._endpoint(project, location, eid)
        deployed_id = body.get("deployedModelId")
        if deployed_id not in {d["id"] for d in endpoint["deployedModels"]}:
            raise ApiError(404, "NOT_FOUND", f"deployed model {deployed_id!r} is not on {endpoint['name']}")
        if endpoint["trafficSplit"].get(deployed_id):
            raise _bad(f"deployed model {deployed_id} still receives {endpoint['trafficSplit'][deployed_id]}% of the "
                       "traffic: move it first (traffic_split)")
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != deployed_id]
        endpoint["trafficSplit"].pop(deployed_id, None)
        response = {"@type": TYPE_PREFIX + "UndeployModelResponse"}
        return self._operation(project, location, "UndeployModelOperationMetadata", response, done=False)

    def create_batch_prediction_job(self, *, project: str, location: str, body: dict, **_: Any) -> dict:
        if not body.get("displayName"):
            raise _bad("batch_prediction_job.display_name is required")
        model_id, version = self._serving_version(body.get("model"), project, location, "batch_prediction_job.model")
        source, sink = body.get("inputConfig") or {}, body.get("outputConfig") or {}
        if source.get("instancesFormat") not in _INSTANCE_FORMATS:
            raise _bad(f"input_config.instances_format {source.get('instancesFormat')!r}: not one of {_INSTANCE_FORMATS}")
        uris = source.get("gcsSource", {}).get("uris") or []
        if not uris or not all(u.startswith("gs://") for u in uris):
            raise _bad(f"input_config.gcs_source.uris {uris}: one or more gs:// URIs are required")
        if sink.get("predictionsFormat") not in _PREDICTION_FORMATS:
            raise _bad(f"output_config.predictions_format {sink.get('predictionsFormat')!r}: not one of "
                       f"{_PREDICTION_FORMATS}")
        if not str(sink.get("gcsDestination", {}).get("outputUriPrefix", "")).startswith("gs://"):
            raise _bad("output_config.gcs_destination.output_uri_prefix must be a gs:// URI")
        if "dedicatedResources" not in body:
            raise _bad("dedicated_resources is required: this model does not support automatic resources")
        _check_dedicated(body["dedicatedResources"], "dedicated_resources", "startingReplicaCount")
        name = f"projects/{project}/locations/{location}/batchPredictionJobs/{next(self._ids)}"
        self.batch_jobs[name] = {**body, "name": name, "modelVersionId": version["versionId"],
                                 "state": "JOB_STATE_PENDING", "createTime": now()}
        return self.batch_jobs[name]

    def get_batch_prediction_job(self, *, project: str, location: str, job: str, **_: Any) -> dict:
        name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job}"
        if name not in self.batch_jobs:
            raise ApiError(404, "NOT_FOUND", f"batch prediction job {name} not found")
        return self.batch_jobs[name]
