"""Vertex ML Metadata lineage: read the subgraph of artifacts, executions and events that Vertex Pipelines
records around one artifact (e.g. a registered adapter). petqlora.registry.lineage formats it as text.

``lineage_requests`` is the dry run of the whole lookup, from a model version (NAME@VERSION), an artifact
URI or an artifact resource name: each REST call the clients make, or, where a call needs a name that
only the call before it returns, a plain statement that a dry run cannot build it."""

from __future__ import annotations

from typing import Any

from petqlora.cloud.vertex_common import (
    AUTH_HELP,
    Out,
    VertexAuthError,
    check_project_region,
    needs_lookup,
    print_json,
    rest_request,
    to_json_dict,
)
from petqlora.problems import Problems
from petqlora.registry.local import UnknownModelError

__all__ = ["lineage_from_vertex", "lineage_of", "lineage_requests"]


def _check_args(artifact: Any, max_hops: Any, project: Any, region: Any) -> None:
    p = Problems("arguments for lineage_from_vertex")
    if not isinstance(artifact, str) or not artifact:
        p.add("artifact", artifact, "must be an artifact resource name or URI", "pass the gs:// URI")
    if not isinstance(max_hops, int) or isinstance(max_hops, bool) or not 1 <= max_hops <= 100:
        p.add("max_hops", max_hops, "must be an integer in 1-100", "pass e.g. 20")
    if not isinstance(project, str) or not project or not isinstance(region, str) or not region:
        p.items.append(f"project={project!r}, region={region!r}: both are required; fix: pass them")
    p.raise_if_any()


def _list_artifacts_request(store: str, uri: str) -> Any:
    from google.cloud.aiplatform.compat.types import metadata_service

    # a re-run may record the same uri again: the newest first
    return metadata_service.ListArtifactsRequest(parent=store, filter=f'uri="{uri}"', order_by="create_time desc")


def lineage_requests(ref: str, *, project: str, region: str, max_hops: int = 20) -> dict:
    """The REST calls that read the lineage of `ref`: a model version NAME[@VERSION] (ListModels, GetModel),
    an artifact URI (ListArtifacts) or an ML Metadata artifact name, then QueryArtifactLineageSubgraph.
    A call whose name comes from the one before it is not guessed: it says which answer it needs."""
    from google.cloud.aiplatform.compat.types import metadata_service

    from petqlora.cloud.vertex_models import check_model_version, list_models_request

    p = Problems("arguments for lineage_requests")
    check_project_region(p, project, region)
    name, _, version = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    by_model = isinstance(ref, str) and not ref.startswith(("gs://", "projects/"))
    if by_model:
        check_model_version(p, version or "default")
    p.raise_if_any()
    _check_args(ref, max_hops, project, region)
    store = f"projects/{project}/locations/{region}/metadataStores/default"
    query = needs_lookup("QueryArtifactLineageSubgraph", "its artifact is the one ListArtifacts finds")
    if by_model:
        return {"requests": [
            list_models_request(project, region, name),
            needs_lookup("GetModel", f"its name is the model ListModels finds, @{version or 'default'}"),
            needs_lookup("ListArtifacts", "its filter is the artifact URI GetModel returns (less its /adapter)"),
            query]}
    if ref.startswith("projects/") and "/metadataStores/" in ref:
        request = metadata_service.QueryArtifactLineageSubgraphRequest(artifact=ref, max_hops=max_hops)
        return {"requests": [rest_request("metadata_service", "QueryArtifactLineageSubgraph", request)]}
    return {"requests": [
        rest_request("metadata_service", "ListArtifacts", _list_artifacts_request(store, ref)), query]}


