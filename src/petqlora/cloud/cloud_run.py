"""Run a pipeline step as a Cloud Run Job execution on a GPU, or as a local subprocess.

The GPU steps (training, GPU evaluation) are one container entrypoint, ``python -m <module> *args``.
In the cloud that entrypoint runs as a Cloud Run Job execution (``google-cloud-run`` ``run_v2``); on one
machine the same entrypoint runs as a subprocess (:func:`run_local`). The request builders are pure and
unit-tested against literals; :class:`CloudRunLauncher` is the thin, idempotent loop around them.

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

import collections
import contextlib
import enum
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from google.api_core import exceptions as core_exceptions
from google.api_core import retry as core_retry
from google.cloud import run_v2
from google.api import launch_stage_pb2
from google.protobuf import duration_pb2
from petqlora.cloud.names import (
    PROJECT_RE as _PROJECT_RE,
    LABEL_KEY_RE as _LABEL_KEY_RE,
    LABEL_VALUE_RE as _LABEL_VALUE_RE,
)

__all__ = [
    "TASK_ID_ENV",
    "GPU_MINIMUMS",
    "CloudRunJobConfig",
    "CloudRunLauncher",
    "CloudRunExecutionError",
    "CloudRunTimeoutError",
    "ExecutionState",
    "LocalRunError",
    "build_job",
    "build_run_request",
    "cancel_on_sigterm",
    "execution_state",
    "failure_reason",
    "gcs_to_mount",
    "parse_secret_ref",
    "run_local",
]

# The env var that tags an execution with the pipeline task it belongs to; it is how a retried step
# finds the execution it already started (Cloud Run keeps overrides in the execution's template).
TASK_ID_ENV = "PETQLORA_TASK_ID"

# Cloud Run's per-GPU minimums (vCPU, GiB). Only GPU types listed here are accepted, so a typo fails
# here rather than after a slow deploy.
GPU_MINIMUMS: dict[str, tuple[float, int]] = {
    "nvidia-rtx-pro-6000": (20, 80),
    "nvidia-l4": (4, 16),
}

MAX_TASK_TIMEOUT_S = 168 * 3600  # Cloud Run's ceiling for a job task (over 24 h is preview).

# Errors worth retrying: 429 (ResourceExhausted is a TooManyRequests), 503, 504 (DeadlineExceeded is a
# GatewayTimeout).
TRANSIENT_ERRORS = (
    core_exceptions.TooManyRequests,
    core_exceptions.ServiceUnavailable,
    core_exceptions.GatewayTimeout,
)

_REGION_RE = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")
_JOB_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_SA_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*@[a-z0-9.-]+\.gserviceaccount\.com$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_SECRET_RE = re.compile(
    r"^(?P<secret>(?:projects/[a-z0-9.:-]+/secrets/)?[A-Za-z0-9_-]{1,255})"
    r"(?:(?::|/versions/)(?P<version>latest|[0-9]+|[A-Za-z0-9_-]{1,63}))?$"
)
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$")
_CPU_RE = re.compile(r"^(?:(?P<cores>[0-9]+(?:\.[0-9]+)?)|(?P<milli>[0-9]+)m)$")
_MEMORY_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                 "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _cpu_cores(cpu: str) -> float | None:
    m = _CPU_RE.match(cpu)
    if not m:
        return None
    return float(m["cores"]) if m["cores"] is not None else int(m["milli"]) / 1000


def _memory_bytes(memory: str) -> float | None:
    m = _MEMORY_RE.match(memory)
    if not m:
        return None
    return float(m["num"]) * _MEMORY_UNITS[m["unit"]]


def _image_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None. A digest or a non-``latest`` tag is pinned."""
    if not image or any(c.isspace() for c in image):
        return f"image={image!r} is empty or contains whitespace"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if _DIGEST_RE.match(digest) else (
            f"image={image!r} has a malformed digest; use '@sha256:<64 hex>' or a version tag")
    last = image.rsplit("/", 1)[-1]  # a registry port ("host:5000/x") is not a tag
    if ":" not in last:
        return (f"image={image!r} has no tag; push it with the package version and pass "
                f"'{image}:<version>' (never ':latest')")
    tag = last.rsplit(":", 1)[1]
    if tag == "latest":
        return (f"image={image!r} uses ':latest', which is not reproducible; "
                "pass the version tag (e.g. ':0.1.0') or a digest")
    if not _TAG_RE.match(tag):
        return f"image={image!r} has an invalid tag {tag!r}"
    return None


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """Split a Secret Manager reference into ``(secret, version)``; the version defaults to ``latest``.

    Accepts ``name``, ``name:3``, ``projects/p/secrets/name``, ``projects/p/secrets/name:3`` and
    ``projects/p/secrets/name/versions/3``.
    """
    m = _SECRET_RE.match(ref) if isinstance(ref, str) else None
    if not m:
        raise ValueError(
            f"hf_token_secret={ref!r} is not a Secret Manager reference: use 'name', 'name:version' or "
            "'projects/<project>/secrets/<name>[/versions/<version>]' (letters, digits, '-', '_')")
    return m["secret"], m["version"] or "latest"


