"""An ASGI guard that refuses request bodies over a byte limit (HTTP 413) before parsing.

A declared ``Content-Length`` over the limit is refused without reading a byte; a body sent
without one (chunked) is counted as it arrives and refused as soon as it passes the limit, so
an upload never fills memory or the disk's temporary files beyond the limit.
"""

from __future__ import annotations

import json
from typing import Any

from softloc.serve.uploads import UploadError


class BodyLimit:
    """Wraps an ASGI app; bodies over ``max_bytes`` get 413 with a JSON error."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    def _message(self) -> str:
        return (f"request body over the limit of {self.max_bytes / 2**20:g} MiB "
                "(--max-upload-mb); send smaller or fewer images")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_error(send, 413 if declared.isdigit() else 400,
                              self._message() if declared.isdigit() else "bad Content-Length")
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadError(413, self._message())
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except UploadError as error:
            if started:
                raise
            await _send_error(send, error.status, str(error))


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
