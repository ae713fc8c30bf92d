"""fingerprint_source: what changes the fingerprint (an added, removed, renamed, rewritten or touched file;
an object's new generation), what does not (nothing changed; another folder's files), that no file is read,
and that prepare_data records it. Cloud Storage through the real client against gcp-storage-emulator."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import pytest
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from petqlora.cloud import storage
from petqlora.data.entries import PrepareDataError
from petqlora.data.fingerprint import fingerprint_source, hub_revision
from petqlora.data.synthetic import generate_synthetic_pets

BUCKET = "petqlora-fp"


@pytest.fixture
def folder(tmp_path) -> Path:
    return generate_synthetic_pets(tmp_path / "pets", per_class=3, seed=0, breeds=["Abyssinian", "shiba_inu"])


def _fp(source) -> str:
    return fingerprint_source(str(source)).fingerprint


# ---- local folders


def test_an_unchanged_folder_gives_the_same_fingerprint_and_its_files_are_counted(folder):
    first = fingerprint_source(str(folder))
    assert first == fingerprint_source(str(folder))
    assert first.kind == "folder" and first.exact and first.files == 6 and first.missing == 0
    assert first.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert first.fingerprint.startswith("sha256:") and len(first.fingerprint) == 7 + 64


@pytest.mark.parametrize("change", ["add", "remove", "rename", "rewrite_same_size", "touch", "annotation"])
def test_every_kind_of_change_to_a_folder_changes_the_fingerprint(folder, change):
    before = _fp(folder)
    image = next((folder / "Abyssinian").iterdir())
    if change == "add":
        (folder / "Abyssinian" / "Abyssinian_99.jpg").write_bytes(image.read_bytes())
    elif change == "remove":
        image.unlink()
    elif change == "rename":
        image.rename(image.with_name("Abyssinian_77.jpg"))
    elif change == "rewrite_same_size":  # same size, new content: the modification time moves
        data = bytearray(image.read_bytes())
        data[-3] ^= 0xFF
        stat = image.stat()
        image.write_bytes(bytes(data))
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "touch":
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    else:  # a non-image file counts too: Oxford's annotations decide labels and splits
        (folder / "notes.txt").write_text("trainval")
    assert _fp(folder) != before


def test_the_fingerprint_does_not_depend_on_where_the_folder_is_or_on_listing_order(folder, tmp_path):
    """Relative paths, sorted: the same files (same sizes and times) elsewhere give the same fingerprint."""
    import shutil

    copy = tmp_path / "elsewhere" / "pets"
    shutil.copytree(folder, copy)  # copy2: keeps modification times
    assert _fp(copy) == _fp(folder)


def test_no_file_is_opened(folder, monkeypatch):
    """Cheap by design: only the directory listing and each file's stat, never its bytes."""
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(opener):
        def wrapped(file, *args, **kwargs):
            if str(folder) in os.fspath(file) if isinstance(file, (str, os.PathLike)) else False:
                opened.append(file)
            return opener(file, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    fingerprint_source(str(folder))
    assert opened == []


def test_a_symlink_cycle_is_listed_once(folder):
    (folder / "Abyssinian" / "loop").symlink_to(folder, target_is_directory=True)
    assert fingerprint_source(str(folder)).files == 6


def test_refusals_name_the_source_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareDataError, match="empty folder"):
        fingerprint_source(str(tmp_path / "empty"))
    with pytest.raises(PrepareDataError, match=r"source='/no/such/dir': no such file or folder.*pass an existing"):
        fingerprint_source("/no/such/dir")
    with pytest.raises(PrepareDataError, match="must be a path"):
        fingerprint_source("  ")


# ---- manifests


def _write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("uri,label\n" + "".join(f"{u},{label}\n" for u, label in rows))
    return path


def test_a_manifest_covers_itself_and_the_files_it_names(folder, tmp_path):
    named = sorted((folder / "Abyssinian").iterdir())
    other = sorted((folder / "shiba_inu").iterdir())
    manifest = _write_manifest(folder / "m.csv", [(f"Abyssinian/{named[0].name}", "a"), (str(named[1]), "a")])
    first = fingerprint_source(str(manifest))
    assert first.kind == "manifest" and first.files == 3 and first.missing == 0  # the manifest + 2 images
    os.utime(other[0], ns=(0, 10**9))  # a file the manifest does not name
    assert _fp(manifest) == first.fingerprint
    for image in named[:2]:  # each named file, relative or absolute, counts
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        changed = _fp(manifest)
        assert changed != first.fingerprint
        first = fingerprint_source(str(manifest))
    _write_manifest(manifest, [(f"Abyssinian/{named[0].name}", "a"), ("missing.jpg", "a")])
    result = fingerprint_source(str(manifest))
    assert result.missing == 1 and result.fingerprint != first.fingerprint


# ---- Hugging Face Hub names


def test_a_hub_name_is_fingerprinted_by_its_revision_when_the_hub_answers():
    at = {"rev": "a" * 40}
    first = fingerprint_source("timm/oxford-iiit-pet", resolve_hub=lambda name: at["rev"])
    assert first.kind == "hf_hub" and first.exact and at["rev"] in first.note
    at["rev"] = "b" * 40
    second = fingerprint_source("timm/oxford-iiit-pet", resolve_hub=lambda name: at["rev"])
    assert second.fingerprint != first.fingerprint


