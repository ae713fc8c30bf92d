"""A prediction request, checked and decoded into images, or refused with one 4xx message that names the
input, the rule it breaks and the fix. The server keeps serving after a refusal.

The request shape (Vertex AI's, and what batch prediction sends for a JSON Lines file of ``{"b64": ...}``
objects or for a file list, whose files it base64-encodes under the key ``b64``):

    {"instances": [{"b64": "<base64 image bytes>"} | {"gcs_uri": "gs://bucket/path.jpg"}, ...],
     "parameters": {"top_k": 3}}                  # optional; top_k defaults to ServeConfig.top_k

A ``gcs_uri`` is read only under ServeConfig.allowed_gcs_prefixes (none by default: refused with 403).
Status codes: 400 malformed (not JSON, wrong shape, unknown field, not an image of a format evaluation reads:
JPEG, PNG, WebP, BMP, GIF), 403 a gs:// URI outside the allowed prefixes or one the server's service account
may not read, 404 no such gs:// bucket or object, 413 over a cap (request bytes, instance count, image bytes,
image pixels; a gs:// object is read no further than the cap); 502 when Cloud Storage itself fails (retry).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from petqlora.data.dataset import FORMAT_EXTENSIONS, UnsupportedFormat, decode_image
from petqlora.serve.config import ServeConfig

EXAMPLE = '{"instances": [{"b64": "<base64 of a JPEG or PNG file>"}], "parameters": {"top_k": 3}}'
INSTANCE_KEYS = ("b64", "gcs_uri")
# What prepare_data keeps, so what evaluate scored: PIL's other decoders (TIFF, EPS, PSD...) are not exposed.
SERVED_FORMATS = tuple(FORMAT_EXTENSIONS)


class RequestError(Exception):
    """A refused request: the HTTP status and the one-line message the client gets as {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    images: list[Image.Image]
    top_k: int


def _unknown(where: str, keys, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise RequestError(400, f"{where}: unknown field(s) {', '.join(map(repr, extra))}; allowed: "
                                f"{', '.join(allowed)}; e.g. {EXAMPLE}")


def parse_request(body: bytes, cfg: ServeConfig, n_classes: int,
                  read_gcs: Callable[..., bytes] | None = None) -> Request:
    """The request's images (RGB, EXIF orientation applied: the same decode as evaluation's) and top_k."""
    try:
        payload = json.loads(body)
    # ValueError: malformed JSON, bad UTF-8, an integer past Python's 4300 digits; RecursionError: nested too deep
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"request body: not JSON ({exc}); send e.g. {EXAMPLE}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body: must be a JSON object, not {type(payload).__name__}; e.g. {EXAMPLE}")
    _unknown("request body", payload, ("instances", "parameters"))
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, f"instances: must be a non-empty list, got {_short(instances)}; e.g. {EXAMPLE}")
    if len(instances) > cfg.max_instances:
        raise RequestError(413, f"instances: {len(instances)} is over the limit of {cfg.max_instances} per request; "
                                "split them into several requests")
    top_k = _top_k(payload.get("parameters"), cfg.top_k, n_classes)
    checked = [_instance_bytes(i, instance, cfg) for i, instance in enumerate(instances)]  # all shapes first
    images = []
    for i, (kind, value) in enumerate(checked):
        data = value if kind == "b64" else _read_allowed(i, value, cfg, read_gcs)
        images.append(_decode(i, kind, data, cfg))
    return Request(images, top_k)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _top_k(parameters, default: int, n_classes: int) -> int:
    if parameters is None:
        return min(default, n_classes)
    if not isinstance(parameters, dict):
        raise RequestError(400, f"parameters: must be a JSON object, got {_short(parameters)}; e.g. {{\"top_k\": 3}}")
    _unknown("parameters", parameters, ("top_k",))
    top_k = parameters.get("top_k", min(default, n_classes))
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_classes:
        raise RequestError(400, f"parameters.top_k={_short(top_k)}: must be an integer from 1 to {n_classes} "
                                "(the number of classes)")
    return top_k


