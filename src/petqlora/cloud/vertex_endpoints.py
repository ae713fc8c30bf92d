"""Serving a registered version on Vertex AI: deploy it to an online endpoint (batch prediction, which
shares the version lookup and the machine here, is vertex_batch.py). The version serves with its own
container spec (python -m petqlora.serve, see vertex_models) on a ServingMachine (serving_machines.py).

Each request is built by a pure function from checked inputs (``create_endpoint_request``,
``deploy_model_request``); ``deploy_requests`` is the dry run: the REST calls the aiplatform_v1 clients
make, in order, where a call whose names come from an earlier answer says so (``needs_lookup``). A
version given as a resource name with a version number (what register_model outputs) needs no lookup:
its dry run is every request, exactly as sent.

Deploy is idempotent per version: the endpoint's ID is derived from the model and version
(``endpoint_id_for``), so a retried pipeline step finds the endpoint it created (GetEndpoint) and the
version already deployed there, instead of paying for a second one. The new deployed model takes 100% of
the traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from petqlora.cloud.serving_machines import ServingMachine, parse_machine
from petqlora.cloud.vertex_common import (
    Out,
    check_labels,
    check_project_region,
    needs_lookup,
    print_json,
    rest_request,
    to_json_dict,
    to_vertex_labels,
    vertex_session,
)
from petqlora.problems import Problems

__all__ = [
    "ModelRef",
    "create_endpoint_request",
    "deploy_model_request",
    "deploy_model_version",
    "deploy_registered",
    "deploy_requests",
    "endpoint_id_for",
    "parse_model_ref",
    "resolve_version",
]

_RESOURCE_RE = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/models/(?P<id>[A-Za-z0-9_-]+)"
                          r"(?:@(?P<version>[^/@]+))?$")
_VERSION_RE = re.compile(r"^([0-9]+|[a-z][a-zA-Z0-9-]{0,126}[a-z0-9])$")
_ENDPOINT_ID_RE = re.compile(r"^([a-z][a-z0-9-]{0,61}[a-z0-9]|[1-9][0-9]{0,8}|[1-9][0-9]{9,18})$")
_ENDPOINT_RE = re.compile(r"^projects/[^/]+/locations/(?P<region>[^/]+)/endpoints/[^/]+$")
LRO_TIMEOUT_S = 3 * 3600  # a 31B deployment pulls the image and loads ~17 GiB of weights: tens of minutes


@dataclass(frozen=True)
class ModelRef:
    """A version as the user names it: a display name or a model resource name, and a version or alias."""

    name: str  # the display name, or projects/P/locations/R/models/ID
    version: str  # a version number or an alias ("default" when none is given)

    @property
    def is_resource(self) -> bool:
        return self.name.startswith("projects/")

    @property
    def pinned(self) -> str | None:
        """projects/.../models/ID@N when known without a lookup (a resource name with a version number)."""
        return f"{self.name}@{self.version}" if self.is_resource and self.version.isdigit() else None


def parse_model_ref(p: Problems, ref: Any, project: Any, region: Any) -> ModelRef:
    """NAME[@VERSION] or projects/P/locations/R/models/ID[@VERSION] (in this project and region)."""
    if not isinstance(ref, str) or not ref.strip():
        p.add("model", ref, "must name a model version", "pass NAME[@VERSION] or projects/P/locations/R/models/ID@N")
        return ModelRef("", "default")
    if ref.startswith("projects/"):
        m = _RESOURCE_RE.match(ref)
        if m is None:
            p.add("model", ref, "is not a model resource name", "pass projects/P/locations/R/models/ID[@VERSION]")
            return ModelRef("", "default")
        if (m["project"], m["region"]) != (project, region):
            p.add("model", ref, f"lies in {m['project']}/{m['region']}, not in {project}/{region}",
                  "pass --project and --region of the model")
        name, version = ref.split("@", 1)[0], m["version"] or "default"
    else:
        name, _, version = ref.partition("@")
        version = version or "default"
        p.check(0 < len(name) <= 128, "model", ref, "display names are 1-128 characters", "pass e.g. petqlora-gemma4-pets@3")
    p.check(bool(_VERSION_RE.match(version)), "model", ref, f"version {version!r} is neither a number nor an alias",
            "pass e.g. NAME@3 or NAME@default")
    return ModelRef(name, version)


def endpoint_id_for(model: str, version_id: str) -> str:
    """The ID of the endpoint a version gets when none is named: petqlora-<model id>-v<version>."""
    model_id = model.rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9-]", "-", f"petqlora-{model_id}-v{version_id}".lower())[:63].rstrip("-")


def check_gs_uri(p: Problems, name: str, uri: Any, fix: str) -> None:
    p.check(isinstance(uri, str) and bool(re.match(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$", uri)),
            name, uri, "must be a gs://BUCKET/... URI, the bucket 3-222 lowercase letters, digits, '-', '_' or '.' (Vertex reads and writes Cloud Storage only)", fix)


def checked_machine(p: Problems, machine: Any) -> ServingMachine | None:
    if isinstance(machine, ServingMachine):
        return machine
    try:
        return parse_machine(machine if machine is not None else {})
    except ValueError as exc:
        p.items.extend(getattr(exc, "problems", None) or (str(exc),))
        return None


def _endpoint_name(p: Problems, endpoint: Any, project: str, region: str) -> str | None:
    """An existing endpoint named by ID or resource name, or None (one is created per version)."""
    if endpoint is None or endpoint == "":
        return None
    if isinstance(endpoint, str) and _ENDPOINT_RE.match(endpoint):
        p.check(_ENDPOINT_RE.match(endpoint)["region"] == region, "endpoint", endpoint,
                f"lies outside region {region}", "pass an endpoint of the model's region")
        return endpoint
    if isinstance(endpoint, str) and _ENDPOINT_ID_RE.match(endpoint):
        return f"projects/{project}/locations/{region}/endpoints/{endpoint}"
    p.add("endpoint", endpoint, "must be an endpoint ID or projects/P/locations/R/endpoints/ID",
          "leave it out to create one for the version")
    return None


# ---------------------------------------------------------------------------------------------------
# Pure request builders.


def create_endpoint_request(project: str, region: str, endpoint_id: str, labels: Mapping[str, str]) -> Any:
    from google.cloud.aiplatform.compat.types import endpoint as gca_endpoint
    from google.cloud.aiplatform.compat.types import endpoint_service

    return endpoint_service.CreateEndpointRequest(
        parent=f"projects/{project}/locations/{region}", endpoint_id=endpoint_id,
        endpoint=gca_endpoint.Endpoint(display_name=endpoint_id, labels=dict(labels)))


def deploy_model_request(endpoint: str, model_version: str, machine: ServingMachine) -> Any:
    """DeployModel of `model_version` (projects/.../models/ID@N; "" when a lookup must supply it) with the
    machine's dedicated resources; traffic "0" is the model being deployed: it takes all of it."""
    from google.cloud.aiplatform.compat.types import endpoint as gca_endpoint
    from google.cloud.aiplatform.compat.types import endpoint_service, machine_resources

    deployed = gca_endpoint.DeployedModel(
        model=model_version, display_name=endpoint.rsplit("/", 1)[-1] if endpoint else "",
        dedicated_resources=machine_resources.DedicatedResources(
            machine_spec=machine.machine_spec(), min_replica_count=machine.min_replica_count,
            max_replica_count=machine.max_replica_count),
        service_account=machine.service_account)
    return endpoint_service.DeployModelRequest(endpoint=endpoint, deployed_model=deployed, traffic_split={"0": 100})


