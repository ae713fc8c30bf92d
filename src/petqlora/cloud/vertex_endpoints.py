"""Serving a registered version on Vertex AI: deploy it to an online endpoint (batch prediction, which
shares the version lookup and the machine here, is vertex_batch.py). The version serves with its own
container spec (python -m petqlora.serve, see vertex_models) on a ServingMachine (serving_machines.py).

Each request is built by a pure function from checked inputs (``create_endpoint_request``,
``deploy_model_request``); ``deploy_requests`` is the dry run: the REST calls the aiplatform_v1 clients
make, in order, where a call whose names come from an earlier answer says so (``needs_lookup``). A
version given as a resource name with a version number (what register_model outputs) needs no lookup:
its dry run is every request, exactly as sent.

One endpoint per model: its ID is derived from the model's (``endpoint_id_for``), so a retried pipeline
step finds the endpoint (GetEndpoint) and the version already deployed there instead of paying for a
second one, and each new version replaces the last: it takes 100% of the traffic, then the model's earlier
versions there are undeployed (a deployed model bills for its machines even at 0% traffic) unless asked
to keep them.
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
        name, at, version = ref.partition("@")
        p.check(not at or bool(version), "model", ref, "ends in '@' without a version",
                "pass NAME@3, NAME@default, or NAME alone for its default version")
        version = version or "default"
        p.check(0 < len(name) <= 128, "model", ref, "display names are 1-128 characters", "pass e.g. petqlora-gemma4-pets@3")
    p.check(bool(_VERSION_RE.match(version)), "model", ref, f"version {version!r} is neither a number nor an alias",
            "pass e.g. NAME@3 or NAME@default")
    return ModelRef(name, version)


def endpoint_id_for(model: str) -> str:
    """The ID of the endpoint a model's versions are deployed to when none is named: petqlora-<model id>."""
    model_id = model.split("@", 1)[0].rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9-]", "-", f"petqlora-{model_id}".lower())[:63].rstrip("-")


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


def create_endpoint_request(project: str, region: str, endpoint_id: str, display_name: str,
                            labels: Mapping[str, str]) -> Any:
    from google.cloud.aiplatform.compat.types import endpoint as gca_endpoint
    from google.cloud.aiplatform.compat.types import endpoint_service

    return endpoint_service.CreateEndpointRequest(
        parent=f"projects/{project}/locations/{region}", endpoint_id=endpoint_id,
        endpoint=gca_endpoint.Endpoint(display_name=display_name, labels=dict(labels)))


