"""Run a GPU step as a Vertex AI CustomJob and follow it to the end: create, re-attach, poll, cancel.

:class:`CustomJobLauncher` is the thin loop around the pure builder of :mod:`petqlora.cloud.vertex_custom_job`,
through the real ``google-cloud-aiplatform`` v1 ``JobServiceClient``. One pipeline task is one CustomJob,
found again by its display name (``<prefix>-<task id>``): a retried step waits on the job it already started,
or takes the one that succeeded, instead of paying for a second machine. A failed job's error is raised in
full; an interruption (SIGTERM through :func:`petqlora.cloud.cloud_run.cancel_on_sigterm`, Ctrl-C) or a
timeout cancels the job. Transient API errors are retried as for Cloud Run (:mod:`petqlora.cloud.cloud_run_retry`);
a create is repeated only after checking that the failed one did not create the job after all.
"""

from __future__ import annotations

import time
from typing import Callable

from google.cloud import aiplatform_v1

from petqlora.cloud.cloud_run_retry import TRANSIENT_ERRORS, Backoff, PollPace
from petqlora.cloud.vertex_custom_job import CustomJobConfig, build_custom_job, display_name

__all__ = ["CustomJobError", "CustomJobLauncher", "CustomJobTimeoutError", "job_problem", "logs_url"]

JobState = aiplatform_v1.JobState
TERMINAL = {JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED,
            JobState.JOB_STATE_EXPIRED, JobState.JOB_STATE_PARTIALLY_SUCCEEDED}


class CustomJobError(RuntimeError):
    """A CustomJob ended without success (or could not be waited on)."""

    def __init__(self, message: str, *, job: aiplatform_v1.CustomJob | None = None) -> None:
        super().__init__(message)
        self.job = job


class CustomJobTimeoutError(CustomJobError, TimeoutError):
    """The launcher's wait ran past ``timeout_s``; the job was cancelled."""


def _state(job: aiplatform_v1.CustomJob) -> str:
    return JobState(job.state).name.removeprefix("JOB_STATE_")


def logs_url(name: str) -> str:
    """The Logs Explorer query of a CustomJob's logs (resource type ml_job, by job id)."""
    project, job_id = name.split("/")[1], name.rsplit("/", 1)[-1]
    return ("https://console.cloud.google.com/logs/query;query=resource.type%3D%22ml_job%22%20"
            f"resource.labels.job_id%3D%22{job_id}%22?project={project}")


def _what_runs(pool: aiplatform_v1.WorkerPoolSpec) -> dict:
    """What a worker pool runs, field by field: the fields this launcher sets (Vertex may fill in others)."""
    c, m = pool.container_spec, pool.machine_spec
    return {"image_uri": c.image_uri, "command": list(c.command), "args": list(c.args),
            "machine_type": m.machine_type, "accelerator_type": m.accelerator_type,
            "accelerator_count": m.accelerator_count}


def job_problem(job: aiplatform_v1.CustomJob, wanted: aiplatform_v1.CustomJob) -> str | None:
    """Why an existing job of the task's name is not the job this run asks for (another image, command,
    arguments or machine), or None. A job of the same name that runs other code is never reused."""
    have, want = job.job_spec.worker_pool_specs, wanted.job_spec.worker_pool_specs
    if len(have) != 1:
        return f"it has {len(have)} worker pools, not 1"
    have, want = _what_runs(have[0]), _what_runs(want[0])
    differ = [f"{key} {have[key]!r} instead of {want[key]!r}" for key in want if have[key] != want[key]]
    return f"it runs {', '.join(differ)}" if differ else None


