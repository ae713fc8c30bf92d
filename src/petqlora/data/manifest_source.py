"""The manifest source of prepare_data: a CSV or JSON-lines file of `uri,label` rows (optional `split`),
local or gs://, whose uris are local paths or gs:// objects inside the manifest's folder (anywhere with
allow_outside_root); and the gs:// reads it needs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from petqlora.cloud import storage
from petqlora.data.entries import BadEntry, Entry, Listing, PrepareDataError, no_bytes, split_name
from petqlora.data.local_files import INDEX_MAX_BYTES, decode_index, read_index, read_local, resolve_inside

if TYPE_CHECKING:
    from google.cloud import storage as gcs


class GcsReader:
    """gs:// reads for one run, through petqlora.cloud.storage. Without access (no credentials) every read
    fails alike, so the client is asked for once: finding credentials again can wait on the metadata server."""

    def __init__(self, client: gcs.Client | None = None) -> None:
        self.client = client
        self.no_access: str | None = None

    def read(self, uri: str, max_bytes: int) -> bytes:
        """The object's bytes. `max_bytes` is checked by the caller once downloaded: cloud.storage has no
        ranged read yet."""
        if self.client is None and self.no_access is None:
            try:
                self.client = storage.connect(uri)
            except storage.StorageAccessError as exc:
                self.no_access = str(exc)
        if self.no_access is not None:
            raise BadEntry(self.no_access)
        try:
            return storage.read_bytes(uri, client=self.client)
        except (ValueError, storage.StorageAccessError) as exc:  # not an object uri; missing; forbidden
            raise BadEntry(str(exc)) from None
        except Exception as exc:  # transport errors: still one file's problem, for the on_bad_input policy
            raise BadEntry(f"cannot read {uri} ({type(exc).__name__}: {exc})") from None


def _manifest_rows(text: str, name: str) -> Iterable[tuple[str, dict | None, str | None]]:
    """(where, row, problem) for each row of a CSV or JSON-lines manifest."""
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        if "uri" not in columns or "label" not in columns:
            raise PrepareDataError(
                f"manifest {name} has columns {columns}; it needs a header with 'uri' and 'label' "
                "(and optionally 'split')"
            )
        for line_no, row in enumerate(reader, start=2):
            yield f"{name}:{line_no}", {(k or "").strip(): v for k, v in row.items()}, None
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{name}:{line_no}", None, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(row, dict):
            yield f"{name}:{line_no}", None, "not a JSON object with 'uri' and 'label'"
            continue
        yield f"{name}:{line_no}", row, None


def _read_manifest_text(uri: str, gcs: GcsReader) -> str:
    if uri.startswith("gs://"):
        try:
            raw = gcs.read(uri, INDEX_MAX_BYTES)
        except BadEntry as exc:
            raise PrepareDataError(f"cannot read manifest: {exc}") from None
        return decode_index(raw, f"manifest {uri!r}")
    if not Path(uri).is_file():
        raise PrepareDataError(f"manifest {uri!r} is not a file; pass a .csv or .jsonl file of uri,label rows")
    return read_index(Path(uri))


def _gs_inside(uri: str, folder: str) -> bool:
    """Whether the object `uri` lies under the gs:// `folder` (no '.' or '..' segment on the way)."""
    if not uri.startswith(folder + "/"):
        return False
    return not {".", ".."} & set(uri[len(folder) + 1 :].split("/"))


def _locate(ref: str, manifest: str, gcs: GcsReader) -> tuple[Callable[[int], bytes], str, bool]:
    """(how to read the row's uri, what it resolves to, whether that is inside the manifest's folder).
    Relative uris are read from the manifest's folder; local paths with every symlink resolved."""
    folder = manifest.rsplit("/", 1)[0] if manifest.startswith("gs://") else str(Path(manifest).parent)
    if ref.startswith("gs://") or (manifest.startswith("gs://") and not ref.startswith("/")):
        target = ref if ref.startswith("gs://") else f"{folder}/{ref}"
        inside = manifest.startswith("gs://") and _gs_inside(target, folder)
        return (lambda max_bytes: gcs.read(target, max_bytes)), target, inside
    path = Path(ref) if Path(ref).is_absolute() else Path(folder) / ref
    resolved, inside = resolve_inside(path, Path(folder))
    inside = inside and not manifest.startswith("gs://")  # a gs:// manifest's folder holds no local file
    return (lambda max_bytes: read_local(resolved, max_bytes)), str(resolved), inside


def manifest_source(uri: str, use_source_split: bool, gcs: GcsReader, allow_outside_root: bool = False) -> Listing:
    """The rows of a manifest; a row whose uri resolves outside the manifest's folder goes to `escapes`
    unless allow_outside_root (for a manifest kept apart from its images)."""
    text = _read_manifest_text(uri, gcs)
    folder = uri.rsplit("/", 1)[0] if uri.startswith("gs://") else str(Path(uri).parent.resolve())
    source = Listing("manifest", [])
    for where, row, problem in _manifest_rows(text, uri.rsplit("/", 1)[-1]):
        if row is None:
            source.entries.append(Entry(where, where, None, no_bytes, problem=problem, where=where))
            continue
        ref, label, split = row.get("uri"), row.get("label"), row.get("split")
        ref = ref.strip() if isinstance(ref, str) else ""
        entry = Entry(ref or where, ref or where, label if isinstance(label, str) else None, no_bytes, where=where)
        if not ref:
            entry.problem = f"empty uri ({where})"
        else:
            try:
                entry.read, target, inside = _locate(ref, uri, gcs)
            except BadEntry as exc:  # a symlink loop
                entry.problem, target, inside = str(exc), ref, True
            if not inside and not allow_outside_root:
                source.escapes.append(f"{where}: {ref!r} resolves to {target}, outside the manifest's folder {folder}")
                continue
        if entry.problem is None and (not isinstance(label, str) or not label.strip()):
            entry.problem = f"empty or missing label ({where})"
        if entry.problem is None and use_source_split and split not in (None, ""):
            try:
                entry.source_split = split_name(str(split), where)
            except BadEntry as exc:
                entry.problem = str(exc)
        source.entries.append(entry)
    if use_source_split and any(e.source_split for e in source.entries):
        for entry in source.entries:
            if entry.problem is None and entry.source_split is None:
                entry.problem = "empty split while other rows have one"
    return source