def _query_subgraph(
    artifact: str, *, store: str, is_name: bool, max_hops: int, region: str, credentials: Any,
    api_endpoint: str | None,
) -> Any:
    """The LineageSubgraph around `artifact` (a resource name, or a URI looked up first)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import aiplatform_v1

    try:
        client = aiplatform_v1.MetadataServiceClient(
            credentials=credentials,
            client_options=ClientOptions(api_endpoint=api_endpoint or f"{region}-aiplatform.googleapis.com"),
            transport="rest" if api_endpoint else None,  # a custom endpoint is a REST one (e.g. a local fake)
        )
        if not is_name:
            found = client.list_artifacts(request=_list_artifacts_request(store, artifact))
            latest = next(iter(found), None)  # the newest record of the uri
            if latest is None:
                raise UnknownModelError(f"no ML Metadata artifact has uri {artifact!r} in {store}")
            artifact = latest.name
        return client.query_artifact_lineage_subgraph(request={"artifact": artifact, "max_hops": max_hops})
    except DefaultCredentialsError as err:
        raise VertexAuthError(AUTH_HELP) from err


def _graph_dict(graph: Any) -> dict:
    return {
        "artifacts": [
            {"name": a.name, "display_name": a.display_name, "schema_title": a.schema_title, "uri": a.uri,
             "metadata": to_json_dict(a).get("metadata", {})}
            for a in graph.artifacts
        ],
        "executions": [
            {"name": x.name, "display_name": x.display_name, "schema_title": x.schema_title}
            for x in graph.executions
        ],
        "events": [
            {"artifact": e.artifact, "execution": e.execution, "type": e.type_.name} for e in graph.events
        ],
    }


def lineage_from_vertex(
    artifact: str,
    *,
    project: str,
    region: str,
    max_hops: int = 20,
    dry_run: bool = False,
    credentials: Any = None,
    api_endpoint: str | None = None,
    out: Out = print,
) -> dict:
    """The Vertex ML Metadata lineage around one artifact (what Vertex Pipelines records for every run).

    `artifact` is an ML Metadata artifact resource name
    (projects/<p>/locations/<r>/metadataStores/default/artifacts/<id>) or the artifact's URI (e.g. the
    registered adapter's gs:// directory), which is looked up first. Returns the subgraph as
    {"artifacts": [{name, display_name, schema_title, uri, metadata}], "executions": [...], "events": [...]}.
    Tested against the local fake of the Vertex API (`api_endpoint`), not against real Vertex.
    """
    _check_args(artifact, max_hops, project, region)
    store = f"projects/{project}/locations/{region}/metadataStores/default"
    is_name = artifact.startswith("projects/") and "/metadataStores/" in artifact
    if dry_run:
        payload = lineage_requests(artifact, project=project, region=region, max_hops=max_hops)
        print_json(out, payload)
        return payload
    graph = _query_subgraph(artifact, store=store, is_name=is_name, max_hops=max_hops, region=region,
                            credentials=credentials, api_endpoint=api_endpoint)
    return _graph_dict(graph)


def lineage_of(ref: str, *, project: str, region: str, max_hops: int = 20, credentials: Any = None,
               api_endpoint: str | None = None) -> tuple[dict, str]:
    """(the lineage subgraph, the artifact it is around) for `ref`: a model version NAME[@VERSION] (its
    registered adapter folder, less the "/adapter" the registration appends: the train step's Model
    artifact), an artifact URI or an ML Metadata artifact name. Raises UnknownModelError for an unknown
    model name."""
    from petqlora.cloud.vertex_models import model_version_uri

    uri = ref
    if not ref.startswith(("gs://", "projects/")):
        name, _, version = ref.partition("@")
        uri = model_version_uri(name, version or "default", project=project, region=region,
                                credentials=credentials, api_endpoint=api_endpoint)
        if uri is None:
            raise UnknownModelError(f"no Vertex model is named {name!r} in {project}/{region}")
        uri = uri.rstrip("/").removesuffix("/adapter")
    graph = lineage_from_vertex(uri, project=project, region=region, max_hops=max_hops, credentials=credentials,
                                api_endpoint=api_endpoint)
    return graph, uri