class CustomJobLauncher:
    """Runs one CustomJob per pipeline task, idempotently. ``client`` defaults to a
    ``JobServiceClient`` of the config's region (application default credentials); tests pass a REST client
    pointed at a local fake. Polls from ``poll_initial_s`` doubling to ``poll_max_s``; ``timeout_s`` bounds the
    wait (None: the job's own timeout); ``sleep`` is injectable (tests; the backend's stop event)."""

    def __init__(self, cfg: CustomJobConfig, *, client: aiplatform_v1.JobServiceClient | None = None,
                 poll_initial_s: float = 10.0, poll_max_s: float = 60.0, timeout_s: float | None = None,
                 log: Callable[[str], object] = print, retry_initial_s: float = 1.0, retry_max_s: float = 30.0,
                 retry_timeout_s: float = 600.0, sleep: Callable[[float], object] = time.sleep) -> None:
        if not isinstance(cfg, CustomJobConfig):
            raise ValueError(f"cfg={cfg!r}: must be a CustomJobConfig")
        if not 0 < poll_initial_s <= poll_max_s or (timeout_s is not None and timeout_s <= 0):
            raise ValueError(f"poll_initial_s={poll_initial_s!r}, poll_max_s={poll_max_s!r}, timeout_s={timeout_s!r}: "
                             "need 0 < poll_initial_s <= poll_max_s and timeout_s None or > 0")
        self.cfg = cfg
        self._client = client
        self.poll_initial_s, self.poll_max_s, self.timeout_s = float(poll_initial_s), float(poll_max_s), timeout_s
        self.log = log
        self._sleep = sleep
        self._backoff = Backoff(float(retry_initial_s), float(retry_max_s), float(retry_timeout_s), log, sleep)

    @property
    def client(self) -> aiplatform_v1.JobServiceClient:
        # Created when first used, so building a launcher needs no credentials; Vertex's API is regional.
        if self._client is None:
            self._client = aiplatform_v1.JobServiceClient(
                client_options={"api_endpoint": f"{self.cfg.region}-aiplatform.googleapis.com"})
        return self._client

    def find_job(self, wanted: aiplatform_v1.CustomJob) -> aiplatform_v1.CustomJob | None:
        """The job already created for this task that is worth reusing: a succeeded one first, else one still
        running. Failed or cancelled ones are left (a new one starts), and so is one that runs other code
        (cancelled if it still runs)."""
        succeeded = active = None
        jobs = self.client.list_custom_jobs(
            request={"parent": self.cfg.parent, "filter": f'display_name="{wanted.display_name}"'},
            retry=self._backoff.reads())
        for job in jobs:
            if job.display_name != wanted.display_name:
                continue
            if (problem := job_problem(job, wanted)) is not None:
                self.log(f"[custom-job] not reusing {job.name} for {wanted.display_name}: {problem}")
                if job.state not in TERMINAL:
                    self.cancel(job.name)
                continue
            if job.state == JobState.JOB_STATE_SUCCEEDED and succeeded is None:
                succeeded = job
            elif job.state not in TERMINAL and active is None:
                active = job
        return succeeded or active

    def _create(self, wanted: aiplatform_v1.CustomJob) -> str:
        """Create the job and return its name. A create is not idempotent: after a transient error the task's
        job is looked for before trying again."""
        delays = self._backoff.delays()
        while True:
            try:
                return self.client.create_custom_job(parent=self.cfg.parent, custom_job=wanted, retry=None).name
            except TRANSIENT_ERRORS as exc:
                delay = next(delays, None)
                if delay is None:
                    raise
                self.log(f"[custom-job] transient error creating {wanted.display_name}, retrying in {delay:g}s: {exc}")
                self._sleep(delay)
                if (existing := self.find_job(wanted)) is not None:
                    return existing.name

    def cancel(self, name: str) -> None:
        """Ask Vertex to cancel a job; errors are logged, not raised (used while unwinding)."""
        try:
            self.client.cancel_custom_job(name=name, retry=self._backoff.reads())
            self.log(f"[custom-job] cancelled {name}")
        except Exception as exc:  # noqa: BLE001 - never mask the interruption that led here
            self.log(f"[custom-job] could not cancel {name}: {exc}; cancel it in the Cloud Console")

    def wait(self, name: str) -> aiplatform_v1.CustomJob:
        """Poll the job until it ends, logging each change of state."""
        pace, last = PollPace(self.poll_initial_s, self.poll_max_s, self.timeout_s, self._sleep), None
        while True:
            job = self.client.get_custom_job(name=name, retry=self._backoff.reads())
            if job.state != last:
                logs = f"; logs: {logs_url(name)}" if last is None else ""
                self.log(f"[custom-job] {job.display_name} ({name.rsplit('/', 1)[-1]}): {_state(job)}{logs}")
                last = job.state
            if job.state in TERMINAL:
                return job
            if pace.expired():
                raise CustomJobTimeoutError(
                    f"Vertex CustomJob {name} did not finish within timeout_s={self.timeout_s}; it is cancelled. "
                    f"Raise timeout_s if the step needs longer. Logs: {logs_url(name)}", job=job)
            pace.pause()

    def run(self, args: list[str], task_id: str) -> aiplatform_v1.CustomJob:
        """Run the step once for ``task_id`` and return the succeeded job (see the module docstring)."""
        wanted = build_custom_job(self.cfg, args, task_id)
        existing = self.find_job(wanted)
        if existing is not None and existing.state == JobState.JOB_STATE_SUCCEEDED:
            self.log(f"[custom-job] task {task_id} already succeeded as {existing.name}; not starting another")
            return existing
        if existing is not None:
            self.log(f"[custom-job] task {task_id} is already running as {existing.name}; waiting on it")
            name = existing.name
        else:
            name = self._create(wanted)
            self.log(f"[custom-job] created {name} ({display_name(self.cfg, task_id)}) on {self.cfg.machine_type}")
        try:
            job = self.wait(name)
        except (CustomJobTimeoutError, KeyboardInterrupt, SystemExit):
            self.cancel(name)
            raise
        if job.state != JobState.JOB_STATE_SUCCEEDED:
            error = f"{job.error.message} (code {job.error.code})" if job.error.message else "no error message"
            raise CustomJobError(f"Vertex CustomJob {name} ({job.display_name}) {_state(job).lower()}: {error}. "
                                 f"Logs: {logs_url(name)}", job=job)
        return job
