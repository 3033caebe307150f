"""Logging for every process: text for people, JSON lines (LOG_FORMAT=json) for collectors.

Records carry the ids of what they are about: `log_context(job_id=...)` sets them
for everything logged inside it, and `extra={"item_id": ...}` adds one to a record.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from shared.settings import Settings

CONTEXT_FIELDS = ("job_id", "item_id", "event_id", "request_id")
_context: ContextVar[dict[str, str]] = ContextVar("intel_log_context", default={})  # noqa: B039


@contextmanager
def log_context(**ids: str) -> Iterator[None]:
    token = _context.set({**_context.get(), **ids})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copy the current context's ids onto each record (without overriding `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{line} [{ids}]" if ids else line


class DropKnownNoise(logging.Filter):
    """Messages that alarm and mean nothing here, said on every start."""

    NOISE = (
        # kombu, for the embedded broker's URL, which has no host by design.
        "No hostname was supplied",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(str(record.msg).startswith(noise) for noise in self.NOISE)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(DropKnownNoise())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for chatty in ("alembic.runtime.plugins", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
