"""The local model registry: SQLite with the semantics of Vertex AI Model Registry. Each version keeps the
lineage record the pipeline built; petqlora.registry.lineage prints it.

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
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from petqlora.cloud.names import (
    ALIAS_RE as _ALIAS_RE,
    LABEL_KEY_RE as _LABEL_KEY_RE,
    LABEL_VALUE_RE as _LABEL_VALUE_RE,
)
from petqlora.problems import Problems

__all__ = ["LocalRegistry", "ModelVersion", "UnknownModelError", "registry_path_problem"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUSY_TIMEOUT_S = 60.0

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

    def __init__(self, db_path: str | Path, *, read_only: bool = False):
        """``read_only``: an existing registry, for reads only (lineage); it works in a folder this process
        cannot write. A file that is not a registry, or one that cannot be written, raises ValueError."""
        if not isinstance(db_path, (str, Path)) or not str(db_path):
            raise ValueError(f"db_path={db_path!r}: must be a file path; fix: pass e.g. runs/registry.sqlite")
        self.db_path = Path(db_path)
        self._uri: str | None = None
        if not read_only:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.db_path.is_file():
            raise ValueError(f"{self.db_path}: no such registry file; fix: {_REGISTRY_FIX}")
        try:
            if read_only:
                self._uri = _read_only_uri(self.db_path)
            with self._connect() as conn:
                if (problem := _tables_problem(conn, new_ok=not read_only)) is not None:
                    raise ValueError(f"{self.db_path}: {problem}; fix: {_REGISTRY_FIX}")
                if not read_only:
                    _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                    _retry_locked(lambda: conn.executescript(_SCHEMA))
        except sqlite3.DatabaseError as err:
            message = _open_error(self.db_path, err)
            if message is None:
                raise
            raise ValueError(message) from err

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit, so transactions are exactly the BEGIN/COMMIT written below
        conn = (sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None) if self._uri is None
                else sqlite3.connect(self._uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None))
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


_REGISTRY_FIX = "pass the registry.sqlite a run wrote (run-local writes OUTPUT_DIR/registry.sqlite)"


def _read_only_uri(path: Path) -> str:
    """The URI that reads ``path`` without writing. Reading a WAL database takes a -shm file beside it; in a
    folder this process cannot write, SQLite cannot make one, so the file is read as immutable (as it is now)."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        return uri + "&immutable=1"
    return uri


def _tables_problem(conn: sqlite3.Connection, *, new_ok: bool) -> str | None:
    """Why a SQLite file is not a registry, or None; ``new_ok``: an empty one is (it gets the tables). Another
    program's database must not get our tables."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "model_versions" in tables or (new_ok and not tables):
        return None
    what = "an empty database" if not tables else f"a database of other tables ({', '.join(sorted(tables))})"
    return f"is not a local model registry ({what})"


def _open_error(path: Path, err: sqlite3.DatabaseError) -> str | None:
    """The one-line message for a file SQLite cannot use as a registry; None for other errors (a lock)."""
    if "not a database" in str(err):
        return f"{path}: is not a local model registry (SQLite: {err}); fix: {_REGISTRY_FIX}"
    if "readonly" in str(err) or "unable to open" in str(err):
        return (f"{path}: the registry cannot be written (SQLite: {err}); it writes the file and its -wal and -shm "
                f"files in {path.parent}; fix: make that folder writable, or pass a registry in a writable folder")
    return None


def registry_path_problem(path: str | Path) -> tuple[str, str] | None:
    """Why a run could not register into the local registry at ``path``, as ``(rule, fix)``, or None: checked
    before a run starts, since registering is its last step. Writes nothing but a temporary file."""
    path = Path(path)
    if not path.parent.is_dir():
        return (f"its folder {path.parent} does not exist",
                f"create it (mkdir -p {path.parent}), or pass a registry path in an existing folder")
    if path.exists() and not path.is_file():
        return "is not a file", "pass the path of a registry file (it is created when missing)"
    writable = "make it writable, or pass a registry path in a writable folder"
    try:
        with tempfile.TemporaryFile(dir=path.parent):  # SQLite writes -wal and -shm files in the folder
            pass
    except OSError as err:
        return f"its folder {path.parent} cannot be written ({err.strerror})", writable
    if not path.exists():
        return None
    try:
        with open(path, "r+b"):  # opened for writing, not changed
            pass
    except OSError as err:
        return f"cannot be written ({err.strerror})", writable
    try:
        immutable = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"  # reads, locks nothing
        with contextlib.closing(sqlite3.connect(immutable, uri=True)) as conn:
            if (problem := _tables_problem(conn, new_ok=True)) is not None:
                return problem, _REGISTRY_FIX
    except sqlite3.DatabaseError as err:
        return f"is not a local model registry (SQLite: {err})", _REGISTRY_FIX
    return None


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


def check_model_name(p: Problems, field: str, name: Any) -> bool:
    """A model name this registry takes (the run checks apply it to `model_name` before training)."""
    return p.check(isinstance(name, str) and bool(_NAME_RE.match(name)), field, name,
                   "must be 1-128 chars of letters, digits, '.', '_' or '-' (no '@')", "pass e.g. 'petqlora-gemma4'")


def _validate_register(
    name: Any, artifact_uri: Any, run_id: Any, metrics: Any, labels: Any, aliases: Any, lineage: Any,
    make_default: Any,
) -> None:
    p = Problems("arguments for LocalRegistry.register")
    check_model_name(p, "name", name)
    if not isinstance(artifact_uri, str) or not artifact_uri.strip():
        p.add("artifact_uri", artifact_uri, "must be a non-empty URI or path", "pass the adapter's directory")
    if not isinstance(run_id, str) or not run_id.strip():
        p.add("run_id", run_id, "must be a non-empty string", "pass the pipeline run's id")
    if not isinstance(metrics, dict):
        p.add("metrics", metrics, "must be a dict of str to number", "pass e.g. {'accuracy': 0.87}")
    else:
        for k, v in metrics.items():
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not isinstance(k, str) or not number or not math.isfinite(v):
                p.add(f"metrics[{k!r}]", v, "metric values must be finite numbers", "drop or fix the metric")
    if not isinstance(labels, dict):
        p.add("labels", labels, "must be a dict of str to str", "pass e.g. {'base': 'gemma-4'}")
    else:
        for k, v in labels.items():
            key_ok = isinstance(k, str) and _LABEL_KEY_RE.match(k)
            if not key_ok or not isinstance(v, str) or not _LABEL_VALUE_RE.match(v):
                p.add(f"labels[{k!r}]", v,
                      "Vertex label rules: keys 1-63 chars [a-z0-9_-] starting with a letter, "
                      "values <= 63 chars [a-z0-9_-]",
                      "sanitise with petqlora.cloud.vertex_common.to_vertex_labels()")
    if not isinstance(aliases, (list, tuple)):
        p.add("aliases", aliases, "must be a list of strings", "pass e.g. ['candidate']")
    else:
        for alias in aliases:
            if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.isdigit():
                p.add("aliases", alias, "aliases must match [a-z][a-zA-Z0-9-]{0,126}[a-z0-9]",
                      "use e.g. 'candidate' or 'champion'")
    if not isinstance(lineage, dict):
        p.add("lineage", lineage, "must be a dict", "pass the lineage record the pipeline built")
    else:
        try:
            json.dumps(lineage)
        except (TypeError, ValueError) as err:
            p.add("lineage", "<dict>", f"must be JSON-serialisable ({err})", "store paths and hashes as strings")
    if not isinstance(make_default, bool):
        p.add("make_default", make_default, "must be a bool", "pass True or False")
    p.raise_if_any()