def test_an_unresolvable_hub_name_falls_back_to_the_name_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real resolver, offline: it must answer None, not raise
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub_revision("timm/oxford-iiit-pet") is None
    result = fingerprint_source("timm/oxford-iiit-pet")
    assert result.kind == "hf_hub" and not result.exact
    assert "NOT seen" in result.note and "copy the data to a bucket" in result.note
    assert "**no**" in result.markdown()
    assert fingerprint_source("timm/other-pets", resolve_hub=lambda n: None).fingerprint != result.fingerprint


# ---- Cloud Storage (gs:// manifests, /gcs/ mounted folders)


@pytest.fixture(scope="module")
def emulator():
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


@pytest.fixture
def client(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    client = gcs.Client(project="test-project", credentials=AnonymousCredentials())
    for blob in client.list_blobs(BUCKET):
        blob.delete()
    return client


def _put(client, name: str, data: bytes) -> None:
    client.bucket(BUCKET).blob(name).upload_from_string(data)


def test_list_objects_gives_sizes_and_generations_one_level_or_all(client):
    _put(client, "data/a/1.jpg", b"x" * 10)
    _put(client, "data/b.jpg", b"y" * 3)
    _put(client, "data2/c.jpg", b"z")
    every = storage.list_objects(f"gs://{BUCKET}/data", client=client)
    assert [(o.uri, o.size) for o in every] == [(f"gs://{BUCKET}/data/a/1.jpg", 10), (f"gs://{BUCKET}/data/b.jpg", 3)]
    assert all(o.generation > 0 for o in every)
    assert [o.uri for o in storage.list_objects(f"gs://{BUCKET}/data/", recursive=False, client=client)] == [
        f"gs://{BUCKET}/data/b.jpg"]
    assert storage.gcs_uri("/gcs/b1c/x/y") == "gs://b1c/x/y" and storage.gcs_uri("/data/x") is None


def test_a_mounted_folder_is_fingerprinted_from_the_bucket_listing(client):
    """/gcs/<bucket>/... is how a Vertex step sees a bucket: listed by the API (generations), not stat'ed."""
    _put(client, "pets/cat/1.jpg", b"1" * 5)
    _put(client, "pets/dog/2.jpg", b"2" * 7)
    source = f"/gcs/{BUCKET}/pets"
    first = fingerprint_source(source, client=client)
    assert first.kind == "gcs_prefix" and first.files == 2 and first.total_bytes == 12
    assert fingerprint_source(source, client=client) == first
    _put(client, "pets/dog/2.jpg", b"2" * 7)  # rewritten with the same bytes: a new generation
    second = fingerprint_source(source, client=client)
    assert second.fingerprint != first.fingerprint
    _put(client, "pets/dog/3.jpg", b"3")
    assert fingerprint_source(source, client=client).files == 3
    with pytest.raises(PrepareDataError, match="no objects under this prefix"):
        fingerprint_source(f"/gcs/{BUCKET}/nothing-here", client=client)


def test_a_gs_manifest_covers_itself_and_the_objects_it_names(client):
    _put(client, "imgs/a.jpg", b"a" * 4)
    _put(client, "imgs/b.jpg", b"b" * 4)
    _put(client, "imgs/unrelated.jpg", b"u")
    manifest = f"gs://{BUCKET}/m.csv"
    _put(client, "m.csv", f"uri,label\nimgs/a.jpg,cat\ngs://{BUCKET}/imgs/b.jpg,dog\n".encode())
    first = fingerprint_source(manifest, client=client)
    assert first.kind == "manifest" and first.files == 3 and first.missing == 0
    _put(client, "imgs/unrelated.jpg", b"v")  # not named by the manifest
    assert fingerprint_source(manifest, client=client).fingerprint == first.fingerprint
    _put(client, "imgs/a.jpg", b"a" * 4)  # named, relative to the manifest: new generation
    assert fingerprint_source(manifest, client=client).fingerprint != first.fingerprint


# ---- recorded with the dataset


def test_prepare_data_records_the_fingerprint_in_its_report(tmp_path):
    from petqlora.steps import run_prepare_data

    folder = generate_synthetic_pets(tmp_path / "pets", per_class=10, seed=0, breeds=["Abyssinian", "shiba_inu"])
    fp = _fp(folder)
    report_md = tmp_path / "ui_report.md"
    values = run_prepare_data(str(folder), str(tmp_path / "ds"), str(report_md), source_fingerprint=fp,
                              val_fraction=0.2, test_fraction=0.2)
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert report["source"]["fingerprint"] == fp and report["dataset_hash"] == values["dataset_hash"]
    lines = report_md.read_text().splitlines()
    assert f"- source fingerprint: `{fp}`" in lines
    source_line = next(i for i, line in enumerate(lines) if line.startswith("- source:"))
    assert lines.index(f"- source fingerprint: `{fp}`") == source_line + 1


def test_the_step_writes_a_report_for_the_ui(folder, tmp_path):
    from petqlora.steps import run_fingerprint_source

    fp = run_fingerprint_source(str(folder), str(tmp_path / "summary.md"))
    text = (tmp_path / "summary.md").read_text()
    assert fp in text and "files: 6" in text and "exact: yes" in text
