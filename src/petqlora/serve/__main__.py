"""python -m petqlora.serve: read the config (flags over AIP_* environment), start uvicorn on the app, load the
model in the background; a model that cannot be loaded stops the server with exit code 1 (bad arguments: 2).

    python -m petqlora.serve --adapter runs/latest/.../train-adapter/adapter/adapter [--port 8080] [--device cpu]
"""

from __future__ import annotations

import logging
import os
import sys

from petqlora.logs import setup_logging

log = logging.getLogger("petqlora.serve")


def main(argv: list[str] | None = None) -> int:
    setup_logging(os.environ)
    from petqlora.serve.config import read_config

    try:
        cfg = read_config(argv, os.environ)
    except ValueError as exc:  # one line: a plain-text log (Vertex's) makes each line its own entry
        log.error("serve: bad arguments: %s", "; ".join(getattr(exc, "problems", None) or (str(exc),)))
        return 2
    import uvicorn

    from petqlora.serve.app import create_app
    from petqlora.serve.predictor import load_predictor

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True  # uvicorn's loop checks it; a container that cannot serve must not look alive

    app = create_app(cfg, lambda: load_predictor(cfg), on_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False))
    log.info("serving on %s:%d (health %s, predict %s); loading %s", cfg.host, cfg.port, cfg.health_route,
             cfg.predict_route, cfg.adapter)
    server.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
