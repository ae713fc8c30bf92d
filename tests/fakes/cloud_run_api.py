"""A FAKE of the Cloud Run Admin API v2, for tests only: a small local HTTP server that answers the REST/JSON
requests the real ``google.cloud.run_v2`` clients send with ``transport="rest"``.

It is not Google's service and models only what the launcher relies on:

- jobs: create (``POST .../jobs?jobId=``; 409 ALREADY_EXISTS when taken), get, patch (update; a stale
  ``etag`` answers 409 ABORTED), list (paged), delete (``DELETE .../jobs/J?etag=``: 409 ABORTED on a stale
  etag; the job's executions go with it, as the real API deletes them in the background);
- ``POST .../jobs/J:run``: creates an Execution whose template is the job's task template with the run
  overrides applied (args replaced, env merged by name, task_count/timeout), as the real API records them,
  and returns a long-running Operation (metadata: the Execution; done with the Execution as response once
  it has ended, or at once with ``operation_done_immediately``); ``GET .../operations/O`` polls it;
- executions: get, list (newest first, paged), ``:cancel``;
- how each new execution behaves (:meth:`FakeCloudRunApi.plan_next_execution`): succeed or fail after K
  GETs of the execution, or stay running ("slow") until cancelled;
- injected errors (:meth:`FakeCloudRunApi.inject_errors`): the next N matching requests answer e.g. 503
  or 429 with a Google JSON error body (502 with an HTML page, as a Google front end does), before doing
  anything;
- another actor (:meth:`FakeCloudRunApi.on_request`): a callable run just before a matching request is
  handled, outside the fake's lock, so it can itself call the fake through real clients (a concurrent
  update that makes the launcher's etag stale, a concurrent create, a job edited between two calls).

Paths and methods are those of ``run_v2/services/{jobs,executions}/transports/rest_base.py``; bodies are
parsed and produced with the run_v2 proto-plus types (proto JSON mapping, camelCase), and enums are written
as integers when the client asks for ``$alt=json;enum-encoding=int``, as it does.

Use::

    with FakeCloudRunApi() as api:
        jobs, executions = api.jobs_client(), api.executions_client()
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import json_format

from fakes.cloud_run_executions import ExecutionPlan, FakeExecution, apply_overrides, new_execution, now

__all__ = ["ExecutionPlan", "FakeCloudRunApi", "RecordedRequest"]

_SEG = r"[^/:]+"
_PARENT = rf"projects/(?P<project>{_SEG})/locations/(?P<location>{_SEG})"
_JOB = rf"{_PARENT}/jobs/(?P<job>{_SEG})"
_EXEC = rf"{_JOB}/executions/(?P<execution>{_SEG})"
_JOB_ID_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# What a Google front end answers when the backend is unreachable: an HTML page, not a JSON error.
_BAD_GATEWAY_HTML = ("<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title>"
                     "<p><b>502.</b> <ins>That's an error.</ins><p>The server encountered a temporary error.</html>")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None
    status: int = 200


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path_re: re.Pattern | None
    status_name: str | None = None


@dataclass
class _Hook:
    action: Callable[[], object]
    remaining: int
    method: str | None
    path_re: re.Pattern | None


@dataclass
class _FakeOperation:
    name: str
    execution: str | None = None  # a run operation follows its execution
    response: object | None = None  # proto-plus message for operations done at once
    metadata: object | None = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, status_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.status_name = status_name


@dataclass
class FakeCloudRunApi:
    """The fake server and its state. All state is guarded by one lock; inspect it after the calls."""

    operation_done_immediately: bool = False
    default_plan: ExecutionPlan = field(default_factory=ExecutionPlan)

    def __post_init__(self) -> None:
        self.jobs: dict[str, run_v2.Job] = {}
        self.executions: dict[str, FakeExecution] = {}  # insertion order = creation order
        self.operations: dict[str, _FakeOperation] = {}
        self.requests: list[RecordedRequest] = []
        self.cancelled: list[str] = []
        self._plans: collections.deque[ExecutionPlan] = collections.deque()
        self._faults: list[_Fault] = []
        self._hooks: list[_Hook] = []
        self._counter = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: list = []

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "FakeCloudRunApi":
        api = self

        class Handler(_Handler):
            fake = api

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # keep-alive handler threads must not block shutdown
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-cloud-run-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.transport.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeCloudRunApi":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _client_kwargs(self) -> dict:
        return {"credentials": AnonymousCredentials(), "transport": "rest",
                "client_options": {"api_endpoint": self.endpoint}}

    def jobs_client(self) -> run_v2.JobsClient:
        client = run_v2.JobsClient(**self._client_kwargs())
        self._clients.append(client)
        return client

    def executions_client(self) -> run_v2.ExecutionsClient:
        client = run_v2.ExecutionsClient(**self._client_kwargs())
        self._clients.append(client)
        return client

    # ---- test controls -------------------------------------------------------------------------------

    def plan_next_execution(self, outcome: str = "succeed", polls: int = 1, **kwargs) -> ExecutionPlan:
        """Queue the behaviour of the next execution that ``:run`` creates (FIFO; else default_plan)."""
        plan = ExecutionPlan(outcome=outcome, polls=polls, **kwargs)
        with self._lock:
            self._plans.append(plan)
        return plan

    def inject_errors(self, status: int, count: int = 1, *, method: str | None = None,
                      path: str | None = None, status_name: str | None = None) -> None:
        """Answer the next ``count`` requests matching ``method`` and regex ``path`` with HTTP ``status``
        (``status_name``: the body's canonical code, e.g. "ABORTED" for a 409; else the usual one)."""
        with self._lock:
            self._faults.append(_Fault(status, count, method.upper() if method else None,
                                       re.compile(path) if path else None, status_name))

    def on_request(self, action: Callable[[], object], *, method: str | None = None, path: str | None = None,
                   count: int = 1) -> None:
        """Call ``action()`` just before each of the next ``count`` requests matching ``method`` and regex
        ``path`` is handled. It runs outside the fake's lock, so it may call the fake through real clients."""
        with self._lock:
            self._hooks.append(_Hook(action, count, method.upper() if method else None,
                                     re.compile(path) if path else None))

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered by method and a regex searched in the path."""
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method.upper())
                    and (path is None or re.search(path, r.path))]

    def execution(self, name: str) -> run_v2.Execution:
        with self._lock:
            return run_v2.Execution(self.executions[name].execution)

    # ---- dispatch ------------------------------------------------------------------------------------

    _ROUTES = [
        ("POST", rf"^/v2/{_PARENT}/jobs$", "_create_job"),
        ("GET", rf"^/v2/{_PARENT}/jobs$", "_list_jobs"),
        ("GET", rf"^/v2/{_JOB}$", "_get_job"),
        ("PATCH", rf"^/v2/{_JOB}$", "_update_job"),
        ("DELETE", rf"^/v2/{_JOB}$", "_delete_job"),
        ("POST", rf"^/v2/{_JOB}:run$", "_run_job"),
        ("GET", rf"^/v2/{_JOB}/executions$", "_list_executions"),
        ("GET", rf"^/v2/{_EXEC}$", "_get_execution"),
        ("POST", rf"^/v2/{_EXEC}:cancel$", "_cancel_execution"),
        ("GET", rf"^/v2/{_PARENT}/operations/(?P<operation>{_SEG})$", "_get_operation"),
    ]

    def handle(self, method: str, raw_path: str, raw_body: bytes) -> tuple[int, str]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        body = json.loads(raw_body) if raw_body else None
        record = RecordedRequest(method, path, query, body)
        ints = any("enum-encoding=int" in v for v in query.get("$alt", []))
        with self._lock:
            hooks = [h for h in self._hooks if h.remaining > 0 and _matches(h, method, path)]
            for hook in hooks:
                hook.remaining -= 1
        for hook in hooks:  # outside the lock: the action may send its own requests to this fake
            hook.action()
        with self._lock:
            self.requests.append(record)
            for fault in self._faults:
                if fault.remaining > 0 and _matches(fault, method, path):
                    fault.remaining -= 1
                    record.status = fault.status
                    if fault.status == 502:
                        return 502, _BAD_GATEWAY_HTML
                    return fault.status, _error_json(fault.status, "injected by the fake", fault.status_name)
            try:
                for route_method, pattern, handler in self._ROUTES:
                    m = re.match(pattern, path)
                    if m and route_method == method:
                        message = getattr(self, handler)(m.groupdict(), query, body)
                        return 200, _to_json(message, ints)
                raise _ApiError(404, f"the fake has no route for {method} {path}")
            except _ApiError as exc:
                record.status = exc.status
                return exc.status, _error_json(exc.status, exc.message, exc.status_name)
            except Exception as exc:  # a bug in the fake: answer 500 so the test fails loudly, not hangs
                record.status = 500
                return 500, _error_json(500, f"fake error: {exc!r}")

    # ---- jobs ----------------------------------------------------------------------------------------

    def _done_operation(self, parent: str, response, metadata=None) -> operations_pb2.Operation:
        op = _FakeOperation(name=f"{parent}/operations/{uuid.uuid4()}", response=response,
                            metadata=metadata if metadata is not None else response)
        self.operations[op.name] = op
        return self._render_operation(op)

    def _create_job(self, p, query, body):
        parent = f"projects/{p['project']}/locations/{p['location']}"
        job_id = (query.get("jobId") or [""])[0]
        if not _JOB_ID_RE.match(job_id):
            raise _ApiError(400, f"jobId {job_id!r} is invalid")
        name = f"{parent}/jobs/{job_id}"
        if name in self.jobs:
            raise _ApiError(409, f"Resource '{job_id}' already exists.")
        job = run_v2.Job.from_json(json.dumps(body or {}), ignore_unknown_fields=True)
        if job.name:
            raise _ApiError(400, "job.name must be empty on create; it comes from jobId")
        job.name, job.uid, job.generation, job.etag = name, str(uuid.uuid4()), 1, '"gen-1"'
        job.create_time = job.update_time = now()
        self.jobs[name] = job
        return self._done_operation(parent, job)

    def _job(self, p) -> run_v2.Job:
        name = f"projects/{p['project']}/locations/{p['location']}/jobs/{p['job']}"
        if name not in self.jobs:
            raise _ApiError(404, f"Resource '{p['job']}' of kind 'JOB' in region '{p['location']}' in project "
                                 f"'{p['project']}' does not exist.")
        return self.jobs[name]

    def _get_job(self, p, query, body):
        return self._job(p)

    def _list_jobs(self, p, query, body):
        prefix = f"projects/{p['project']}/locations/{p['location']}/jobs/"
        page, token = _page([j for n, j in self.jobs.items() if n.startswith(prefix)], query)
        return run_v2.ListJobsResponse(jobs=page, next_page_token=token)

    def _delete_job(self, p, query, body):
        job = self._job(p)
        etag = (query.get("etag") or [""])[0]
        if etag and etag != job.etag:
            raise _ApiError(409, f"etag {etag} does not match the job's current etag {job.etag}", "ABORTED")
        if (query.get("validateOnly") or ["false"])[0] != "true":
            del self.jobs[job.name]
            for name in [n for n in self.executions if n.startswith(job.name + "/")]:
                del self.executions[name]
        return self._done_operation(job.name.rsplit("/jobs/", 1)[0], job)

    def _update_job(self, p, query, body):
        name = f"projects/{p['project']}/locations/{p['location']}/jobs/{p['job']}"
        new = run_v2.Job.from_json(json.dumps(body or {}), ignore_unknown_fields=True)
        if new.name and new.name != name:
            raise _ApiError(400, f"job.name {new.name!r} does not match the path {name!r}")
        new.name = name  # the client moves job.name into the URL (a path parameter), out of the body
        old = self.jobs.get(name)
        if old is None:
            if (query.get("allowMissing") or ["false"])[0] != "true":
                self._job(p)  # raises NOT_FOUND
            generation = 0
        else:
            if new.etag and new.etag != old.etag:
                raise _ApiError(409, f"etag {new.etag} does not match the job's current etag {old.etag}", "ABORTED")
            generation = old.generation
            new.uid, new.create_time = old.uid, old.create_time
        new.generation = generation + 1
        new.etag = f'"gen-{new.generation}"'
        new.update_time = now()
        self.jobs[name] = new
        return self._done_operation(name.rsplit("/jobs/", 1)[0], new)

    def _run_job(self, p, query, body):
        job = self._job(p)
        request = run_v2.RunJobRequest.from_json(json.dumps(body or {}), ignore_unknown_fields=True)
        try:
            template = apply_overrides(job, request.overrides)
        except ValueError as exc:
            raise _ApiError(400, str(exc)) from None
        task_count = request.overrides.task_count or job.template.task_count or 1
        execution = new_execution(job, f"{p['job']}-{next(self._counter):05d}", p["project"], template, task_count)
        plan = self._plans.popleft() if self._plans else self.default_plan
        fake = FakeExecution(execution, plan)
        self.executions[execution.name] = fake
        job.execution_count += 1
        job.latest_created_execution = run_v2.ExecutionReference(name=execution.name,
                                                                 create_time=execution.create_time)
        fake.advance(poll=False)
        op = _FakeOperation(name=f"projects/{p['project']}/locations/{p['location']}/operations/{uuid.uuid4()}",
                            execution=execution.name)
        self.operations[op.name] = op
        return self._render_operation(op, force_done=self.operation_done_immediately)

    # ---- executions ----------------------------------------------------------------------------------

    def _fake_execution(self, p) -> FakeExecution:
        self._job(p)
        name = (f"projects/{p['project']}/locations/{p['location']}/jobs/{p['job']}"
                f"/executions/{p['execution']}")
        if name not in self.executions:
            raise _ApiError(404, f"Execution {p['execution']!r} does not exist.")
        return self.executions[name]

    def _get_execution(self, p, query, body):
        fake = self._fake_execution(p)
        fake.advance(poll=True)
        return fake.execution

    def _list_executions(self, p, query, body):
        job = self._job(p)
        found = [f.execution for n, f in reversed(self.executions.items()) if n.startswith(job.name + "/")]
        page, token = _page(found, query)
        return run_v2.ListExecutionsResponse(executions=page, next_page_token=token)

    def _cancel_execution(self, p, query, body):
        fake = self._fake_execution(p)
        self.cancelled.append(fake.execution.name)
        fake.cancel()
        return self._done_operation(fake.execution.name.split("/jobs/")[0], fake.execution)

    # ---- operations ----------------------------------------------------------------------------------

    def _get_operation(self, p, query, body):
        name = f"projects/{p['project']}/locations/{p['location']}/operations/{p['operation']}"
        if name not in self.operations:
            raise _ApiError(404, f"Operation {name!r} does not exist.")
        return self._render_operation(self.operations[name])

    def _render_operation(self, op: _FakeOperation, *, force_done: bool = False) -> operations_pb2.Operation:
        pb = operations_pb2.Operation(name=op.name)
        if op.execution is not None:
            fake = self.executions[op.execution]
            execution_pb = run_v2.Execution.pb(fake.execution)
            pb.metadata.Pack(execution_pb)
            if fake.ended or force_done:
                pb.done = True
                pb.response.Pack(execution_pb)
        else:
            pb.metadata.Pack(type(op.metadata).pb(op.metadata))
            pb.done = True
            pb.response.Pack(type(op.response).pb(op.response))
        return pb


def _matches(rule: _Fault | _Hook, method: str, path: str) -> bool:
    return rule.method in (None, method) and (rule.path_re is None or rule.path_re.search(path) is not None)


def _page(items: list, query: dict) -> tuple[list, str]:
    """One page of ``items`` per ``pageSize``/``pageToken`` (the token is the next offset), and the next token."""
    size = int((query.get("pageSize") or ["0"])[0]) or len(items) or 1
    start = int((query.get("pageToken") or ["0"])[0] or 0)
    return items[start:start + size], (str(start + size) if start + size < len(items) else "")


def _to_json(message, ints: bool) -> str:
    if isinstance(message, operations_pb2.Operation):
        return json_format.MessageToJson(message, use_integers_for_enums=ints)
    return type(message).to_json(message, use_integers_for_enums=ints,
                                 always_print_fields_with_no_presence=False)


def _error_json(status: int, message: str, status_name: str | None = None) -> str:
    name = status_name or _STATUS_NAMES.get(status, HTTPStatus(status).phrase.upper())
    return json.dumps({"error": {"code": status, "message": message, "status": name}})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's requests.Session expects
    fake: FakeCloudRunApi

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY each keep-alive response waits ~40 ms
        # on the peer's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = self.fake.handle(self.command, self.path, raw)
        data = payload.encode()
        self.send_response(status)
        kind = "text/html" if payload.startswith("<!DOCTYPE") else "application/json"
        self.send_header("Content-Type", f"{kind}; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: the fake records requests itself
        pass
