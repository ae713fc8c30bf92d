"""The Cloud Run Jobs of one spec: make sure this run's job exists as specified, and prune old ones.

A job is named after its spec (:func:`petqlora.cloud.cloud_run_spec.spec_hash`), so :func:`ensure_job`
creates each job once and afterwards only reads it; two runs with different images use two jobs and never
change each other's. One update path is left, for a job whose content no longer matches the spec its name
stands for (edited by hand in the console or with gcloud): it is put back, carrying the etag it was read
with, and re-read and retried on a conflict (see :mod:`petqlora.cloud.cloud_run_retry`).
:func:`prune_jobs` keeps the number of jobs per prefix bounded after a successful run.
"""

from __future__ import annotations

import datetime
import re

from google.api_core import exceptions as core_exceptions
from google.cloud import run_v2

from petqlora.cloud.cloud_run_retry import CONFLICT_ERRORS, MAX_UPDATE_ATTEMPTS, TRANSIENT_ERRORS, Backoff
from petqlora.cloud.cloud_run_spec import JOB_PREFIX_LABEL, SPEC_HASH_LEN, CloudRunJobConfig, build_job
from petqlora.cloud.cloud_run_state import execution_state

__all__ = ["CloudRunJobError", "ensure_job", "prune_jobs", "spec_view"]

_EPOCH = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)


class CloudRunJobError(RuntimeError):
    """The job could not be brought to the spec its name stands for."""


def spec_view(job: run_v2.Job) -> dict:
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


def _images(job: run_v2.Job) -> list[str]:
    return [c.image for c in job.template.template.containers]


def ensure_job(client: run_v2.JobsClient, cfg: CloudRunJobConfig, backoff: Backoff) -> run_v2.Job:
    """This spec's job: created when missing, read when present, put back when its content drifted."""
    desired = build_job(cfg)
    try:
        existing = client.get_job(name=cfg.job_path, retry=backoff.reads())
    except core_exceptions.NotFound:
        backoff.log(f"[cloud-run] creating job {cfg.job_path} (image {cfg.image})")
        try:
            # Retried on transient errors: a repeat of a create that went through answers 409, below.
            op = client.create_job(parent=cfg.parent, job=desired, job_id=cfg.job_name, retry=backoff.reads())
            return op.result(timeout=backoff.timeout_s)
        except CONFLICT_ERRORS:
            # Another run of the same spec created it first (or our first attempt did): read what is there
            # and check it like any existing job.
            backoff.log(f"[cloud-run] job {cfg.job_path} was created concurrently; checking its spec")
            existing = client.get_job(name=cfg.job_path, retry=backoff.reads())
    return _put_back(client, cfg, desired, existing, backoff)


def _put_back(client: run_v2.JobsClient, cfg: CloudRunJobConfig, desired: run_v2.Job, existing: run_v2.Job,
              backoff: Backoff) -> run_v2.Job:
    """``existing`` when it matches ``desired``; else update it, re-reading and retrying on a 409 (stale
    etag) or a transient error, at most MAX_UPDATE_ATTEMPTS times. The update is not retried blindly:
    each attempt sends the etag just read, so it never overwrites a change it has not seen."""
    delays = backoff.delays()
    last: Exception | None = None
    for attempt in range(1, MAX_UPDATE_ATTEMPTS + 1):
        if attempt > 1:
            delay = next(delays, None)
            if delay is None:
                break
            backoff.log(f"[cloud-run] update of {cfg.job_path} not applied ({last}); re-reading it in {delay:g}s")
            backoff.sleep(delay)
            existing = client.get_job(name=cfg.job_path, retry=backoff.reads())
        if spec_view(existing) == spec_view(desired):
            return existing
        backoff.log(f"[cloud-run] job {cfg.job_path} does not match the spec its name stands for "
                    f"(images {_images(existing)}); putting it back to image {cfg.image} (attempt {attempt})")
        job = run_v2.Job(desired)
        job.name, job.etag = cfg.job_path, existing.etag
        try:
            return client.update_job(job=job, retry=None).result(timeout=backoff.timeout_s)
        except CONFLICT_ERRORS + TRANSIENT_ERRORS as exc:
            last = exc
    raise CloudRunJobError(
        f"job {cfg.job_path} could not be put back to its spec (image {cfg.image}) in {attempt} attempts; last "
        f"error: {last}. Something keeps changing it: only the launcher should edit jobs named "
        f"'{cfg.job_prefix}-<hash>'; find the other writer in the Cloud Audit Logs (run.jobs.update), stop it, "
        "and re-run the step")


def _last_used(job: run_v2.Job) -> datetime.datetime:
    """When the job was created or last started an execution, whichever is later (epoch if neither is known)."""
    times = [t for t in (job.create_time, job.latest_created_execution.create_time) if t is not None]
    return max(times, default=_EPOCH)


def _unfinished_execution(client: run_v2.ExecutionsClient, job: str, backoff: Backoff) -> str | None:
    for execution in client.list_executions(parent=job, retry=backoff.reads()):
        if not execution_state(execution).terminal:
            return execution.name
    return None


def prune_jobs(jobs_client: run_v2.JobsClient, executions_client: run_v2.ExecutionsClient,
               cfg: CloudRunJobConfig, backoff: Backoff) -> list[str]:
    """Delete this prefix's jobs beyond the ``cfg.keep_jobs`` most recently used; return the deleted names.

    Only jobs named ``<job_prefix>-<8 hex>`` that carry the launcher's prefix label are considered. The job
    of this run is always kept, and so is any job with an unfinished execution. Each delete carries the
    etag the job was listed with, so a job changed since then is kept. Recency is the last execution's
    start, not the creation: a spec used again yesterday is kept over one created yesterday and unused.
    """
    if cfg.keep_jobs is None:
        return []
    pattern = re.compile(rf"^{re.escape(cfg.parent)}/jobs/{re.escape(cfg.job_prefix)}-[0-9a-f]{{{SPEC_HASH_LEN}}}$")
    ours = [job for job in jobs_client.list_jobs(parent=cfg.parent, retry=backoff.reads())
            if pattern.match(job.name) and job.labels.get(JOB_PREFIX_LABEL) == cfg.job_prefix]
    others = sorted((j for j in ours if j.name != cfg.job_path), key=_last_used, reverse=True)
    deleted = []
    for job in others[cfg.keep_jobs - 1:]:  # this run's job is one of the keep_jobs kept
        try:
            busy = _unfinished_execution(executions_client, job.name, backoff)
        except core_exceptions.NotFound:
            continue  # deleted since it was listed
        if busy is not None:
            backoff.log(f"[cloud-run] keeping old job {job.name}: its execution {busy} has not finished")
            continue
        backoff.log(f"[cloud-run] deleting old job {job.name} (images {_images(job)}): beyond the "
                    f"{cfg.keep_jobs} most recently used '{cfg.job_prefix}' jobs")
        try:
            request = run_v2.DeleteJobRequest(name=job.name, etag=job.etag)
            jobs_client.delete_job(request=request, retry=backoff.reads()).result(timeout=backoff.timeout_s)
        except core_exceptions.NotFound:
            pass  # already gone: a concurrent run pruned it, or our retried delete's first attempt did
        except CONFLICT_ERRORS as exc:
            backoff.log(f"[cloud-run] keeping old job {job.name}: it changed since it was listed ({exc})")
            continue
        deleted.append(job.name)
    return deleted
