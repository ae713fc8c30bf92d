"""fingerprint_source: a cheap digest of everything prepare_data would read, taken without reading a pixel,
so that the pipeline's cache reuses a prepared dataset exactly when its source is unchanged.

What is fingerprinted, by source:
  folder (Oxford layout, image folder, saved HF dataset, parquet folder) every file under it, images and
      annotation files alike: relative path, size and modification time (ns)
  local file (a parquet file)                 its size and modification time
  manifest (CSV/JSONL, local or gs://)        the manifest file itself and every file its rows name, each
      local one by size and modification time, each gs:// one by size and generation
  a folder or manifest under /gcs/ (Vertex's Cloud Storage mount), or a gs:// prefix
                                              the objects' names, sizes and generations, from the bucket
      listing (one request per 1,000 objects; a generation changes on every write of an object)
  a Hugging Face Hub name                     its current revision (commit) when the Hub answers; else only
      the name, and the result says so (exact=False): an update on the Hub is then not seen

Copying a folder without keeping modification times changes its fingerprint: prepare_data then runs again
and (same bytes) produces the same dataset hash. A change that keeps size and modification time (a tool
that rewrites a file and restores its mtime) is not seen; `--no-cache` on the run forces a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from petqlora.cloud import storage
from petqlora.data.entries import PrepareDataError
from petqlora.data.manifest_source import GcsReader, manifest_source

if TYPE_CHECKING:
    from google.cloud import storage as gcs

__all__ = ["FINGERPRINT_FORMAT", "SourceFingerprint", "fingerprint_source", "hub_revision", "record_fingerprint"]

FINGERPRINT_FORMAT = "petqlora.source-fingerprint/v1"
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
# A Hub dataset id: "name" or "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_HUB_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SourceFingerprint:
    """The fingerprint of a source, and what it was taken over (for the step's report)."""

    source: str
    fingerprint: str  # "sha256:<hex>"
    kind: str  # folder, file, manifest, gcs_prefix, hf_hub
    files: int
    total_bytes: int
    missing: int  # files a manifest names that do not exist (prepare_data reports them)
    exact: bool  # False only for a Hub name whose revision could not be resolved
    note: str

    def markdown(self) -> str:
        lines = ["# Source fingerprint", "", f"- source: `{self.source}` ({self.kind})",
                 f"- fingerprint: `{self.fingerprint}`",
                 f"- files: {self.files} ({self.total_bytes / 1e6:.1f} MB); missing: {self.missing}",
                 f"- exact: {'yes' if self.exact else '**no**'}: {self.note}", "",
                 "prepare_data takes this fingerprint as an input: its cached dataset is reused only while "
                 "the fingerprint is unchanged."]
        return "\n".join(lines) + "\n"


def hub_revision(name: str) -> str | None:
    """The current commit of the Hub dataset `name`, or None when the Hub does not answer (offline, no
    access, no such dataset)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name, timeout=_HUB_TIMEOUT_S).sha or None
    except Exception:  # noqa: BLE001 - any failure means the same: the revision is unknown
        return None


def fingerprint_source(
    source: str, *, client: gcs.Client | None = None, resolve_hub: Callable[[str], str | None] = hub_revision,
) -> SourceFingerprint:
    """The fingerprint of `source` (what prepare_data's `source` accepts); see the module docstring.
    `client` is the Cloud Storage client for gs:// listings (the environment's default when None)."""
    if not isinstance(source, str) or not source.strip():
        raise PrepareDataError(f"source={source!r}: must be a path, a gs:// URI or a Hugging Face Hub name")
    uri = source if storage.is_gcs(source) else storage.gcs_uri(source)
    if uri is not None:  # gs://, or Vertex's /gcs/ mount: the bucket listing, not a stat per file
        if uri.lower().endswith(MANIFEST_SUFFIXES):
            return _manifest(source, client)
        return _digest(source, "gcs_prefix", _gcs_records(uri, client, recursive=True, root=uri), True,
                       "object names, sizes and generations from the bucket listing")
    path = Path(source)
    if path.is_dir():
        return _digest(source, "folder", _folder_records(path), True,
                       "relative paths, sizes and modification times of every file")
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return _manifest(source, client)
        return _digest(source, "file", [_stat_record(path, path.name)], True, "size and modification time")
    if not path.is_absolute() and _HUB_ID.match(source):
        return _hub(source, resolve_hub)
    raise PrepareDataError(
        f"source={source!r}: no such file or folder, and not a gs:// URI or a Hugging Face Hub name; "
        "pass an existing path, a /gcs/<bucket>/... mount path, a gs:// manifest, or a Hub id such as "
        "'timm/oxford-iiit-pet'")


# ---- records: one (name, size, version) per file; the digest is taken over their sorted lines


def _stat_record(path: Path, name: str) -> tuple[str, int, str]:
    try:
        st = path.stat()  # follows links, as prepare_data's reads do
    except OSError:
        return name, -1, "missing"
    return name, st.st_size, f"mtime_ns={st.st_mtime_ns}"


def _folder_records(root: Path) -> list[tuple[str, int, str]]:
    """Every file under `root`, links followed (a linked folder is listed once: no loop on cycles)."""
    records, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        rel = Path(folder).relative_to(root)
        for name in sorted(files):
            records.append(_stat_record(Path(folder, name), (rel / name).as_posix()))
    if not records:
        raise PrepareDataError(f"source={str(root)!r} is an empty folder; prepare_data would find no images")
    return records


def _gcs_records(uri: str, client: gcs.Client | None, *, recursive: bool, root: str) -> list[tuple[str, int, str]]:
    objects = storage.list_objects(uri, recursive=recursive, client=client)
    if recursive and not objects:
        raise PrepareDataError(f"source {uri}: no objects under this prefix; check the path "
                               f"(gcloud storage ls {uri}/)")
    return [(o.uri.removeprefix(root.rstrip("/") + "/"), o.size, f"generation={o.generation}") for o in objects]


def _manifest(source: str, client: gcs.Client | None) -> SourceFingerprint:
    """The manifest itself and every file its rows name, each resolved as prepare_data resolves it."""
    uri = source if storage.is_gcs(source) else storage.gcs_uri(source)
    manifest_record = _gcs_object_records([uri], client)[0] if uri else _stat_record(Path(source), source)
    if manifest_record[2] == "missing":
        raise PrepareDataError(f"manifest {source!r} does not exist; pass an existing .csv or .jsonl file")
    listing = manifest_source(source, False, GcsReader(client))
    refs = sorted({_resolve(source, entry.source) for entry in listing.entries})
    remote = [r for r in refs if storage.is_gcs(r) or storage.gcs_uri(r)]
    local = [r for r in refs if r not in set(remote)]
    records = [manifest_record, *(_stat_record(Path(r), r) for r in local),
               *_gcs_object_records([storage.gcs_uri(r) or r for r in remote], client)]
    return _digest(source, "manifest", records, True,
                   "the manifest and every file it names (local: size and mtime; gs://: size and generation)")


def _resolve(manifest: str, ref: str) -> str:
    """Where a manifest row's uri points: the rule of manifest_source's reader (gs:// as is; relative ones
    from the manifest's folder)."""
    if storage.is_gcs(ref):
        return ref
    if storage.is_gcs(manifest) and not ref.startswith("/"):
        return f"{manifest.rsplit('/', 1)[0]}/{ref}"
    return str(Path(manifest).parent / ref)


def _gcs_object_records(uris: Iterable[str], client: gcs.Client | None) -> list[tuple[str, int, str]]:
    """Size and generation of each object, from one listing per folder they are in (not a request each)."""
    by_folder: dict[str, list[str]] = {}
    for uri in uris:
        by_folder.setdefault(uri.rsplit("/", 1)[0], []).append(uri)
    records = []
    for folder, wanted in sorted(by_folder.items()):
        found = {o.uri: o for o in storage.list_objects(folder, recursive=False, client=client)}
        for uri in sorted(wanted):
            o = found.get(uri)
            records.append((uri, o.size, f"generation={o.generation}") if o else (uri, -1, "missing"))
    return records


def _hub(name: str, resolve: Callable[[str], str | None]) -> SourceFingerprint:
    revision = resolve(name)
    if revision:
        return _digest(name, "hf_hub", [(f"{name}@{revision}", 0, "revision")], True,
                       f"the Hub dataset's current revision {revision}")
    return _digest(name, "hf_hub", [(name, 0, "name only")], False,
                   "the Hub did not give this dataset's revision (offline, no access or no such dataset), so "
                   "only its name is fingerprinted and a new revision on the Hub is NOT seen; for exact "
                   "freshness copy the data to a bucket (or a saved folder) and pass that path")


def _digest(source: str, kind: str, records: list[tuple[str, int, str]], exact: bool, what: str) -> SourceFingerprint:
    h = hashlib.sha256(f"{FINGERPRINT_FORMAT}\n{kind}\n".encode())
    for name, size, version in sorted(records):
        h.update(f"{name}\t{size}\t{version}\n".encode())
    present = [r for r in records if r[2] != "missing"]
    return SourceFingerprint(
        source=source, fingerprint=f"sha256:{h.hexdigest()}", kind=kind, files=len(present),
        total_bytes=sum(r[1] for r in present), missing=len(records) - len(present), exact=exact, note=what)


# ---- recording it with the prepared dataset


def record_fingerprint(dataset_dir: str | Path, fingerprint: str) -> None:
    """Add the source fingerprint to prepare_data's report (report.json's source, and a line of report.md):
    the dataset then says which state of its source it was prepared from."""
    out = Path(dataset_dir)
    report_json = out / "report.json"
    report = json.loads(report_json.read_text(encoding="utf-8"))
    report["source"]["fingerprint"] = fingerprint
    report_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report_md = out / "report.md"
    lines = report_md.read_text(encoding="utf-8").splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("- source:")), min(len(lines), 2))
    lines.insert(at, f"- source fingerprint: `{fingerprint}`")
    report_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