def _instance_bytes(i: int, instance, cfg: ServeConfig) -> tuple[str, bytes | str]:
    """("b64", decoded bytes) or ("gcs_uri", the URI): the instance's shape and size checked."""
    where = f"instances[{i}]"
    if not isinstance(instance, dict):
        raise RequestError(400, f"{where}: must be an object {{\"b64\": ...}} or {{\"gcs_uri\": ...}}, got "
                                f"{_short(instance)}")
    _unknown(where, instance, INSTANCE_KEYS)
    if len(instance) != 1:
        raise RequestError(400, f"{where}: must hold exactly one of {', '.join(INSTANCE_KEYS)}; e.g. {EXAMPLE}")
    (kind, value), = instance.items()
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{where}.{kind}: must be a non-empty string, got {_short(value)}")
    if kind == "gcs_uri":
        return kind, value
    if len(value) * 3 // 4 > cfg.max_image_bytes + 2:  # refused before decoding a huge string
        raise RequestError(413, f"{where}.b64: about {len(value) * 3 // 4} bytes is over the limit of "
                                f"{cfg.max_image_bytes} bytes per image; send a smaller image")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}.b64: not valid base64 ({exc}); send the file's bytes base64-encoded "
                                "(standard alphabet, with padding, no line breaks (base64 -w 0 FILE))") from None
    if len(data) > cfg.max_image_bytes:
        raise RequestError(413, f"{where}.b64: {len(data)} bytes is over the limit of {cfg.max_image_bytes} bytes "
                                "per image; send a smaller image")
    return kind, data


def _read_allowed(i: int, uri: str, cfg: ServeConfig, read_gcs: Callable[..., bytes] | None) -> bytes:
    where = f"instances[{i}].gcs_uri"
    if not uri.startswith("gs://"):
        raise RequestError(400, f"{where}={uri!r}: must be a gs://bucket/path URI")
    if ".." in uri.split("/") or not any(uri.startswith(p if p.endswith("/") else p + "/")
                                         for p in cfg.allowed_gcs_prefixes):
        allowed = ", ".join(cfg.allowed_gcs_prefixes) or "none (the server reads no gs:// URI)"
        raise RequestError(403, f"{where}={uri!r}: outside the prefixes this server may read ({allowed}); send the "
                                "image inline as {\"b64\": ...} or start the server with --allowed-gcs-prefixes")
    if read_gcs is None:
        from petqlora.cloud.storage import read_bytes as read_gcs
    try:
        data = read_gcs(uri, max_bytes=cfg.max_image_bytes)  # a huge object is not downloaded to be refused
    except Exception as exc:  # noqa: BLE001 - every failure becomes an answer; the server keeps serving
        raise RequestError(_read_status(exc), f"{where}={uri!r}: cannot be read ({exc})") from None
    if len(data) > cfg.max_image_bytes:
        raise RequestError(413, f"{where}={uri!r}: over the limit of {cfg.max_image_bytes} bytes per image; send a "
                                "smaller image")
    return data


def _decode(i: int, kind: str, data: bytes, cfg: ServeConfig) -> Image.Image:
    where = f"instances[{i}].{kind}"
    try:
        return decode_image(io.BytesIO(data), cfg.max_image_pixels, formats=SERVED_FORMATS)
    except UnsupportedFormat as exc:
        raise RequestError(400, f"{where}: a {exc.format} image; send a JPEG, PNG, WebP, BMP or GIF file (the "
                                "formats evaluation reads)") from None
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"{where}: {exc}; send a smaller image (at most {cfg.max_image_pixels} pixels)") \
            from None
    except Exception as exc:  # PIL raises many kinds for bad bytes: UnidentifiedImageError, OSError, SyntaxError...
        raise RequestError(400, f"{where}: not a decodable image ({type(exc).__name__}: {exc}); send the bytes of a "
                                "JPEG, PNG, WebP, BMP or GIF file") from None


def _read_status(exc: Exception) -> int:
    """The HTTP status of a failed gs:// read: 400 a malformed URI, 403 no permission (the message names the
    role to grant), 404 no such bucket or object, 502 Cloud Storage itself failed (worth a retry: a batch
    prediction job must not take it for a bad instance)."""
    from google.api_core import exceptions

    if isinstance(exc, ValueError):
        return 400
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, exceptions.Forbidden):
        return 403
    if isinstance(cause, exceptions.NotFound):
        return 404
    return 502
