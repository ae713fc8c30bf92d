"""What a Vertex AI CustomJob of a GPU step is, as pure values: its validated config and the request built from it.

Past one GPU, training runs as a Vertex AI CustomJob: one worker pool, one replica, one machine with several
GPUs, the same entrypoint as the Cloud Run Job (``python -m petqlora.train.train_adapter --dataset --output
--config``) under ``torchrun --standalone --nproc-per-node N`` (one process per GPU; the training is
rank-aware). A step that needs one GPU (evaluation) runs as ``python -m`` on the one-GPU machine of the same
GPU (:data:`MACHINES`). :class:`CustomJobConfig` is checked on construction (every problem at once);
:func:`build_custom_job` turns it into the ``aiplatform_v1.CustomJob`` of one pipeline task, with no network
and no credentials, so it is unit-tested against a literal and printed by the dry run.

Paths: Vertex mounts Cloud Storage with FUSE at ``/gcs`` in every CustomJob, so ``gs://BUCKET/x`` is
``/gcs/BUCKET/x`` in the job, the same path a Vertex pipeline step sees (what ``Backend.path_arg`` keeps).
Idempotency: the job's display name is ``<display_prefix>-<task id>``; the launcher
(:mod:`petqlora.cloud.vertex_custom_job_launcher`) re-attaches to a job of that name instead of paying twice.
Secrets: a CustomJob's container takes plain env values only, so the Hugging Face token goes in by reference
(``HF_TOKEN_SECRET``, a Secret Manager version name) and the entrypoint reads it (:mod:`petqlora.cloud.secrets`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from petqlora.cloud.names import BUCKET_RE, PROJECT_RE, REGION_RE, SERVICE_ACCOUNT_RE, check_entrypoint_module
from petqlora.cloud.secrets import SECRET_ENV
from petqlora.problems import Problems

if TYPE_CHECKING:  # aiplatform_v1 takes seconds to import: only when a request is built
    from google.cloud import aiplatform_v1

__all__ = ["MACHINES", "TASK_ID_ENV", "CustomJobConfig", "Machine", "build_custom_job", "display_name",
           "step_labels"]

TASK_ID_ENV = "PETQLORA_TASK_ID"  # the same tag the Cloud Run executions carry


@dataclass(frozen=True)
class Machine:
    """A Vertex machine type with GPUs: what it carries, the boot disk it takes, and its one-GPU sibling."""

    accelerator_type: str  # aiplatform_v1.AcceleratorType name
    accelerator_count: int  # a machine type comes with a fixed number of GPUs
    boot_disk_type: str  # G4 and A3 Ultra take Hyperdisk only; A2 and A3 High a persistent SSD
    one_gpu: str  # the machine of the same GPU with one GPU: where a one-process step (evaluation) runs


def _family(prefix: str, accelerator: str, counts: dict[str, int], disk: str) -> dict[str, Machine]:
    one = next(suffix for suffix, n in counts.items() if n == min(counts.values()))
    return {f"{prefix}{suffix}": Machine(accelerator, n, disk, f"{prefix}{one}") for suffix, n in counts.items()}


# The machines this backend accepts: a typo or a machine/GPU mismatch fails at the run's first check, not after
# a queue for capacity. H200 comes only as a3-ultragpu-8g: a one-GPU step there holds the whole machine.
MACHINES: dict[str, Machine] = {
    **_family("a3-highgpu-", "NVIDIA_H100_80GB", {"1g": 1, "2g": 2, "4g": 4, "8g": 8}, "pd-ssd"),
    **_family("a3-ultragpu-", "NVIDIA_H200_141GB", {"8g": 8}, "hyperdisk-balanced"),
    **_family("a2-ultragpu-", "NVIDIA_A100_80GB", {"1g": 1, "2g": 2, "4g": 4, "8g": 8}, "pd-ssd"),
    **_family("g4-standard-", "NVIDIA_RTX_PRO_6000", {"48": 1, "96": 2, "192": 4, "384": 8}, "hyperdisk-balanced"),
}

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
MAX_DISPLAY_NAME = 128  # Vertex's limit on a CustomJob's display name
MAX_TIMEOUT_S = 7 * 24 * 3600


def _positive_int(value: object, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high


@dataclass(frozen=True)
class CustomJobConfig:
    """One GPU step's CustomJob. Validated on construction: all problems are reported at once."""

    project: str
    region: str
    display_prefix: str  # e.g. "petqlora-train-adapter"; the job is named "<display_prefix>-<task id>"
    image: str  # the trainer image, pinned by a version tag or digest
    module: str  # the entrypoint module, e.g. "petqlora.train.train_adapter"
    service_account: str  # the job's runtime identity (bucket, secret)
    bucket: str  # what the job reads and writes, at /gcs/<bucket>
    machine_type: str
    accelerator_type: str
    accelerator_count: int  # must be the machine's GPU count
    processes: int  # processes on the machine: N runs torchrun --nproc-per-node N, 1 runs python -m
    replica_count: int = 1  # one machine: torchrun --standalone; several would need a multi-node rendezvous
    boot_disk_gb: int = 500  # the Hub cache of a 31B checkpoint (~62 GB) and the image, with room
    timeout_s: int = 24 * 3600
    hf_token_secret: str | None = None  # a Secret Manager reference, passed by name, never by value
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = Problems("vertex_custom_job backend")
        self._check_names(p)
        self._check_machine(p)
        p.raise_if_any()

    def _check_names(self, p: Problems) -> None:
        from petqlora.cloud.vertex_common import check_labels, check_pinned_image

        p.check(isinstance(self.project, str) and PROJECT_RE.match(self.project), "project", self.project,
                "is not a project ID (6-30 chars: lowercase letters, digits, '-')",
                "pass the ID that `gcloud projects list` shows")
        p.check(isinstance(self.region, str) and REGION_RE.match(self.region), "region", self.region,
                "is not a region such as 'us-central1'", "pick a region that offers the machine type")
        p.check(isinstance(self.display_prefix, str) and _PREFIX_RE.match(self.display_prefix), "job_prefix",
                self.display_prefix, "must be lowercase letters, digits and '-', starting with a letter",
                "e.g. 'petqlora'")
        check_pinned_image(p, "image", self.image)
        check_entrypoint_module(p, self.module)
        p.check(isinstance(self.service_account, str) and SERVICE_ACCOUNT_RE.match(self.service_account),
                "service_account", self.service_account, "must be a service account email",
                "use '<name>@<project>.iam.gserviceaccount.com'")
        p.check(isinstance(self.bucket, str) and BUCKET_RE.match(self.bucket), "bucket", self.bucket,
                "is not a bucket name (3-63 chars: lowercase letters, digits, '-', '_', '.')",
                "give the bare name, e.g. 'my-bucket' (no gs://, no path)")
        if self.hf_token_secret is not None:
            try:
                secret_version_name(self.hf_token_secret, self.project)
            except ValueError as exc:
                p.items.extend(getattr(exc, "problems", (str(exc),)))
        check_labels(p, "labels", self.labels)

    def _check_machine(self, p: Problems) -> None:
        machine = MACHINES.get(self.machine_type)
        known = ", ".join(sorted(MACHINES))
        if not p.check(machine is not None, "machine_type", self.machine_type,
                       "is not a GPU machine type this backend knows", f"use one of {known}"):
            return
        p.check(self.accelerator_type == machine.accelerator_type, "accelerator_type", self.accelerator_type,
                f"is not the GPU of {self.machine_type}", f"use {machine.accelerator_type!r}")
        if p.check(self.accelerator_count == machine.accelerator_count, "accelerator_count", self.accelerator_count,
                   f"is not the number of GPUs of {self.machine_type}", f"use {machine.accelerator_count}"):
            p.check(_positive_int(self.processes, machine.accelerator_count), "processes", self.processes,
                    f"must be 1..{machine.accelerator_count} (one process per GPU of {self.machine_type})")
        p.check(self.replica_count == 1, "replica_count", self.replica_count,
                "must be 1: the training runs on the GPUs of one machine (torchrun --standalone)",
                "for more GPUs, pick a machine type with more (e.g. a3-highgpu-8g)")
        p.check(_positive_int(self.boot_disk_gb, 65536) and self.boot_disk_gb >= 100, "boot_disk_gb",
                self.boot_disk_gb, "must be an integer number of GB in 100..65536", "e.g. 500")
        p.check(_positive_int(self.timeout_s, MAX_TIMEOUT_S), "timeout_s", self.timeout_s,
                f"must be an integer number of seconds in 1..{MAX_TIMEOUT_S} (7 days)")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def mount_path(self) -> str:
        return f"/gcs/{self.bucket}"


