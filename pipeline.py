"""The command line of `python pipeline.py`: run-local, params, compile, submit, schedule, register, lineage,
gpu-job, deploy, batch-predict.

    python pipeline.py run-local --output-dir runs/latest [--config configs/local.yaml] [--dataset PATH] [--no-cache]
        [--trial-parallelism N]
    python pipeline.py compile --output pipeline.yaml --image-registry REGION-docker.pkg.dev/PROJECT/REPO
        [--trial-parallelism N]
    python pipeline.py submit --project P --region R --pipeline-root gs://BUCKET/root --image-registry ... [--watch]
        [--dry-run] [--enable-caching | --no-cache]
    python pipeline.py schedule --cron "TZ=Europe/Paris 0 3 * * 1" --project P --region R --pipeline-root ...
    python pipeline.py lineage NAME[@VERSION] [--registry runs/latest/registry.sqlite]

dag.py holds the @dsl.pipeline; this script parses the commands and calls the library.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from petqlora import params
from petqlora.cloud.vertex_common import VertexAuthError
from petqlora.logs import setup_logging
from petqlora.registry.local import UnknownModelError

from cli_serving import SERVING_COMMANDS, add_serving_commands, run_serving
from dag import STEP_SETTINGS, TRIAL_PARALLELISM, pet_breeds_pipeline, with_trial_parallelism  # noqa: F401
from components import images

PIPELINE_NAME = params.PIPELINE_NAME


def _pairs(option: str, pairs: list) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{option} {pair!r}: write it as key=value")
        if key in out:  # the last would silently win
            raise ValueError(f"{option} {key}: is given twice ({out[key]!r}, then {value!r}); fix: give it once")
        out[key] = value
    return out


def _labels(pairs: list) -> dict:
    """--label key=value pairs; values parse as JSON when they can (numbers), else stay strings."""
    out = {}
    for key, value in _pairs("--label", pairs).items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _pipeline_parameters(pairs: list) -> dict:
    """--param key=value pairs, each parsed as the schema types it and checked against its rule (all
    problems in one error); only the parameters given are returned, the template holds the defaults."""
    from petqlora.run_checks import parse_parameters

    return parse_parameters(_pairs("--param", pairs), text=True)


def _add_submit_and_schedule(sub) -> None:
    """The two commands that create runs on Vertex AI Pipelines share their options."""
    for name in ("submit", "schedule"):
        p = sub.add_parser(name, help="submit a run to Vertex AI Pipelines" if name == "submit"
                           else "create, list, pause, resume or delete a retraining schedule")
        p.add_argument("--project", required=True, help="Google Cloud project ID")
        p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
        p.add_argument("--pipeline-root", required=name == "submit", default=None, metavar="GS_URI",
                       help="gs://BUCKET/PREFIX where the runs write their outputs"
                       + ("" if name == "submit" else " (needed to create a schedule)"))
        p.add_argument("--template", default=None, help="a compiled YAML; compiled afresh when omitted")
        p.add_argument("--service-account", default=None, metavar="EMAIL",
                       help="the service account the runs run as (default: the Compute Engine default one)")
        p.add_argument("--param", action="append", default=[], help="pipeline parameter key=value (repeatable)")
        p.add_argument("--dry-run", action="store_true",
                       help="print the requests the client would send, as JSON; needs no credentials")
        p.add_argument("--display-name", default=None if name == "submit" else f"{PIPELINE_NAME}-retraining",
                       help="the run's name in the console (default: the pipeline's)" if name == "submit"
                       else "the schedule's name in the console (default: %(default)s)")
        p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="a label of the run" + ("" if name == "submit" else "s") + " (repeatable); keys and "
                       "values: lowercase letters, digits, '_' or '-', keys starting with a letter")
        p.add_argument("--experiment", default=None, metavar="NAME",
                       help="the Vertex AI experiment the run joins (created if new), where its parameters "
                       "and metrics show" if name == "submit" else "the Vertex AI experiment each run "
                       "joins (created if new): runs add themselves (the experiment parameter)")
        _image_registry_option(p)
        caching = p.add_mutually_exclusive_group()
        caching.add_argument("--enable-caching", dest="enable_caching", action="store_const", const=True, default=None,
                             help="cache every step (the steps that must run each time take the run id, so they "
                             "still run); default: the compiled per-task settings")
        caching.add_argument("--no-cache", dest="enable_caching", action="store_const", const=False,
                             help="run every step afresh")
        if name == "submit":
            p.add_argument("--network", default=None, metavar="NETWORK",
                           help="VPC network to peer the run with: projects/NUMBER/global/networks/NAME")
            p.add_argument("--watch", action="store_true", help="wait for the run to end and print its state")
        else:
            p.add_argument("--cron", default=None, help='e.g. "TZ=Europe/Paris 0 3 * * 1"')
            p.add_argument("--max-run-count", type=int, default=None,
                           help="end the schedule after this many runs (default: no end)")
            p.add_argument("--list", action="store_true", help="list the schedules of the project and region")
            p.add_argument("--pause", metavar="SCHEDULE",
                           help="pause the schedule (its ID or full name): no new runs until resumed")
            p.add_argument("--resume", metavar="SCHEDULE", help="resume a paused schedule (its ID or full name)")
            p.add_argument("--delete", metavar="SCHEDULE",
                           help="delete the schedule (its ID or full name); runs it started are kept")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run-local", help="run the whole pipeline on this machine with kfp.local")
    p.add_argument("--output-dir", required=True, help="where the run writes: its outputs, the local registry, "
                   "run_summary.json and report.html")
    p.add_argument("--config", default="configs/local.yaml",
                   help="the local run's dataset, models and parameters (default: %(default)s)")
    p.add_argument("--dataset", default=None, help="a dataset path: Oxford layout, image folder, manifest, saved HF")
    p.add_argument("--no-cache", dest="enable_caching", action="store_false",
                   help="run every step; by default the steps the pipeline caches (prepare_data, "
                   "validate_token_boundaries) are reused from OUTPUT_DIR/kfp_cache while their inputs are unchanged")
    _trial_parallelism_option(p)

    sub.add_parser("params", help="print every pipeline parameter: type, default, allowed values, description")

    p = sub.add_parser("compile", help="write the KFP IR YAML")
    p.add_argument("--output", required=True, help="the path of the compiled pipeline YAML to write")
    _image_registry_option(p)
    _trial_parallelism_option(p)

    _add_submit_and_schedule(sub)

    p = sub.add_parser("register", help="register an adapter as a new Vertex Model Registry version")
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Vertex AI region, e.g. us-central1")
    p.add_argument("--artifact-uri", required=True, help="the gs:// folder holding the adapter's files")
    p.add_argument("--run-id", required=True, help="the idempotency key: one run registers one version")
    p.add_argument("--model-name", default=PIPELINE_NAME, help="the model's display name (default: %(default)s)")
    p.add_argument("--serving-image", required=True, help="the serving image URI, with a version tag")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of the version (repeatable); values are sanitised to Vertex's rules")
    p.add_argument("--evaluation", default=None, metavar="EVALUATION_JSON",
                   help="the evaluate step's evaluation.json, imported as the version's classification evaluation")
    p.add_argument("--dry-run", action="store_true",
                   help="print the requests the client would send, as JSON; needs no credentials")

    p = sub.add_parser("lineage", help="print dataset -> token report -> adapter -> evaluation -> version")
    p.add_argument("ref", help="NAME, NAME@VERSION or NAME@ALIAS; with --vertex, the registered gs:// adapter URI "
                   "or an ML Metadata artifact resource name")
    p.add_argument("--registry", default="runs/latest/registry.sqlite",
                   help="the local SQLite registry (default: %(default)s); not with --vertex")
    p.add_argument("--vertex", action="store_true", help="read the lineage from Vertex ML Metadata")
    p.add_argument("--project", default=None, help="Google Cloud project ID (with --vertex)")
    p.add_argument("--region", default=None, help="Vertex AI region (with --vertex)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --vertex: print the requests the client would send, as JSON; needs no credentials")

    from petqlora.cloud import gpu_job

    gpu_job.add_parser(sub)  # gpu-job: one GPU step on a cloud backend, or its requests (--dry-run)
    add_serving_commands(sub)
    return parser


# Errors whose message says what to fix (bad input, a missing login): the message and an exit code, no traceback.
EXPECTED_ERRORS = (ValueError, OSError, UnknownModelError, VertexAuthError)


def main(argv=None) -> int:
    """The command line; an expected error ends in its message and exit 2 (1: no login), --debug adds the
    traceback."""
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, VertexAuthError) else 2


def _command(args) -> int:
    setup_logging(os.environ)  # the steps' own setup: JSON records in the cloud, plain lines here
    if args.command == "run-local":
        from petqlora.local_run import run_local_pipeline

        summary = run_local_pipeline(with_trial_parallelism(args.trial_parallelism), Path(args.output_dir),
                                     Path(args.config), args.dataset, enable_caching=args.enable_caching)
        return 0 if summary.get("status") == "succeeded" else 1
    if args.command == "params":
        print(params.table())
        return 0
    if args.command == "compile":
        from petqlora.run_checks import check_run

        check_run({}, context="template")  # the defaults it carries: a recipe every step accepts
        registry = _image_registry(args)
        compile_pipeline(args.output, registry, args.trial_parallelism)
        print(f"wrote {args.output}")
        if registry is None:
            print(f"note: its images name the placeholder {images.PLACEHOLDER_REGISTRY}; pass --image-registry "
                  f"(or set {images.REGISTRY_ENV}) for a pipeline Vertex can run", file=sys.stderr)
        return 0
    if args.command in ("submit", "schedule"):
        return _cloud(args)
    if args.command == "register":
        from petqlora.cloud import vertex_models

        vertex_models.register_vertex_model(
            project=args.project, region=args.region, display_name=args.model_name, artifact_uri=args.artifact_uri,
            serving_container_image_uri=args.serving_image, parent_model=None, version_aliases=["candidate"],
            labels=_labels(args.label), run_id=args.run_id, dry_run=args.dry_run,
            evaluation=_evaluation_file(args.evaluation) if args.evaluation else None)
        return 0
    if args.command == "gpu-job":
        from petqlora.cloud import gpu_job

        return gpu_job.command(args)
    if args.command in SERVING_COMMANDS:
        return run_serving(args, _labels(args.label))
    if args.command == "lineage" and args.dry_run and not args.vertex:
        raise ValueError("--dry-run needs --vertex: the local lineage reads the SQLite registry and sends no request")
    if args.command == "lineage" and args.vertex:
        return vertex_lineage(args)
    if args.command == "lineage":
        from petqlora.registry.lineage import format_lineage
        from petqlora.registry.local import LocalRegistry

        if not Path(args.registry).exists():
            raise SystemExit(f"--registry {args.registry}: no such registry; run `make run` first or pass its path")
        print(format_lineage(LocalRegistry(args.registry, read_only=True).get(args.ref)))
        return 0
    return 2


def _evaluation_file(path: str) -> dict:
    """register --evaluation: the evaluate step's evaluation.json, or one error naming the file."""
    fix = "fix: pass the evaluate step's evaluation.json"
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--evaluation {path}: cannot be read ({exc.strerror}); {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--evaluation {path}: is not JSON ({exc}); {fix}") from None


def vertex_lineage(args, credentials=None, api_endpoint=None) -> int:
    """`lineage --vertex`: NAME[@VERSION] (or the adapter's gs:// URI) -> the chain from ML Metadata; with
    --dry-run, the requests (those a live lookup must answer first are named, not built)."""
    from petqlora.cloud.vertex_common import print_json
    from petqlora.cloud.vertex_lineage import lineage_of, lineage_requests
    from petqlora.registry.lineage import format_vertex_lineage

    if not args.project or not args.region:
        raise ValueError("lineage --vertex needs --project and --region")
    if args.dry_run:
        print_json(print, lineage_requests(args.ref, project=args.project, region=args.region))
        return 0
    graph, uri = lineage_of(args.ref, project=args.project, region=args.region, credentials=credentials,
                            api_endpoint=api_endpoint)
    print(format_vertex_lineage(graph, args.ref, uri))
    return 0


def _image_registry_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-registry", default=None, metavar="HOST/PATH",
                   help="where the pipeline and trainer images were pushed, e.g. REGION-docker.pkg.dev/PROJECT/REPO "
                   f"(tagged with the package version); default: ${images.REGISTRY_ENV}")


