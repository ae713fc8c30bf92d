"""Every bad request to the classifier server gets its 4xx JSON error naming the problem and the fix, and the
server goes on serving: malformed or hostile JSON, wrong shapes, unknown fields, bad base64, images that are
not images, of another format, too large or decompression bombs, gs:// URIs outside the allowed prefixes,
bodies over the limit or declared as something else than JSON, a client gone mid-body, unknown routes."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import time

import pytest

from petqlora.serve.parity import http_json

from serve_support import GOOD, adapter, dataset, png, served  # noqa: F401  (fixtures)

BAD = [
    (b"not json", 400, "request body: not JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({}).encode(), 400, "instances: must be a non-empty list"),
    (json.dumps({"instances": []}).encode(), 400, "instances: must be a non-empty list"),
    (json.dumps({"instances": "x"}).encode(), 400, "instances: must be a non-empty list"),
    (json.dumps({**GOOD, "extra": 1}).encode(), 400, "request body: unknown field(s) 'extra'"),
    (json.dumps({"instances": [{"image": {"b64": "AAAA"}}]}).encode(), 400, "instances[0]: unknown field(s) 'image'"),
    (json.dumps({"instances": [{"b64": "AAAA", "gcs_uri": "gs://a/b"}]}).encode(), 400, "exactly one of"),
    (json.dumps({"instances": [42]}).encode(), 400, "instances[0]: must be an object"),
    (json.dumps({"instances": [{"b64": 7}]}).encode(), 400, "instances[0].b64: must be a non-empty string"),
    (json.dumps({"instances": [{"b64": "not base64!"}]}).encode(), 400, "instances[0].b64: not valid base64"),
    # `base64 FILE` wraps its output at 76 columns: the message says how to get one line
    (json.dumps({"instances": [{"b64": GOOD["instances"][0]["b64"][:76] + "\n" + GOOD["instances"][0]["b64"][76:]}]}
                ).encode(), 400, "no line breaks (base64 -w 0 FILE)"),
    (json.dumps({"instances": [{"b64": base64.b64encode(b"hello, not an image").decode()}]}).encode(), 400,
     "instances[0].b64: not a decodable image"),
    (json.dumps({"instances": GOOD["instances"] * 5}).encode(), 413, "instances: 5 is over the limit of 4"),
    (json.dumps({"instances": [{"b64": base64.b64encode(bytes(400_000)).decode()}]}).encode(), 413,
     "over the limit of 300000 bytes per image"),
    (json.dumps({"instances": [{"b64": base64.b64encode(png(1100, 1000)).decode()}]}).encode(), 413,
     "1100x1000 = 1100000 pixels is over the limit of 1000000"),
    (json.dumps({**GOOD, "parameters": {"top_k": 0}}).encode(), 400, "parameters.top_k=0: must be an integer from 1"),
    (json.dumps({**GOOD, "parameters": {"top_k": 7}}).encode(), 400, "parameters.top_k=7"),
    (json.dumps({**GOOD, "parameters": {"top_k": "3"}}).encode(), 400, "parameters.top_k=\"3\""),
    (json.dumps({**GOOD, "parameters": {"temperature": 1}}).encode(), 400, "parameters: unknown field(s)"),
    (json.dumps({"instances": [{"gcs_uri": "gs://pets-uploads/other/a.jpg"}]}).encode(), 403,
     "outside the prefixes this server may read (gs://pets-uploads/ok)"),
    (json.dumps({"instances": [{"gcs_uri": "gs://pets-uploads/ok/../secret.jpg"}]}).encode(), 403, "outside"),
    (json.dumps({"instances": [{"gcs_uri": "/etc/passwd"}]}).encode(), 400, "must be a gs://bucket/path URI"),
    # JSON the parser gives up on: nested past Python's recursion limit, an integer past its 4300 digits
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "request body: not JSON"),
    (b'{"instances": [], "parameters": {"top_k": 1' + b"0" * 5000 + b"}}", 400, "request body: not JSON"),
    # decodable, but not a format evaluation reads (prepare_data keeps JPEG, PNG, WebP, BMP, GIF only)
    (json.dumps({"instances": [{"b64": base64.b64encode(png(40, 30, "TIFF")).decode()}]}).encode(), 400,
     "instances[0].b64: a TIFF image; send a JPEG, PNG, WebP, BMP or GIF file"),
    (json.dumps({"instances": [{"b64": base64.b64encode(png(32, 32, "ICO")).decode()}]}).encode(), 400,
     "instances[0].b64: a ICO image"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m for _, _, m in BAD])
def test_each_bad_request_gets_its_4xx_and_the_server_still_serves(served, body, status, message):
    got, answer = served.post_raw(body)
    assert (got, set(answer)) == (status, {"error"}), answer
    assert message in answer["error"], answer["error"]
    assert served.predict(GOOD)[0] == 200


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_read(served):
    connection = http.client.HTTPConnection("127.0.0.1", served.cfg.port, timeout=30)
    connection.putrequest("POST", served.cfg.predict_route)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "2100000")
    connection.endheaders()  # not one byte of the body is sent
    response = connection.getresponse()
    assert response.status == 413
    assert "request body: 2100000 bytes is over the limit of 2000000 bytes" in json.loads(response.read())["error"]
    connection.close()
    assert served.predict(GOOD)[0] == 200


@pytest.mark.parametrize("content_type", ["image/jpeg", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded", "text/html"])
def test_a_body_declared_as_something_else_than_json_gets_415(served, content_type):
    status, body = served.post_raw(json.dumps(GOOD).encode(), content_type=content_type)
    assert status == 415, body
    assert f"Content-Type {content_type.split(';')[0]!r} is not JSON" in body["error"]
    assert "send the request as Content-Type: application/json" in body["error"]
    assert served.predict(GOOD)[0] == 200


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_and_none_are_accepted(served, content_type):
    assert served.post_raw(json.dumps(GOOD).encode(), content_type=content_type)[0] == 200


def test_a_client_gone_mid_body_is_a_refusal_not_a_scoring_failure(served, caplog):
    """A client that times out while uploading is its own mistake: a warning, not an ERROR with a traceback."""
    caplog.set_level(logging.WARNING, logger="petqlora.serve.app")
    with socket.create_connection(("127.0.0.1", served.cfg.port), timeout=30) as connection:
        connection.sendall(f"POST {served.cfg.predict_route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           "\r\nContent-Length: 1000\r\n\r\n{\"instances\"".encode())
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any(r.levelno == logging.WARNING and "request body: the client disconnected before sending all of it"
               in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert served.predict(GOOD)[0] == 200


def test_unknown_route_and_method_are_json_errors(served):
    assert served.post_raw(b"", method="GET")[0] == 405
    status, body = http_json(served.url + "/nope")
    assert status == 404 and "the routes are GET /health and POST /predict" in body["error"]


@pytest.mark.parametrize("failure, status, words", [
    ("forbidden", 403, "Grant roles/storage.objectViewer"),
    ("missing", 404, "no such object"),
    ("bad-bucket", 400, "invalid bucket name"),
    ("unavailable", 502, "503"),
])
def test_a_gs_instance_that_cannot_be_read_gets_the_status_of_why(failure, status, words):
    """Who must act decides the status: the caller (400, 404), the operator granting the server's service account
    (403), or nobody but a retry (502, which batch prediction must not take for a bad instance)."""
    from google.api_core import exceptions

    from petqlora.cloud import storage
    from petqlora.serve.config import ServeConfig
    from petqlora.serve.instances import RequestError, parse_request

    def read_gcs(uri, max_bytes):
        if failure == "bad-bucket":
            return storage.split_gcs("gs://Bad_Bucket!/x.jpg")
        raised = {"forbidden": exceptions.Forbidden("caller lacks storage.objects.get"),
                  "missing": exceptions.NotFound("no such object"),
                  "unavailable": exceptions.ServiceUnavailable("backend error")}[failure]

        class Client:  # the bucket exists: a NotFound is the object's
            def lookup_bucket(self, name):
                return object()

        def download():
            raise raised

        return storage._guarded(uri, "read", Client(), download)  # the real read's translation of API errors

    cfg = ServeConfig(adapter="/tmp/unused", allowed_gcs_prefixes=("gs://pets/",))
    with pytest.raises(RequestError) as info:
        parse_request(json.dumps({"instances": [{"gcs_uri": "gs://pets/a.jpg"}]}).encode(), cfg, 3, read_gcs)
    assert info.value.status == status and words in info.value.message, info.value.message


def test_the_default_body_cap_holds_a_full_request_of_the_largest_images():
    """A request within the instance caps is never refused for its size as a whole: max_instances images of
    max_image_bytes, base64 in the JSON batch prediction sends, fit max_request_bytes; batch prediction's own
    default stays within max_instances."""
    import math

    from petqlora.cloud.vertex_batch import INSTANCES_PER_REQUEST
    from petqlora.serve.config import ServeConfig

    cfg = ServeConfig(adapter="/tmp/unused")
    one = len(json.dumps({"b64": ""})) + 4 * math.ceil(cfg.max_image_bytes / 3)
    body = len(json.dumps({"instances": [], "parameters": {"top_k": 37}})) + cfg.max_instances * (one + 2)
    assert body <= cfg.max_request_bytes, (body, cfg.max_request_bytes)
    assert INSTANCES_PER_REQUEST <= cfg.max_instances
