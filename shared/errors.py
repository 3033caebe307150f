"""The project's one error hierarchy.

Every error a user can cause carries a stable machine-readable `code`, a message
that says what was wrong (and the limit, where there is one) and the HTTP status
the API answers it with, so the CLI, the workers and the API report it alike.
"""

from __future__ import annotations

from typing import ClassVar


class AppError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AppError):
    code = "invalid_input"
    http_status = 422


class UnreadableImage(InvalidInput):
    """The bytes are not an image Pillow can decode (corrupt, truncated, not an image)."""

    code = "unreadable_image"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot read image {name!r}: {reason}")
        self.name = name


class ItemFailed(InvalidInput):
    """An accepted image the worker could not classify; the message is the item's own error."""

    code = "unreadable_image"


class ImageTooLarge(InvalidInput):
    """More pixels than the limit: refused before decoding, which stops decompression bombs."""

    code = "image_too_large"
    http_status = 413

    def __init__(self, name: str, pixels: int, limit: int) -> None:
        super().__init__(
            f"image {name!r} has {pixels:,} pixels, over the limit of {limit:,} (MAX_IMAGE_PIXELS)"
        )
        self.name = name


class ModelError(AppError):
    """The model artifact or base weights cannot be loaded."""

    code = "model_error"


class Unauthorized(AppError):
    """No API key, or one the server does not know or has revoked."""

    code = "unauthorized"
    http_status = 401


class Forbidden(AppError):
    """A valid key asking for what only an admin key may see."""

    code = "forbidden"
    http_status = 403


class RateLimited(AppError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotFound(AppError):
    code = "not_found"
    http_status = 404


class Conflict(AppError):
    code = "conflict"
    http_status = 409


class LimitExceeded(AppError):
    """A request over one of the configured limits; the message names the limit and its setting."""

    code = "limit_exceeded"
    http_status = 413


class UnsupportedMediaType(AppError):
    code = "unsupported_media_type"
    http_status = 415


class NoImages(InvalidInput):
    code = "no_images"


class ServiceUnavailable(AppError):
    code = "service_unavailable"
    http_status = 503


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"


class StorageFull(AppError):
    code = "storage_full"
    http_status = 507


class UploadMissing(AppError):
    code = "upload_missing"
    http_status = 404


class PredictTimeout(AppError):
    code = "timeout"
    http_status = 504

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def describe(exc: BaseException) -> str:
    """The reason a failure records: our own message, or the exception's type and text."""
    if isinstance(exc, AppError):
        return exc.message
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
