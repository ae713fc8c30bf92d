"""The local model registry: SQLite with the semantics of Vertex AI Model Registry, plus lineage.

Same rules as Vertex, so a switch of backend changes no behaviour:
  - versions of a model are numbered 1, 2, 3, ... in registration order;
  - an alias names at most one version of a model; giving it to a new version moves it;
  - the first version of a model gets the "default" alias, and `name` alone means the default version;
  - labels follow Vertex's label rules, aliases Vertex's alias rules.
Plus idempotency: registering the same (name, run_id) again returns the version that run registered, so a
retried pipeline step never creates a second version.

Concurrency: each call opens its own connection (safe across processes and forks); a registration runs in
one `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock before reading max(version), so two
processes can never compute the same next version. WAL lets readers run while a writer holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from petqlora.cloud.names import (
    ALIAS_RE as _ALIAS_RE,
    LABEL_KEY_RE as _LABEL_KEY_RE,
    LABEL_VALUE_RE as _LABEL_VALUE_RE,
)

__all__ = ["LocalRegistry", "ModelVersion", "UnknownModelError", "format_lineage", "lineage_from_vertex"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUSY_TIMEOUT_S = 60.0
# The lineage chain the pipeline records, in order: key in the lineage dict -> printed title.
LINEAGE_CHAIN = (
    ("dataset", "dataset"),
    ("token_boundary_report", "token-boundary report"),
    ("adapter", "adapter"),
    ("evaluation", "evaluation"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    artifact_uri TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    labels       TEXT    NOT NULL,  -- JSON object
    metrics      TEXT    NOT NULL,  -- JSON object
    lineage      TEXT    NOT NULL,  -- JSON object
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, run_id)           -- one version per run: the idempotency key
);
CREATE TABLE IF NOT EXISTS aliases (
    name    TEXT    NOT NULL,
    alias   TEXT    NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),      -- an alias names one version per model
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);
"""


