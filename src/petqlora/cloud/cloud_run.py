"""Run a Cloud Run Job execution on a GPU and follow it to the end: the launcher, execution state and
cancellation.

The GPU steps (training, GPU evaluation) are one container entrypoint, ``python -m <module> *args``. In the
cloud that entrypoint runs as a Cloud Run Job execution (``google-cloud-run`` ``run_v2``).
:class:`CloudRunLauncher` is the thin, idempotent loop around the pure builders of
:mod:`petqlora.cloud.cloud_run_spec`; :func:`execution_state` and :func:`failure_reason` read an execution;
:func:`cancel_on_sigterm` turns a pipeline cancel into a cancelled execution. The choice between this and a
local subprocess is :class:`petqlora.backends.Backend`.

Typical use from a pipeline step::

    cfg = CloudRunJobConfig(project="my-proj", region="us-central1", job_name="petqlora-train",
                            image="us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
                            module="petqlora.train.train_adapter",
                            service_account="petqlora-job@my-proj.iam.gserviceaccount.com",
                            bucket="my-proj-petqlora", hf_token_secret="hf-token")
    with cancel_on_sigterm():
        CloudRunLauncher(cfg).run(["--config", "/gcs/configs/train.json"], task_id=run_id)
"""

from __future__ import annotations

import contextlib
import enum
import signal
import threading
import time
from typing import Callable, Iterator

from google.api_core import exceptions as core_exceptions
from google.api_core import retry as core_retry
from google.cloud import run_v2

from petqlora.cloud.cloud_run_spec import (
    TASK_ID_ENV,
    CloudRunJobConfig,
    build_job,
    build_run_request,
    validate_run_inputs,
)
from petqlora.problems import Problems

__all__ = [
    "CloudRunExecutionError",
    "CloudRunLauncher",
    "CloudRunTimeoutError",
    "ExecutionState",
    "TRANSIENT_ERRORS",
    "cancel_on_sigterm",
    "execution_state",
    "failure_reason",
]

# Errors worth retrying: 429 (ResourceExhausted is a TooManyRequests), 503, 504 (DeadlineExceeded is a
# GatewayTimeout).
TRANSIENT_ERRORS = (
    core_exceptions.TooManyRequests,
    core_exceptions.ServiceUnavailable,
    core_exceptions.GatewayTimeout,
)


class ExecutionState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED)


_COND = run_v2.Condition


def _completed_condition(execution: run_v2.Execution) -> run_v2.Condition | None:
    return next((c for c in execution.conditions if c.type_ == "Completed"), None)


def execution_state(execution: run_v2.Execution) -> ExecutionState:
    """Where an execution stands. Executions have no state field: the ``Completed`` condition says it,
    with the task counts as a fallback."""
    cond = _completed_condition(execution)
    cancelled = (execution.cancelled_count > 0
                 or (cond is not None and cond.execution_reason in (
                     _COND.ExecutionReason.CANCELLED, _COND.ExecutionReason.CANCELLING)))
    if cond is not None and cond.state == _COND.State.CONDITION_SUCCEEDED:
        return ExecutionState.SUCCEEDED
    if cond is not None and cond.state == _COND.State.CONDITION_FAILED:
        return ExecutionState.CANCELLED if cancelled else ExecutionState.FAILED
    if "completion_time" in execution:
        if execution.succeeded_count >= max(execution.task_count, 1):
            return ExecutionState.SUCCEEDED
        return ExecutionState.CANCELLED if cancelled else ExecutionState.FAILED
    return ExecutionState.RUNNING if execution.running_count > 0 else ExecutionState.PENDING


def failure_reason(execution: run_v2.Execution) -> str:
    """A one-line reason read from the execution's conditions and counts."""
    parts = []
    failed = [c for c in execution.conditions if c.state == _COND.State.CONDITION_FAILED]
    failed.sort(key=lambda c: c.type_ != "Completed")  # the terminal condition first
    for c in failed:
        codes = [r.name for r in (c.execution_reason, c.reason, c.revision_reason)
                 if r and r.name and not r.name.endswith("UNDEFINED")]
        text = f"{c.type_}: " + " ".join(filter(None, [", ".join(codes), c.message]))
        parts.append(text.strip())
    parts.append(f"tasks: {execution.succeeded_count} succeeded, {execution.failed_count} failed, "
                 f"{execution.cancelled_count} cancelled, {execution.retried_count} retried")
    return "; ".join(parts)


