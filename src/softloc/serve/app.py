"""The HTTP service: FastAPI app over one map and its model, loaded once.

Endpoints (see docs/serve.md):

- ``POST /localize``: multipart ``image`` (one) or ``images`` (several) -> a JSON array of
  fixes, exactly the objects of `softloc localize --format json` (:meth:`Fix.to_dict`).
- ``POST /localize/sequence``: ordered ``images`` with optional ``timestamps`` and ``session``;
  the sequence filter's causal fixes, its state kept per session (:mod:`.sessions`).
- ``GET /health``, ``GET /map`` (model, reference count, dimension, index kind, creation).

Every refusal is a 4xx with ``{"error": message}``; a request never takes the server down.
With a token, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from softloc.data.images import ImageError
from softloc.localizer import SEQUENCE_CANDIDATES, Localizer, make_fix
from softloc.mapping import MapError
from softloc.sequence import SequenceConfig
from softloc.serve.batching import Batcher
from softloc.serve.limits import BodyLimit
from softloc.serve.sessions import SessionStore, filter_step
from softloc.serve.uploads import UploadError, decode_upload

logger = logging.getLogger(__name__)

MAX_SESSION_CHARS = 128

_IMAGES_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "one image"},
            "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                       "description": "several images"},
        },
    }}},
}
_SEQUENCE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                       "description": "the frames, in the order taken"},
            "timestamps": {"type": "array", "items": {"type": "number"},
                           "description": "one per image (or one comma-separated field)"},
            "session": {"type": "string", "maxLength": MAX_SESSION_CHARS,
                        "description": "id whose filter state continues across requests"},
        },
    }}},
}
_FIXES_RESPONSE = {"200": {"description": "one fix per image, in order", "content": {
    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}}


def create_app(
    map_dir: str | os.PathLike[str],
    *,
    k: int = 5,
    estimate: str = "top1",
    token: str | None = None,
    max_upload_mb: float = 20.0,
    max_images: int = 32,
    max_pixels: int | None = None,
    sequence: SequenceConfig | None = None,
    session_expiry_s: float = 600.0,
    max_sessions: int = 10_000,
    clock: Callable[[], float] = time.monotonic,
    batch_wait_ms: float = 5.0,
    max_batch: int = 64,
) -> FastAPI:
    """The service for the map in ``map_dir`` (its model and index are loaded here, once).

    Args:
        map_dir: a saved map folder.
        k: references listed per fix.
        estimate: ``top1`` or ``weighted`` (see :func:`softloc.localizer.estimate_position`).
        token: when given, requests need ``Authorization: Bearer <token>`` (not ``/health``).
        max_upload_mb: the most bytes a request body may hold, in MiB (413 above).
        max_images: the most images one request may carry (413 above).
        max_pixels: the most pixels an image may have (default Pillow's bomb limit).
        sequence: the sequence filter's parameters (default :class:`SequenceConfig`).
        session_expiry_s, max_sessions: how long and how many sequence sessions are kept.
        clock: monotonic seconds for session expiry (tests inject one).
        batch_wait_ms, max_batch: requests arriving within this many ms share one forward
            pass of at most ``max_batch`` images (:mod:`.batching`).

    Raises:
        MapError: the map cannot be opened.
    """
    if max_upload_mb <= 0 or max_images < 1:
        raise ValueError("max_upload_mb must be > 0 and max_images >= 1")
    localizer = Localizer(map_dir, k=k, estimate=estimate)
    config = sequence or SequenceConfig()
    sessions = SessionStore(session_expiry_s, max_sessions, clock)
    batcher = Batcher(localizer.describe, batch_wait_ms, max_batch)  # the model's one user
    the_map = localizer.map

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="softloc", summary="visual localization by image retrieval",
                  version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    app.state.localizer, app.state.sessions, app.state.batcher = localizer, sessions, batcher

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                  token.encode()):
            raise HTTPException(401, "missing or wrong bearer token: send "
                                     "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    async def read_uploads(request: Request, fields: tuple[str, ...]) -> tuple[list, dict]:
        """(the image parts as (bytes, name, content type), the text fields) of a multipart
        request; the form's temporary files are closed before returning. The parts are
        decoded later, in the same thread-pool call as the model (one hop per request)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise UploadError(415, f"content type {kind or 'none'!r}: send the images as "
                                   "multipart/form-data (fields 'image' or 'images')")
        try:
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
        except HTTPException as error:
            status = 413 if "too many" in str(error.detail).lower() else 400
            raise UploadError(status, f"cannot read the form: {error.detail} (at most "
                                      f"{max_images} images per request)") from None
        try:
            return await _read_form(form, fields)
        finally:
            await form.close()

    async def _read_form(form: Any, fields: tuple[str, ...]) -> tuple[list, dict]:
        uploads = [v for f in fields for v in form.getlist(f)]
        if not uploads:
            raise UploadError(400, f"no image: send a file in the form field "
                                   f"{' or '.join(repr(f) for f in fields)}")
        if len(uploads) > max_images:
            raise UploadError(413, f"{len(uploads)} images: at most {max_images} per request")
        parts = []
        for i, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise UploadError(400, f"form field {i} of the images is text, not a file: "
                                       "send the image as a file part")
            parts.append((await upload.read(), upload.filename or f"<upload {i}>",
                          upload.content_type))
        texts = {key: form.getlist(key) for key in ("timestamps", "session")}
        return parts, texts

    def decode(parts: list[tuple[bytes, str, str | None]]) -> tuple[list[str], list]:
        """(names, RGB images) of the uploaded parts, in order (the first bad one refused)."""
        images = [decode_upload(data, name, kind, max_pixels) for data, name, kind in parts]
        return [name for _, name, _ in parts], images

    def retrieve(images: list, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and squared distances of each image's ``width`` nearest references."""
        scores, rows = the_map.search(batcher.describe(images), width)
        return rows, np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0)

    def localize(parts: list[tuple[bytes, str, str | None]]) -> list[dict]:
        names, images = decode(parts)
        rows, distances = retrieve(images, localizer.k)  # as Localizer.localize
        return [make_fix(n, r, d, the_map, localizer.estimate, localizer.radius,
                         k=localizer.k).to_dict()
                for n, r, d in zip(names, rows, distances, strict=True)]

    def localize_sequence(parts: list[tuple[bytes, str, str | None]],
                          form: dict[str, list]) -> list[dict]:
        names, images = decode(parts)  # first, so a bad image is refused before bad fields
        stamps = _timestamps(form["timestamps"], len(images))
        session = form["session"][0] if form["session"] else None
        if session is not None and (not isinstance(session, str) or not session.strip()
                                    or len(session) > MAX_SESSION_CHARS):
            raise UploadError(400, f"session must be a non-empty text field of at most "
                                   f"{MAX_SESSION_CHARS} characters")
        rows, distances = retrieve(images, max(localizer.k, SEQUENCE_CANDIDATES))
        state = sessions.get(session) if session else None
        out = []
        for name, r, d, stamp in zip(names, rows, distances, stamps, strict=True):
            best, state = filter_step(state, r, d, the_map.places.xy, config, stamp)
            out.append(make_fix(name, r, d, the_map, localizer.estimate, localizer.radius,
                                best=best, k=localizer.k).to_dict())
        if session:
            sessions.put(session, state)
        return out

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {error.errors()}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("softloc serve: unexpected error")
        return JSONResponse({"error": f"internal error ({type(error).__name__})"},
                            status_code=500)

    # /health and /map are async: they compute nothing, so they answer on the event loop
    # without a thread-pool hop (a sync endpoint would take one per request).
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: answers without a token."""
        return {"status": "ok", "references": len(the_map)}

    @app.get("/map")
    async def map_info(request: Request) -> dict[str, Any]:
        """The map being served: its model, size, dimension, index and creation time."""
        authorize(request)
        width, height = localizer.image_size
        return {"model": the_map.model_meta, "references": len(the_map), "dim": the_map.dim,
                "index": the_map.index.kind, "created": the_map.created,
                "image_size": [width, height], "k": localizer.k,
                "estimate": localizer.estimate}

    @app.post("/localize", openapi_extra={"requestBody": _IMAGES_BODY},
              responses=_FIXES_RESPONSE)
    async def localize_images(request: Request) -> JSONResponse:
        """Localize each image on its own: one fix per image, in order."""
        authorize(request)
        with batcher.request():
            parts, _ = await read_uploads(request, ("image", "images"))
            return JSONResponse(await _run(localize, parts))

    @app.post("/localize/sequence", openapi_extra={"requestBody": _SEQUENCE_BODY},
              responses=_FIXES_RESPONSE)
    async def localize_frames(request: Request) -> JSONResponse:
        """Filter ordered frames; with ``session`` the filter continues from the last call."""
        authorize(request)
        with batcher.request():
            parts, form = await read_uploads(request, ("images", "image"))
            return JSONResponse(await _run(localize_sequence, parts, form))

    return app


async def _run(function: Callable[..., Any], *args: Any) -> Any:
    """Run a request's work (decode, model, search, fixes) in one thread-pool call, off the
    event loop; an unreadable image or a map error is a 400 (an UploadError keeps its own)."""
    try:
        return await run_in_threadpool(function, *args)
    except (ImageError, MapError) as error:
        raise UploadError(400, str(error)) from None


def _timestamps(fields: list, count: int) -> list[float | None]:
    """One timestamp per image from repeated or comma-separated ``timestamps`` fields."""
    if not all(isinstance(f, str) for f in fields):
        raise UploadError(400, "timestamps must be text fields, not files")
    values = [v.strip() for f in fields for v in f.split(",") if v.strip()]
    if not values:
        return [None] * count
    if len(values) != count:
        raise UploadError(400, f"{len(values)} timestamps for {count} images: give one per "
                               "image, or none to use the order")
    try:
        stamps = [float(v) for v in values]
    except ValueError:
        raise UploadError(400, f"timestamps must be numbers (seconds), got {values}") from None
    if not all(np.isfinite(stamps)):
        raise UploadError(400, "timestamps must be finite numbers")
    return stamps