class UnknownModelError(KeyError):
    """A reference that names no registered model, version or alias."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    artifact_uri: str
    run_id: str
    aliases: tuple[str, ...]
    labels: dict[str, str]
    metrics: dict[str, float]
    lineage: dict
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class LocalRegistry:
    """Model versions, aliases, labels, metrics and lineage in one SQLite file."""

    def __init__(self, db_path: str | Path):
        if not isinstance(db_path, (str, Path)) or not str(db_path):
            raise ValueError(f"db_path={db_path!r}: must be a file path; fix: pass e.g. runs/registry.sqlite")
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            _retry_locked(lambda: conn.executescript(_SCHEMA))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit, so transactions are exactly the BEGIN/COMMIT written below
        conn = sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        finally:
            conn.close()

    # ------------------------------------------------------------------ writes

    def register(
        self,
        name: str,
        artifact_uri: str,
        *,
        run_id: str,
        metrics: dict[str, float],
        labels: dict[str, str] | None = None,
        aliases: list[str] | None = None,
        lineage: dict | None = None,
        make_default: bool = True,
    ) -> ModelVersion:
        """Register a new version (max + 1), or return the one this run_id already registered."""
        labels = {} if labels is None else labels
        aliases = [] if aliases is None else aliases
        lineage = {} if lineage is None else lineage
        _validate_register(name, artifact_uri, run_id, metrics, labels, aliases, lineage, make_default)

        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock, before reading max(version)
            try:
                existing = conn.execute(
                    "SELECT version FROM model_versions WHERE name = ? AND run_id = ?", (name, run_id)
                ).fetchone()
                if existing is None:
                    version = conn.execute(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = ?", (name,)
                    ).fetchone()[0]
                    conn.execute(
                        "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            name, version, artifact_uri, run_id,
                            json.dumps(labels, sort_keys=True),
                            json.dumps({k: float(v) for k, v in metrics.items()}, sort_keys=True),
                            json.dumps(lineage, sort_keys=True),
                            datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                        ),
                    )
                    new_aliases = list(dict.fromkeys(aliases))
                    if make_default or version == 1:  # a model always has a default version, like Vertex
                        new_aliases.append("default")
                    conn.executemany(  # REPLACE moves an alias that another version held
                        "INSERT OR REPLACE INTO aliases (name, alias, version) VALUES (?, ?, ?)",
                        [(name, alias, version) for alias in dict.fromkeys(new_aliases)],
                    )
                else:
                    version = existing[0]
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # keep the original error, not a rollback failure
                    conn.execute("ROLLBACK")
                raise
            return self._load(conn, name, version)

    # ------------------------------------------------------------------ reads

    def get(self, ref: str) -> ModelVersion:
        """A version by "name" (the default version), "name@3" or "name@<alias>"."""
        if not isinstance(ref, str) or not ref:
            raise ValueError(f"ref={ref!r}: must be 'name', 'name@<version>' or 'name@<alias>'")
        name, _, selector = ref.partition("@")
        selector = selector or "default"
        with self._connect() as conn:
            if selector.isdigit():
                row = conn.execute(
                    "SELECT version FROM model_versions WHERE name = ? AND version = ?", (name, int(selector))
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, selector)
                ).fetchone()
            if row is None:
                raise UnknownModelError(self._unknown_message(conn, ref, name))
            return self._load(conn, name, row[0])

    def default_version(self, name: str) -> ModelVersion | None:
        """The version carrying the "default" alias, or None when the model has no versions."""
        try:
            return self.get(f"{name}@default")
        except UnknownModelError:
            return None

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first ([] for a model never registered)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version FROM model_versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
            return [self._load(conn, name, v) for (v,) in rows]

    def model_names(self) -> list[str]:
        """Names of all registered models."""
        with self._connect() as conn:
            return [n for (n,) in conn.execute("SELECT DISTINCT name FROM model_versions ORDER BY name")]

    def _load(self, conn: sqlite3.Connection, name: str, version: int) -> ModelVersion:
        row = conn.execute(
            "SELECT artifact_uri, run_id, labels, metrics, lineage, created_at FROM model_versions "
            "WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        aliases = tuple(
            a for (a,) in conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (name, version)
            )
        )
        artifact_uri, run_id, labels, metrics, lineage, created_at = row
        return ModelVersion(
            name=name, version=version, artifact_uri=artifact_uri, run_id=run_id, aliases=aliases,
            labels=json.loads(labels), metrics=json.loads(metrics), lineage=json.loads(lineage),
            created_at=created_at,
        )

    def _unknown_message(self, conn: sqlite3.Connection, ref: str, name: str) -> str:
        names = [n for (n,) in conn.execute("SELECT DISTINCT name FROM model_versions ORDER BY name")]
        if name not in names:
            known = ", ".join(names) if names else "none yet"
            return f"no model named {name!r} in {self.db_path} (registered models: {known})"
        versions = [str(v) for (v,) in conn.execute(
            "SELECT version FROM model_versions WHERE name = ? ORDER BY version", (name,)
        )]
        aliases = [a for (a,) in conn.execute(
            "SELECT alias FROM aliases WHERE name = ? ORDER BY alias", (name,)
        )]
        return (
            f"{ref!r}: model {name!r} has no such version or alias "
            f"(versions: {', '.join(versions)}; aliases: {', '.join(aliases)})"
        )


def _retry_locked(statement: Callable[[], Any], attempts: int = 50) -> Any:
    # Switching to WAL needs an exclusive lock, and SQLite does not always call the busy handler for it:
    # several processes opening a fresh file at once can see "database is locked" here.
    for attempt in range(attempts):
        try:
            return statement()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _validate_register(
    name: Any, artifact_uri: Any, run_id: Any, metrics: Any, labels: Any, aliases: Any, lineage: Any,
    make_default: Any,
) -> None:
    problems: list[str] = []

    def add(arg: str, value: Any, rule: str, fix: str) -> None:
        problems.append(f"{arg}={value!r}: {rule}; fix: {fix}")

    if not isinstance(name, str) or not _NAME_RE.match(name):
        add("name", name, "must be 1-128 chars of letters, digits, '.', '_' or '-' (no '@')",
            "pass e.g. 'petqlora-gemma4'")
    if not isinstance(artifact_uri, str) or not artifact_uri.strip():
        add("artifact_uri", artifact_uri, "must be a non-empty URI or path", "pass the adapter's directory")
    if not isinstance(run_id, str) or not run_id.strip():
        add("run_id", run_id, "must be a non-empty string", "pass the pipeline run's id")
    if not isinstance(metrics, dict):
        add("metrics", metrics, "must be a dict of str to number", "pass e.g. {'accuracy': 0.87}")
    else:
        for k, v in metrics.items():
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not isinstance(k, str) or not number or not math.isfinite(v):
                add(f"metrics[{k!r}]", v, "metric values must be finite numbers", "drop or fix the metric")
    if not isinstance(labels, dict):
        add("labels", labels, "must be a dict of str to str", "pass e.g. {'base': 'gemma-4'}")
    else:
        for k, v in labels.items():
            key_ok = isinstance(k, str) and _LABEL_KEY_RE.match(k)
            if not key_ok or not isinstance(v, str) or not _LABEL_VALUE_RE.match(v):
                add(f"labels[{k!r}]", v,
                    "Vertex label rules: keys 1-63 chars [a-z0-9_-] starting with a letter, "
                    "values <= 63 chars [a-z0-9_-]",
                    "sanitise with petqlora.cloud.vertex.to_vertex_labels()")
    if not isinstance(aliases, (list, tuple)):
        add("aliases", aliases, "must be a list of strings", "pass e.g. ['candidate']")
    else:
        for alias in aliases:
            if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.isdigit():
                add("aliases", alias, "aliases must match [a-z][a-zA-Z0-9-]{0,126}[a-z0-9]",
                    "use e.g. 'candidate' or 'champion'")
    if not isinstance(lineage, dict):
        add("lineage", lineage, "must be a dict", "pass the lineage record the pipeline built")
    else:
        try:
            json.dumps(lineage)
        except (TypeError, ValueError) as err:
            add("lineage", "<dict>", f"must be JSON-serialisable ({err})", "store paths and hashes as strings")
    if not isinstance(make_default, bool):
        add("make_default", make_default, "must be a bool", "pass True or False")
    if problems:
        raise ValueError(
            "invalid arguments for LocalRegistry.register:\n" + "\n".join(f"  - {p}" for p in problems)
        )


# ---------------------------------------------------------------------------------------------------
# Lineage.

_NOT_RECORDED = "(not recorded)"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in sorted(value.items())) or "(none)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _link_lines(title: str, link: Any) -> list[str]:
    if not isinstance(link, dict) or not link:
        return [f"{title}: {_NOT_RECORDED}"]
    content_hash = link.get("sha256") or link.get("hash")
    lines = [
        f"{title}",
        f"    uri:    {link.get('uri') or _NOT_RECORDED}",
        f"    sha256: {content_hash or _NOT_RECORDED}",
        f"    inputs: {_short(link['inputs']) if link.get('inputs') else _NOT_RECORDED}",
    ]
    extra = {k: v for k, v in link.items() if k not in ("uri", "sha256", "hash", "inputs")}
    if extra:
        lines.append(f"    other:  {_short(extra)}")
    return lines


def format_lineage(version: ModelVersion) -> str:
    """The chain dataset -> token-boundary report -> adapter -> evaluation -> registered version, as text."""
    lineage = version.lineage if isinstance(version.lineage, dict) else {}
    blocks = [_link_lines(title, lineage.get(key)) for key, title in LINEAGE_CHAIN]
    known = {key for key, _ in LINEAGE_CHAIN}
    blocks += [_link_lines(key, lineage[key]) for key in sorted(lineage) if key not in known]
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items())) or "(none)"
    blocks.append([
        f"registered version {version.ref}",
        f"    uri:     {version.artifact_uri}",
        f"    run:     {version.run_id}",
        f"    aliases: {', '.join(version.aliases) or '(none)'}",
        f"    metrics: {metrics}",
        f"    labels:  {_short(version.labels) if version.labels else '(none)'}",
        f"    created: {version.created_at}",
    ])
    out = [f"Lineage of {version.ref}"]
    for i, block in enumerate(blocks):
        if i:
            out.append("  |")
            out.append("  v")
        out.extend(block)
    return "\n".join(out)


def lineage_from_vertex(
    artifact: str,
    *,
    project: str,
    region: str,
    max_hops: int = 20,
    dry_run: bool = False,
    credentials: Any = None,
    api_endpoint: str | None = None,
    out: Callable[[str], Any] = print,
) -> dict:
    """The Vertex ML Metadata lineage around one artifact (what Vertex Pipelines records for every run).

    `artifact` is an ML Metadata artifact resource name
    (projects/<p>/locations/<r>/metadataStores/default/artifacts/<id>) or the artifact's URI (e.g. the
    registered adapter's gs:// directory), which is looked up first. Returns the subgraph as
    {"artifacts": [{name, display_name, schema_title, uri, metadata}], "executions": [...], "events": [...]}.
    Tested against the local fake of the Vertex API (`api_endpoint`), not against real Vertex.
    """
    problems = []
    if not isinstance(artifact, str) or not artifact:
        problems.append(
            f"artifact={artifact!r}: must be an artifact resource name or URI; fix: pass the gs:// URI"
        )
    if not isinstance(max_hops, int) or isinstance(max_hops, bool) or not 1 <= max_hops <= 100:
        problems.append(f"max_hops={max_hops!r}: must be an integer in 1-100; fix: pass e.g. 20")
    if not isinstance(project, str) or not project or not isinstance(region, str) or not region:
        problems.append(f"project={project!r}, region={region!r}: both are required; fix: pass them")
    if problems:
        raise ValueError(
            "invalid arguments for lineage_from_vertex:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    store = f"projects/{project}/locations/{region}/metadataStores/default"
    is_name = artifact.startswith("projects/") and "/metadataStores/" in artifact
    requests = []
    if not is_name:
        requests.append({
            "method": "ListArtifacts", "parent": store, "filter": f'uri="{artifact}"',
            "order_by": "create_time desc",
        })
    requests.append({
        "method": "QueryArtifactLineageSubgraph",
        "artifact": artifact if is_name else "<the artifact found by ListArtifacts>",
        "max_hops": max_hops,
    })
    if dry_run:
        payload = {"requests": requests}
        out(json.dumps(payload, indent=2))
        return payload

    from google.api_core.client_options import ClientOptions
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    from google.auth.exceptions import DefaultCredentialsError

    from petqlora.cloud.vertex import _AUTH_HELP, VertexAuthError

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
        graph = client.query_artifact_lineage_subgraph(request={"artifact": artifact, "max_hops": max_hops})
    except DefaultCredentialsError as err:
        raise VertexAuthError(_AUTH_HELP) from err

    def as_dict(message: Any) -> dict:
        return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)

    return {
        "artifacts": [
            {"name": a.name, "display_name": a.display_name, "schema_title": a.schema_title, "uri": a.uri,
             "metadata": as_dict(a).get("metadata", {})}
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


def format_vertex_lineage(graph: dict, ref: str, artifact_uri: str) -> str:
    """format_lineage's chain, read from the ML Metadata subgraph around the adapter (lineage_from_vertex):
    the register_model execution that read the adapter names the dataset, token-boundary report and
    evaluation it registered with; each link's inputs are those of the execution that wrote it."""
    arts = {a["name"]: a for a in graph["artifacts"]}

    def events(kind: str, *, artifact: str | None = None, execution: str | None = None) -> list[dict]:
        return [e for e in graph["events"] if e["type"] == kind and e["artifact"] in arts
                and artifact in (None, e["artifact"]) and execution in (None, e["execution"])]

    adapter = next((a for a in arts.values() if a["uri"] == artifact_uri), None)
    chain = {"adapter": adapter} if adapter else {}
    for read in events("INPUT", artifact=adapter["name"]) if adapter else []:
        written = [arts[e["artifact"]] for e in events("OUTPUT", execution=read["execution"])]
        registered = next((a for a in written if a["display_name"] == "registered"), None)
        if registered:  # this run's register_model step
            chain.update({arts[e["artifact"]]["display_name"]: arts[e["artifact"]]
                          for e in events("INPUT", execution=read["execution"])}, registered=registered)

    def link(a: dict | None) -> dict | None:
        if a is None:
            return None
        inputs = {arts[e["artifact"]]["display_name"]: arts[e["artifact"]]["uri"]
                  for w in events("OUTPUT", artifact=a["name"]) for e in events("INPUT", execution=w["execution"])}
        meta = a.get("metadata") or {}
        return {"uri": a["uri"], "sha256": meta.get("sha256") or meta.get("dataset_hash"), "inputs": inputs}

    titles = [("dataset", "dataset"), ("records", "token-boundary report"), ("adapter", "adapter"),
              ("evaluation", "evaluation"), ("registered", f"registered version {ref}")]
    out = [f"Lineage of {ref} (Vertex ML Metadata)"]
    for i, (key, title) in enumerate(titles):
        out += (["  |", "  v"] if i else []) + _link_lines(title, link(chain.get(key)))
    return "\n".join(out)