def _get_model_request(name: str) -> dict:
    from google.cloud.aiplatform.compat.types import model_service

    return rest_request("model_service", "GetModel", model_service.GetModelRequest(name=name))


def lookup_requests(ref: ModelRef, project: str, region: str) -> list[dict]:
    """The calls that find the version: ListModels (by display name) then GetModel, or GetModel alone."""
    from petqlora.cloud.vertex_models import list_models_request

    if ref.is_resource:
        return [_get_model_request(f"{ref.name}@{ref.version}")]
    return [list_models_request(project, region, ref.name),
            needs_lookup("GetModel", f"its name is the model ListModels finds, @{ref.version}")]


def with_lookup(rpc: str, what: str, request: Any) -> dict:
    """A call whose model name an earlier answer supplies: the note, and the request built without it."""
    return {**needs_lookup(rpc, what), "request": to_json_dict(request)}


# ---------------------------------------------------------------------------------------------------
# Deploy.


def _deploy_args(ref: Any, project: Any, region: Any, machine: Any, endpoint: Any, labels: Any
                 ) -> tuple[ModelRef, ServingMachine, str | None, dict[str, str]]:
    p = Problems("arguments for deploy")
    check_project_region(p, project, region)
    model = parse_model_ref(p, ref, project, region)
    spec = checked_machine(p, machine)
    endpoint_name = _endpoint_name(p, endpoint, project, region)
    final = {}
    if labels is not None and not isinstance(labels, Mapping):
        p.add("labels", labels, "must be a dict", "pass e.g. {'run_id': 'petqlora-20261202'}")
    elif labels:
        try:
            final = to_vertex_labels(labels)
        except ValueError as err:
            p.items.append(str(err))
        check_labels(p, "labels", final)
    p.raise_if_any()
    return model, spec, endpoint_name, final