class CloudRunExecutionError(RuntimeError):
    """A Cloud Run execution ended without success (or could not be waited on)."""

    def __init__(self, message: str, *, execution: run_v2.Execution | None = None,
                 reason: str = "", log_uri: str = "") -> None:
        super().__init__(message)
        self.execution = execution
        self.reason = reason
        self.log_uri = log_uri


class CloudRunTimeoutError(CloudRunExecutionError, TimeoutError):
    """The launcher's wait ran past ``timeout_s``; the execution was cancelled."""


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _task_id_of(execution: run_v2.Execution) -> str | None:
    for container in execution.template.containers[:1]:
        for env in container.env:
            if env.name == TASK_ID_ENV:
                return env.value
    return None


def _spec_view(job: run_v2.Job) -> dict:
    """The parts of a Job that :func:`build_job` owns, in a comparable form. The server adds status and
    may default other fields, so comparing whole resources would update the job on every run."""
    task = job.template.template
    containers = []
    for c in task.containers:
        containers.append({
            "image": c.image,
            "command": list(c.command),
            "args": list(c.args),
            "env": sorted(run_v2.EnvVar.to_json(e, sort_keys=True) for e in c.env),
            "limits": dict(c.resources.limits),
            "volume_mounts": sorted((m.name, m.mount_path, m.sub_path) for m in c.volume_mounts),
        })
    return {
        "labels": dict(job.labels),
        "execution_labels": dict(job.template.labels),
        "task_count": job.template.task_count or 1,
        "containers": containers,
        "volumes": sorted(run_v2.Volume.to_json(v, sort_keys=True) for v in task.volumes),
        "max_retries": task.max_retries if "max_retries" in task else 3,  # 3 is the API's default
        "timeout": task.timeout,  # proto-plus gives a timedelta
        "service_account": task.service_account,
        "accelerator": task.node_selector.accelerator,
        "gpu_zonal_redundancy_disabled": bool(task.gpu_zonal_redundancy_disabled),
    }


