"""A FAKE of the Vertex AI JobService's CustomJobs (REST, v1), served on 127.0.0.1 for tests. It is not Vertex.

The real ``google.cloud.aiplatform_v1.JobServiceClient`` talks to it with ``transport="rest"``,
``client_options={"api_endpoint": fake.endpoint}`` and ``AnonymousCredentials`` (see :meth:`client`). Paths
and methods are those of ``aiplatform_v1/services/job_service/transports/rest_base.py``; bodies are the proto
JSON mapping (camelCase; enums as numbers in requests, as the client asks with ``enum-encoding=int``).

What it models (only what petqlora calls):
  CreateCustomJob  POST   /v1/{parent}/customJobs: the job, named .../customJobs/<number>, state PENDING;
                   one worker pool with a machine spec and a container image is required (400 otherwise),
                   as is a display name.
  GetCustomJob     GET    /v1/{name}: each GET moves the job on as its plan says (:meth:`plan_next_job`):
                   PENDING -> RUNNING (``running_polls`` GETs) -> SUCCEEDED, or FAILED with an ``error``
                   (google.rpc.Status), or RUNNING until cancelled ("hang").
  CancelCustomJob  POST   /v1/{name}:cancel: CANCELLING, then CANCELLED on the next GET; a job that has
                   ended answers 400 FAILED_PRECONDITION, as Vertex does.
  ListCustomJobs   GET    /v1/{parent}/customJobs?filter=: newest first; the filter subset of
                   fakes.vertex_api_common (display_name, labels.<key>, AND).
Injected errors (:meth:`inject_errors`): the next N matching requests answer e.g. 503, before or after
(``after=True``: the create happened, the answer was lost) doing their work.
Every request is kept in ``fake.requests`` as {"verb", "path", "query", "body"}.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from typing import Any

from fakes.json_server import JsonServer
from fakes.vertex_api_common import LOCATION, ApiError, match_filter, now

__all__ = ["FakeCustomJobs", "JobPlan"]

_TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@dataclass
class JobPlan:
    """How one created job behaves: ``outcome`` "succeed", "fail" or "hang", after ``pending_polls`` GETs in
    PENDING and ``running_polls`` in RUNNING."""

    outcome: str = "succeed"
    pending_polls: int = 1
    running_polls: int = 1
    error: tuple[int, str] = (3, "The replica workerpool0-0 exited with a non-zero status of 1. To find out "
                                 "more about why your job exited please check the logs")


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str
    path_re: re.Pattern
    after: bool


_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
           503: "UNAVAILABLE"}


class FakeCustomJobs:
    """Serve the fake on an ephemeral port; use as a context manager. Inspect ``jobs`` after the calls."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[str, dict] = {}  # name -> CustomJob JSON, in creation order
        self.requests: list[dict] = []
        self.cancelled: list[str] = []
        self._plans: list[JobPlan] = []
        self._named_plans: dict[str, JobPlan] = {}
        self._job_plans: dict[str, tuple[JobPlan, list[int]]] = {}  # name -> plan, [GETs seen]
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1001)
        self._clients: list = []
        self._server = JsonServer(self._handle, "fake-custom-jobs")

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    def __enter__(self) -> "FakeCustomJobs":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:
            client.transport.close()
        self._server.stop()

    def client(self):
        """A real JobServiceClient over REST pointed at this fake."""
        from google.auth.credentials import AnonymousCredentials
        # the class itself, not the package's attribute, which a test may swap for a factory of this client
        from google.cloud.aiplatform_v1.services.job_service import JobServiceClient

        client = JobServiceClient(credentials=AnonymousCredentials(), transport="rest",
                                                client_options={"api_endpoint": self.endpoint})
        self._clients.append(client)
        return client

    # ---- test controls -------------------------------------------------------------------------------

    def plan_next_job(self, outcome: str = "succeed", *, display_name: str | None = None, **kwargs: Any) -> JobPlan:
        """Queue the behaviour of the next created job (FIFO), or of the next one of ``display_name``
        (jobs created from several threads at once come in any order)."""
        plan = JobPlan(outcome=outcome, **kwargs)
        with self.lock:
            if display_name is None:
                self._plans.append(plan)
            else:
                self._named_plans[display_name] = plan
        return plan

    def inject_errors(self, status: int, count: int = 1, *, method: str, path: str, after: bool = False) -> None:
        with self.lock:
            self._faults.append(_Fault(status, count, method, re.compile(path), after))

    def calls(self, method: str, path: str = "") -> list[dict]:
        """The requests of ``method`` whose path matches the regex ``path``."""
        return [r for r in self.requests if r["verb"] == method and re.search(path, r["path"])]

    # ---- HTTP ----------------------------------------------------------------------------------------

    def _handle(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append({"verb": method, "path": path, "query": query, "body": body})
            return self._answer(method, path, query, body)

    def _fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == method and fault.path_re.search(path):
                fault.remaining -= 1
                return fault
        return None

    def _answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        fault = self._fault(method, path)
        try:
            if fault is not None and not fault.after:
                raise ApiError(fault.status, _STATUS.get(fault.status, "UNKNOWN"), "fake: injected error")
            payload = self.route(method, path, query, body)
            if fault is not None:
                raise ApiError(fault.status, _STATUS.get(fault.status, "UNKNOWN"), "fake: injected error after "
                               "the request was carried out")
            return 200, payload
        except ApiError as err:
            return err.code, {"error": {"code": err.code, "message": err.message, "status": err.status}}

    def route(self, method: str, path: str, query: dict, body: dict) -> dict:
        m = re.match(rf"^/v1/(?P<parent>{LOCATION})/customJobs(?:/(?P<id>[^/:]+))?(?P<verb>:cancel)?$", path)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"fake: no route for {method} {path}")
        parent, job_id, verb = m["parent"], m["id"], m["verb"]
        name = f"{parent}/customJobs/{job_id}"
        if method == "POST" and job_id is None:
            return self._create(parent, body)
        if method == "GET" and job_id is None:
            jobs = [j for j in reversed(self.jobs.values())
                    if j["name"].startswith(f"{parent}/") and match_filter(j, query.get("filter", ""))]
            return {"customJobs": jobs}
        if name not in self.jobs:
            raise ApiError(404, "NOT_FOUND", f"CustomJob {name} not found")
        if method == "GET" and verb is None:
            return self._poll(name)
        if method == "POST" and verb == ":cancel":
            return self._cancel(name)
        raise ApiError(404, "NOT_FOUND", f"fake: no route for {method} {path}")

    def _create(self, parent: str, body: dict) -> dict:
        pools = body.get("jobSpec", {}).get("workerPoolSpecs", [])
        if not body.get("displayName"):
            raise ApiError(400, "INVALID_ARGUMENT", "CustomJob.display_name is required")
        if len(pools) != 1 or not pools[0].get("machineSpec", {}).get("machineType") \
                or not pools[0].get("containerSpec", {}).get("imageUri"):
            raise ApiError(400, "INVALID_ARGUMENT", "fake: one worker pool with a machine type and an image "
                           "is what petqlora sends")
        name = f"{parent}/customJobs/{next(self._ids)}"
        job = {**body, "name": name, "state": "JOB_STATE_PENDING", "createTime": now(), "updateTime": now()}
        self.jobs[name] = job
        plan = self._named_plans.pop(body["displayName"], None) or (self._plans.pop(0) if self._plans else JobPlan())
        self._job_plans[name] = (plan, [0])
        return job

    def _poll(self, name: str) -> dict:
        job = self.jobs[name]
        plan, seen = self._job_plans[name]
        seen[0] += 1
        if job["state"] == "JOB_STATE_CANCELLING":
            job["state"] = "JOB_STATE_CANCELLED"
        elif job["state"] not in _TERMINAL:
            if seen[0] <= plan.pending_polls:
                job["state"] = "JOB_STATE_PENDING"
            elif seen[0] <= plan.pending_polls + plan.running_polls or plan.outcome == "hang":
                job["state"] = "JOB_STATE_RUNNING"
                job.setdefault("startTime", now())
            elif plan.outcome == "fail":
                job["state"] = "JOB_STATE_FAILED"
                job["error"] = {"code": plan.error[0], "message": plan.error[1]}
            else:
                job["state"] = "JOB_STATE_SUCCEEDED"
            if job["state"] in _TERMINAL:
                job["endTime"] = now()
        job["updateTime"] = now()
        return job

    def _cancel(self, name: str) -> dict:
        job = self.jobs[name]
        if job["state"] in _TERMINAL:
            raise ApiError(400, "FAILED_PRECONDITION", f"Cannot cancel CustomJob {name} in state {job['state']}")
        job["state"] = "JOB_STATE_CANCELLING"
        self.cancelled.append(name)
        return {}

    def set_state(self, name: str, state: str) -> None:
        """Another actor's doing (a job that ended while no one polled it)."""
        with self.lock:
            self.jobs[name]["state"] = state