def _endpoint_labels(model: str, version_id: str, labels: Mapping[str, str]) -> dict[str, str]:
    return {**labels, "model_id": model.rsplit("/", 1)[-1].lower()[:63], "model_version": version_id}


def deploy_requests(ref: str, *, project: str, region: str, machine: Any = None, endpoint: str | None = None,
                    labels: Mapping[str, Any] | None = None) -> dict:
    """The dry run of deploy_model_version: each REST call, in order (see the module docstring)."""
    model, spec, endpoint_name, final = _deploy_args(ref, project, region, machine, endpoint, labels)
    from google.cloud.aiplatform.compat.types import endpoint_service

    requests = lookup_requests(model, project, region)
    pinned = model.pinned
    if pinned is None:
        where = f"the version GetModel finds ({model.name}@{model.version})"
        if endpoint_name is None:
            requests.append(needs_lookup("GetEndpoint", f"its ID is endpoint_id_for(model ID, version ID) of {where}"))
        else:
            requests.append(rest_request("endpoint_service", "GetEndpoint",
                                         endpoint_service.GetEndpointRequest(name=endpoint_name)))
        requests.append(with_lookup("DeployModel", f"deployed_model.model is {where}",
                                     deploy_model_request(endpoint_name or "", "", spec)))
        return {"requests": requests}
    base, version_id = pinned.split("@")
    creates = endpoint_name is None
    if creates:
        endpoint_id = endpoint_id_for(base, version_id)
        endpoint_name = f"projects/{project}/locations/{region}/endpoints/{endpoint_id}"
        create = create_endpoint_request(project, region, endpoint_id, _endpoint_labels(base, version_id, final))
    requests.append({**rest_request("endpoint_service", "GetEndpoint",
                                    endpoint_service.GetEndpointRequest(name=endpoint_name)),
                     "then": ("CreateEndpoint when it answers 404; " if creates else "")
                     + "DeployModel unless the version is deployed there"})
    if creates:
        requests.append(rest_request("endpoint_service", "CreateEndpoint", create))
    requests.append(rest_request("endpoint_service", "DeployModel", deploy_model_request(endpoint_name, pinned, spec)))
    return {"requests": requests}


def resolve_version(model: ModelRef, *, project: str, region: str, credentials: Any) -> Any:
    """The gapic Model of the version `model` names (GetModel), refused when it cannot serve."""
    from google.api_core import exceptions

    from petqlora.cloud.vertex_models import _model_client, find_model

    name = model.name
    if not model.is_resource:
        found = find_model(name, project=project, region=region, credentials=credentials,
                           fix="pass the resource name of the one to serve")
        if found is None:
            raise ValueError(f"model={name!r}: no Vertex model has this display name in {project}/{region}; fix: "
                             "register one first (python pipeline.py register ...), or pass its resource name")
        name = found.resource_name
    client = _model_client(name, project=project, region=region, credentials=credentials)
    try:
        version = client.get_model(name=f"{name}@{model.version}")
    except exceptions.NotFound:
        raise ValueError(f"model={name}@{model.version}: no such version; fix: pass a version number or alias the "
                         "Model Registry lists") from None
    if not version.container_spec.image_uri:
        raise ValueError(f"model={name}@{version.version_id}: registered without a serving container, so Vertex "
                         "cannot serve it; fix: register it again with --serving-image")
    return version


