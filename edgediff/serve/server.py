"""`edgediff serve`: the app on one device, in this process, behind uvicorn."""

from __future__ import annotations

import errno
import logging
import socket

from edgediff.errors import EdgediffError
from edgediff.serve import require
from edgediff.serve.settings import GRACEFUL_STOP_S, Limits, ModelChoice

_log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    """Fail with a one-line error before loading anything if the port cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise EdgediffError(
                    f"port {port} on {host} is already in use", "Pass another --port"
                ) from None
            raise EdgediffError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve_here(model: ModelChoice, host: str, port: int, limits: Limits) -> None:
    """Load the pipeline, then answer HTTP until SIGTERM or Ctrl-C (in-flight work finishes)."""
    require("fastapi", "serve")
    require("uvicorn", "serve")
    import uvicorn

    from edgediff.serve.app import create_app
    from edgediff.serve.local import LocalService

    check_port_free(host, port)
    runner = model.load()
    service = LocalService(runner, limits.max_batch, limits.batch_wait_ms / 1000)
    config = uvicorn.Config(
        create_app(service, limits),
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
        access_log=False,  # one line per image request drowns the log at a few hundred per s
    )
    _log.info("serving %s on http://%s:%d (docs at /docs)", runner.info()["bundle"], host, port)
    uvicorn.Server(config).run()
