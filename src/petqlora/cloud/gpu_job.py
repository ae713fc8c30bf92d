"""``python pipeline.py gpu-job``: one GPU step (train_adapter or evaluate) on a cloud backend, outside a pipeline,
or, with ``--dry-run``, the requests it would send, as JSON, with no credentials.

The backend is the ``backend`` pipeline parameter's value (a JSON object), checked as the pipeline checks it;
the step's paths are gs:// URIs in the backend's bucket, handed to the entrypoint at their /gcs mount path, as a
pipeline step does. For ``vertex_custom_job`` the dry run prints the ListCustomJobs lookup (re-attach by display
name) and the CreateCustomJob request of the client's REST transport; for ``cloud_run`` the Job it creates if
missing and the RunJobRequest of the execution. The same ``--task-id`` twice re-attaches instead of paying twice.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Callable

from petqlora.backends import EVALUATE_MODULE, TRAIN_MODULE, Backend

__all__ = ["STEPS", "add_parser", "command"]

STEPS = {"train_adapter": TRAIN_MODULE, "evaluate": EVALUATE_MODULE}
_EXAMPLE = ('{"kind": "vertex_custom_job", "machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB", '
            '"accelerator_count": 8, "image": "REGION-docker.pkg.dev/P/petqlora/trainer:0.1.0", '
            '"service_account": "petqlora-job@P.iam.gserviceaccount.com", "bucket": "BUCKET"}')


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-job", help="run one GPU step on a cloud backend (a Vertex CustomJob, a Cloud Run Job), "
                       "or print its requests with --dry-run")
    p.add_argument("--backend", required=True, metavar="JSON", help=f"the backend parameter's value, e.g. '{_EXAMPLE}'")
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="region of the jobs, e.g. us-central1")
    p.add_argument("--step", choices=sorted(STEPS), default="train_adapter",
                   help="the entrypoint (default: %(default)s)")
    p.add_argument("--dataset", required=True, metavar="GS_URI", help="the prepared dataset, in the backend's bucket")
    p.add_argument("--output", required=True, metavar="GS_URI", help="where the step writes, in the backend's bucket")
    p.add_argument("--config", required=True, metavar="GS_URI", help="the step's JSON config, in the backend's bucket")
    p.add_argument("--task-id", default=None, help="the idempotency key: a job of the same task id is re-attached "
                   "(default: gpu-job-<step>-<UTC time>)")
    p.add_argument("--dry-run", action="store_true", help="print the requests as JSON; needs no credentials")


def _backend(args: argparse.Namespace) -> Backend:
    """The backend as the pipeline's first step checks it: its fields, its kind, every job it builds."""
    from petqlora import params
    from petqlora.problems import Problems
    from petqlora.run_checks import _check_backend

    from petqlora.schema import unique_keys

    try:
        values = json.loads(args.backend, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--backend {args.backend!r}: is not JSON ({exc}); fix: e.g. '{_EXAMPLE}'") from None
    except ValueError as exc:  # a key given twice
        raise ValueError(f"--backend {args.backend!r}: {exc}") from None
    if not isinstance(values, dict) or values.get("kind") not in params.BACKEND_KINDS[1:]:
        raise ValueError(f"--backend: must be a JSON object whose kind is one of {', '.join(params.BACKEND_KINDS[1:])}"
                         f" (a local step is `python -m MODULE`); fix: e.g. '{_EXAMPLE}'")
    p = Problems("gpu-job arguments")
    backend = _check_backend(p, params.parse({"backend": values, "project": args.project, "region": args.region}),
                             set(), "submit")
    p.raise_if_any()
    return backend


def command(args: argparse.Namespace, out: Callable[[str], object] = print) -> int:
    from petqlora.cloud.storage import local_path

    backend = _backend(args)
    module = STEPS[args.step]
    argv = []
    for flag in ("dataset", "output", "config"):
        uri = getattr(args, flag)
        if not uri.startswith(f"gs://{backend.bucket}/"):
            raise ValueError(f"--{flag} {uri}: must be a gs:// URI in the backend's bucket gs://{backend.bucket}/ "
                             "(the job sees that bucket at /gcs)")
        argv += [f"--{flag}", backend.path_arg(local_path(uri))]
    task_id = args.task_id or f"gpu-job-{args.step.replace('_', '-')}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    if args.dry_run:
        out(json.dumps(dry_run(backend, module, argv, task_id), indent=2, sort_keys=True))
        return 0
    backend.run(module, argv, task_id)
    return 0


def dry_run(backend: Backend, module: str, argv: list[str], task_id: str) -> dict:
    """The requests ``backend.run(module, argv, task_id)`` sends first, built by the real client types."""
    cfg = backend.job_config(module)
    if backend.kind == "vertex_custom_job":
        from google.cloud import aiplatform_v1

        from petqlora.cloud.vertex_common import rest_request
        from petqlora.cloud.vertex_custom_job import build_custom_job

        job = build_custom_job(cfg, argv, task_id)
        return {"requests": [
            rest_request("job_service", "ListCustomJobs", aiplatform_v1.ListCustomJobsRequest(
                parent=cfg.parent, filter=f'display_name="{job.display_name}"')),
            rest_request("job_service", "CreateCustomJob", aiplatform_v1.CreateCustomJobRequest(
                parent=cfg.parent, custom_job=job)),
        ], "then": "GetCustomJob until the job ends; CancelCustomJob on SIGTERM"}
    from google.cloud import run_v2

    from petqlora.cloud.cloud_run_spec import build_job, build_run_request

    return {"job_id": cfg.job_name, "job": run_v2.Job.to_dict(build_job(cfg)),
            "run": run_v2.RunJobRequest.to_dict(build_run_request(cfg, argv, task_id)),
            "then": "GetExecution until it ends; CancelExecution on SIGTERM"}
