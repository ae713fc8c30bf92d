"""The FastAPI app: Vertex AI's health and predict routes over one Predictor.

GET  <health route>   503 {"status": "loading"} while the model loads (in a background thread started with
                      the app), 200 {"status": "ready", "model_version"} after, 503 {"status": "failed",
                      "error"} if loading failed (the caller's `on_failure` then stops the server).
POST <predict route>  {"instances": [...], "parameters": {...}} (see instances.py), ADMITTED at a time ->
                      200 {"predictions": [{"breed", "probabilities", "model_version"}, ...]} in instance order,
                      4xx {"error": "..."} naming the problem (415: a Content-Type other than JSON), 503
                      while not ready, 500 on a scoring failure.
                      Vertex adds deployedModelId, model and modelVersionId to its own response.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from petqlora.serve.config import ServeConfig
from petqlora.serve.instances import EXAMPLE, RequestError, parse_request
from petqlora.serve.predictor import Predictor

log = logging.getLogger("petqlora.serve.app")

# Requests decoded and scored at once: one scoring (the model takes one at a time) and the next one decoded
# meanwhile. The others wait with their body (compressed, base64) undecoded, so memory holds two requests'
# decoded images (each bounded by ServeConfig's caps), not one per waiting client.
ADMITTED = 2


class _Loaded:
    """The predictor once loaded, or the error that stopped it; written by the loading thread only."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.error: str | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _check_content_type(request: Request) -> None:
    """A body declared as something else than JSON (a form, a raw image) is refused; none declared is read as
    JSON (Vertex sends application/json)."""
    declared = request.headers.get("content-type")
    media = (declared or "").split(";", 1)[0].strip().lower()
    if declared is not None and media != "application/json" and not media.endswith("+json"):
        raise RequestError(415, f"request body: Content-Type {media!r} is not JSON; send the request as "
                                "Content-Type: application/json (curl -d sends a form's: add -H 'Content-Type: "
                                f"application/json'), e.g. {EXAMPLE}")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes, before it is all read when Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body: {declared} bytes is over the limit of {limit} bytes; "
                                "split the instances into several requests")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body: over the limit of {limit} bytes; split the instances into "
                                        "several requests")
            chunks.append(chunk)
    except ClientDisconnect:  # a client that gave up (its timeout): no one reads the answer, but it is no failure
        raise RequestError(400, f"request body: the client disconnected before sending all of it ({size} bytes "
                                "read); retry with a longer client timeout") from None
    return b"".join(chunks)


def create_app(cfg: ServeConfig, load: Callable[[], Predictor],
               on_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The app; `load()` runs in a background thread once the server starts, `on_failure(exc)` if it raises."""
    loaded = _Loaded()

    def load_in_background() -> None:
        try:
            loaded.predictor = load()
        except BaseException as exc:  # reported by /health and to the caller, which decides to stop
            loaded.error = f"{type(exc).__name__}: {exc}"
            log.error("the model could not be loaded: %s", loaded.error)
            if on_failure is not None:
                on_failure(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # made here, in the server's event loop, which an asyncio primitive binds to
        app.state.admitted = asyncio.Semaphore(ADMITTED)
        threading.Thread(target=load_in_background, name="petqlora-serve-load", daemon=True).start()
        yield

    app = FastAPI(title="petqlora pet-breed classifier", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{exc.detail}: the routes are GET {cfg.health_route} and POST "
                                       f"{cfg.predict_route}")

    @app.get(cfg.health_route)
    async def health() -> JSONResponse:
        if loaded.predictor is not None:
            return JSONResponse({"status": "ready", "model_version": loaded.predictor.model_version})
        if loaded.error is not None:
            return JSONResponse({"status": "failed", "error": loaded.error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.post(cfg.predict_route)
    async def predict(request: Request) -> JSONResponse:
        predictor = loaded.predictor
        if predictor is None:
            return _error(503, f"the model is {'not loaded: ' + loaded.error if loaded.error else 'still loading'}; "
                               f"retry when GET {cfg.health_route} answers 200")
        try:
            _check_content_type(request)
            body = await _read_body(request, cfg.max_request_bytes)  # outside: a slow upload holds no slot
            async with request.app.state.admitted:
                parsed = await run_in_threadpool(parse_request, body, cfg, len(predictor.classes))
                predictions = await run_in_threadpool(predictor.predict, parsed.images, parsed.top_k)
        except RequestError as exc:
            log.warning("refused a request with %d: %s", exc.status, exc.message)
            return _error(exc.status, exc.message)
        except Exception as exc:  # the model failed on valid input: this request fails, the server goes on
            log.exception("scoring failed")
            return _error(500, f"scoring failed ({type(exc).__name__}: {exc}); the server is still serving")
        return JSONResponse({"predictions": predictions})

    return app