def deploy_model_request(endpoint: str, model_version: str, machine: ServingMachine) -> Any:
    """DeployModel of `model_version` (projects/.../models/ID@N; "" when a lookup must supply it) with the
    machine's dedicated resources; traffic "0" is the model being deployed: it takes all of it."""
    from google.cloud.aiplatform.compat.types import endpoint as gca_endpoint
    from google.cloud.aiplatform.compat.types import endpoint_service, machine_resources

    deployed = gca_endpoint.DeployedModel(
        model=model_version, display_name=f"v{model_version.split('@')[1]}" if model_version else "",
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


def _deploy_args(ref: Any, project: Any, region: Any, machine: Any, endpoint: Any, labels: Any,
                 display_name: Any) -> tuple[ModelRef, ServingMachine, str | None, dict[str, str]]:
    p = Problems("arguments for deploy")
    check_project_region(p, project, region)
    model = parse_model_ref(p, ref, project, region)
    spec = checked_machine(p, machine)
    endpoint_name = _endpoint_name(p, endpoint, project, region)
    p.check(display_name is None or (isinstance(display_name, str) and 0 < len(display_name) <= 128),
            "endpoint_display_name", display_name, "must be 1-128 characters", "leave it out: the model's")
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


_UNDEPLOY = ("UndeployModel", "one per deployed model of another version of this model that GetEndpoint lists "
             "(0% of the traffic once the new one takes it all), after DeployModel")


def deploy_requests(ref: str, *, project: str, region: str, machine: Any = None, endpoint: str | None = None,
                    labels: Mapping[str, Any] | None = None, endpoint_display_name: str | None = None,
                    keep_previous: bool = False) -> dict:
    """The dry run of deploy_model_version: each REST call, in order (see the module docstring)."""
    model, spec, endpoint_name, final = _deploy_args(ref, project, region, machine, endpoint, labels,
                                                     endpoint_display_name)
    from google.cloud.aiplatform.compat.types import endpoint_service

    requests = lookup_requests(model, project, region)
    undeploy = [] if keep_previous else [needs_lookup(*_UNDEPLOY)]
    creates = endpoint_name is None
    if not model.is_resource and creates:  # the endpoint's ID is the model's, which ListModels finds
        where = f"the model GetModel finds ({model.name}@{model.version})"
        return {"requests": [
            *requests, needs_lookup("GetEndpoint", f"its ID is endpoint_id_for(the ID of {where})"),
            with_lookup("DeployModel", f"deployed_model.model is {where}", deploy_model_request("", "", spec)),
            *undeploy]}
    endpoint_name = endpoint_name or f"projects/{project}/locations/{region}/endpoints/{endpoint_id_for(model.name)}"
    requests.append({**rest_request("endpoint_service", "GetEndpoint",
                                    endpoint_service.GetEndpointRequest(name=endpoint_name)),
                     "then": ("CreateEndpoint when it answers 404; " if creates else "")
                     + "DeployModel unless the version is deployed there"})
    if creates:
        create = create_endpoint_request(project, region, endpoint_name.rsplit("/", 1)[-1],
                                         endpoint_display_name or "", _endpoint_labels(model.name, final))
        requests.append(rest_request("endpoint_service", "CreateEndpoint", create) if endpoint_display_name else
                        with_lookup("CreateEndpoint", "endpoint.display_name is the model's, which GetModel returns",
                                    create))
    if model.pinned is None:
        requests.append(with_lookup("DeployModel", f"deployed_model.model is the version GetModel finds "
                                    f"({model.name}@{model.version})", deploy_model_request(endpoint_name, "", spec)))
    else:
        requests.append(rest_request("endpoint_service", "DeployModel",
                                     deploy_model_request(endpoint_name, model.pinned, spec)))
    return {"requests": [*requests, *undeploy]}


def _endpoint_labels(model: str, labels: Mapping[str, str]) -> dict[str, str]:
    return {**labels, "model_id": model.split("@", 1)[0].rsplit("/", 1)[-1].lower()[:63]}


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
                         labels: Mapping[str, Any] | None = None, endpoint_display_name: str | None = None,
                         keep_previous: bool = False, dry_run: bool = False, out: Out = print,
                         credentials: Any = None, api_endpoint: str | None = None) -> dict:
    """Deploy the version `ref` (NAME[@VERSION] or a resource name) on `machine` to `endpoint` (an ID or
    resource name), or to the model's own endpoint (endpoint_id_for; created when missing, named
    `endpoint_display_name` or the model's display name); it takes 100% of the traffic, and the deployed
    models of the model's other versions there are undeployed (they would bill at 0% traffic) unless
    `keep_previous`. Returns {"endpoint", "deployed_model_id", "model", "version_id", "reused", "undeployed"};
    a dry run prints and returns the requests (deploy_requests)."""
    model, spec, endpoint_name, final = _deploy_args(ref, project, region, machine, endpoint, labels,
                                                     endpoint_display_name)
    if dry_run:
        payload = deploy_requests(ref, project=project, region=region, machine=spec, endpoint=endpoint, labels=labels,
                                  endpoint_display_name=endpoint_display_name, keep_previous=keep_previous)
        print_json(out, payload)
        return payload
    with vertex_session(project, region, credentials, api_endpoint):
        version = resolve_version(model, project=project, region=region, credentials=credentials)
        base, version_id = version.name.split("@", 1)[0], version.version_id
        client = _endpoint_client(region, credentials)
        target = _endpoint_of(client, endpoint_name, base, display_name=endpoint_display_name or version.display_name,
                              labels=final, project=project, region=region)
        found = [d for d in target.deployed_models if _is_version(d, base, version_id)]
        if found:  # a retried step: the version is there already
            deployed_id = found[0].id
            out(f"{base}@{version_id} is deployed on {target.name} already ({deployed_id})")
        else:
            request = deploy_model_request(target.name, f"{base}@{version_id}", spec)
            deployed_id = client.deploy_model(request=request).result(timeout=LRO_TIMEOUT_S).deployed_model.id
            out(f"Deployed {base}@{version_id} on {target.name} ({spec.machine_type}, {spec.accelerator_count} x "
                f"{spec.accelerator_type}) as {deployed_id}, 100% of the traffic")
        undeployed = [] if keep_previous else _undeploy_previous(client, target.name, base, version_id, out)
    return {**_deploy_summary(target.name, deployed_id, base, version_id, reused=bool(found)), "undeployed": undeployed}


