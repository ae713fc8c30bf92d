"""``gs://`` helpers for the entrypoints: parse URIs, map them to mounted paths, copy files and folders.

The Cloud Storage client is created lazily (project from the environment's default) so that importing
this module, or using only the pure helpers, needs neither credentials nor network; every copy function
also accepts an injected ``google.cloud.storage.Client`` (tests pass one that talks to an emulator).
Access errors are turned into :class:`StorageAccessError` naming the URI and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # the import is deferred: only the copy functions need the library
    from google.cloud import storage as gcs

__all__ = [
    "GCS_MOUNT_ROOT",
    "StorageAccessError",
    "StoredObject",
    "download_dir",
    "download_file",
    "gcs_uri",
    "is_gcs",
    "list_objects",
    "local_path",
    "split_gcs",
    "upload_dir",
    "upload_file",
]

# Where Vertex AI (Cloud Storage FUSE) mounts every bucket: gs://b/x is /gcs/b/x inside a step.
GCS_MOUNT_ROOT = "/gcs"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")

_T = TypeVar("_T")


class StorageAccessError(RuntimeError):
    """A gs:// path could not be read or written: missing bucket or object, or no permission."""

    def __init__(self, message: str, *, uri: str) -> None:
        super().__init__(message)
        self.uri = uri


def is_gcs(uri: str | os.PathLike) -> bool:
    """True for a ``gs://`` URI."""
    return isinstance(uri, str) and uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; ``gs://bucket`` -> ``("bucket", "")``."""
    if not is_gcs(uri):
        raise ValueError(f"uri={uri!r} is not a Cloud Storage URI; write it as 'gs://<bucket>/<path>'")
    bucket, _, blob = uri[len("gs://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"uri={uri!r} has an invalid bucket name {bucket!r}; bucket names are 3-63 "
                         "lowercase letters, digits, '-', '_' or '.', e.g. 'gs://my-project-petqlora/data'")
    return bucket, blob


def local_path(uri: str | os.PathLike, *, mount: str = GCS_MOUNT_ROOT, bucket: str | None = None) -> str:
    """The path at which a process sees ``uri``, the one gs:// -> path mapper; local paths are returned
    unchanged. ``bucket`` says how buckets are mounted:

    - ``None`` (Vertex AI / Kubeflow, Cloud Storage FUSE): every bucket under ``mount``, so
      ``gs://b/x`` -> ``/gcs/b/x``.
    - a bucket name (a Cloud Run Job volume): only that bucket, mounted at ``mount`` itself, so
      ``gs://b/x`` -> ``<mount>/x``; a URI in another bucket raises ValueError.
    """
    if not is_gcs(uri):
        return os.fspath(uri)
    uri_bucket, blob = split_gcs(str(uri))
    if bucket is None:
        root = f"{mount}/{uri_bucket}"
    elif uri_bucket == bucket:
        root, blob = mount, blob.lstrip("/")
    else:
        raise ValueError(
            f"uri={uri!r} is in bucket {uri_bucket!r}, but the job mounts only gs://{bucket} at {mount}; copy "
            f"the data into gs://{bucket}/ or mount its bucket instead (CloudRunJobConfig.bucket)")
    return f"{root}/{blob}".rstrip("/")


def gcs_uri(path: str | os.PathLike, *, mount: str = GCS_MOUNT_ROOT) -> str | None:
    """The gs:// URI of a path under the Vertex mount (``/gcs/b/x`` -> ``gs://b/x``), the inverse of
    ``local_path``; None for any other path."""
    text = os.fspath(path)
    if not text.startswith(mount.rstrip("/") + "/"):
        return None
    rest = text[len(mount.rstrip("/")) + 1:]
    return f"gs://{rest}" if rest else None


_default_client: "gcs.Client | None" = None


def _client(client: "gcs.Client | None") -> "gcs.Client":
    global _default_client
    if client is not None:
        return client
    if _default_client is None:
        from google.cloud import storage

        _default_client = storage.Client()  # project and credentials from the environment's defaults
    return _default_client


def _guarded(uri: str, action: str, client: "gcs.Client", fn: Callable[[], _T]) -> _T:
    """Run ``fn``, turning Forbidden/NotFound into a StorageAccessError that names the URI and the fix."""
    from google.api_core import exceptions

    bucket, _ = split_gcs(uri)
    role = "roles/storage.objectViewer" if action == "read" else "roles/storage.objectUser"
    try:
        return fn()
    except exceptions.Forbidden as exc:
        raise StorageAccessError(
            f"No permission to {action} {uri}: {exc.message}. Grant {role} on the bucket to the service "
            f"account this step runs as: gcloud storage buckets add-iam-policy-binding gs://{bucket} "
            f"--member=serviceAccount:<SA_EMAIL> --role={role}", uri=uri) from exc
    except exceptions.NotFound as exc:
        try:
            bucket_exists = client.lookup_bucket(bucket) is not None
        except exceptions.GoogleAPICallError:
            bucket_exists = True  # can't tell; report the object as missing
        if not bucket_exists:
            raise StorageAccessError(
                f"Cannot {action} {uri}: bucket gs://{bucket} does not exist (or is in another project). "
                f"Create it in the GPU region (gcloud storage buckets create gs://{bucket} --location=<REGION>) "
                "or fix the URI; see docs/cloud_setup.md", uri=uri) from exc
        raise StorageAccessError(
            f"Cannot {action} {uri}: no such object. Check the path (gcloud storage ls {uri}) or run the step "
            "that writes it first", uri=uri) from exc


def upload_file(src: str | os.PathLike, uri: str, *, client: "gcs.Client | None" = None) -> str:
    """Copy one local file to ``uri`` (a full object URI); returns ``uri``."""
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"src={os.fspath(src)!r} is not a file; pass the path of an existing file")
    bucket, blob = split_gcs(uri)
    if not blob or blob.endswith("/"):
        raise ValueError(f"uri={uri!r} must name an object, e.g. 'gs://{bucket}/dir/{path.name}'")
    c = _client(client)
    _guarded(uri, "write", c, lambda: c.bucket(bucket).blob(blob).upload_from_filename(str(path)))
    return uri