@dataclass(frozen=True)
class CloudRunJobConfig:
    """What the GPU job looks like. Validated on construction: all problems are reported at once."""

    project: str
    region: str
    job_name: str  # e.g. "petqlora-train"
    image: str  # trainer image URI pinned by a version tag or digest, never ':latest'
    module: str  # entrypoint module the container runs, e.g. "petqlora.train.train_adapter"
    service_account: str  # the job's runtime SA email (bucket + secret access)
    bucket: str  # Cloud Storage bucket mounted as a volume (weights, data, checkpoints)
    mount_path: str = "/gcs"
    gpu_type: str = "nvidia-rtx-pro-6000"
    cpu: str = "20"  # RTX PRO 6000 needs >= 20 vCPU
    memory: str = "80Gi"  # and >= 80 GiB
    task_timeout_s: int = 24 * 3600
    max_retries: int = 3  # 0..10, per task; the attempt number reaches the task as CLOUD_RUN_TASK_ATTEMPT
    hf_token_secret: str | None = None  # passed as env HF_TOKEN by reference, never by value
    labels: dict[str, str] = field(default_factory=dict)
    # "BETA" opts in to preview features (e.g. task timeouts over 24 h in some regions); None = GA only.
    launch_stage: str | None = None

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("Invalid CloudRunJobConfig:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> list[str]:
        def text(name: str, example: str) -> str | None:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name}={value!r} must be a non-empty string, e.g. {example!r}")
                return None
            return value

        problems: list[str] = []
        if (v := text("project", "my-project")) and not _PROJECT_RE.match(v):
            problems.append(f"project={v!r} is not a project ID (6-30 chars: lowercase letters, digits, '-'); "
                            "pass the ID that `gcloud projects list` shows, not the name or number")
        if (v := text("region", "us-central1")) and not _REGION_RE.match(v):
            problems.append(f"region={v!r} is not a Cloud Run region such as 'us-central1' "
                            "(pick one that offers the GPU)")
        if (v := text("job_name", "petqlora-train")) and not _JOB_NAME_RE.match(v):
            problems.append(f"job_name={v!r} must be lowercase letters, digits and '-', start with a letter, "
                            "not end with '-', at most 63 characters")
        if (v := text("image", "REGION-docker.pkg.dev/PROJECT/petqlora/trainer:0.1.0")) is not None:
            if (p := _image_problem(v)):
                problems.append(p)
        if (v := text("module", "petqlora.train.train_adapter")) and not _MODULE_RE.match(v):
            problems.append(f"module={v!r} must be a dotted Python module path such as 'petqlora.train.train_adapter'")
        if (v := text("service_account", "petqlora-job@PROJECT.iam.gserviceaccount.com")) and not _SA_RE.match(v):
            problems.append(f"service_account={v!r} must be a service account email "
                            "('<name>@<project>.iam.gserviceaccount.com')")
        if (v := text("bucket", "my-project-petqlora")) is not None:
            if v.startswith("gs://"):
                problems.append(f"bucket={v!r} must be the bare bucket name; drop the 'gs://' prefix")
            elif not _BUCKET_RE.match(v):
                problems.append(f"bucket={v!r} is not a bucket name (3-63 chars: lowercase letters, digits, '-', "
                                "'_', '.')")
        if (v := text("mount_path", "/gcs")) is not None:
            if not v.startswith("/") or v == "/" or os.path.normpath(v) != v:
                problems.append(f"mount_path={v!r} must be a normalized absolute directory other than '/', "
                                "e.g. '/gcs'")
        gpu_min = None
        if (v := text("gpu_type", "nvidia-rtx-pro-6000")) is not None:
            gpu_min = GPU_MINIMUMS.get(v)
            if gpu_min is None:
                problems.append(f"gpu_type={v!r} is not one of {sorted(GPU_MINIMUMS)}")
        min_cpu, min_gib = gpu_min or (0, 0)
        if (v := text("cpu", "20")) is not None:
            cores = _cpu_cores(v)
            if cores is None:
                problems.append(f"cpu={v!r} must be a number of vCPU as a string, e.g. '20' or '20000m'")
            elif cores < min_cpu:
                problems.append(f"cpu={v!r} is below the {min_cpu:g} vCPU that Cloud Run requires with "
                                f"{self.gpu_type}; set cpu='{min_cpu:g}' or more")
        if (v := text("memory", "80Gi")) is not None:
            mem = _memory_bytes(v)
            if mem is None:
                problems.append(f"memory={v!r} must be a quantity such as '80Gi' or '96Gi'")
            elif mem < min_gib * 2**30:
                problems.append(f"memory={v!r} is below the {min_gib} GiB that Cloud Run requires with "
                                f"{self.gpu_type}; set memory='{min_gib}Gi' or more")
        t = self.task_timeout_s
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= MAX_TASK_TIMEOUT_S:
            problems.append(f"task_timeout_s={t!r} must be an integer number of seconds in 1..{MAX_TASK_TIMEOUT_S} "
                            "(168 h, Cloud Run's maximum)")
        r = self.max_retries
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 10:
            problems.append(f"max_retries={r!r} must be an integer in 0..10 (Cloud Run's per-task limit)")
        if self.hf_token_secret is not None:
            try:
                parse_secret_ref(self.hf_token_secret)
            except ValueError as exc:
                problems.append(str(exc))
        if self.launch_stage not in (None, "GA", "BETA", "ALPHA"):
            problems.append(f"launch_stage={self.launch_stage!r} must be None, 'GA', 'BETA' or 'ALPHA'")
        if not isinstance(self.labels, dict):
            problems.append(f"labels={self.labels!r} must be a dict of str to str")
        else:
            if len(self.labels) > 64:
                problems.append(f"labels has {len(self.labels)} entries; Cloud Run allows at most 64")
            for k, val in self.labels.items():
                if not isinstance(k, str) or not _LABEL_KEY_RE.match(k):
                    problems.append(f"label key {k!r} must start with a lowercase letter and use only lowercase "
                                    "letters, digits, '_' and '-' (at most 63)")
                if not isinstance(val, str) or not _LABEL_VALUE_RE.match(val):
                    problems.append(f"label {k!r}={val!r}: values use only lowercase letters, digits, '_' and '-' "
                                    "(at most 63)")
        return problems

    @property
    def job_path(self) -> str:
        """The job's full resource name, ``projects/P/locations/R/jobs/J``."""
        return f"projects/{self.project}/locations/{self.region}/jobs/{self.job_name}"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