def _image_registry(args) -> str | None:
    """--image-registry, else PETQLORA_IMAGE_REGISTRY: read when a command runs, never at import."""
    return args.image_registry or os.environ.get(images.REGISTRY_ENV) or None


def _trial_parallelism_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trial-parallelism", type=int, default=TRIAL_PARALLELISM, metavar="N",
                   help="trials trained at once (default: %(default)s; 0: all): KFP fixes ParallelFor's limit in "
                   "the compiled pipeline, so it is an option here, not a run parameter")


def compile_pipeline(path: str, registry: str | None, trial_parallelism: int | None = None) -> str:
    """Compile the pipeline to `path` with its images in `registry` (the placeholder ones when None) and at most
    `trial_parallelism` trials at once (pipeline.TRIAL_PARALLELISM when None)."""
    from kfp import compiler

    compiler.Compiler().compile(with_trial_parallelism(
        TRIAL_PARALLELISM if trial_parallelism is None else trial_parallelism), path)
    if registry is not None:
        images.set_registry_in_file(path, path, registry)
    return path


def _template(given: str | None, registry: str | None) -> str:
    """The compiled pipeline to send: `given` (its images set when a registry is given) or a fresh compile."""
    import tempfile

    target = str(Path(tempfile.mkdtemp()) / "pipeline.yaml")
    if given is None:
        return compile_pipeline(target, registry)
    if registry is None:
        return given
    if given.startswith(("gs://", "https://")):
        raise ValueError(f"--template {given}: the images of a remote template cannot be set here; compile it "
                         "with --image-registry and pass the local file")
    images.set_registry_in_file(given, target, registry)
    return target