class CloudRunLauncher:
    """Creates/updates the Cloud Run Job and runs one execution per pipeline task, idempotently.

    ``jobs_client``/``executions_client`` default to ``run_v2.JobsClient()``/``ExecutionsClient()`` with
    application default credentials; tests pass REST clients pointed at a local fake. Polling of the
    execution is exponential from ``poll_initial_s`` to ``poll_max_s``; ``timeout_s`` bounds the whole
    wait (None: wait as long as the job's task timeout allows). The ``retry_*`` knobs bound the backoff on
    transient API errors, and ``sleep`` is injectable so tests can observe the schedule.
    """

    def __init__(
        self,
        cfg: CloudRunJobConfig,
        *,
        jobs_client: run_v2.JobsClient | None = None,
        executions_client: run_v2.ExecutionsClient | None = None,
        poll_initial_s: float = 5.0,
        poll_max_s: float = 60.0,
        timeout_s: float | None = None,
        log: Callable[[str], object] = print,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        retry_timeout_s: float = 600.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        p = Problems("CloudRunLauncher arguments")
        p.check(isinstance(cfg, CloudRunJobConfig), "cfg", cfg, "must be a CloudRunJobConfig")
        for name, value in [("poll_initial_s", poll_initial_s), ("poll_max_s", poll_max_s),
                            ("retry_initial_s", retry_initial_s), ("retry_max_s", retry_max_s),
                            ("retry_timeout_s", retry_timeout_s)]:
            p.check(_positive(value), name, value, "must be a positive number of seconds")
        if not p and poll_max_s < poll_initial_s:
            p.add("poll_max_s", poll_max_s, f"must be >= poll_initial_s={poll_initial_s!r}")
        if not p and retry_max_s < retry_initial_s:
            p.add("retry_max_s", retry_max_s, f"must be >= retry_initial_s={retry_initial_s!r}")
        p.check(timeout_s is None or _positive(timeout_s), "timeout_s", timeout_s,
                "must be a positive number of seconds or None (no limit)")
        p.check(callable(log) and callable(sleep), "log, sleep", (log, sleep), "must be callables")
        p.raise_if_any()
        self.cfg = cfg
        self._jobs_client = jobs_client
        self._executions_client = executions_client
        self.poll_initial_s = float(poll_initial_s)
        self.poll_max_s = float(poll_max_s)
        self.timeout_s = timeout_s
        self.log = log
        self._sleep = sleep
        self._retry_initial_s = float(retry_initial_s)
        self._retry_max_s = float(retry_max_s)
        self._retry_timeout_s = float(retry_timeout_s)
        self._job_ready = False

    # Clients are created lazily so that building a launcher (e.g. in a dry run) needs no credentials.
    @property
    def jobs_client(self) -> run_v2.JobsClient:
        if self._jobs_client is None:
            self._jobs_client = run_v2.JobsClient()
        return self._jobs_client

    @property
    def executions_client(self) -> run_v2.ExecutionsClient:
        if self._executions_client is None:
            self._executions_client = run_v2.ExecutionsClient()
        return self._executions_client

    def _retry(self) -> core_retry.Retry:
        return core_retry.Retry(
            predicate=core_retry.if_exception_type(*TRANSIENT_ERRORS),
            initial=self._retry_initial_s, maximum=self._retry_max_s, multiplier=2.0,
            timeout=self._retry_timeout_s,
            on_error=lambda exc: self.log(f"[cloud-run] transient API error, retrying: {exc}"),
        )

    # ---- job -----------------------------------------------------------------------------------------

    def ensure_job(self) -> run_v2.Job:
        """Create the job if it is missing, update it if its spec differs from ``cfg``, else leave it."""
        desired = build_job(self.cfg)
        name = self.cfg.job_path
        try:
            existing = self.jobs_client.get_job(name=name, retry=self._retry())
        except core_exceptions.NotFound:
            self.log(f"[cloud-run] creating job {name} (image {self.cfg.image})")
            try:
                op = self.jobs_client.create_job(parent=self.cfg.parent, job=desired,
                                                 job_id=self.cfg.job_name, retry=self._retry())
                job = op.result(timeout=self._retry_timeout_s)
            except core_exceptions.AlreadyExists:  # a retried create whose first attempt went through
                job = self.jobs_client.get_job(name=name, retry=self._retry())
            self._job_ready = True
            return job
        if _spec_view(existing) == _spec_view(desired):
            self._job_ready = True
            return existing
        self.log(f"[cloud-run] updating job {name}: its spec differs from the config (image {self.cfg.image})")
        desired.name = name
        desired.etag = existing.etag  # optimistic concurrency: fail rather than overwrite a concurrent edit
        op = self.jobs_client.update_job(job=desired, retry=self._retry())
        job = op.result(timeout=self._retry_timeout_s)
        self._job_ready = True
        return job

    # ---- executions ----------------------------------------------------------------------------------

    def find_execution(self, task_id: str) -> run_v2.Execution | None:
        """The execution already started for ``task_id`` that is worth reusing: a succeeded one first,
        else one still running. Failed or cancelled ones are ignored (a new attempt starts instead)."""
        succeeded = active = None
        pager = self.executions_client.list_executions(parent=self.cfg.job_path, retry=self._retry())
        for execution in pager:
            if _task_id_of(execution) != task_id:
                continue
            state = execution_state(execution)
            if state == ExecutionState.SUCCEEDED and succeeded is None:
                succeeded = execution
            elif not state.terminal and active is None:
                active = execution
        return succeeded or active

    def _start(self, args: list[str], task_id: str) -> str:
        """Start an execution and return its name. run_job is not idempotent, so a transient error is
        retried only after checking that the failed call did not start an execution after all."""
        request = build_run_request(self.cfg, args, task_id)
        delay = self._retry_initial_s
        deadline = time.monotonic() + self._retry_timeout_s
        while True:
            try:
                op = self.jobs_client.run_job(request=request)
                break
            except TRANSIENT_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise
                self.log(f"[cloud-run] transient error starting {self.cfg.job_name}, retrying in {delay:g}s: {exc}")
                self._sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                existing = self.find_execution(task_id)
                if existing is not None:
                    return existing.name
        metadata = op.metadata
        if metadata is not None and metadata.name:
            return metadata.name
        if op.done() and op.exception() is None and op.result().name:
            return op.result().name
        found = self.find_execution(task_id)
        if found is None:
            raise CloudRunExecutionError(
                f"run_job on {self.cfg.job_path} returned operation {op.operation.name} without an execution, "
                f"and no execution tagged {TASK_ID_ENV}={task_id} exists; check the job in the Cloud Console")
        return found.name

    def cancel(self, name: str) -> None:
        """Ask Cloud Run to cancel an execution; errors are logged, not raised (used while unwinding)."""
        try:
            self.executions_client.cancel_execution(name=name, retry=self._retry())
            self.log(f"[cloud-run] cancelled execution {name}")
        except Exception as exc:  # noqa: BLE001 - never mask the interruption that led here
            self.log(f"[cloud-run] could not cancel execution {name}: {exc}; cancel it in the Cloud Console")

    def wait(self, name: str) -> run_v2.Execution:
        """Poll an execution until it ends, with delays doubling from poll_initial_s to poll_max_s."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        delay = self.poll_initial_s
        last: tuple | None = None
        while True:
            execution = self.executions_client.get_execution(name=name, retry=self._retry())
            state = execution_state(execution)
            seen = (state, execution.running_count, execution.succeeded_count, execution.failed_count,
                    execution.retried_count)
            if seen != last:
                logs = f"; logs: {execution.log_uri}" if last is None and execution.log_uri else ""
                self.log(f"[cloud-run] {_short(name)}: {state.value} (running {execution.running_count}, "
                         f"succeeded {execution.succeeded_count}, failed {execution.failed_count}, "
                         f"retried {execution.retried_count}){logs}")
                last = seen
            if state.terminal:
                return execution
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CloudRunTimeoutError(
                        f"Cloud Run execution {name} did not finish within timeout_s={self.timeout_s}; it was "
                        f"cancelled. Raise timeout_s (or pass None) if the job needs longer. "
                        f"Logs: {execution.log_uri}", execution=execution, log_uri=execution.log_uri)
                self._sleep(min(delay, remaining))
            else:
                self._sleep(delay)
            delay = min(delay * 2, self.poll_max_s)

    def run(self, args: list[str], task_id: str) -> run_v2.Execution:
        """Run the job once for ``task_id`` and return the succeeded execution.

        Idempotent per ``task_id``: a succeeded execution is returned as is, a running one is waited on.
        On an interruption (KeyboardInterrupt, SystemExit e.g. from :func:`cancel_on_sigterm`) or a
        timeout the execution is cancelled and the exception re-raised. API errors that outlast the retry
        budget propagate without cancelling: a retried step then re-attaches to the running execution.
        """
        validate_run_inputs(args, task_id)
        if not self._job_ready:
            self.ensure_job()
        existing = self.find_execution(task_id)
        if existing is not None and execution_state(existing) == ExecutionState.SUCCEEDED:
            self.log(f"[cloud-run] task {task_id} already succeeded as {existing.name}; not starting another")
            return existing
        if existing is not None:
            self.log(f"[cloud-run] task {task_id} is already running as {existing.name}; waiting on it")
            name = existing.name
        else:
            name = self._start(args, task_id)
            self.log(f"[cloud-run] started execution {name} for task {task_id}")
        try:
            execution = self.wait(name)
        except (CloudRunTimeoutError, KeyboardInterrupt, SystemExit):
            self.cancel(name)
            raise
        if execution_state(execution) != ExecutionState.SUCCEEDED:
            reason = failure_reason(execution)
            raise CloudRunExecutionError(
                f"Cloud Run execution {execution.name} {execution_state(execution).value.lower()}: {reason}. "
                f"Logs: {execution.log_uri or '(no log link)'}",
                execution=execution, reason=reason, log_uri=execution.log_uri)
        return execution


@contextlib.contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (what Vertex and Kubernetes send on cancel) into SystemExit(143) while inside, so
    :meth:`CloudRunLauncher.run` cancels its execution. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
