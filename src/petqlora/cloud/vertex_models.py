"""Vertex AI Model Registry: register an adapter as a new version of one model (idempotent per pipeline run),
with a complete serving container spec and the evaluation imported as a classification ModelEvaluation,
and read a version's artifact URI. `find_model` is the one lookup of a model by display name that all of
them use.

The serving container is the trainer image running ``python -m petqlora.serve`` (serve/contract.py
holds the command, port and routes used here): Vertex's custom-container contract gives it AIP_HTTP_PORT
(8080, the one port declared), AIP_PREDICT_ROUTE (/predict), AIP_HEALTH_ROUTE (/health) and AIP_STORAGE_URI (the copied
adapter folder, passed as ``--adapter``; Vertex expands ``$(VAR)`` in args)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from petqlora.cloud.names import ALIAS_RE as _ALIAS_RE
from petqlora.cloud.vertex_common import (
    Out,
    check_pinned_image,
    check_project_region,
    needs_lookup,
    print_json,
    rest_request,
    run_alias,
    to_json_dict,
    to_vertex_labels,
    vertex_session,
)
from petqlora.problems import Problems
# The serving contract (command, args, port, routes) is the server's own: one source of truth.
from petqlora.serve.contract import HEALTH_ROUTE, PREDICT_ROUTE, SERVING_ARGS, SERVING_COMMAND, SERVING_PORT

if TYPE_CHECKING:  # the SDK is only needed at call time
    from google.cloud import aiplatform

__all__ = [
    "HEALTH_ROUTE",
    "PREDICT_ROUTE",
    "RUN_ID_LABEL",
    "SERVING_ARGS",
    "SERVING_COMMAND",
    "SERVING_PORT",
    "check_model_version",
    "default_version_artifact_uri",
    "find_model",
    "list_models_request",
    "model_version_uri",
    "register_vertex_model",
    "serving_container_spec",
]

# The label that ties a model version to the pipeline run that produced it (idempotent registration).
RUN_ID_LABEL = "run_id"

_PARENT_MODEL_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/models/)?[A-Za-z0-9_-]+$")
_VERSION_RE = re.compile(r"^([0-9]+|[a-z][a-zA-Z0-9-]{0,126}[a-z0-9])$")



def serving_container_spec(image_uri: str) -> Any:
    """The ModelContainerSpec of a registered version: `image_uri` (pinned) serving the adapter."""
    from google.cloud.aiplatform.compat.types import model as gca_model

    return gca_model.ModelContainerSpec(
        image_uri=image_uri, command=list(SERVING_COMMAND), args=list(SERVING_ARGS),
        ports=[gca_model.Port(container_port=SERVING_PORT)], predict_route=PREDICT_ROUTE, health_route=HEALTH_ROUTE,
    )


# ---------------------------------------------------------------------------------------------------
# Finding a model.


def list_models_request(project: str, region: str, display_name: str) -> dict:
    """The REST call find_model makes (Model.list with a display-name filter), as a dry run shows it."""
    from google.cloud.aiplatform.compat.types import model_service

    request = model_service.ListModelsRequest(parent=f"projects/{project}/locations/{region}",
                                              filter=f'display_name="{display_name}"')
    return rest_request("model_service", "ListModels", request)


def find_model(
    display_name: str, *, project: str, region: str, credentials: Any = None, fix: str
) -> "aiplatform.Model | None":
    """The one Vertex model named `display_name`, at its default version (what Model.list returns), or None.

    Call it inside `vertex_session`. Several models with this name raise a ValueError naming them, then `fix`.
    """
    from google.cloud import aiplatform

    matches = aiplatform.Model.list(
        filter=f'display_name="{display_name}"', project=project, location=region, credentials=credentials,
    )
    if len(matches) > 1:
        names = ", ".join(m.resource_name for m in matches)
        raise ValueError(
            f"display_name={display_name!r}: {len(matches)} Vertex models have this name ({names}); {fix}"
        )
    return matches[0] if matches else None


def default_version_artifact_uri(*, project: str, region: str, display_name: str, credentials: Any = None,
                                 api_endpoint: str | None = None) -> str | None:
    """The artifact URI of the default version of the model named `display_name`, or None if none exists.

    Champion/challenger on Vertex: a retraining run evaluates this version on the same split.
    """
    with vertex_session(project, region, credentials, api_endpoint):
        model = find_model(display_name, project=project, region=region, credentials=credentials,
                           fix="rename the extra ones so the champion is unambiguous")
        return (model.uri or None) if model else None


def check_model_version(p: Problems, version: Any) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        p.add("version", version, "must be a version number or an alias", "pass e.g. 3 or default")


def model_version_uri(
    display_name: str, version: str = "default", *, project: str, region: str,
    credentials: Any = None, api_endpoint: str | None = None,
) -> str | None:
    """The artifact URI of NAME@VERSION (a version number or an alias) in Model Registry, or None when no
    model has this display name. (Its dry run is vertex_lineage.lineage_requests': the GetModel needs the
    ID ListModels finds.)"""
    p = Problems("arguments for model_version_uri")
    check_project_region(p, project, region)
    check_model_version(p, version)
    p.raise_if_any()
    from google.cloud import aiplatform

    with vertex_session(project, region, credentials, api_endpoint):
        model = find_model(display_name, project=project, region=region, credentials=credentials,
                           fix="rename the extra ones")
        if model is None:
            return None
        return aiplatform.Model(f"{model.resource_name}@{version}", project=project, location=region,
                                credentials=credentials).uri


# ---------------------------------------------------------------------------------------------------
# Registering a version.


def _checked_version(model: Any, project: str, region: str) -> Any:
    """The gapic Model Vertex answered an upload with, if it names a version of a model in this project and
    region (a reply naming anything else is not trusted as "registered")."""
    name = model.name.split("@", 1)[0]
    if not re.fullmatch(rf"projects/[^/]+/locations/{re.escape(region)}/models/[A-Za-z0-9_-]+", name) \
            or not re.fullmatch(r"[0-9]+", model.version_id or ""):
        raise RuntimeError(f"Vertex answered UploadModel with model {model.name!r} version {model.version_id!r}, "
                           f"not a version of a model in {project}/{region}; check the Model Registry by hand")
    return model


def _version_summary(model: Any, reused: bool) -> dict:
    """The result of register_vertex_model from a gapic Model (name may carry "@version")."""
    return {
        "resource_name": model.name.split("@", 1)[0],
        "version_id": model.version_id,
        "aliases": list(model.version_aliases),
        "labels": dict(model.labels),
        "reused": reused,
    }


def _checked_labels(
    *, project: Any, region: Any, display_name: Any, artifact_uri: Any, serving_container_image_uri: Any,
    parent_model: Any, version_aliases: Any, labels: Any, description: Any, run_id: Any, make_default: Any,
) -> dict[str, str]:
    """Checks register_vertex_model's arguments (raising once) and returns the version's Vertex labels."""
    p = Problems("arguments for register_vertex_model")
    check_project_region(p, project, region)
    if not isinstance(display_name, str) or not 0 < len(display_name) <= 128:
        p.add("display_name", display_name, "must be 1-128 characters", "pass e.g. 'petqlora-gemma4'")
    if not isinstance(artifact_uri, str) or not artifact_uri.startswith("gs://"):
        p.add("artifact_uri", artifact_uri, "must be a gs:// URI (Vertex reads the adapter from Cloud Storage)",
              "pass the adapter's gs:// directory")
    check_pinned_image(p, "serving_container_image_uri", serving_container_image_uri)
    if parent_model is not None and (not isinstance(parent_model, str) or not _PARENT_MODEL_RE.match(parent_model)):
        p.add("parent_model", parent_model, "must be a model ID or projects/<p>/locations/<r>/models/<id>",
              "pass None to find the parent by display name")
    if not isinstance(run_id, str) or not run_id.strip():
        p.add("run_id", run_id, "must be a non-empty string", "pass the pipeline run's job id")
    if not isinstance(version_aliases, (list, tuple)):
        p.add("version_aliases", version_aliases, "must be a list of strings", "pass e.g. ['candidate']")
        version_aliases = []
    for alias in version_aliases:
        if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.isdigit():
            p.add("version_aliases", alias,
                  "aliases must match [a-z][a-zA-Z0-9-]{0,126}[a-z0-9] (letters, digits, '-')",
                  "use e.g. 'candidate' or 'champion'")
    if not isinstance(labels, Mapping):
        p.add("labels", labels, "must be a dict", "pass e.g. {'accuracy': 0.87}")
        labels = {}
    if not isinstance(description, str):
        p.add("description", description, "must be a string", "pass text or ''")
    if not isinstance(make_default, bool):
        p.add("make_default", make_default, "must be a bool", "pass True or False")
    final_labels: dict[str, str] = {}
    try:
        final_labels = to_vertex_labels({**labels, RUN_ID_LABEL: run_id} if isinstance(run_id, str) else labels)
    except ValueError as err:
        p.items.append(str(err))
    p.raise_if_any()
    return final_labels


def _upload_requests(
    *, project: str, region: str, display_name: str, artifact_uri: str, serving_container_image_uri: str,
    parent_model: str | None, aliases: list[str], labels: dict[str, str], description: str,
    model_evaluation: Any | None,
) -> dict:
    """The dry run of a registration: the UploadModel request (REST call and message), and in their places
    the lookups and the evaluation import whose names only the live calls before them can supply."""
    from google.cloud.aiplatform.compat.types import model as gca_model
    from google.cloud.aiplatform.compat.types import model_service

    request = model_service.UploadModelRequest(
        parent=f"projects/{project}/locations/{region}",
        parent_model=parent_model,
        model=gca_model.Model(
            display_name=display_name, description=description, version_description=description,
            version_aliases=aliases, labels=labels, artifact_uri=artifact_uri,
            container_spec=serving_container_spec(serving_container_image_uri),
        ),
    )
    payload = {**rest_request("model_service", "UploadModel", request, with_body=False), **to_json_dict(request)}
    if parent_model is None:
        payload["parent_model_lookup"] = {
            **list_models_request(project, region, display_name),
            "then": "parent_model is the one model this finds (none: UploadModel creates a new model)"}
        payload["run_check"] = needs_lookup(
            "ListModelVersions", "its name is the parent model ListModels finds (a version this run "
            "registered already is reused, not uploaded again)")
    else:
        payload["run_check"] = rest_request(
            "model_service", "ListModelVersions", model_service.ListModelVersionsRequest(name=parent_model))
    if model_evaluation is not None:
        payload["evaluation_import"] = {
            **needs_lookup("ImportModelEvaluation", "its parent is the version UploadModel creates (after a "
                           "ListModelEvaluations there: one evaluation per run)"),
            "model_evaluation": to_json_dict(model_evaluation)}
    return payload


def _version_of_run(
    parent_model: str, run_label: str, run_alias_: str, *, project: str, region: str, credentials: Any
) -> Any | None:
    """The version of `parent_model` that this run already registered (by label or alias), if any."""
    from google.cloud.aiplatform.compat.types import model_service

    client = _model_client(parent_model, project=project, region=region, credentials=credentials)
    request = model_service.ListModelVersionsRequest(name=parent_model)
    for version in client.list_model_versions(request=request):
        if version.labels.get(RUN_ID_LABEL) == run_label or run_alias_ in version.version_aliases:
            return version
    return None


def _model_client(model: str, *, project: str, region: str, credentials: Any) -> Any:
    """The SDK's ModelServiceClient for this session (its endpoint, transport and credentials)."""
    from google.cloud import aiplatform

    return aiplatform.models.ModelRegistry(model, project=project, location=region, credentials=credentials).client


