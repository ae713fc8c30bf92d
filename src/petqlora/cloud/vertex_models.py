"""Vertex AI Model Registry: register an adapter as a new version of one model (idempotent per pipeline run),
and read a version's artifact URI. `find_model` is the one lookup of a model by display name that all of
them use."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from petqlora.cloud.names import ALIAS_RE as _ALIAS_RE
from petqlora.cloud.vertex_common import (
    Out,
    check_project_region,
    print_json,
    run_alias,
    to_json_dict,
    to_vertex_labels,
    vertex_session,
)
from petqlora.problems import Problems

if TYPE_CHECKING:  # the SDK is only needed at call time
    from google.cloud import aiplatform

__all__ = [
    "RUN_ID_LABEL",
    "default_version_artifact_uri",
    "find_model",
    "model_version_uri",
    "register_vertex_model",
]

# The label that ties a model version to the pipeline run that produced it (idempotent registration).
RUN_ID_LABEL = "run_id"

_PARENT_MODEL_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/models/)?[A-Za-z0-9_-]+$")
_VERSION_RE = re.compile(r"^([0-9]+|[a-z][a-zA-Z0-9-]{0,126}[a-z0-9])$")


# ---------------------------------------------------------------------------------------------------
# Finding a model.


def _list_models_request(project: str, region: str, display_name: str) -> dict:
    """The request find_model sends, as a dry run shows it."""
    return {"method": "ListModels", "parent": f"projects/{project}/locations/{region}",
            "filter": f'display_name="{display_name}"'}


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


def model_version_uri(
    display_name: str, version: str = "default", *, project: str, region: str, dry_run: bool = False,
    credentials: Any = None, api_endpoint: str | None = None, out: Out = print,
) -> str | None:
    """The artifact URI of NAME@VERSION (a version number or an alias) in Model Registry, or None when no
    model has this display name."""
    p = Problems("arguments for model_version_uri")
    check_project_region(p, project, region)
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        p.add("version", version, "must be a version number or an alias", "pass e.g. 3 or default")
    p.raise_if_any()
    if dry_run:
        print_json(out, {"requests": [
            _list_models_request(project, region, display_name),
            {"method": "GetModel", "name": f"<the model found by ListModels>@{version}"}]})
        return f"<artifact_uri of {display_name}@{version}>"
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
    if not isinstance(serving_container_image_uri, str) or not serving_container_image_uri.strip():
        p.add("serving_container_image_uri", serving_container_image_uri,
              "Vertex needs a serving image for a model with artifacts",
              "pass the image URI (with a version tag) that serves the adapter")
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


def _upload_request(
    *, project: str, region: str, display_name: str, artifact_uri: str, serving_container_image_uri: str,
    parent_model: str | None, aliases: list[str], labels: dict[str, str], description: str,
) -> dict:
    """The UploadModel request as JSON, plus the parent lookup when the parent is found at run time."""
    from google.cloud.aiplatform.compat.types import model as gca_model
    from google.cloud.aiplatform.compat.types import model_service

    parent = f"projects/{project}/locations/{region}"
    request = model_service.UploadModelRequest(
        parent=parent,
        parent_model=(
            parent_model if parent_model is None or parent_model.startswith("projects/")
            else f"{parent}/models/{parent_model}"
        ),
        model=gca_model.Model(
            display_name=display_name,
            description=description,
            version_description=description,
            version_aliases=aliases,
            labels=labels,
            artifact_uri=artifact_uri,
            container_spec=gca_model.ModelContainerSpec(image_uri=serving_container_image_uri),
        ),
    )
    payload = {"method": "UploadModel", **to_json_dict(request)}
    if parent_model is None:
        # the parent is looked up at run time; show the lookup that will fill parent_model
        payload["parent_model_lookup"] = _list_models_request(project, region, display_name)
    return payload


def _version_of_run(
    parent_model: str, run_label: str, run_alias_: str, *, project: str, region: str, credentials: Any
) -> Any | None:
    """The version of `parent_model` that this run already registered (by label or alias), if any."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import model_service

    registry = aiplatform.models.ModelRegistry(parent_model, project=project, location=region, credentials=credentials)
    request = model_service.ListModelVersionsRequest(name=registry.model_resource_name)
    for version in registry.client.list_model_versions(request=request):
        if version.labels.get(RUN_ID_LABEL) == run_label or run_alias_ in version.version_aliases:
            return version
    return None


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
    dry_run: bool = False,
    credentials: Any = None,
    api_endpoint: str | None = None,
    out: Out = print,
    make_default: bool = True,
) -> dict:
    """Upload the adapter as a new version of one Vertex AI Model (created on the first run).

    The parent is `parent_model` (resource name or ID) or else the one model with this display name.
    Labels are sanitised to Vertex's rules (metric 0.8734 -> "0_8734"); the run is recorded both as
    the label "run_id" and the alias "run-<run id>", so a retried run finds its version instead of
    uploading a second one. Returns {"resource_name", "version_id", "aliases", "labels", "reused"}.
    """
    final_labels = _checked_labels(
        project=project, region=region, display_name=display_name, artifact_uri=artifact_uri,
        serving_container_image_uri=serving_container_image_uri, parent_model=parent_model,
        version_aliases=version_aliases, labels=labels, description=description, run_id=run_id,
        make_default=make_default,
    )
    alias_for_run = run_alias(run_id)
    aliases = list(dict.fromkeys([*version_aliases, alias_for_run]))
    if make_default and "default" not in aliases:
        aliases.append("default")  # what Model.upload(is_default_version=True) adds
    model_args = dict(display_name=display_name, artifact_uri=artifact_uri, labels=final_labels,
                      serving_container_image_uri=serving_container_image_uri)

    if dry_run:
        payload = _upload_request(project=project, region=region, parent_model=parent_model, aliases=aliases,
                                  description=description, **model_args)
        print_json(out, payload)
        return payload

    from google.cloud import aiplatform

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
            return summary
        model = aiplatform.Model.upload(
            **model_args,
            parent_model=parent_model,
            is_default_version=make_default,
            version_aliases=list(aliases),  # the SDK appends to this list: hand it a copy
            version_description=description or None,
            description=description or None,
            project=project,
            location=region,
            credentials=credentials,
        )
        summary = _version_summary(model._gca_resource, reused=False)
    out(f"Registered {summary['resource_name']}@{summary['version_id']} aliases={summary['aliases']}")
    return summary