def _cloud(args) -> int:
    from petqlora.cloud import vertex_pipelines, vertex_schedules

    values = _pipeline_parameters(args.param)
    values.setdefault("project", args.project)
    values.setdefault("region", args.region)
    registry = _image_registry(args)
    manages = args.command == "schedule" and (args.list or args.pause or args.resume or args.delete)
    template = None if manages else _template(args.template, registry)
    backend = values.get("backend", params.DEFAULTS.backend)
    if registry and backend.get("kind") in ("cloud_run", "vertex_custom_job") and not backend.get("image"):
        values["backend"] = {**backend, "image": images.image("trainer", registry)}  # the GPU job's image
    if registry and not values.get("serving_image"):  # the trainer image serves too: python -m petqlora.serve
        values["serving_image"] = images.image("trainer", registry)
    common = dict(project=args.project, region=args.region, dry_run=args.dry_run)
    creates_run = args.command == "submit" or args.cron
    if creates_run:  # every check of the run, the dry run's too: the pipeline's first step makes them again
        from petqlora.run_checks import check_run, template_defaults

        check_run({**template_defaults(template), **values}, pipeline_root=args.pipeline_root, context="submit")
    if creates_run and not args.dry_run:
        images.refuse_unusable_images(template)  # the run's other values: check_run above
    elif creates_run and registry is None:
        print(f"note: the images name the placeholder {images.PLACEHOLDER_REGISTRY}; a real {args.command} "
              "refuses them: pass --image-registry", file=sys.stderr)
    if args.command == "submit":
        vertex_pipelines.submit_pipeline(
            template_path=template, pipeline_root=args.pipeline_root, parameter_values=values,
            service_account=args.service_account, network=args.network, watch=args.watch,
            display_name=args.display_name, labels=_pairs("--label", args.label), experiment=args.experiment,
            enable_caching=args.enable_caching, **common)
        return 0
    if args.list:
        vertex_schedules.list_schedules(**common)
    elif args.pause or args.resume or args.delete:
        action = next(a for a in vertex_schedules.SCHEDULE_ACTIONS if getattr(args, a))
        vertex_schedules.change_schedule(action, getattr(args, action), **common)
    else:
        if not args.cron or not args.pipeline_root:
            raise SystemExit("schedule: creating a schedule needs --cron and --pipeline-root "
                             "(or use --list / --pause / --resume / --delete)")
        vertex_schedules.create_schedule(
            template_path=template, pipeline_root=args.pipeline_root, parameter_values=values,
            cron=args.cron, display_name=args.display_name, max_run_count=args.max_run_count,
            labels=_pairs("--label", args.label), experiment=args.experiment,
            service_account=args.service_account, enable_caching=args.enable_caching, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
