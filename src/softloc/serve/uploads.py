"""Uploaded image bytes -> RGB PIL images, refusing what a service must not decode.

An upload is untrusted: it may be empty, not an image, declare a content type that is not an
image, or be a decompression bomb (a small file whose header claims a huge canvas). The pixel
count is checked from the header before any pixel is decoded, against the same limit the
file loader uses (:data:`PIL.Image.MAX_IMAGE_PIXELS`, :mod:`softloc.data.images`) unless the
service is given its own.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

#: Content types accepted for an uploaded part besides ``image/*`` (clients that do not know).
NEUTRAL_TYPES: tuple[str, ...] = ("application/octet-stream", "")


class UploadError(ValueError):
    """An upload that is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def default_max_pixels() -> int:
    """Pillow's decompression-bomb limit, the one :func:`softloc.data.images.load_image` obeys."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def decode_upload(data: bytes, name: str, content_type: str | None,
                  max_pixels: int | None = None) -> Image.Image:
    """The RGB image in ``data`` (the upload called ``name``).

    Raises:
        UploadError: 400 empty or undecodable, 415 a non-image content type, 413 more than
            ``max_pixels`` pixels (default :func:`default_max_pixels`).
    """
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    kind = (content_type or "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in NEUTRAL_TYPES):
        raise UploadError(415, f"{name}: content type {content_type!r} is not an image; send "
                               "the file as image/jpeg, image/png, ... (or octet-stream)")
    if not data:
        raise UploadError(400, f"{name}: empty upload; send the image's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limit:
                raise UploadError(413, f"{name}: {width}x{height} = {width * height} pixels is "
                                       f"over the limit of {limit} (decompression bombs); send "
                                       "a smaller image")
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(413, f"{name}: image too large: {error}; send a smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, UploadError):
            raise
        raise UploadError(400, f"{name}: cannot decode image ({error}); send a JPEG, PNG, "
                               "... file") from None