_VOLUME_NAME = "gcs"


def build_job(cfg: CloudRunJobConfig) -> run_v2.Job:
    """The Job resource for ``cfg`` (pure). ``name`` is left empty: create takes it from ``job_id``."""
    env = []
    if cfg.hf_token_secret is not None:
        secret, version = parse_secret_ref(cfg.hf_token_secret)
        # By reference: the token never appears in the job spec, the request or the pipeline's IR.
        env.append(run_v2.EnvVar(name="HF_TOKEN", value_source=run_v2.EnvVarSource(
            secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version))))
    container = run_v2.Container(
        image=cfg.image,
        command=["python", "-m", cfg.module],
        env=env,
        resources=run_v2.ResourceRequirements(
            limits={"cpu": cfg.cpu, "memory": cfg.memory, "nvidia.com/gpu": "1"}),
        volume_mounts=[run_v2.VolumeMount(name=_VOLUME_NAME, mount_path=cfg.mount_path)],
    )
    task = run_v2.TaskTemplate(
        containers=[container],
        volumes=[run_v2.Volume(name=_VOLUME_NAME, gcs=run_v2.GCSVolumeSource(bucket=cfg.bucket))],
        max_retries=cfg.max_retries,  # a oneof: 0 is sent explicitly, so "no retries" means none
        timeout=duration_pb2.Duration(seconds=cfg.task_timeout_s),
        service_account=cfg.service_account,
        node_selector=run_v2.NodeSelector(accelerator=cfg.gpu_type),
        # One GPU job needs no standby capacity in a second zone; disabling it is what the GPU quota allows.
        gpu_zonal_redundancy_disabled=True,
    )
    job = run_v2.Job(
        labels=dict(cfg.labels),
        template=run_v2.ExecutionTemplate(labels=dict(cfg.labels), task_count=1, template=task),
    )
    if cfg.launch_stage is not None:
        job.launch_stage = launch_stage_pb2.LaunchStage.Value(cfg.launch_stage)
    return job


