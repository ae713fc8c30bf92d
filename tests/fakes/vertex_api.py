"""A fake of the Vertex AI REST API (v1), served on 127.0.0.1 for tests. It is a fake, not Vertex.

The real `google-cloud-aiplatform` SDK talks to it over HTTP: initialise the SDK with
``api_endpoint=fake.endpoint`` ("http://127.0.0.1:PORT") and ``api_transport="rest"``; the gapic REST
transports keep an explicit "http://" scheme (rest_base.py: the scheme is only added when missing), and
``AnonymousCredentials`` adds no auth header. JSON in and out is what the REST transports send and parse
(camelCase fields, enums as numbers on requests, as names on responses).

What it models (only what petqlora calls):
  Model Registry  ListModels (filter: display_name / labels.<key>, "AND"), UploadModel (a long-running
                  operation, done on its first GetOperation), GetModel (models/ID, ID@version, ID@alias),
                  ListModelVersions. Versions count 1, 2, ... per model; a new model's first version gets
                  the "default" alias; an alias given to a new version moves off the version that had it;
                  labels and aliases are checked against Vertex's rules (400 INVALID_ARGUMENT); a
                  container spec's ports, routes and image are checked as Vertex does.
  Evaluations     ImportModelEvaluation (POST models/ID@V/evaluations:import), ListModelEvaluations,
                  GetModelEvaluation. Classification evaluations are checked against the fields of
                  classification_metrics_1.0.0.yaml (unknown fields and ragged confusion matrices: 400).
  Pipelines       CreatePipelineJob (PENDING), GetPipelineJob: each poll moves the run on, PENDING ->
                  RUNNING (with jobDetail.pipelineRunContext, a system.PipelineRun context, as Vertex
                  records once a run starts) -> SUCCEEDED; ``fake.running_polls`` sets how many polls
                  see RUNNING (default 1).
  Schedules       CreateSchedule, GetSchedule, ListSchedules, PauseSchedule, ResumeSchedule, DeleteSchedule.
  ML Metadata     stores, contexts (experiments), artifacts and lineage: see fakes/vertex_metadata.py.
  Serving         endpoints (create, get, deploy a version) and batch prediction jobs: see
                  fakes/vertex_endpoints.py.
  Operations      GetOperation under /v1/ and /ui/ (the SDK's operations client uses /ui/).

Not modelled: pagination (everything fits in one page), IAM, quotas, real pipeline execution.
Every request is appended to ``fake.calls`` as (HTTP method, path) so tests can count uploads, and to
``fake.requests`` as {"verb", "path", "query", "body"} so tests can compare it with a dry run's.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from fakes.json_server import JsonServer
from fakes.vertex_api_common import LOCATION as _LOCATION
from fakes.vertex_api_common import TYPE_PREFIX as _TYPE
from fakes.vertex_api_common import ApiError, match_filter, now
from fakes.vertex_endpoints import EndpointsFake
from fakes.vertex_evaluations import EvaluationsFake
from fakes.vertex_metadata import MetadataFake

_ALIAS_RE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
_LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")


class FakeVertexAPI(MetadataFake, EvaluationsFake, EndpointsFake):
    """Serve the fake on an ephemeral port; use as a context manager."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        self.requests: list[dict] = []  # {"verb", "path", "query", "body"}, in order
        self.models: dict[str, dict[int, dict]] = {}  # model id -> version number -> Model JSON
        self.operations: dict[str, dict] = {}
        self.pipeline_jobs: dict[str, dict] = {}
        self.schedules: dict[str, dict] = {}
        self.running_polls = 1  # GetPipelineJob polls that see a run RUNNING before it SUCCEEDS
        self._ids = itertools.count(1000)
        self._init_metadata()
        self._init_evaluations()
        self._init_endpoints()
        self._server = JsonServer(self._answer, "fake-vertex")

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    def __enter__(self) -> "FakeVertexAPI":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def count(self, method: str, path_suffix: str) -> int:
        """How many requests of this method had a path ending in path_suffix."""
        return sum(1 for m, p in self.calls if m == method and p.endswith(path_suffix))

    # ------------------------------------------------------------------ routing

    def _answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls.append((method, path))
            self.requests.append({"verb": method, "path": path, "query": query, "body": body})
            try:
                return 200, self.route(method, path, query, body)
            except ApiError as err:
                return err.code, {"error": {"code": err.code, "message": err.message, "status": err.status}}

    def route(self, method: str, path: str, query: dict, body: dict) -> dict:
        m = re.match(r"^/(v1|ui)/(?P<rest>.*)$", path)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"fake: no route for {path}")
        rest = m.group("rest")
        routes = [
            ("GET", rf"^{_LOCATION}/operations/(?P<op>[^/]+)$", self.get_operation),
            *self.metadata_routes(),
            *self.evaluation_routes(),
            *self.endpoint_routes(),
            ("GET", rf"^{_LOCATION}/models$", self.list_models),
            ("POST", rf"^{_LOCATION}/models:upload$", self.upload_model),
            ("GET", rf"^{_LOCATION}/models/(?P<model>[^/:]+):listVersions$", self.list_model_versions),
            ("GET", rf"^{_LOCATION}/models/(?P<model>[^/:]+)$", self.get_model),
            ("POST", rf"^{_LOCATION}/pipelineJobs$", self.create_pipeline_job),
            ("GET", rf"^{_LOCATION}/pipelineJobs/(?P<job>[^/:]+)$", self.get_pipeline_job),
            ("POST", rf"^{_LOCATION}/schedules$", self.create_schedule),
            ("GET", rf"^{_LOCATION}/schedules$", self.list_schedules),
            ("GET", rf"^{_LOCATION}/schedules/(?P<sid>[^/:]+)$", self.get_schedule),
            ("POST", rf"^{_LOCATION}/schedules/(?P<sid>[^/:]+):pause$", self.pause_schedule),
            ("POST", rf"^{_LOCATION}/schedules/(?P<sid>[^/:]+):resume$", self.resume_schedule),
            ("DELETE", rf"^{_LOCATION}/schedules/(?P<sid>[^/:]+)$", self.delete_schedule),
        ]
        for verb, pattern, handler in routes:
            hit = re.match(pattern, rest)
            if verb == method and hit:
                return handler(query=query, body=body, **hit.groupdict())
        raise ApiError(404, "NOT_FOUND", f"fake: no route for {method} {path}")

    # ------------------------------------------------------------------ operations

    def _operation(self, project: str, location: str, metadata_type: str, response: dict, done: bool) -> dict:
        name = f"projects/{project}/locations/{location}/operations/{next(self._ids)}"
        op = {"name": name, "metadata": {"@type": _TYPE + metadata_type, "genericMetadata": {}}, "done": done}
        if done:
            op["response"] = response
        else:
            op["_pending_response"] = response
        self.operations[name] = op
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def get_operation(self, *, project: str, location: str, op: str, **_: Any) -> dict:
        name = f"projects/{project}/locations/{location}/operations/{op}"
        if name not in self.operations:
            raise ApiError(404, "NOT_FOUND", f"operation {name} not found")
        operation = self.operations[name]
        if not operation["done"]:  # a long-running operation that finishes by the first poll
            operation["done"] = True
            operation["response"] = operation.pop("_pending_response")
        return dict(operation)

    # ------------------------------------------------------------------ models

    def _model_name(self, project: str, location: str, model_id: str) -> str:
        return f"projects/{project}/locations/{location}/models/{model_id}"

    def _resolve(self, model: str) -> tuple[str, dict]:
        """models/ID, ID@<version> or ID@<alias> -> (id, the version's JSON); no suffix -> default version."""
        model_id, _, ref = model.partition("@")
        versions = self.models.get(model_id)
        if versions is None:
            raise ApiError(404, "NOT_FOUND", f"model {model_id} not found")
        ref = ref or "default"
        for number, version in versions.items():
            if ref == str(number) or ref in version["versionAliases"]:
                return model_id, version
        raise ApiError(404, "NOT_FOUND", f"model {model_id} has no version or alias {ref!r}")

    def list_models(self, *, query: dict, **_: Any) -> dict:
        found = []
        for model_id in self.models:
            default = self._resolve(model_id)[1]
            if match_filter(default, query.get("filter", "")):
                found.append(default)
        return {"models": found}

    def get_model(self, *, model: str, **_: Any) -> dict:
        return self._resolve(model)[1]

    def list_model_versions(self, *, model: str, query: dict, **_: Any) -> dict:
        model_id, _ = self._resolve(model.partition("@")[0])
        versions = [v for _, v in sorted(self.models[model_id].items())]
        return {"models": [v for v in versions if match_filter(v, query.get("filter", ""))]}

    def upload_model(self, *, project: str, location: str, body: dict, **_: Any) -> dict:
        spec = body.get("model") or {}
        if not spec.get("displayName"):
            raise ApiError(400, "INVALID_ARGUMENT", "model.display_name is required")
        aliases = list(spec.get("versionAliases", []))
        for alias in aliases:
            if not _ALIAS_RE.match(alias) or alias.isdigit():
                raise ApiError(400, "INVALID_ARGUMENT", f"invalid version alias {alias!r}")
        if len(set(aliases)) != len(aliases):
            raise ApiError(400, "INVALID_ARGUMENT", f"duplicate version aliases {aliases}")
        for key, value in spec.get("labels", {}).items():
            if not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
                raise ApiError(400, "INVALID_ARGUMENT", f"invalid label {key!r}: {value!r}")
        if spec.get("artifactUri") and not spec.get("containerSpec", {}).get("imageUri"):
            raise ApiError(400, "INVALID_ARGUMENT", "a model with artifact_uri needs container_spec.image_uri")
        _check_container_spec(spec.get("containerSpec", {}))

        parent = body.get("parentModel")
        if parent:
            m = re.match(rf"^{_LOCATION}/models/(?P<model>[^/@]+)$", parent)
            if not m or m.group("model") not in self.models:
                raise ApiError(404, "NOT_FOUND", f"parent model {parent} not found")
            model_id = m.group("model")
            versions = self.models[model_id]
            number = max(versions) + 1
        else:
            model_id = str(next(self._ids))
            versions = self.models.setdefault(model_id, {})
            number = 1
            if "default" not in aliases:
                aliases.append("default")  # the first version of a model is always the default
        for other in versions.values():  # an alias names one version per model: move it
            other["versionAliases"] = [a for a in other["versionAliases"] if a not in aliases]
        stamp = now()
        name = self._model_name(project, location, model_id)
        versions[number] = {
            **{k: v for k, v in spec.items() if k not in ("name", "versionId")},
            "name": name,
            "displayName": spec["displayName"] if number == 1 else versions[1]["displayName"],
            "versionId": str(number),
            "versionAliases": aliases,
            "createTime": versions[1]["createTime"] if number > 1 else stamp,
            "updateTime": stamp,
            "versionCreateTime": stamp,
            "versionUpdateTime": stamp,
        }
        response = {"@type": _TYPE + "UploadModelResponse", "model": name, "modelVersionId": str(number)}
        return self._operation(project, location, "UploadModelOperationMetadata", response, done=False)

    # ------------------------------------------------------------------ pipeline jobs

    def create_pipeline_job(self, *, project: str, location: str, query: dict, body: dict, **_: Any) -> dict:
        job_id = query.get("pipelineJobId") or str(next(self._ids))
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job_id}"
        if name in self.pipeline_jobs:
            raise ApiError(409, "ALREADY_EXISTS", f"pipeline job {name} already exists")
        if not body.get("pipelineSpec") or not body.get("runtimeConfig", {}).get("gcsOutputDirectory"):
            raise ApiError(
                400, "INVALID_ARGUMENT", "pipeline_spec and runtime_config.gcs_output_directory are required"
            )
        self.pipeline_jobs[name] = {
            **body, "name": name, "state": "PIPELINE_STATE_PENDING", "createTime": now(), "_polls": 0,
        }
        return _public(self.pipeline_jobs[name])

    def get_pipeline_job(self, *, project: str, location: str, job: str, **_: Any) -> dict:
        name = f"projects/{project}/locations/{location}/pipelineJobs/{job}"
        if name not in self.pipeline_jobs:
            raise ApiError(404, "NOT_FOUND", f"pipeline job {name} not found")
        run = self.pipeline_jobs[name]
        if "jobDetail" not in run:  # the run starts: Vertex records it in the default metadata store
            store = f"projects/{project}/locations/{location}/metadataStores/default"
            self.metadata_stores.setdefault(store, {"name": store, "createTime": now()})
            context = self.add_context(f"{store}/contexts/{job}", "system.PipelineRun", job)
            run["jobDetail"] = {"pipelineRunContext": context}
        run["_polls"] += 1
        running = run["_polls"] <= self.running_polls
        run["state"] = "PIPELINE_STATE_RUNNING" if running else "PIPELINE_STATE_SUCCEEDED"
        return _public(run)

    # ------------------------------------------------------------------ schedules

    def _schedule(self, project: str, location: str, sid: str) -> dict:
        name = f"projects/{project}/locations/{location}/schedules/{sid}"
        if name not in self.schedules:
            raise ApiError(404, "NOT_FOUND", f"schedule {name} not found")
        return self.schedules[name]

    def create_schedule(self, *, project: str, location: str, body: dict, **_: Any) -> dict:
        if not body.get("cron") or not body.get("createPipelineJobRequest"):
            raise ApiError(400, "INVALID_ARGUMENT", "cron and create_pipeline_job_request are required")
        name = f"projects/{project}/locations/{location}/schedules/{next(self._ids)}"
        self.schedules[name] = {**body, "name": name, "state": "ACTIVE", "createTime": now()}
        return self.schedules[name]

    def list_schedules(self, **_: Any) -> dict:
        return {"schedules": list(self.schedules.values())}

    def get_schedule(self, *, project: str, location: str, sid: str, **_: Any) -> dict:
        return self._schedule(project, location, sid)

    def pause_schedule(self, *, project: str, location: str, sid: str, **_: Any) -> dict:
        self._schedule(project, location, sid)["state"] = "PAUSED"
        return {}

    def resume_schedule(self, *, project: str, location: str, sid: str, **_: Any) -> dict:
        self._schedule(project, location, sid)["state"] = "ACTIVE"
        return {}

    def delete_schedule(self, *, project: str, location: str, sid: str, **_: Any) -> dict:
        schedule = self._schedule(project, location, sid)
        del self.schedules[schedule["name"]]
        empty = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        return self._operation(project, location, "DeleteOperationMetadata", empty, done=True)


def _public(resource: dict) -> dict:
    """A stored resource without the fake's own bookkeeping (keys starting with "_")."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def _check_container_spec(spec: dict) -> None:
    """What Vertex checks in a ModelContainerSpec at upload: ports in range, routes that are paths."""
    for port in spec.get("ports", []):
        if not 1 <= int(port.get("containerPort", 0)) <= 65535:
            raise ApiError(400, "INVALID_ARGUMENT", f"container_spec.ports: invalid port {port}")
    for route in ("predictRoute", "healthRoute"):
        if route in spec and not str(spec[route]).startswith("/"):
            raise ApiError(400, "INVALID_ARGUMENT", f"container_spec.{route} must start with '/'")
