"""Every error leaves the API as `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from api.schemas import ErrorBody, ErrorResponse
from shared.errors import AppError, PredictTimeout, RateLimited

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "limit_exceeded",
    415: "unsupported_media_type",
    429: "rate_limited",
}

# Declared on every route so the OpenAPI schema documents the one error shape.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed request (for example a broken multipart body)",
        401: "Missing, unknown or revoked API key (when AUTH_ENABLED)",
        403: "A route for admin keys, asked with another key",
        404: "No such job",
        413: "Over a configured limit (the message names it)",
        415: "Neither an image nor a zip",
        422: "Invalid request or input",
        500: "Unexpected error",
        503: "Database, broker or storage unavailable",
        507: "Upload storage full",
    }.items()
}


def error_response(
    status: int, code: str, message: str, details: dict[str, object] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


DATABASE_ERRORS = (PoolTimeout, OperationalError)


def database_error_response(exc: PoolTimeout | OperationalError) -> JSONResponse:
    """503 for the database's two troubles, wherever they surface (routes or middleware)."""
    if isinstance(exc, PoolTimeout):
        log.error("no database connection free: %s", exc)
        response = error_response(
            503, "database_busy", "every database connection is in use; retry shortly"
        )
        response.headers["Retry-After"] = "1"
        return response
    log.error("database unavailable: %s", exc.orig)
    return error_response(503, "database_unavailable", "the database is unavailable; retry")


def multipart_problem(parser_message: str) -> tuple[int, str]:
    """The multipart parser's own limits, said as this API says limits (413, with the limit)."""
    if "exceeded maximum size" in parser_message:
        return 413, (
            f"a multipart part is over the parser's limit ({parser_message}); "
            "text fields must stay under MAX_FORM_FIELD_BYTES, send images as files"
        )
    if parser_message.startswith("Too many"):
        return 413, f"{parser_message} Send more images in a .zip instead."
    if parser_message == "There was an error parsing the body":
        return 400, "the request body is not a well-formed multipart/form-data body"
    return 400, f"malformed request body: {parser_message}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        details: dict[str, object] | None = None
        if isinstance(exc, PredictTimeout):
            details = {"job_id": exc.job_id, "links": {"self": f"/jobs/{exc.job_id}"}}
        response = error_response(exc.http_status, exc.code, exc.message, details)
        if isinstance(exc, PredictTimeout):
            response.headers["Location"] = f"/jobs/{exc.job_id}"
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"location": ".".join(str(p) for p in error["loc"]), "message": error["msg"]}
            for error in exc.errors()
        ]
        problems = "; ".join(f"{f['location']}: {f['message']}" for f in fields)
        return error_response(
            422, "invalid_request", problems or "invalid request", {"fields": fields}
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        status, message = exc.status_code, str(exc.detail)
        if status == 400:
            status, message = multipart_problem(message)
        response = error_response(status, HTTP_CODES.get(status, "http_error"), message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def database_trouble(_: Request, exc: PoolTimeout | OperationalError) -> JSONResponse:
        return database_error_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "unexpected error; it has been logged")
