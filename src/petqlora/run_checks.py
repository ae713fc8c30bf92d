"""The whole run checked before it starts: every pipeline parameter against its rule, the training config
the train step will build from them, where the GPU steps run, where the outputs go and where a winner is
registered. One ValueError lists every problem (parameter, value, rule, fix).

``check_run`` is called by ``run-local`` before anything is built, by ``compile`` on the template's
defaults, by ``submit`` and ``schedule`` (their dry runs included) before any request, and again as the
pipeline's first step (``check_parameters``), so a run started from the Vertex console with bad values
fails in seconds, before any data is read or GPU asked for. Each rule lives where the value is used (the
schema, PrepareDataConfig, TrainConfig, Backend, CloudRunJobConfig, the registry); this module builds those objects exactly as
the steps will and gathers what they refuse.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from petqlora import params as pipeline_params
from petqlora.params import PipelineParams
from petqlora.problems import Problems

if TYPE_CHECKING:  # imported when checked: backends pulls in the logging and progress machinery
    from petqlora.backends import Backend

__all__ = ["CONTEXTS", "check_run", "parse_parameters", "template_defaults"]

# Where a run is checked, which decides what can be checked:
#   template: compile: the recipe alone (where the run goes -- project, backend -- is given at submit);
#   submit:   a run about to be sent to Vertex (submit, schedule, their dry runs): everything, the paths
#             as a Vertex step sees them;
#   here:     a run on this machine (run-local) or the pipeline's first step: everything, and the
#             registry's folder on this filesystem.
CONTEXTS = ("template", "submit", "here")
MODEL_PARAMETERS = ("base_model", "gemma4_baseline", "gemma3_baseline", "contrastive_baseline")


def check_run(values: Mapping[str, Any], *, text: bool = False, pipeline_root: str | None = None,
              context: str = "here") -> PipelineParams:
    """The run's parameters (``values``: names to values, defaults for the rest; with ``text``, string
    values are command-line text), checked as a whole; returns them parsed. ``pipeline_root``: where the
    run's outputs go (a gs:// URI, or a local folder). Raises one ValueError listing every problem."""
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r}: must be one of {', '.join(CONTEXTS)}")
    p = Problems("run parameters")
    run, bad = _parse_each(p, values, text)
    _check_data(p, run, bad)
    train_cfg = _check_training(p, run, bad)
    _check_trials(p, run, bad)
    backend = _check_backend(p, run, bad, context)
    if backend is not None and backend.kind != "local":
        _check_in_bucket(p, run, backend, pipeline_root)
    if backend is not None and backend.kind == "vertex_custom_job" and train_cfg is not None \
            and not any(_field(item) == "backend.accelerator_count" for item in p.items):  # else said already
        from petqlora.train.config import check_world_size

        check_world_size(train_cfg, backend.accelerator_count, p)  # torchrun: one process per GPU
    _check_registry(p, run, bad, context)
    _check_contrastive(p, run, bad, context)
    if "experiment" not in bad and run.experiment:  # "" joins none
        from petqlora.cloud.vertex_common import check_experiment

        check_experiment(p, run.experiment)
    p.raise_if_any()
    return run


def parse_parameters(values: Mapping[str, Any], *, text: bool = False) -> dict[str, Any]:
    """The parameters given (``values``; with ``text``, string values are command-line text), each parsed as the
    schema types it, alone: one ValueError names every bad one, its rule and a fix."""
    p = Problems("pipeline parameters")
    run, _ = _parse_each(p, values, text)
    p.raise_if_any()
    return {name: getattr(run, name) for name in values}


def template_defaults(template_path: str) -> dict[str, Any]:
    """The pipeline parameters' defaults in a compiled IR YAML (what a run of it uses for a parameter not
    given); {} for a remote template, whose defaults are the schema's as far as this check knows."""
    import yaml

    if template_path.startswith(("gs://", "https://")):
        return {}
    if not Path(template_path).is_file():
        raise ValueError(f"--template {template_path}: no such file; fix: compile it first "
                         "(python pipeline.py compile --output FILE), or leave --template out to compile afresh")
    spec = yaml.safe_load(Path(template_path).read_text())
    spec = spec.get("pipelineSpec", spec) if isinstance(spec, dict) else {}
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: p["defaultValue"] for name, p in inputs.items()
            if name in pipeline_params.NAMES and "defaultValue" in p}


def _fold(p: Problems, exc: Exception, rename: Callable[[str], str | None] = lambda item: item) -> None:
    """Adds the problems a Problems-built ``exc`` carries (or its message), each once, as ``rename`` says
    (None: left out)."""
    for item in getattr(exc, "problems", None) or (str(exc),):
        item = rename(item)
        if item is not None and item not in p.items:
            p.items.append(item)


def _field(item: str) -> str:
    return item.split("=", 1)[0]


def _example_fix(item: str, defaults: Mapping[str, Any]) -> str:
    """A problem that names no fix (a type or range rule) gets one: the field's default, a value that passes."""
    name = _field(item)
    if "; fix: " in item or defaults.get(name) in ("", None):
        return item
    return f"{item}; fix: e.g. {json.dumps(defaults[name])} (the default)"