def _is_version(deployed: Any, model: str, version_id: str) -> bool:
    return deployed.model.split("@", 1)[0] == model and deployed.model_version_id == version_id


def _endpoint_of(client: Any, endpoint_name: str | None, model: str, *, display_name: str, labels: Mapping[str, str],
                 project: str, region: str) -> Any:
    """The named endpoint (which must exist), or the model's own, created when missing."""
    from google.api_core import exceptions

    name = endpoint_name or f"projects/{project}/locations/{region}/endpoints/{endpoint_id_for(model)}"
    try:
        return client.get_endpoint(name=name)
    except exceptions.NotFound:
        if endpoint_name is not None:
            raise ValueError(f"endpoint={endpoint_name.rsplit('/', 1)[-1]!r}: no such endpoint in {project}/{region}; "
                             "fix: leave it out to create one for the model") from None
    create = create_endpoint_request(project, region, name.rsplit("/", 1)[-1], display_name,
                                     _endpoint_labels(model, labels))
    return client.create_endpoint(request=create).result(timeout=LRO_TIMEOUT_S)


def _undeploy_previous(client: Any, endpoint: str, model: str, version_id: str, out: Out) -> list[str]:
    """Undeploy the model's other versions on `endpoint` that get no traffic (the new one has it all): a
    deployed model bills for its machines whatever its traffic. Other models' deployments are left alone."""
    from google.cloud.aiplatform.compat.types import endpoint_service

    current = client.get_endpoint(name=endpoint)
    previous = [d.id for d in current.deployed_models if d.model.split("@", 1)[0] == model
                and d.model_version_id != version_id and not current.traffic_split.get(d.id)]
    for deployed_id in previous:
        request = endpoint_service.UndeployModelRequest(endpoint=endpoint, deployed_model_id=deployed_id)
        client.undeploy_model(request=request).result(timeout=LRO_TIMEOUT_S)
        out(f"Undeployed {deployed_id} (an earlier version of {model}) from {endpoint}")
    return previous


def _deploy_summary(endpoint: str, deployed_id: str, model: str, version_id: str, reused: bool) -> dict:
    return {"endpoint": endpoint, "deployed_model_id": deployed_id, "model": model, "version_id": version_id,
            "reused": reused}


def deploy_registered(model_version: str, deploy: Mapping[str, Any], *, project: str, region: str, run_id: str,
                      model_name: str, endpoint_artifact: Any = None, **cloud: Any) -> str:
    """The pipeline's deploy_model step: deploy the version register_model created on the `deploy` machine
    (the pipeline parameter; {} deploys nothing and returns "off"), on the model's endpoint named
    `model_name` (earlier versions there are undeployed), labelled with the run that created it; fills
    `endpoint_artifact` (a google.VertexEndpoint) and returns the endpoint's resource name."""
    if not deploy:
        return "off"
    result = deploy_model_version(model_version, project=project, region=region, machine=deploy,
                                  labels={"run_id": run_id}, endpoint_display_name=model_name, **cloud)
    if endpoint_artifact is not None:
        endpoint_artifact.uri = f"https://{region}-aiplatform.googleapis.com/v1/{result['endpoint']}"
        endpoint_artifact.metadata.update({"resourceName": result["endpoint"], **result})
    return result["endpoint"]
