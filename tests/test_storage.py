"""gs:// helpers: pure URI mapping, and copies through the real google-cloud-storage client against
gcp-storage-emulator (in-process, on a free localhost port)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from petqlora.cloud.storage import (
    StorageAccessError,
    download_dir,
    download_file,
    is_gcs,
    local_path,
    read_bytes,
    split_gcs,
    upload_dir,
    upload_file,
)

BUCKET = "petqlora-test"


# ---- pure -----------------------------------------------------------------------------------------------

def test_uri_helpers():
    assert is_gcs("gs://b1c/x") and not is_gcs("/gcs/b1c/x") and not is_gcs("data/x")
    assert split_gcs("gs://my-bucket/a/b.json") == ("my-bucket", "a/b.json")
    assert split_gcs("gs://my-bucket") == ("my-bucket", "")
    assert local_path("gs://my-bucket/a/b") == "/gcs/my-bucket/a/b"
    assert local_path("gs://my-bucket/") == "/gcs/my-bucket"
    assert local_path("runs/local/x") == "runs/local/x"


def test_local_path_with_one_mounted_bucket():
    """A Cloud Run volume mounts one bucket at its mount path; Vertex mounts every bucket under /gcs."""
    assert local_path("gs://my-bucket/a/b/", mount="/mnt/b", bucket="my-bucket") == "/mnt/b/a/b"
    assert local_path("gs://my-bucket", mount="/mnt/b", bucket="my-bucket") == "/mnt/b"
    mounted_like_vertex = local_path("gs://my-bucket")
    assert local_path("gs://my-bucket/a", mount=mounted_like_vertex, bucket="my-bucket") == local_path("gs://my-bucket/a")
    with pytest.raises(ValueError, match=r"bucket 'other'.*mounts only gs://my-bucket at /mnt/b"):
        local_path("gs://other/a", mount="/mnt/b", bucket="my-bucket")


@pytest.mark.parametrize("uri", ["/tmp/x", "s3://b/x", "gs://", "gs://UPPER/x", "gs://a/x"])
def test_split_gcs_rejects(uri):
    with pytest.raises(ValueError, match="uri="):
        split_gcs(uri)


# ---- against the emulator -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator():
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    # Port 0 lets the OS pick a free port; the emulator keeps the bound server on its API thread.
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


@pytest.fixture
def client(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return gcs.Client(project="test-project", credentials=AnonymousCredentials())


def test_directory_round_trip(client, tmp_path):
    src = tmp_path / "adapter"
    (src / "checkpoint-1").mkdir(parents=True)
    (src / "adapter_config.json").write_text(json.dumps({"r": 64}))
    (src / "checkpoint-1" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    uris = upload_dir(src, f"gs://{BUCKET}/runs/1/adapter/", client=client)
    assert uris == [f"gs://{BUCKET}/runs/1/adapter/adapter_config.json",
                    f"gs://{BUCKET}/runs/1/adapter/checkpoint-1/weights.bin"]
    # A sibling whose name shares the prefix must not be pulled in.
    upload_file(src / "adapter_config.json", f"gs://{BUCKET}/runs/1/adapter2/x.json", client=client)

    out = tmp_path / "out"
    files = download_dir(f"gs://{BUCKET}/runs/1/adapter", out, client=client)
    assert sorted(p.relative_to(out).as_posix() for p in files) == ["adapter_config.json",
                                                                      "checkpoint-1/weights.bin"]
    for rel in ["adapter_config.json", "checkpoint-1/weights.bin"]:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()


def test_file_round_trip(client, tmp_path):
    (tmp_path / "m.json").write_text('{"accuracy": 0.9}')
    uri = upload_file(tmp_path / "m.json", f"gs://{BUCKET}/metrics/m.json", client=client)
    got = download_file(uri, tmp_path / "deep" / "copy.json", client=client)
    assert got.read_text() == '{"accuracy": 0.9}'


def test_read_bytes_with_a_cap_downloads_at_most_one_byte_over_it(client):
    """A server reading a client's gs:// URI must not pull a huge object into memory to learn it is too big."""
    uri = f"gs://{BUCKET}/uploads/big.bin"
    client.bucket(BUCKET).blob("uploads/big.bin").upload_from_string(bytes(range(256)) * 40)  # 10,240 bytes
    assert read_bytes(uri, client=client, max_bytes=100) == (bytes(range(256)) * 40)[:101]  # a ranged read
    assert read_bytes(uri, client=client, max_bytes=20_000) == bytes(range(256)) * 40
    assert len(read_bytes(uri, client=client)) == 10_240


def test_missing_bucket_names_the_uri_and_the_fix(client, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(StorageAccessError) as info:
        upload_file(tmp_path / "a.txt", "gs://no-such-bucket/a.txt", client=client)
    message = str(info.value)
    assert "gs://no-such-bucket/a.txt" in message
    assert "does not exist" in message and "gcloud storage buckets create gs://no-such-bucket" in message
    with pytest.raises(StorageAccessError, match="bucket gs://no-such-bucket does not exist"):
        download_dir("gs://no-such-bucket/data", tmp_path / "d", client=client)


def test_missing_object_and_empty_prefix(client, tmp_path):
    with pytest.raises(StorageAccessError, match=rf"gs://{BUCKET}/nope.json: no such object"):
        download_file(f"gs://{BUCKET}/nope.json", tmp_path / "x.json", client=client)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.json.partial").exists()
    with pytest.raises(StorageAccessError, match=rf"Nothing to download under gs://{BUCKET}/empty"):
        download_dir(f"gs://{BUCKET}/empty", tmp_path / "d", client=client)


def test_local_argument_errors(client, tmp_path):
    with pytest.raises(NotADirectoryError, match="src="):
        upload_dir(tmp_path / "missing", f"gs://{BUCKET}/x", client=client)
    with pytest.raises(FileNotFoundError, match="src="):
        upload_file(tmp_path / "missing.txt", f"gs://{BUCKET}/x", client=client)
    with pytest.raises(ValueError, match="must name an object"):
        download_file(f"gs://{BUCKET}/folder/", tmp_path / "x", client=client)


# The emulator has no IAM, so a permission error comes from a local server that answers every request
# with Cloud Storage's 403 body, still through the real client.
class _Forbidden(BaseHTTPRequestHandler):
    def _deny(self):
        body = json.dumps({"error": {"code": 403, "message": "petqlora-job@p.iam.gserviceaccount.com does not "
                                     "have storage.objects.get access", "errors": []}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _deny

    def log_message(self, *args):
        pass


def test_forbidden_names_the_role_to_grant(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        client = gcs.Client(project="test-project", credentials=AnonymousCredentials())
        with pytest.raises(StorageAccessError) as info:
            download_file(f"gs://{BUCKET}/data/x.json", tmp_path / "x.json", client=client)
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert f"gs://{BUCKET}/data/x.json" in message and "roles/storage.objectViewer" in message
    assert f"add-iam-policy-binding gs://{BUCKET}" in message