def _validate_run_inputs(args: object, task_id: object) -> None:
    problems = []
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        problems.append(f"args={args!r} must be a list of strings (the entrypoint's command-line arguments)")
    if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
        problems.append(f"task_id={task_id!r} must be 1-255 characters of letters, digits and '._:/-', "
                        "starting with a letter or digit; pass the pipeline task's unique id")
    if problems:
        raise ValueError("Invalid Cloud Run run request:\n  - " + "\n  - ".join(problems))


def build_run_request(cfg: CloudRunJobConfig, args: list[str], task_id: str) -> run_v2.RunJobRequest:
    """The RunJobRequest that starts one execution of the job with ``args`` (pure)."""
    _validate_run_inputs(args, task_id)
    override = run_v2.RunJobRequest.Overrides.ContainerOverride(
        args=list(args), env=[run_v2.EnvVar(name=TASK_ID_ENV, value=task_id)])
    if not args:
        override.clear_args = True  # an empty args list alone means "keep the job's args"
    return run_v2.RunJobRequest(
        name=cfg.job_path,
        overrides=run_v2.RunJobRequest.Overrides(container_overrides=[override], task_count=1),
    )


def gcs_to_mount(uri: str, cfg: CloudRunJobConfig) -> str:
    """``gs://<cfg.bucket>/a/b`` -> ``<cfg.mount_path>/a/b``, the path inside the job's container."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise ValueError(f"uri={uri!r} must be a gs:// URI in bucket {cfg.bucket!r}")
    bucket, _, blob = uri[len("gs://"):].partition("/")
    if bucket != cfg.bucket:
        raise ValueError(
            f"uri={uri!r} is in bucket {bucket!r}, but the job mounts only gs://{cfg.bucket} at "
            f"{cfg.mount_path}; copy the data into gs://{cfg.bucket}/ or set CloudRunJobConfig.bucket")
    blob = blob.strip("/")
    return f"{cfg.mount_path}/{blob}" if blob else cfg.mount_path


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
        problems = []
        if not isinstance(cfg, CloudRunJobConfig):
            problems.append(f"cfg={cfg!r} must be a CloudRunJobConfig")
        for name, value in [("poll_initial_s", poll_initial_s), ("poll_max_s", poll_max_s),
                            ("retry_initial_s", retry_initial_s), ("retry_max_s", retry_max_s),
                            ("retry_timeout_s", retry_timeout_s)]:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name}={value!r} must be a positive number of seconds")
        if not problems and poll_max_s < poll_initial_s:
            problems.append(f"poll_max_s={poll_max_s!r} must be >= poll_initial_s={poll_initial_s!r}")
        if not problems and retry_max_s < retry_initial_s:
            problems.append(f"retry_max_s={retry_max_s!r} must be >= retry_initial_s={retry_initial_s!r}")
        if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool)
                                      or timeout_s <= 0):
            problems.append(f"timeout_s={timeout_s!r} must be a positive number of seconds or None (no limit)")
        if not callable(log) or not callable(sleep):
            problems.append("log and sleep must be callables")
        if problems:
            raise ValueError("Invalid CloudRunLauncher arguments:\n  - " + "\n  - ".join(problems))
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
        _validate_run_inputs(args, task_id)
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


class LocalRunError(RuntimeError):
    """The local entrypoint subprocess exited with a non-zero code."""

    def __init__(self, message: str, *, returncode: int, cmd: list[str]) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.cmd = cmd


def run_local(module: str, args: list[str], *, env: dict[str, str] | None = None,
              log: Callable[[str], object] = print) -> None:
    """The local backend: ``sys.executable -m module *args`` as a subprocess, its output streamed to
    ``log`` line by line. ``env`` adds variables to the current environment."""
    problems = []
    if not isinstance(module, str) or not _MODULE_RE.match(module):
        problems.append(f"module={module!r} must be a dotted Python module path such as 'petqlora.train.train_adapter'")
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        problems.append(f"args={args!r} must be a list of strings")
    if env is not None and (not isinstance(env, dict)
                            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        problems.append(f"env={env!r} must be a dict of str to str or None")
    if problems:
        raise ValueError("Invalid run_local arguments:\n  - " + "\n  - ".join(problems))
    cmd = [sys.executable, "-m", module, *args]
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}  # unbuffered: stream, don't batch
    tail: collections.deque[str] = collections.deque(maxlen=20)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=child_env, bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
        returncode = proc.wait()
    except BaseException:
        proc.terminate()  # don't leave the step running behind an interrupted pipeline
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if returncode != 0:
        last = "\n".join(tail)
        raise LocalRunError(
            f"`python -m {module}` exited with code {returncode}; its last output lines:\n{last}\n"
            f"(command: {cmd})", returncode=returncode, cmd=cmd)
