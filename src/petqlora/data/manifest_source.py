"""The manifest source of prepare_data: a CSV or JSON-lines file of `uri,label` rows (optional `split`),
local or gs://, whose uris are local paths or gs:// objects; and the gs:// reads it needs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from petqlora.cloud import storage
from petqlora.data.entries import BadEntry, Entry, Listing, PrepareDataError, read_local, split_name

if TYPE_CHECKING:
    from google.cloud import storage as gcs


class GcsReader:
    """gs:// reads for one run, through petqlora.cloud.storage. Without access (no credentials) every read
    fails alike, so the client is asked for once: finding credentials again can wait on the metadata server."""

    def __init__(self, client: gcs.Client | None = None) -> None:
        self.client = client
        self.no_access: str | None = None

    def read(self, uri: str) -> bytes:
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


def _read_manifest_text(uri: str, gcs: GcsReader) -> tuple[str, Callable[[str], Callable[[], bytes]]]:
    """The manifest's text, and how to read a row's uri (relative ones from the manifest's folder)."""
    if uri.startswith("gs://"):
        try:
            raw = gcs.read(uri)
        except BadEntry as exc:
            raise PrepareDataError(f"cannot read manifest: {exc}") from None
        base_gs, base_local = uri.rsplit("/", 1)[0], None
    else:
        path = Path(uri)
        if not path.is_file():
            raise PrepareDataError(f"manifest {uri!r} is not a file; pass a .csv or .jsonl file of uri,label rows")
        raw, base_gs, base_local = path.read_bytes(), None, path.parent
    try:
        text = raw.decode("utf-8-sig")  # -sig: spreadsheet exports start with a byte-order mark
    except UnicodeDecodeError as exc:
        raise PrepareDataError(f"manifest {uri!r} is not UTF-8 text ({exc}); save it as UTF-8") from None

    def reader(ref: str) -> Callable[[], bytes]:
        if ref.startswith("gs://"):
            return lambda: gcs.read(ref)
        if base_gs is not None and not ref.startswith("/"):
            return lambda: gcs.read(f"{base_gs}/{ref}")
        path = base_local / ref if base_local else Path(ref)
        return lambda: read_local(path)

    return text, reader


def manifest_source(uri: str, use_source_split: bool, gcs: GcsReader) -> Listing:
    text, reader = _read_manifest_text(uri, gcs)
    source = Listing("manifest", [])
    for where, row, problem in _manifest_rows(text, uri.rsplit("/", 1)[-1]):
        if row is None:
            source.entries.append(Entry(where, where, None, lambda: b"", problem=problem))
            continue
        ref, label, split = row.get("uri"), row.get("label"), row.get("split")
        ref = ref.strip() if isinstance(ref, str) else ""
        entry = Entry(ref or where, ref or where, label if isinstance(label, str) else None, lambda: b"")
        if not ref:
            entry.problem = f"empty uri ({where})"
        else:
            entry.read = reader(ref)
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
