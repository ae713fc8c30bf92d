"""What a Cloud Run GPU job is, as pure values: its validated config and the requests built from it.

:class:`CloudRunJobConfig` is the job's settings, validated on construction (every problem at once);
:func:`build_job` and :func:`build_run_request` turn it into the ``run_v2`` Job resource and the
RunJobRequest of one execution, with no network and no credentials, so they are unit-tested against
literals. The job's name is ``<job_prefix>-<spec hash>`` (:func:`spec_hash`): one Cloud Run Job per spec,
created once and never changed to run another spec. :func:`gcs_to_mount` says where a ``gs://`` URI lies
inside the job's container. Running the job (the launcher, execution state, cancellation) lives in
:mod:`petqlora.cloud.cloud_run`; creating, repairing and pruning jobs in :mod:`petqlora.cloud.cloud_run_jobs`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from google.api import launch_stage_pb2
from google.cloud import run_v2
from google.protobuf import duration_pb2

from petqlora.cloud.names import BUCKET_RE as _BUCKET_RE
from petqlora.cloud.names import LABEL_KEY_RE, LABEL_VALUE_RE, PROJECT_RE, check_entrypoint_module
from petqlora.cloud.names import REGION_RE as _REGION_RE
from petqlora.cloud.names import SERVICE_ACCOUNT_RE as _SA_RE
from petqlora.cloud.storage import is_gcs, local_path
from petqlora.problems import Problems

__all__ = [
    "GPU_MINIMUMS",
    "JOB_PREFIX_LABEL",
    "MAX_KEEP_JOBS",
    "MAX_TASK_TIMEOUT_S",
    "SPEC_HASH_LEN",
    "TASK_ID_ENV",
    "CloudRunJobConfig",
    "build_job",
    "build_run_request",
    "gcs_to_mount",
    "parse_secret_ref",
    "spec_hash",
    "validate_run_inputs",
]

# The env var that tags an execution with the pipeline task it belongs to; it is how a retried step
# finds the execution it already started (Cloud Run keeps overrides in the execution's template).
TASK_ID_ENV = "PETQLORA_TASK_ID"

# A label on every job the launcher creates, naming its prefix: pruning old jobs deletes only jobs that
# carry it, never a job someone else made that happens to be named like ours.
JOB_PREFIX_LABEL = "petqlora-job-prefix"

# Cloud Run's per-GPU minimums (vCPU, GiB). Only GPU types listed here are accepted, so a typo fails
# here rather than after a slow deploy.
GPU_MINIMUMS: dict[str, tuple[float, int]] = {
    "nvidia-rtx-pro-6000": (20, 80),
    "nvidia-l4": (4, 16),
}

MAX_TASK_TIMEOUT_S = 168 * 3600  # Cloud Run's ceiling for a job task (over 24 h is preview).

# Job names are at most 63 characters; the prefix leaves room for "-" and the 8 hex digits of the spec hash.
SPEC_HASH_LEN = 8
_MAX_JOB_PREFIX = 63 - 1 - SPEC_HASH_LEN
_JOB_PREFIX_RE = re.compile(rf"^[a-z](?:[a-z0-9-]{{0,{_MAX_JOB_PREFIX - 2}}}[a-z0-9])?$")
MAX_KEEP_JOBS = 100
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_SECRET_RE = re.compile(
    r"^(?P<secret>(?:projects/[a-z0-9.:-]+/secrets/)?[A-Za-z0-9_-]{1,255})"
    r"(?:(?::|/versions/)(?P<version>latest|[0-9]+|[A-Za-z0-9_-]{1,63}))?$"
)
_SECRET_RULE = "is not a Secret Manager reference"
_SECRET_FIX = ("use 'name', 'name:version' or 'projects/<project>/secrets/<name>[/versions/<version>]' "
               "(letters, digits, '-', '_')")
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


def _image_problem(image: str) -> tuple[str, str] | None:
    """Why an image reference is not pinned, as ``(rule, fix)``, or None. A digest or a non-``latest``
    tag is pinned."""
    if not image or any(c.isspace() for c in image):
        return "is empty or contains whitespace", "pass 'REGION-docker.pkg.dev/PROJECT/petqlora/trainer:VERSION'"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return None if _DIGEST_RE.match(digest) else (
            "has a malformed digest", "use '@sha256:<64 hex>' or a version tag")
    last = image.rsplit("/", 1)[-1]  # a registry port ("host:5000/x") is not a tag
    if ":" not in last:
        return "has no tag", f"push it with the package version and pass '{image}:<version>' (never ':latest')"
    tag = last.rsplit(":", 1)[1]
    if tag == "latest":
        return "uses ':latest', which is not reproducible", "pass the version tag (e.g. ':0.1.0') or a digest"
    if not _TAG_RE.match(tag):
        return f"has an invalid tag {tag!r}", "a tag is letters, digits, '_', '.' and '-' (at most 128)"
    return None


def _secret_match(ref: object) -> re.Match | None:
    return _SECRET_RE.match(ref) if isinstance(ref, str) else None


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """Split a Secret Manager reference into ``(secret, version)``; the version defaults to ``latest``.

    Accepts ``name``, ``name:3``, ``projects/p/secrets/name``, ``projects/p/secrets/name:3`` and
    ``projects/p/secrets/name/versions/3``.
    """
    m = _secret_match(ref)
    if not m:
        p = Problems("Secret Manager reference")
        p.add("hf_token_secret", ref, _SECRET_RULE, _SECRET_FIX)
        p.raise_if_any()
    return m["secret"], m["version"] or "latest"


def _check_int(p: Problems, name: str, value: object, low: int, high: int, rule: str) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    p.check(ok, name, value, rule)


@dataclass(frozen=True)
class CloudRunJobConfig:
    """What the GPU job looks like. Validated on construction: all problems are reported at once."""

    project: str
    region: str
    job_prefix: str  # e.g. "petqlora-train-adapter"; the job is named "<job_prefix>-<spec hash>"
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
    # After a succeeded run, jobs of this prefix beyond the `keep_jobs` most recently used are deleted
    # (never one with an unfinished execution); None keeps them all (and needs no run.jobs.delete).
    keep_jobs: int | None = 5

    def __post_init__(self) -> None:
        p = Problems("CloudRunJobConfig")
        self._check_names(p)
        self._check_storage(p)
        self._check_resources(p)
        self._check_task(p)
        self._check_labels(p)
        p.raise_if_any()

    def _text(self, p: Problems, name: str, example: str) -> str | None:
        """The field's value when it is a non-empty string; else a problem is added and None returned."""
        value = getattr(self, name)
        return value if p.check(isinstance(value, str) and value, name, value, "must be a non-empty string",
                                f"e.g. {example!r}") else None

    def _check_names(self, p: Problems) -> None:
        if (v := self._text(p, "project", "my-project")) is not None:
            p.check(PROJECT_RE.match(v), "project", v,
                    "is not a project ID (6-30 chars: lowercase letters, digits, '-')",
                    "pass the ID that `gcloud projects list` shows, not the name or number")
        if (v := self._text(p, "region", "us-central1")) is not None:
            p.check(_REGION_RE.match(v), "region", v, "is not a Cloud Run region such as 'us-central1'",
                    "pick a region that offers the GPU")
        if (v := self._text(p, "job_prefix", "petqlora-train-adapter")) is not None:
            p.check(_JOB_PREFIX_RE.match(v), "job_prefix", v,
                    "must be lowercase letters, digits and '-', start with a letter, not end with '-', "
                    f"at most {_MAX_JOB_PREFIX} characters (the job name adds '-' and {SPEC_HASH_LEN} hex digits "
                    "of the spec hash, within Cloud Run's 63)", "e.g. 'petqlora-train-adapter'")
        if (v := self._text(p, "image", "REGION-docker.pkg.dev/PROJECT/petqlora/trainer:0.1.0")) is not None:
            if (problem := _image_problem(v)) is not None:
                p.add("image", v, *problem)
        if (v := self._text(p, "module", "petqlora.train.train_adapter")) is not None:
            check_entrypoint_module(p, v)
        if (v := self._text(p, "service_account", "petqlora-job@PROJECT.iam.gserviceaccount.com")) is not None:
            p.check(_SA_RE.match(v), "service_account", v, "must be a service account email",
                    "use '<name>@<project>.iam.gserviceaccount.com'")

    def _check_storage(self, p: Problems) -> None:
        if (v := self._text(p, "bucket", "my-project-petqlora")) is not None:
            if v.startswith("gs://"):
                p.add("bucket", v, "must be the bare bucket name", "drop the 'gs://' prefix")
            else:
                p.check(_BUCKET_RE.match(v), "bucket", v,
                        "is not a bucket name (3-63 chars: lowercase letters, digits, '-', '_', '.')")
        if (v := self._text(p, "mount_path", "/gcs")) is not None:
            ok = v.startswith("/") and v != "/" and os.path.normpath(v) == v
            p.check(ok, "mount_path", v, "must be a normalized absolute directory other than '/'", "e.g. '/gcs'")

    def _check_resources(self, p: Problems) -> None:
        gpu_min = None
        if (v := self._text(p, "gpu_type", "nvidia-rtx-pro-6000")) is not None:
            gpu_min = GPU_MINIMUMS.get(v)
            p.check(gpu_min is not None, "gpu_type", v, f"is not one of {sorted(GPU_MINIMUMS)}")
        min_cpu, min_gib = gpu_min or (0, 0)
        if (v := self._text(p, "cpu", "20")) is not None:
            cores = _cpu_cores(v)
            if p.check(cores is not None, "cpu", v, "must be a number of vCPU as a string", "e.g. '20' or '20000m'"):
                p.check(cores >= min_cpu, "cpu", v,
                        f"is below the {min_cpu:g} vCPU that Cloud Run requires with {self.gpu_type}",
                        f"set cpu='{min_cpu:g}' or more")
        if (v := self._text(p, "memory", "80Gi")) is not None:
            mem = _memory_bytes(v)
            if p.check(mem is not None, "memory", v, "must be a quantity", "e.g. '80Gi' or '96Gi'"):
                p.check(mem >= min_gib * 2**30, "memory", v,
                        f"is below the {min_gib} GiB that Cloud Run requires with {self.gpu_type}",
                        f"set memory='{min_gib}Gi' or more")

    def _check_task(self, p: Problems) -> None:
        _check_int(p, "task_timeout_s", self.task_timeout_s, 1, MAX_TASK_TIMEOUT_S,
                   f"must be an integer number of seconds in 1..{MAX_TASK_TIMEOUT_S} (168 h, Cloud Run's maximum)")
        _check_int(p, "max_retries", self.max_retries, 0, 10, "must be an integer in 0..10 (Cloud Run's per-task limit)")
        if self.hf_token_secret is not None:
            p.check(_secret_match(self.hf_token_secret), "hf_token_secret", self.hf_token_secret,
                    _SECRET_RULE, _SECRET_FIX)
        p.check(self.launch_stage in (None, "GA", "BETA", "ALPHA"), "launch_stage", self.launch_stage,
                "must be None, 'GA', 'BETA' or 'ALPHA'")
        if self.keep_jobs is not None:
            _check_int(p, "keep_jobs", self.keep_jobs, 1, MAX_KEEP_JOBS,
                       f"must be None (keep every job) or an integer in 1..{MAX_KEEP_JOBS} (the job just run is "
                       "always kept)")

    def _check_labels(self, p: Problems) -> None:
        if not p.check(isinstance(self.labels, dict), "labels", self.labels, "must be a dict of str to str"):
            return
        p.check(len(self.labels) <= 64, "len(labels)", len(self.labels), "Cloud Run allows at most 64 labels")
        for k, val in self.labels.items():
            p.check(k != JOB_PREFIX_LABEL, "label key", k, "is set by the launcher (it marks the jobs it may prune)",
                    "use another key")
            p.check(isinstance(k, str) and LABEL_KEY_RE.match(k), "label key", k,
                    "must start with a lowercase letter and use only lowercase letters, digits, '_' and '-' "
                    "(at most 63)")
            p.check(isinstance(val, str) and LABEL_VALUE_RE.match(val), f"label {k!r}", val,
                    "values use only lowercase letters, digits, '_' and '-' (at most 63)")

    @property
    def job_name(self) -> str:
        """``<job_prefix>-<spec_hash(self)>``: the job that runs exactly this spec (see :func:`spec_hash`)."""
        return f"{self.job_prefix}-{spec_hash(self)}"

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
        labels={**cfg.labels, JOB_PREFIX_LABEL: cfg.job_prefix},
        template=run_v2.ExecutionTemplate(labels=dict(cfg.labels), task_count=1, template=task),
    )
    if cfg.launch_stage is not None:
        job.launch_stage = launch_stage_pb2.LaunchStage.Value(cfg.launch_stage)
    return job


