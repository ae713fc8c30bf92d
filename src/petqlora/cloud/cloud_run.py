"""Run a Cloud Run Job execution on a GPU and follow it to the end: the launcher and cancellation.

The GPU steps (training, GPU evaluation) are one container entrypoint, ``python -m <module> *args``. In the
cloud that entrypoint runs as a Cloud Run Job execution (``google-cloud-run`` ``run_v2``).
:class:`CloudRunLauncher` is the thin, idempotent loop around the pure builders of
:mod:`petqlora.cloud.cloud_run_spec`: each spec has its own job (``<job_prefix>-<spec hash>``, kept by
:mod:`petqlora.cloud.cloud_run_jobs`), each pipeline task one execution of it, checked to run the image it
asked for. :func:`cancel_on_sigterm` turns a pipeline cancel into a cancelled execution. Reading an
execution lives in :mod:`petqlora.cloud.cloud_run_state`, which errors are retried in
:mod:`petqlora.cloud.cloud_run_retry`. The choice between this and a local subprocess is
:class:`petqlora.backends.Backend`.

Typical use from a pipeline step::

    cfg = CloudRunJobConfig(project="my-proj", region="us-central1", job_prefix="petqlora-train-adapter",
                            image="us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
                            module="petqlora.train.train_adapter",
                            service_account="petqlora-job@my-proj.iam.gserviceaccount.com",
                            bucket="my-proj-petqlora", hf_token_secret="hf-token")
    with cancel_on_sigterm():
        CloudRunLauncher(cfg).run(["--config", "/gcs/configs/train.json"], task_id=run_id)
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

from google.api_core import exceptions as core_exceptions
from google.cloud import run_v2

from petqlora.cloud.cloud_run_jobs import ensure_job, prune_jobs
from petqlora.cloud.cloud_run_retry import TRANSIENT_ERRORS, Backoff, PollPace
from petqlora.cloud.cloud_run_spec import TASK_ID_ENV, CloudRunJobConfig, build_run_request, validate_run_inputs
from petqlora.cloud.cloud_run_state import (
    ExecutionState,
    execution_images,
    execution_state,
    failure_reason,
    same_image,
    task_id_of,
)
from petqlora.problems import Problems

__all__ = [
    "CloudRunExecutionError",
    "CloudRunImageMismatchError",
    "CloudRunLauncher",
    "CloudRunTimeoutError",
    "ExecutionState",
    "TRANSIENT_ERRORS",
    "cancel_on_sigterm",
    "execution_state",
    "failure_reason",
]


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


class CloudRunImageMismatchError(CloudRunExecutionError):
    """The execution runs another image than the one this run asked for; :meth:`CloudRunLauncher.run`
    cancels it."""


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class CloudRunLauncher:
    """Makes sure this spec's Cloud Run Job exists and runs one execution per pipeline task, idempotently.

    ``jobs_client``/``executions_client`` default to ``run_v2.JobsClient()``/``ExecutionsClient()`` with
    application default credentials; tests pass REST clients pointed at a local fake. Polling of the
    execution is exponential from ``poll_initial_s`` to ``poll_max_s``; ``timeout_s`` bounds the whole
    wait (None: wait as long as the job's task timeout allows). The ``retry_*`` knobs bound the backoff on
    transient API errors (see :mod:`petqlora.cloud.cloud_run_retry`), and ``sleep`` is injectable so tests
    can observe the schedule.
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
        self._backoff = Backoff(float(retry_initial_s), float(retry_max_s), float(retry_timeout_s), log, sleep)
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

    # ---- jobs ----------------------------------------------------------------------------------------

    def ensure_job(self) -> run_v2.Job:
        """Create this spec's job if it is missing; put it back if its content drifted; else leave it."""
        job = ensure_job(self.jobs_client, self.cfg, self._backoff)
        self._job_ready = True
        return job

    def prune_old_jobs(self) -> list[str]:
        """Delete old jobs of this prefix (see :func:`petqlora.cloud.cloud_run_jobs.prune_jobs`). Best effort:
        it follows a run that succeeded, so an API error is logged with the fix, never raised."""
        try:
            return prune_jobs(self.jobs_client, self.executions_client, self.cfg, self._backoff)
        except core_exceptions.GoogleAPIError as exc:
            self.log(f"[cloud-run] could not prune old '{self.cfg.job_prefix}' jobs: {exc}. The run itself "
                     "succeeded; grant run.jobs.list, run.jobs.delete and run.executions.list (docs/cloud_setup.md) "
                     "or set keep_jobs=None to keep every job")
            return []

    # ---- executions ----------------------------------------------------------------------------------

    def _image_problem(self, execution: run_v2.Execution) -> str | None:
        """Why ``execution`` does not run this run's image, or None. Belt and braces: a job named after its
        spec runs that spec, unless someone edits it between ensure_job and run_job (by hand, or a hash
        collision); run_job runs whatever the job holds at that instant, and the execution's template is what
        Cloud Run really runs. Hours of training on another trainer, reported SUCCEEDED, is the cost avoided."""
        images = execution_images(execution)
        if len(images) == 1 and same_image(self.cfg.image, images[0]):
            return None
        return (f"Cloud Run execution {execution.name} runs image {images[0] if len(images) == 1 else images!r}, "
                f"not {self.cfg.image!r} that this run asked for: job {self.cfg.job_path} was changed between "
                f"ensure_job and run_job")

    def find_execution(self, task_id: str) -> run_v2.Execution | None:
        """The execution of this spec's job already started for ``task_id`` that is worth reusing: a succeeded
        one first, else one still running. Failed or cancelled ones are ignored (a new attempt starts
        instead), and so is one that runs another image (stopped if it still runs)."""
        succeeded = active = None
        try:
            executions = list(self.executions_client.list_executions(parent=self.cfg.job_path,
                                                                     retry=self._backoff.reads()))
        except core_exceptions.NotFound:
            return None  # the job was deleted since ensure_job (pruned, or by hand): _start creates it again
        for execution in executions:
            if task_id_of(execution) != task_id:
                continue
            state = execution_state(execution)
            if (problem := self._image_problem(execution)) is not None:
                self.log(f"[cloud-run] not reusing it for task {task_id}: {problem}")
                if not state.terminal:
                    self.cancel(execution.name)
                continue
            if state == ExecutionState.SUCCEEDED and succeeded is None:
                succeeded = execution
            elif not state.terminal and active is None:
                active = execution
        return succeeded or active

    def _start(self, args: list[str], task_id: str) -> str:
        """Start an execution and return its name. run_job is not idempotent, so a transient error is
        retried only after checking that the failed call did not start an execution after all."""
        request = build_run_request(self.cfg, args, task_id)
        delays = self._backoff.delays()
        recreated = False
        while True:
            try:
                op = self.jobs_client.run_job(request=request, retry=None)
                break
            except core_exceptions.NotFound:
                # The job was deleted since ensure_job (pruned by a concurrent run, or by hand). A 404 started
                # nothing, so creating the job again and running once more is safe; once, not in a loop.
                if recreated:
                    raise
                recreated = True
                self.log(f"[cloud-run] job {self.cfg.job_path} is gone; creating it again")
                self.ensure_job()
            except TRANSIENT_ERRORS as exc:
                delay = next(delays, None)
                if delay is None:
                    raise
                self.log(f"[cloud-run] transient error starting {self.cfg.job_name}, retrying in {delay:g}s: {exc}")
                self._sleep(delay)
                existing = self.find_execution(task_id)
                if existing is not None:
                    return existing.name
        name = self._execution_name(op, task_id)
        if not name.startswith(f"{self.cfg.job_path}/executions/"):
            raise CloudRunExecutionError(
                f"run_job on {self.cfg.job_path} answered with execution {name!r}, which is not one of that job's; "
                "refusing to follow it. Check the job's executions in the Cloud Console")
        return name

    def _execution_name(self, op, task_id: str) -> str:
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
            self.executions_client.cancel_execution(name=name, retry=self._backoff.reads())
            self.log(f"[cloud-run] cancelled execution {name}")
        except Exception as exc:  # noqa: BLE001 - never mask the interruption that led here
            self.log(f"[cloud-run] could not cancel execution {name}: {exc}; cancel it in the Cloud Console")

    def wait(self, name: str) -> run_v2.Execution:
        """Poll an execution until it ends, with delays doubling from poll_initial_s to poll_max_s. Raises
        :class:`CloudRunImageMismatchError` as soon as the execution shows another image than this run's."""
        pace = PollPace(self.poll_initial_s, self.poll_max_s, self.timeout_s, self._sleep)
        last: tuple | None = None
        while True:
            execution = self.executions_client.get_execution(name=name, retry=self._backoff.reads())
            if (problem := self._image_problem(execution)) is not None:
                raise CloudRunImageMismatchError(
                    f"{problem}; refusing it (it is cancelled). Re-run the step: the launcher puts the job back "
                    f"to its spec; if this recurs, find who updates {self.cfg.job_name} (Cloud Audit Logs, "
                    "run.jobs.update)", execution=execution, log_uri=execution.log_uri)
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
            if pace.expired():
                raise CloudRunTimeoutError(
                    f"Cloud Run execution {name} did not finish within timeout_s={self.timeout_s}; it was "
                    f"cancelled. Raise timeout_s (or pass None) if the job needs longer. "
                    f"Logs: {execution.log_uri}", execution=execution, log_uri=execution.log_uri)
            pace.pause()

    def run(self, args: list[str], task_id: str) -> run_v2.Execution:
        """Run this spec's job once for ``task_id`` and return the succeeded execution.

        Idempotent per ``task_id``: a succeeded execution is returned as is, a running one is waited on.
        On an interruption (KeyboardInterrupt, SystemExit e.g. from :func:`cancel_on_sigterm`), a timeout or
        an execution that runs another image, the execution is cancelled and the exception re-raised. API
        errors that outlast the retry budget propagate without cancelling: a retried step then re-attaches
        to the running execution. After a success, old jobs of the prefix are pruned (best effort).
        """
        validate_run_inputs(args, task_id)
        if not self._job_ready:
            self.ensure_job()
        existing = self.find_execution(task_id)
        if existing is not None and execution_state(existing) == ExecutionState.SUCCEEDED:
            self.log(f"[cloud-run] task {task_id} already succeeded as {existing.name}; not starting another")
            self.prune_old_jobs()
            return existing
        if existing is not None:
            self.log(f"[cloud-run] task {task_id} is already running as {existing.name}; waiting on it")
            name = existing.name
        else:
            name = self._start(args, task_id)
            self.log(f"[cloud-run] started execution {name} for task {task_id}")
        try:
            execution = self.wait(name)
        except CloudRunImageMismatchError as exc:
            self._job_ready = False  # the job changed under us: check it again before the next start
            if not execution_state(exc.execution).terminal:
                self.cancel(name)
            raise
        except (CloudRunTimeoutError, KeyboardInterrupt, SystemExit):
            self.cancel(name)
            raise
        if execution_state(execution) != ExecutionState.SUCCEEDED:
            reason = failure_reason(execution)
            raise CloudRunExecutionError(
                f"Cloud Run execution {execution.name} {execution_state(execution).value.lower()}: {reason}. "
                f"Logs: {execution.log_uri or '(no log link)'}",
                execution=execution, reason=reason, log_uri=execution.log_uri)
        self.prune_old_jobs()
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