def _parse_each(p: Problems, values: Mapping[str, Any], text: bool) -> tuple[PipelineParams, set[str]]:
    """Each parameter parsed on its own, so every bad one is reported; the run is built from the good
    ones (defaults for the bad), and the names of the bad ones are returned so later checks skip them."""
    if not isinstance(values, Mapping):
        p.add("parameters", values, "must be a mapping of parameter names to values")
        p.raise_if_any()
    good, bad = {}, set()
    defaults = {name: getattr(pipeline_params.DEFAULTS, name) for name in pipeline_params.NAMES}
    for name, value in values.items():
        try:
            good[name] = getattr(pipeline_params.parse({name: value}, text=text), name)
        except ValueError as exc:
            _fold(p, exc, lambda item: _example_fix(item, defaults))
            bad.add(name)
    return PipelineParams(**good), bad


def _check_data(p: Problems, run: PipelineParams, bad: set[str]) -> None:
    """The PrepareDataConfig the prepare_data step builds from the parameters: its rules that join fields (the
    fractions' sum, a cap below the classes' minimum) and the source's are checked before any data is read."""
    from petqlora.data.prepare_config import PIPELINE_FIELDS, PrepareDataConfig, pipeline_options

    if bad & {"source", *PIPELINE_FIELDS}:
        return  # reported already
    defaults = {"source": pipeline_params.DEFAULTS.source}
    try:
        PrepareDataConfig(source=run.source, **pipeline_options(**{k: getattr(run, k) for k in PIPELINE_FIELDS}))
    except ValueError as exc:
        _fold(p, exc, lambda item: _example_fix(item, defaults))


def _train_fields() -> tuple[str, ...]:
    """The pipeline parameters that are TrainConfig fields: what the train step passes besides train_options."""
    from petqlora.train.config import TrainConfig

    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in pipeline_params.NAMES)


def _check_training(p: Problems, run: PipelineParams, bad: set[str]):
    """The TrainConfig built from train_options and the pipeline's fields, as the train step builds it
    (None when it cannot be built: its problems are added to ``p``)."""
    from petqlora.train.config import train_config_values
    from petqlora.train.config import TrainConfig, parse_train_config

    shared = _train_fields()
    if "train_options" in bad:
        return None  # reported already
    # A refused shared field (reported already) has its default standing in: only train_options' own
    # problems are kept then, since one about the stand-in would mislead.
    stand_in = bool(bad & set(shared))
    options = run.train_options
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

    def rename(item: str) -> str | None:
        if _field(item) in options:
            return f"train_options.{_example_fix(item, defaults)}"
        return None if stand_in and not item.startswith("train_options.") else item

    try:
        return parse_train_config(train_config_values(options, **{name: getattr(run, name) for name in shared}))
    except ValueError as exc:
        _fold(p, exc, rename)
        return None


def _check_trials(p: Problems, run: PipelineParams, bad: set[str]) -> None:
    """Each trial's overrides and the training config it makes (trials.plan.check_trials); a trial's config is
    built only when the run's own training values passed (else its problem would be theirs)."""
    from petqlora.trials.plan import FIXED, TUNABLE, base_values, check_trials

    if "trials" in bad:
        return
    own_ok = not bad & {*TUNABLE, *FIXED} and not any(item.startswith("train_options.") for item in p.items)
    check_trials(run.trials, base_values(run), {k: getattr(run, k) for k in FIXED}, p, base_ok=own_ok)


def _check_backend(p: Problems, run: PipelineParams, bad: set[str], context: str) -> Backend | None:
    """The Backend the GPU steps build (``Backend(project=, region=, **backend)``) and, in the cloud, the
    job of each GPU entrypoint (a Cloud Run job or a CustomJob); returns the Backend, or None when it cannot be
    built."""
    from petqlora.backends import Backend

    if "backend" in bad:
        return None
    values = run.backend
    own = [f.name for f in dataclasses.fields(Backend) if f.name not in ("project", "region")]
    ok = p.check("kind" in values, "backend.kind", None,
                 "is required (without it the GPU steps would run as local subprocesses)",
                 f"add \"kind\": one of {', '.join(pipeline_params.BACKEND_KINDS)}")
    for key in sorted(values):
        if key in ("project", "region"):
            p.add(f"backend.{key}", values[key], f"is set by the pipeline parameter {key}",
                  f"drop it from backend and set the parameter {key}")
            ok = False
        elif key not in own:
            p.add(f"backend.{key}", values[key], "is not a backend field", f"use {', '.join(own)}")
            ok = False
    if "kind" in values:
        ok = p.check(values["kind"] in pipeline_params.BACKEND_KINDS, "backend.kind", values["kind"],
                     f"must be one of {', '.join(pipeline_params.BACKEND_KINDS)}",
                     "cloud_run (a Cloud Run GPU job), vertex_custom_job (a Vertex AI CustomJob on the GPUs of one "
                     "machine) or local (a subprocess of the step)") and ok
    if not ok or context == "template" or bad & {"project", "region"}:
        return None  # a template's backend is given at submit
    try:
        backend = Backend(project=run.project, region=run.region, **values)
    except ValueError as exc:
        if getattr(exc, "problems", None):  # a field's type: each problem names its field
            _fold(p, exc, lambda item: f"backend.{item}")
        else:
            p.add("backend", values, str(exc))
        return None
    if backend.kind != "local":
        from petqlora.backends import EVALUATE_MODULE, TRAIN_MODULE

        for module in (TRAIN_MODULE, EVALUATE_MODULE):
            try:
                backend.job_config(module)
            except ValueError as exc:
                _fold(p, exc, lambda item: f"backend.{item}" if _field(item) in own else item)
    return backend


