"""The Vertex ML Metadata part of the Vertex AI REST fake (tests/fakes/vertex_api.py): metadata stores,
contexts (experiments, pipeline runs), artifacts and lineage. It is a fake, not Vertex.

What it models (only what petqlora and the SDK calls it makes need):
  Stores     GetMetadataStore, CreateMetadataStore (a long-running operation, done at once). No store
             exists until one is created, as in a fresh project: the SDK creates "default" on first use.
  Contexts   GetContext, CreateContext (contextId from the query; 409 ALREADY_EXISTS on a second create),
             AddContextChildren (children must exist; each child's parentContexts gains the parent, once).
             Context IDs follow ML Metadata's rule [a-z0-9][a-z0-9-]{0,127}.
  Artifacts  ListArtifacts (filter uri= / display_name=, order_by "create_time desc"),
             QueryArtifactLineageSubgraph (breadth-first over the events, max_hops); tests seed
             ``fake.artifacts``, ``fake.executions`` and ``fake.events`` (REST JSON) directly.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from fakes.vertex_api_common import LOCATION, TYPE_PREFIX, ApiError, match_filter, now

_CONTEXT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_STORE = rf"{LOCATION}/metadataStores/(?P<store>[^/:]+)"


class MetadataFake:
    """Mixed into FakeVertexAPI: the ML Metadata routes and their state."""

    def _init_metadata(self) -> None:
        self.metadata_stores: dict[str, dict] = {}
        self.contexts: dict[str, dict] = {}  # full resource name -> Context JSON
        self.artifacts: list[dict] = []  # ML Metadata artifacts, with "name", "uri", "createTime", ...
        self.executions: list[dict] = []
        self.events: list[dict] = []  # {"artifact": name, "execution": name, "type": "INPUT" | "OUTPUT"}

    def metadata_routes(self) -> list[tuple[str, str, Callable[..., dict]]]:
        return [
            ("GET", rf"^{_STORE}$", self.get_metadata_store),
            ("POST", rf"^{LOCATION}/metadataStores$", self.create_metadata_store),
            ("GET", rf"^{_STORE}/contexts/(?P<cid>[^/:]+)$", self.get_context),
            ("POST", rf"^{_STORE}/contexts$", self.create_context),
            ("POST", rf"^{_STORE}/contexts/(?P<cid>[^/:]+):addContextChildren$", self.add_context_children),
            ("GET", rf"^{_STORE}/artifacts$", self.list_artifacts),
            ("GET", rf"^(?P<artifact>{_STORE}/artifacts/[^/:]+):queryArtifactLineageSubgraph$",
             self.query_artifact_lineage_subgraph),
        ]

    # ------------------------------------------------------------------ stores

    def _store_name(self, project: str, location: str, store: str) -> str:
        return f"projects/{project}/locations/{location}/metadataStores/{store}"

    def _require_store(self, project: str, location: str, store: str) -> str:
        name = self._store_name(project, location, store)
        if name not in self.metadata_stores:
            raise ApiError(404, "NOT_FOUND", f"metadata store {name} not found")
        return name

    def get_metadata_store(self, *, project: str, location: str, store: str, **_: Any) -> dict:
        return self.metadata_stores[self._require_store(project, location, store)]

    def create_metadata_store(self, *, project: str, location: str, query: dict, body: dict, **_: Any) -> dict:
        store = query.get("metadataStoreId") or "default"
        name = self._store_name(project, location, store)
        if name in self.metadata_stores:
            raise ApiError(409, "ALREADY_EXISTS", f"metadata store {name} already exists")
        self.metadata_stores[name] = {**body, "name": name, "createTime": now(), "updateTime": now()}
        return self._operation(project, location, "CreateMetadataStoreOperationMetadata",
                               {"@type": TYPE_PREFIX + "MetadataStore", **self.metadata_stores[name]}, done=True)

    # ------------------------------------------------------------------ contexts

    def add_context(self, name: str, schema_title: str, display_name: str = "", metadata: dict | None = None) -> dict:
        """Record a context the way Vertex does itself (e.g. a pipeline run's system.PipelineRun)."""
        self.contexts[name] = {
            "name": name, "displayName": display_name or name.rsplit("/", 1)[1], "schemaTitle": schema_title,
            "schemaVersion": "0.0.1", "metadata": metadata or {}, "createTime": now(), "updateTime": now(),
        }
        return self.contexts[name]

    def _context(self, project: str, location: str, store: str, cid: str) -> dict:
        name = f"{self._require_store(project, location, store)}/contexts/{cid}"
        if name not in self.contexts:
            raise ApiError(404, "NOT_FOUND", f"context {name} not found")
        return self.contexts[name]

    def get_context(self, *, project: str, location: str, store: str, cid: str, **_: Any) -> dict:
        return self._context(project, location, store, cid)

    def create_context(self, *, project: str, location: str, store: str, query: dict, body: dict,
                       **_: Any) -> dict:
        cid = query.get("contextId", "")
        if not _CONTEXT_ID_RE.match(cid):
            raise ApiError(400, "INVALID_ARGUMENT", f"context id {cid!r} must match [a-z0-9][a-z0-9-]{{0,127}}")
        if not body.get("schemaTitle"):
            raise ApiError(400, "INVALID_ARGUMENT", "context.schema_title is required")
        name = f"{self._require_store(project, location, store)}/contexts/{cid}"
        if name in self.contexts:
            raise ApiError(409, "ALREADY_EXISTS", f"context {name} already exists")
        context = self.add_context(name, body["schemaTitle"], body.get("displayName", ""), body.get("metadata"))
        context.update({k: v for k, v in body.items() if k in ("description", "schemaVersion")})
        return context

    def add_context_children(self, *, project: str, location: str, store: str, cid: str, body: dict,
                             **_: Any) -> dict:
        parent = self._context(project, location, store, cid)
        children = body.get("childContexts") or []
        missing = [c for c in children if c not in self.contexts]
        if missing:
            raise ApiError(404, "NOT_FOUND", f"child contexts not found: {missing}")
        if parent["name"] in children:
            raise ApiError(400, "INVALID_ARGUMENT", "a context cannot be its own child")
        for child in children:  # Context.parent_contexts is how a child shows its parents
            parents = self.contexts[child].setdefault("parentContexts", [])
            if parent["name"] not in parents:
                parents.append(parent["name"])
        return {}

    # ------------------------------------------------------------------ artifacts and lineage

    def list_artifacts(self, *, query: dict, **_: Any) -> dict:
        found = [a for a in self.artifacts if match_filter(a, query.get("filter", ""))]
        if query.get("orderBy", "").replace("_", "").lower() == "createtime desc":
            found.sort(key=lambda a: a.get("createTime", ""), reverse=True)
        return {"artifacts": found}

    def query_artifact_lineage_subgraph(self, *, artifact: str, query: dict, **_: Any) -> dict:
        if not any(a["name"] == artifact for a in self.artifacts):
            raise ApiError(404, "NOT_FOUND", f"artifact {artifact} not found")
        max_hops = int(query.get("maxHops", 0)) or 100
        seen_artifacts, seen_executions, frontier = {artifact}, set(), {artifact}
        for _hop in range(max_hops):  # one hop: artifact -> execution -> artifact
            executions = {e["execution"] for e in self.events if e["artifact"] in frontier} - seen_executions
            seen_executions |= executions
            frontier = {e["artifact"] for e in self.events if e["execution"] in executions} - seen_artifacts
            seen_artifacts |= frontier
            if not frontier:
                break
        return {
            "artifacts": [a for a in self.artifacts if a["name"] in seen_artifacts],
            "executions": [x for x in self.executions if x["name"] in seen_executions],
            "events": [e for e in self.events if e["execution"] in seen_executions],
        }
