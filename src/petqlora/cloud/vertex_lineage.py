"""Vertex ML Metadata lineage: read the subgraph of artifacts, executions and events that Vertex Pipelines
records around one artifact (e.g. a registered adapter). petqlora.registry.lineage formats it as text."""

from __future__ import annotations

import json
from typing import Any

from petqlora.cloud.vertex_common import AUTH_HELP, Out, VertexAuthError, to_json_dict
from petqlora.problems import Problems
from petqlora.registry.local import UnknownModelError

__all__ = ["lineage_from_vertex"]


def _check_args(artifact: Any, max_hops: Any, project: Any, region: Any) -> None:
    p = Problems("arguments for lineage_from_vertex")
    if not isinstance(artifact, str) or not artifact:
        p.add("artifact", artifact, "must be an artifact resource name or URI", "pass the gs:// URI")
    if not isinstance(max_hops, int) or isinstance(max_hops, bool) or not 1 <= max_hops <= 100:
        p.add("max_hops", max_hops, "must be an integer in 1-100", "pass e.g. 20")
    if not isinstance(project, str) or not project or not isinstance(region, str) or not region:
        p.items.append(f"project={project!r}, region={region!r}: both are required; fix: pass them")
    p.raise_if_any()


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
            found = client.list_artifacts(
                request={"parent": store, "filter": f'uri="{artifact}"', "order_by": "create_time desc"}
            )
            latest = next(iter(found), None)  # a re-run may record the same uri again: take the newest
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
        requests = [] if is_name else [{
            "method": "ListArtifacts", "parent": store, "filter": f'uri="{artifact}"',
            "order_by": "create_time desc",
        }]
        requests.append({
            "method": "QueryArtifactLineageSubgraph",
            "artifact": artifact if is_name else "<the artifact found by ListArtifacts>",
            "max_hops": max_hops,
        })
        payload = {"requests": requests}
        out(json.dumps(payload, indent=2))
        return payload
    graph = _query_subgraph(artifact, store=store, is_name=is_name, max_hops=max_hops, region=region,
                            credentials=credentials, api_endpoint=api_endpoint)
    return _graph_dict(graph)