def download_file(uri: str, dest: str | os.PathLike, *, client: "gcs.Client | None" = None) -> Path:
    """Copy the object ``uri`` to the local file ``dest`` (parents created); returns ``dest``."""
    bucket, blob = split_gcs(uri)
    if not blob or blob.endswith("/"):
        raise ValueError(f"uri={uri!r} must name an object, not a bucket or folder; use download_dir for folders")
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    c = _client(client)
    tmp = out.with_name(out.name + ".partial")  # a failed download leaves no truncated file behind
    try:
        _guarded(uri, "read", c, lambda: c.bucket(bucket).blob(blob).download_to_filename(str(tmp)))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def upload_dir(src: str | os.PathLike, uri: str, *, client: "gcs.Client | None" = None) -> list[str]:
    """Copy every file under the local folder ``src`` to ``uri/<relative path>``; returns the URIs."""
    root = Path(src)
    if not root.is_dir():
        raise NotADirectoryError(f"src={os.fspath(src)!r} is not a directory; pass the folder to upload")
    bucket, prefix = split_gcs(uri)
    prefix = prefix.strip("/")
    c = _client(client)
    uploaded = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        target = f"gs://{bucket}/{name}"
        _guarded(target, "write", c, lambda: c.bucket(bucket).blob(name).upload_from_filename(str(path)))
        uploaded.append(target)
    return uploaded


def download_dir(uri: str, dest: str | os.PathLike, *, client: "gcs.Client | None" = None) -> list[Path]:
    """Copy every object under the ``uri`` prefix into the local folder ``dest``; returns the files."""
    bucket, prefix = split_gcs(uri)
    prefix = prefix.strip("/")
    listing_prefix = f"{prefix}/" if prefix else ""  # "data" must not match "data2/..."
    out = Path(dest)
    c = _client(client)
    blobs = _guarded(uri, "read", c, lambda: list(c.list_blobs(bucket, prefix=listing_prefix)))
    files = [b for b in blobs if not b.name.endswith("/")]  # skip "folder" placeholder objects
    if not files:
        raise StorageAccessError(
            f"Nothing to download under {uri}: the prefix has no objects. Check the path "
            f"(gcloud storage ls {uri}/) or run the step that writes it first", uri=uri)
    written = []
    for blob in files:
        rel = PurePosixPath(blob.name[len(listing_prefix):])
        if rel.is_absolute() or ".." in rel.parts:
            raise StorageAccessError(f"Refusing to download gs://{bucket}/{blob.name}: its name escapes {dest}",
                                     uri=f"gs://{bucket}/{blob.name}")
        target = out.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        blob_uri = f"gs://{bucket}/{blob.name}"
        _guarded(blob_uri, "read", c, lambda: blob.download_to_filename(str(target)))
        written.append(target)
    return written


def connect(uri: str, client: "gcs.Client | None" = None) -> "gcs.Client":
    """The client to reach ``uri`` with: ``client``, or the environment's default. No credentials, project or
    library is a StorageAccessError naming the fix; a caller reading many objects asks once."""
    try:
        return _client(client)
    except Exception as exc:  # DefaultCredentialsError, ImportError, OSError...: all mean "no access"
        raise StorageAccessError(
            f"no access to Cloud Storage ({type(exc).__name__}: {exc}); run with a service account that can "
            "read the bucket, or `gcloud auth application-default login`", uri=uri) from exc


def read_bytes(uri: str, *, client: "gcs.Client | None" = None, max_bytes: int | None = None) -> bytes:
    """The content of the object ``uri``, in memory (for small files: manifests, images). With ``max_bytes``,
    at most its first max_bytes + 1 bytes (a ranged read): longer than max_bytes means the object is too big,
    learnt without downloading it."""
    bucket, blob = split_gcs(uri)
    if not blob or blob.endswith("/"):
        raise ValueError(f"uri={uri!r} must name an object, not a bucket or folder, e.g. 'gs://{bucket}/a.jpg'")
    c = connect(uri, client)
    ranged = {} if max_bytes is None else {"start": 0, "end": max_bytes}  # `end` is inclusive
    return _guarded(uri, "read", c, lambda: c.bucket(bucket).blob(blob).download_as_bytes(**ranged))


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: what identifies its content without reading it."""

    uri: str
    size: int
    generation: int  # changes on every write of the object, even with the same bytes


def list_objects(uri: str, *, recursive: bool = True, client: "gcs.Client | None" = None) -> list[StoredObject]:
    """The objects under the ``uri`` prefix (a folder: ``gs://b/data`` lists ``gs://b/data/...``), with their
    sizes and generations, sorted by URI; one request per 1,000 objects, no object is read. ``recursive=False``
    lists one folder level. "Folder" placeholder objects (names ending in /) are left out."""
    bucket, prefix = split_gcs(uri)
    prefix = prefix.strip("/")
    listing_prefix = f"{prefix}/" if prefix else ""  # "data" must not match "data2/..."
    c = connect(uri, client)
    blobs = _guarded(uri, "read", c, lambda: list(
        c.list_blobs(bucket, prefix=listing_prefix, delimiter=None if recursive else "/")))
    return sorted((StoredObject(f"gs://{bucket}/{b.name}", int(b.size or 0), int(b.generation or 0))
                   for b in blobs if not b.name.endswith("/")), key=lambda o: o.uri)

