"""Start the service with uvicorn: one process, or ``workers`` processes that each load the map.

With several workers uvicorn imports the app in each process, so the options travel in an
environment variable (:data:`OPTIONS_VARIABLE`, JSON) to :func:`app_from_environment`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from softloc.sequence import SequenceConfig
from softloc.serve.app import create_app

logger = logging.getLogger(__name__)

OPTIONS_VARIABLE = "SOFTLOC_SERVE_OPTIONS"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_from_options(options: dict[str, Any]) -> FastAPI:
    """:func:`create_app` from plain options (``sequence`` as a dict of its fields)."""
    options = dict(options)
    sequence = options.pop("sequence", None)
    map_dir = options.pop("map_dir")
    return create_app(map_dir, sequence=SequenceConfig(**sequence) if sequence else None,
                      **options)


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process, from :data:`OPTIONS_VARIABLE`."""
    return app_from_options(json.loads(os.environ[OPTIONS_VARIABLE]))


def serve(map_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, **options: Any) -> None:
    """Serve the map until interrupted (options: those of :func:`create_app`)."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    if not is_loopback(host) and not options.get("token"):
        logger.warning("serving on %s without --token: anyone who can reach it can upload "
                       "images; give --token or bind 127.0.0.1", host)
    plain = {"map_dir": str(Path(map_dir)), **options}
    if workers == 1:
        app = app_from_options(plain)  # load the map now: a bad map fails before binding
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    app_from_options(plain)  # check the map once here, so a bad one fails with a clear error
    os.environ[OPTIONS_VARIABLE] = json.dumps(plain)
    uvicorn.run("softloc.serve.run:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level="info")