def spec_hash(cfg: CloudRunJobConfig) -> str:
    """The first 8 hex digits of the SHA-256 of the Job that :func:`build_job` makes from ``cfg`` (pure).

    Why a hash in the name: ``RunJobRequest.Overrides`` can change args, env, task count and timeout but
    not the image, and ``run_job`` runs whatever the job's template is at that moment. One job shared by
    every run and updated in place let a run with image 0.2.0 start an execution of 0.3.0 when another run
    updated the job in between. A job named after its spec is created once and never needs an update to
    run another spec. Everything in the Job counts (image, module, resources, env, volumes, service
    account, retries, timeout, labels, launch stage); the per-execution overrides (args, the task id) and
    settings that are not in the Job (``keep_jobs``) do not. 32 bits: a collision among the few specs of
    one prefix is negligible, and the launcher still checks each execution's image.
    """
    job = build_job(cfg)
    canonical = run_v2.Job.to_json(job, use_integers_for_enums=False, sort_keys=True, indent=None,
                                   always_print_fields_with_no_presence=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:SPEC_HASH_LEN]


def validate_run_inputs(args: object, task_id: object) -> None:
    """Raise one ValueError naming every problem with the arguments of one execution."""
    p = Problems("Cloud Run run request")
    p.check(isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args), "args", args,
            "must be a list of strings (the entrypoint's command-line arguments)")
    p.check(isinstance(task_id, str) and _TASK_ID_RE.match(task_id), "task_id", task_id,
            "must be 1-255 characters of letters, digits and '._:/-', starting with a letter or digit",
            "pass the pipeline task's unique id")
    p.raise_if_any()


def build_run_request(cfg: CloudRunJobConfig, args: list[str], task_id: str) -> run_v2.RunJobRequest:
    """The RunJobRequest that starts one execution of the job with ``args`` (pure)."""
    validate_run_inputs(args, task_id)
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
    if not is_gcs(uri):
        raise ValueError(f"uri={uri!r} must be a gs:// URI in bucket {cfg.bucket!r}")
    return local_path(uri, mount=cfg.mount_path, bucket=cfg.bucket)
