"""The pet-breed QLoRA pipeline: the @dsl.pipeline wiring and the command line.

    python pipeline.py run-local --output-dir runs/latest [--config configs/local.yaml] [--dataset PATH]
    python pipeline.py compile --output pipeline.yaml
    python pipeline.py submit --project P --region R --pipeline-root gs://BUCKET/root [--watch] [--dry-run]
    python pipeline.py schedule --cron "TZ=Europe/Paris 0 3 * * 1" --project P --region R --pipeline-root ...
    python pipeline.py lineage NAME[@VERSION] [--registry runs/latest/registry.sqlite]
"""


import argparse
import json
import os
import sys
from pathlib import Path

from kfp import dsl

from petqlora import params
from petqlora.cloud.vertex_common import VertexAuthError
from petqlora.logs import setup_logging
from petqlora.registry.local import UnknownModelError

from components.check_parameters import check_parameters
from components.add_to_experiment import add_to_experiment
from components.evaluate import evaluate
from components.prepare_data import prepare_data
from components.register_model import register_model
from components.train_adapter import train_adapter
from components.validate_token_boundaries import validate_token_boundaries

PIPELINE_NAME = params.PIPELINE_NAME


@dsl.pipeline(name=PIPELINE_NAME, description="Fine-tune Gemma 4 with QLoRA to classify pet breeds; evaluate "
              "against Gemma 3 and Gemma 4 baselines; register the adapter only when it wins.")
@params.with_signature
def pet_breeds_pipeline(p):
    """The pet-breed QLoRA pipeline: prepare, validate, train, evaluate, register when it wins."""
    checked = check_parameters(**{name: getattr(p, name) for name in params.NAMES})
    checked.set_display_name("Check parameters").set_caching_options(False)  # sees the registry as it is now
    data = prepare_data(
        source=p.source, seed=p.seed, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
        max_per_class_train=p.max_per_class_train, max_per_class_eval=p.max_per_class_eval, on_bad_input=p.on_bad_input,
    ).set_display_name("Prepare data").after(checked)
    check = validate_token_boundaries(
        dataset=data.outputs["dataset"], base_model=p.base_model, image_token_budget=p.image_token_budget,
        max_length=p.max_length, sample=p.validation_sample,
    ).set_display_name("Validate token boundaries")
    train = train_adapter(
        dataset=data.outputs["dataset"], base_model=p.base_model, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout, epochs=p.epochs, learning_rate=p.learning_rate, batch_size=p.batch_size,
        grad_accum=p.grad_accum, image_token_budget=p.image_token_budget, max_length=p.max_length, seed=p.seed,
        train_options=p.train_options, backend=p.backend, project=p.project, region=p.region,
        run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).set_display_name("Train adapter (QLoRA, Cloud Run GPU)").after(check)
    train.set_caching_options(False)  # launches a paid GPU job; its own checkpoints make retries cheap
    scores = evaluate(
        dataset=data.outputs["dataset"], adapter=train.outputs["adapter"], base_model=p.base_model,
        gemma4_baseline=p.gemma4_baseline, gemma3_baseline=p.gemma3_baseline, image_token_budget=p.image_token_budget,
        scoring=p.scoring, win_margin=p.win_margin, registry=p.registry, model_name=p.model_name, backend=p.backend,
        project=p.project, region=p.region, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).set_display_name("Evaluate vs Gemma 3 / Gemma 4 baselines")
    scores.set_caching_options(False)  # reads the registry's current champion
    with dsl.If(scores.outputs["Output"] == "register", name="fine-tuned model wins"):
        register_model(
            dataset=data.outputs["dataset"], token_report=check.outputs["records"], adapter=train.outputs["adapter"],
            evaluation=scores.outputs["evaluation"], model_name=p.model_name, registry=p.registry, project=p.project,
            region=p.region, serving_image=p.serving_image, code_revision=p.code_revision,
            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_display_name("Register model").set_caching_options(False)
    # A scheduled run is created by Vertex, so no client can put it in an experiment: it adds itself.
    with dsl.If(p.experiment != "", name="experiment named"):
        add_to_experiment(
            experiment=p.experiment, project=p.project, region=p.region,
            pipeline_job=dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER,
        ).after(checked).set_display_name("Add run to experiment").set_caching_options(False).set_retry(
            num_retries=3, backoff_duration="30s", backoff_factor=2.0)  # two ML Metadata calls


def _pairs(option: str, pairs: list) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{option} {pair!r}: write it as key=value")
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
    given = _pairs("--param", pairs)
    parsed = params.parse(given, text=True)
    return {name: getattr(parsed, name) for name in given}


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

    sub.add_parser("params", help="print every pipeline parameter: type, default, allowed values, description")

    p = sub.add_parser("compile", help="write the KFP IR YAML")
    p.add_argument("--output", required=True, help="the path of the compiled pipeline YAML to write")

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

        summary = run_local_pipeline(pet_breeds_pipeline, Path(args.output_dir), Path(args.config), args.dataset)
        return 0 if summary.get("status") == "succeeded" else 1
    if args.command == "params":
        print(params.table())
        return 0
    if args.command == "compile":
        from petqlora.run_checks import check_run

        check_run({}, context="template")  # the defaults it carries: a recipe every step accepts
        from kfp import compiler

        compiler.Compiler().compile(pet_breeds_pipeline, args.output)
        print(f"wrote {args.output}")
        return 0
    if args.command in ("submit", "schedule"):
        return _cloud(args)
    if args.command == "register":
        from petqlora.cloud import vertex_models

        vertex_models.register_vertex_model(
            project=args.project, region=args.region, display_name=args.model_name, artifact_uri=args.artifact_uri,
            serving_container_image_uri=args.serving_image, parent_model=None, version_aliases=["candidate"],
            labels=_labels(args.label), run_id=args.run_id, dry_run=args.dry_run,
            evaluation=json.loads(Path(args.evaluation).read_text()) if args.evaluation else None)
        return 0
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


def _cloud(args) -> int:
    import tempfile

    from kfp import compiler

    from petqlora.cloud import vertex_pipelines, vertex_schedules

    values = _pipeline_parameters(args.param)
    values.setdefault("project", args.project)
    values.setdefault("region", args.region)
    template = args.template
    if template is None and not (args.command == "schedule" and (args.list or args.pause or args.resume or args.delete)):
        template = str(Path(tempfile.mkdtemp()) / "pipeline.yaml")
        compiler.Compiler().compile(pet_breeds_pipeline, template)
    common = dict(project=args.project, region=args.region, dry_run=args.dry_run)
    creates_run = args.command == "submit" or args.cron
    if creates_run:  # every check of the run, the dry run's too: the pipeline's first step makes them again
        from petqlora.run_checks import check_run, template_defaults

        check_run({**template_defaults(template), **values}, pipeline_root=args.pipeline_root, context="submit")
    if creates_run and not args.dry_run:
        # Fail here, not an hour into the run: the GPU steps need the Cloud Run Job's settings.
        from petqlora.backends import Backend

        backend = values.get("backend", {"kind": "cloud_run"})
        Backend(**{"project": args.project, "region": args.region, **backend})
    if args.command == "submit":
        vertex_pipelines.submit_pipeline(
            template_path=template, pipeline_root=args.pipeline_root, parameter_values=values,
            service_account=args.service_account, network=args.network, watch=args.watch,
            display_name=args.display_name, labels=_pairs("--label", args.label), experiment=args.experiment,
            **common)
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
            service_account=args.service_account, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