def register_vertex_model(
    *,
    project: str,
    region: str,
    display_name: str,
    artifact_uri: str,
    serving_container_image_uri: str,
    parent_model: str | None,
    version_aliases: list[str],
    labels: Mapping[str, Any],
    description: str = "",
    run_id: str,
    evaluation: dict | None = None,
    dry_run: bool = False,
    credentials: Any = None,
    api_endpoint: str | None = None,
    out: Out = print,
    make_default: bool = True,
) -> dict:
    """Upload the adapter as a new version of one Vertex AI Model (created on the first run), served by
    `serving_container_image_uri` (see serving_container_spec), and import `evaluation` (run_evaluate's
    evaluation.json) as the version's classification ModelEvaluation.

    The parent is `parent_model` (resource name or ID) or else the one model with this display name.
    Labels are sanitised to Vertex's rules (metric 0.8734 -> "0_8734"); the run is recorded both as
    the label "run_id" and the alias "run-<run id>", so a retried run finds its version (and its
    evaluation) instead of uploading a second one. Returns {"resource_name", "version_id", "aliases",
    "labels", "reused", "evaluation"} (evaluation: the ModelEvaluation's resource name, or None).
    """
    final_labels = _checked_labels(
        project=project, region=region, display_name=display_name, artifact_uri=artifact_uri,
        serving_container_image_uri=serving_container_image_uri, parent_model=parent_model,
        version_aliases=version_aliases, labels=labels, description=description, run_id=run_id,
        make_default=make_default,
    )
    model_evaluation = None
    if evaluation is not None:
        from petqlora.cloud.vertex_evaluations import classification_evaluation

        model_evaluation = classification_evaluation(evaluation, run_id=run_id)  # checked before any request
    if parent_model is not None and not parent_model.startswith("projects/"):  # a bare model ID
        parent_model = f"projects/{project}/locations/{region}/models/{parent_model}"
    alias_for_run = run_alias(run_id)
    aliases = list(dict.fromkeys([*version_aliases, alias_for_run]))
    if make_default and "default" not in aliases:
        aliases.append("default")  # what Model.upload(is_default_version=True) adds
    model_args = dict(display_name=display_name, artifact_uri=artifact_uri, labels=final_labels,
                      serving_container_image_uri=serving_container_image_uri)

    if dry_run:
        payload = _upload_requests(project=project, region=region, parent_model=parent_model, aliases=aliases,
                                   description=description, model_evaluation=model_evaluation, **model_args)
        print_json(out, payload)
        return payload

    cloud = dict(project=project, region=region, credentials=credentials)
    with vertex_session(project, region, credentials, api_endpoint):
        if parent_model is None:
            found = find_model(display_name, **cloud,
                               fix="fix: pass parent_model=<the resource name of the one to add versions to>")
            parent_model = found.resource_name if found else None
        existing = None
        if parent_model is not None:
            existing = _version_of_run(parent_model, final_labels[RUN_ID_LABEL], alias_for_run, **cloud)
        if existing is not None:
            summary = _version_summary(existing, reused=True)
            out(f"Run {run_id} already registered {summary['resource_name']}@{summary['version_id']}")
        else:
            summary = _upload(model_args, parent_model, aliases, description, make_default, **cloud)
            out(f"Registered {summary['resource_name']}@{summary['version_id']} aliases={summary['aliases']}")
        summary["evaluation"] = None
        if model_evaluation is not None:
            from petqlora.cloud.vertex_evaluations import import_evaluation

            version = f"{summary['resource_name']}@{summary['version_id']}"
            client = _model_client(summary["resource_name"], **cloud)
            summary["evaluation"], reused = import_evaluation(client, version, model_evaluation)
            out(f"{'Found' if reused else 'Imported'} the evaluation of {version}: {summary['evaluation']}")
    return summary


def _upload(model_args: dict, parent_model: str | None, aliases: list[str], description: str, make_default: bool,
            *, project: str, region: str, credentials: Any) -> dict:
    """Model.upload of a new version, with the full serving container spec; its answer checked."""
    from google.cloud import aiplatform

    model = aiplatform.Model.upload(
        **model_args,
        serving_container_command=list(SERVING_COMMAND),
        serving_container_args=list(SERVING_ARGS),
        serving_container_ports=[SERVING_PORT],
        serving_container_predict_route=PREDICT_ROUTE,
        serving_container_health_route=HEALTH_ROUTE,
        parent_model=parent_model,
        is_default_version=make_default,
        version_aliases=list(aliases),  # the SDK appends to this list: hand it a copy
        version_description=description or None,
        description=description or None,
        project=project,
        location=region,
        credentials=credentials,
    )
    return _version_summary(_checked_version(model.gca_resource, project, region), reused=False)
