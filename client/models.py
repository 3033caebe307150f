"""What the client hands back: jobs and per-image results, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL_STATUSES = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    summary: dict[str, int]
    error: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        return cls(
            id=body["id"],
            status=body["status"],
            total=int(body["total"]),
            succeeded=int(body["succeeded"]),
            failed=int(body["failed"]),
            skipped=int(body["skipped"]),
            summary=dict(body.get("summary") or {}),
            error=body.get("error"),
            raw=body,
        )

    @property
    def done(self) -> int:
        """Items that have ended, whichever way."""
        return self.succeeded + self.failed + self.skipped

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class ItemResult:
    id: str
    filename: str
    status: str
    label: str | None
    custom_id: str | None
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ItemResult:
        return cls(
            id=body["id"],
            filename=body["filename"],
            status=body["status"],
            label=body.get("class"),
            custom_id=body.get("custom_id"),
            confidence=body.get("confidence"),
            scores=body.get("scores"),
            error=body.get("error"),
        )
