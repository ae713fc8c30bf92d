"""The HTTP side that the Vertex fakes share: a threaded server on 127.0.0.1 (an ephemeral port) that reads
each request's path, query and JSON body and writes back the JSON that the fake's ``answer(method, path,
query, body) -> (status, payload)`` returns. The fakes keep their own routes, state and locking."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Answer", "JsonServer"]

Answer = Callable[[str, str, dict, dict], "tuple[int, dict]"]


def _handler_class(answer: Answer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the clients' sessions expect

        def log_message(self, *args: Any) -> None:  # keep test output clean: the fakes record requests
            pass

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            status, payload = answer(self.command, unquote(url.path), query, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler


class JsonServer:
    """Serves ``answer`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, answer: Answer, name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(answer))
        self._server.daemon_threads = True
        self._server.block_on_close = False  # keep-alive handler threads must not block shutdown
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