def secret_version_name(ref: str, project: str) -> str:
    """A Secret Manager reference ('name', 'name:3', 'projects/p/secrets/name[/versions/3]') as the full name of
    its version, what the entrypoint reads; Cloud Run's rule for references (``parse_secret_ref``)."""
    from petqlora.cloud.cloud_run_spec import parse_secret_ref

    secret, version = parse_secret_ref(ref)
    if not secret.startswith("projects/"):
        secret = f"projects/{project}/secrets/{secret}"
    return f"{secret}/versions/{version}"


def display_name(cfg: CustomJobConfig, task_id: str) -> str:
    """``<display_prefix>-<task id>``: the name the launcher finds the task's job by (pure; checks the task id)."""
    p = Problems("CustomJob run request")
    name = f"{cfg.display_prefix}-{task_id}" if isinstance(task_id, str) else ""
    p.check(isinstance(task_id, str) and _TASK_ID_RE.match(task_id) and len(name) <= MAX_DISPLAY_NAME,
            "task_id", task_id, f"must be letters, digits and '._:/-', starting with a letter or digit, the display "
            f"name '{cfg.display_prefix}-<task id>' at most {MAX_DISPLAY_NAME} characters",
            "pass the pipeline task's unique id")
    p.raise_if_any()
    return name


