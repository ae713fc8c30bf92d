"""The serving commands of `python pipeline.py`: deploy and batch-predict a registered Vertex model version.

pipeline.py adds them (``add_serving_commands``) and runs them (``run_serving``); the library is
petqlora.cloud.vertex_endpoints and vertex_batch, the machine settings petqlora.cloud.serving_machines.
"""

import argparse

from petqlora.cloud.serving_machines import FIELDS, ServingMachine
from petqlora.cloud.vertex_batch import DISPLAY_NAME, INSTANCES_PER_REQUEST
from petqlora.serve.contract import MAX_INSTANCES

SERVING_COMMANDS = ("deploy", "batch-predict")
_DEFAULT = ServingMachine()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the version: NAME[@VERSION|@ALIAS] (a Model Registry display name) "
                   "or projects/P/locations/R/models/ID@VERSION (what register prints); default version when none")
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    machine = p.add_argument_group("machine (each replica; default: one NVIDIA RTX PRO 6000, the training GPU)")
    machine.add_argument("--machine-type", default=None, help=f"e.g. {_DEFAULT.machine_type} or a3-highgpu-1g "
                         "(its GPUs follow when the two options below are left out)")
    machine.add_argument("--accelerator-type", default=None, help=f"e.g. {_DEFAULT.accelerator_type}, NVIDIA_H100_80GB")
    machine.add_argument("--accelerator-count", type=int, default=None, help="GPUs per replica (the machine type's)")
    machine.add_argument("--min-replica-count", type=int, default=None,
                         help=f"replicas always up / started with (default: {_DEFAULT.min_replica_count})")
    machine.add_argument("--max-replica-count", type=int, default=None,
                         help=f"most replicas autoscaling may run (default: {_DEFAULT.max_replica_count})")
    p.add_argument("--service-account", default=None, metavar="EMAIL",
                   help="the service account the server runs as (default: Vertex's)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the requests the client would send, as JSON; needs no credentials")


def add_serving_commands(sub) -> None:
    """The `deploy` and `batch-predict` subcommands."""
    p = sub.add_parser("deploy", help="deploy a registered version to a Vertex endpoint (100%% of its traffic)")
    _add_common(p)
    p.add_argument("--endpoint", default=None, metavar="ENDPOINT",
                   help="an existing endpoint (ID or resource name); default: the model's own, petqlora-<model id>, "
                   "created when missing")
    p.add_argument("--endpoint-display-name", default=None, help="the created endpoint's name (default: the model's)")
    p.add_argument("--keep-previous", action="store_true", help="keep the model's earlier versions deployed on the "
                   "endpoint (at 0%% traffic, still billed); by default they are undeployed once the new one serves")
    p = sub.add_parser("batch-predict", help="run a Vertex batch prediction job of a registered version")
    _add_common(p)
    p.add_argument("--input", required=True, metavar="GS_URI", help="gs://.../instances.jsonl (one {\"b64\": ...} a "
                   "line), gs://.../images.txt (a file list: one gs:// image URI a line) or gs://.../folder/ (its "
                   "images, listed into OUTPUT/inputs/file-list.txt first)")
    p.add_argument("--output", required=True, metavar="GS_URI", help="gs://BUCKET/PREFIX the predictions go under")
    p.add_argument("--instances-per-request", type=int, default=INSTANCES_PER_REQUEST,
                   help=f"images per request (1-{MAX_INSTANCES}; default %(default)s)")
    p.add_argument("--display-name", default=DISPLAY_NAME, help="the job's name (default: %(default)s)")


def run_serving(args, labels: dict) -> int:
    """Run `deploy` or `batch-predict` from the parsed arguments (`labels`: the parsed --label pairs)."""
    machine = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    common = dict(project=args.project, region=args.region, machine=machine, labels=labels, dry_run=args.dry_run)
    if args.command == "deploy":
        from petqlora.cloud.vertex_endpoints import deploy_model_version

        deploy_model_version(args.model, endpoint=args.endpoint, endpoint_display_name=args.endpoint_display_name,
                             keep_previous=args.keep_previous, **common)
        return 0
    from petqlora.cloud.vertex_batch import batch_predict

    batch_predict(args.model, input_uri=args.input, output_uri_prefix=args.output, display_name=args.display_name,
                  instances_per_request=args.instances_per_request, **common)
    return 0