def _check_in_bucket(p: Problems, run: PipelineParams, backend: Backend, pipeline_root: str | None) -> None:
    """The GPU job sees the backend's bucket only (a Cloud Run job mounts it; a CustomJob's /gcs could see
    others, but its service account is granted this one): the steps' files (under the pipeline root) and the
    checkpoints it reads must lie there."""
    from petqlora.cloud.storage import local_path

    sees = "Cloud Run job mounts only" if backend.kind == "cloud_run" else "Vertex CustomJob works in"
    where = (f"the {sees} gs://{backend.bucket} (at {backend.mount_path}), so the files it reads and writes "
             "must lie in that bucket")
    if pipeline_root is not None:
        try:
            backend.path_arg(f"{local_path(pipeline_root).rstrip('/')}/run")  # where the steps' outputs go
        except ValueError:
            p.add("pipeline_root", pipeline_root, where,
                  f"use a pipeline root in gs://{backend.bucket}/, or set backend.bucket to the root's bucket")
    for name in MODEL_PARAMETERS:
        path = local_path(getattr(run, name))
        if path.startswith("/gcs/") and not path.startswith(f"{backend.mount_path}/"):
            p.add(name, getattr(run, name), where,
                  f"copy the checkpoint into gs://{backend.bucket}/, or give a Hugging Face Hub id")


def _check_registry(p: Problems, run: PipelineParams, bad: set[str], context: str) -> None:
    """'vertex' (with a project and region) or the absolute path of a local registry a run can write."""
    if "registry" in bad:
        return
    registry = run.registry
    if run.deploy and registry != "vertex" and "deploy" not in bad:  # a local registry has no endpoint to serve on
        p.add("deploy", run.deploy, f"deploys to a Vertex endpoint, which needs registry=vertex (registry is {registry!r})",
              "pass deploy={} for a local run, or registry=vertex")
    if registry == "vertex":
        if "model_name" not in bad:  # a Vertex display name; else refused at registration, after training
            p.check(0 < len(run.model_name.strip()) <= 128, "model_name", run.model_name,
                    "must be 1-128 characters (the Vertex Model Registry display name)",
                    f"e.g. {pipeline_params.PIPELINE_NAME}")
        if context != "template" and "serving_image" not in bad:
            pipeline_params.check_vertex_registration(run, p)  # a template's serving image is given at submit
        if context != "template" and not bad & {"project", "region"}:
            from petqlora.cloud.vertex_common import check_project_region

            found = Problems("registry")
            check_project_region(found, run.project, run.region)
            # said once: a cloud_run backend reports a bad project or region already
            reported = {_field(item) for item in p.items}
            p.items.extend(item for item in found.items if _field(item) not in reported)
        return
    if not p.check(PurePosixPath(registry).is_absolute(), "registry", registry,
                   "must be 'vertex' or the absolute path of a local SQLite registry (each step runs in its own "
                   "folder)", "pass registry=vertex, or e.g. /gcs/BUCKET/petqlora/registry.sqlite"):
        return
    if "model_name" not in bad:
        from petqlora.registry.local import check_model_name

        check_model_name(p, "model_name", run.model_name)
    if context == "submit":
        p.check(registry.startswith("/gcs/"), "registry", registry,
                "is not on Cloud Storage: a Vertex step sees files only through the /gcs/<bucket> mounts",
                "pass registry=vertex, or a path under /gcs/<bucket>/")
    elif context == "here":
        from petqlora.registry.local import registry_path_problem

        problem = registry_path_problem(registry)
        if problem is not None:
            p.add("registry", registry, *problem)


def _check_contrastive(p: Problems, run: PipelineParams, bad: set[str], context: str) -> None:
    """The gate needs a contrastive baseline; a local checkpoint folder given as one must be SigLIP / CLIP."""
    if bad & {"contrastive_baseline", "gate_on_contrastive"}:
        return
    pipeline_params.check_contrastive_gate(run, p)
    config = Path(run.contrastive_baseline) / "config.json"
    if context == "here" and run.contrastive_baseline and config.is_file():
        kind = json.loads(config.read_text()).get("model_type")
        p.check(kind in pipeline_params.CONTRASTIVE_MODEL_TYPES, "contrastive_baseline", run.contrastive_baseline,
                f"is a {kind!r} checkpoint, not a contrastive image-text model "
                f"({', '.join(pipeline_params.CONTRASTIVE_MODEL_TYPES)})",
                "give a SigLIP / SigLIP 2 / CLIP checkpoint, e.g. google/siglip2-so400m-patch14-384, or empty")