def step_labels(cfg: CustomJobConfig, task_id: str) -> dict[str, str]:
    """The job's labels: the caller's, the step and the task (the run id is its first part), as Vertex allows."""
    from petqlora.cloud.vertex_common import vertex_label_value

    step = cfg.module.rsplit(".", 1)[-1].replace("_", "-")
    return {**cfg.labels, "petqlora-step": vertex_label_value(step), "petqlora-task": vertex_label_value(task_id)}


def _output_uri(cfg: CustomJobConfig, args: list[str]) -> str | None:
    """The gs:// URI of the step's --output on the job's bucket mount, if it has one there."""
    if "--output" not in args[:-1]:
        return None
    output = args[args.index("--output") + 1]
    prefix = f"{cfg.mount_path}/"
    return f"gs://{cfg.bucket}/{output[len(prefix):]}" if output.startswith(prefix) else None


def build_custom_job(cfg: CustomJobConfig, args: list[str], task_id: str) -> aiplatform_v1.CustomJob:
    """The CustomJob that runs ``cfg.module`` with ``args`` for ``task_id`` (pure)."""
    from google.cloud import aiplatform_v1
    from google.protobuf import duration_pb2

    name = display_name(cfg, task_id)
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise ValueError(f"invalid CustomJob run request:\n  - args={args!r}: must be a list of strings")
    machine = MACHINES[cfg.machine_type]
    command = (["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(cfg.processes), "-m", cfg.module]
               if cfg.processes > 1 else ["python", "-m", cfg.module])
    env = [aiplatform_v1.EnvVar(name=TASK_ID_ENV, value=task_id)]
    if cfg.hf_token_secret is not None:
        # The version's name, not its value: the entrypoint reads the token from Secret Manager at start.
        env.append(aiplatform_v1.EnvVar(name=SECRET_ENV, value=secret_version_name(cfg.hf_token_secret,
                                                                                    cfg.project)))
    pool = aiplatform_v1.WorkerPoolSpec(
        machine_spec=aiplatform_v1.MachineSpec(
            machine_type=cfg.machine_type, accelerator_type=machine.accelerator_type,
            accelerator_count=machine.accelerator_count),
        replica_count=cfg.replica_count,
        container_spec=aiplatform_v1.ContainerSpec(image_uri=cfg.image, command=command, args=list(args), env=env),
        disk_spec=aiplatform_v1.DiskSpec(boot_disk_type=machine.boot_disk_type, boot_disk_size_gb=cfg.boot_disk_gb),
    )
    spec = aiplatform_v1.CustomJobSpec(
        worker_pool_specs=[pool],
        service_account=cfg.service_account,
        # One replica: no other worker to restart it with; a retried step re-attaches (display name) and
        # train_adapter resumes from its checkpoints.
        scheduling=aiplatform_v1.Scheduling(timeout=duration_pb2.Duration(seconds=cfg.timeout_s),
                                            restart_job_on_worker_restart=False),
    )
    if (output := _output_uri(cfg, args)) is not None:
        spec.base_output_directory = aiplatform_v1.GcsDestination(output_uri_prefix=output)
    return aiplatform_v1.CustomJob(display_name=name, job_spec=spec, labels=step_labels(cfg, task_id))