def _endpoint_client(region: str, credentials: Any) -> Any:
    from google.cloud.aiplatform import initializer, utils

    return initializer.global_config.create_client(client_class=utils.EndpointClientWithOverride,
                                                   credentials=credentials, location_override=region)


def deploy_model_version(ref: str, *, project: str, region: str, machine: Any = None, endpoint: str | None = None,
                         labels: Mapping[str, Any] | None = None, dry_run: bool = False, out: Out = print,
                         credentials: Any = None, api_endpoint: str | None = None) -> dict:
    """Deploy the version `ref` (NAME[@VERSION] or a resource name) on `machine` to `endpoint` (an ID or
    resource name), or to the version's own endpoint, created when missing; it takes 100% of the traffic.
    Returns {"endpoint", "deployed_model_id", "model", "version_id", "reused"}; a dry run prints and returns
    the requests (deploy_requests)."""
    model, spec, endpoint_name, final = _deploy_args(ref, project, region, machine, endpoint, labels)
    if dry_run:
        payload = deploy_requests(ref, project=project, region=region, machine=spec, endpoint=endpoint, labels=labels)
        print_json(out, payload)
        return payload
    from google.api_core import exceptions

    with vertex_session(project, region, credentials, api_endpoint):
        version = resolve_version(model, project=project, region=region, credentials=credentials)
        base = version.name.split("@", 1)[0]
        client = _endpoint_client(region, credentials)
        name = endpoint_name or (f"projects/{project}/locations/{region}/endpoints/"
                                 f"{endpoint_id_for(base, version.version_id)}")
        try:
            target = client.get_endpoint(name=name)
        except exceptions.NotFound:
            if endpoint_name is not None:
                raise ValueError(f"endpoint={endpoint!r}: no such endpoint in {project}/{region}; fix: leave it out "
                                 "to create one for the version") from None
            create = create_endpoint_request(project, region, name.rsplit("/", 1)[-1],
                                             _endpoint_labels(base, version.version_id, final))
            target = client.create_endpoint(request=create).result(timeout=LRO_TIMEOUT_S)
        for deployed in target.deployed_models:  # a retried step: the version is there already
            if deployed.model.split("@", 1)[0] == base and deployed.model_version_id == version.version_id:
                out(f"{base}@{version.version_id} is deployed on {target.name} already ({deployed.id})")
                return _deploy_summary(target.name, deployed.id, base, version.version_id, reused=True)
        request = deploy_model_request(target.name, f"{base}@{version.version_id}", spec)
        deployed = client.deploy_model(request=request).result(timeout=LRO_TIMEOUT_S).deployed_model
    out(f"Deployed {base}@{version.version_id} on {target.name} ({spec.machine_type}, "
        f"{spec.accelerator_count} x {spec.accelerator_type}) as {deployed.id}, 100% of the traffic")
    return _deploy_summary(target.name, deployed.id, base, version.version_id, reused=False)


def _deploy_summary(endpoint: str, deployed_id: str, model: str, version_id: str, reused: bool) -> dict:
    return {"endpoint": endpoint, "deployed_model_id": deployed_id, "model": model, "version_id": version_id,
            "reused": reused}


def deploy_registered(model_version: str, deploy: Mapping[str, Any], *, project: str, region: str, run_id: str,
                      endpoint_artifact: Any = None, **cloud: Any) -> str:
    """The pipeline's deploy_model step: deploy the version register_model created on the `deploy` machine
    (the pipeline parameter; {} deploys nothing and returns "off"), labelled with the run; fills
    `endpoint_artifact` (a google.VertexEndpoint) and returns the endpoint's resource name."""
    if not deploy:
        return "off"
    result = deploy_model_version(model_version, project=project, region=region, machine=deploy,
                                  labels={"run_id": run_id}, **cloud)
    if endpoint_artifact is not None:
        endpoint_artifact.uri = f"https://{region}-aiplatform.googleapis.com/v1/{result['endpoint']}"
        endpoint_artifact.metadata.update({"resourceName": result["endpoint"], **result})
    return result["endpoint"]
