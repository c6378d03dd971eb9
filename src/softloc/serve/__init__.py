"""`softloc serve`: localization over HTTP (FastAPI), see :func:`create_app` and docs/serve.md."""

from __future__ import annotations

from softloc.serve.app import create_app

__all__ = ["create_app"]
