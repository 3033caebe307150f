"""/usage: images classified, failed and reused per day, for the caller's key (every key's
for an admin key, at /usage/keys)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import CallerDep
from api.deps import SessionDep
from api.errors import ERROR_RESPONSES
from api.schemas import DayUsageOut, KeysUsageOut, UsageOut
from shared.access.usage import DayUsage, usage_by_day, usage_of_every_key
from shared.db.models import utcnow
from shared.errors import Forbidden, InvalidInput

router = APIRouter(prefix="/usage", tags=["usage"], responses=ERROR_RESPONSES)

DEFAULT_DAYS = 30
MAX_DAYS = 366


FirstDay = Annotated[
    date | None, Query(alias="from", description="First day (UTC), default 30 days ago")
]
LastDay = Annotated[date | None, Query(alias="to", description="Last day (UTC), default today")]


@router.get("", response_model=UsageOut)
def usage(
    session: SessionDep, caller: CallerDep, first: FirstDay = None, last: LastDay = None
) -> UsageOut:
    """Per day (UTC) with any use: images classified (reused ones included), failed, and
    reused (a stored result of an identical image); the totals over the range."""
    first, last = _range(first, last)
    return _usage_out(caller.key_id, first, last, usage_by_day(session, caller.owner, first, last))


@router.get("/keys", response_model=KeysUsageOut)
def usage_of_keys(
    session: SessionDep, caller: CallerDep, first: FirstDay = None, last: LastDay = None
) -> KeysUsageOut:
    """Every key's usage over the range, for an admin key (`keys create --admin`): the
    keys with any use, each as `GET /usage` shows it to that key."""
    if not caller.admin:
        raise Forbidden(
            "every key's usage needs an admin key (intel-classifier keys create --admin)"
        )
    first, last = _range(first, last)
    keys = usage_of_every_key(session, first, last)
    return KeysUsageOut(
        first_day=first,
        last_day=last,
        keys=[_usage_out(key or None, first, last, days) for key, days in keys.items()],
    )


def _range(first: date | None, last: date | None) -> tuple[date, date]:
    last = last or utcnow().date()
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise InvalidInput(f"from ({first}) is after to ({last})")
    if (last - first).days >= MAX_DAYS:
        raise InvalidInput(f"a usage range is at most {MAX_DAYS} days")
    return first, last


def _usage_out(key: str | None, first: date, last: date, found: list[DayUsage]) -> UsageOut:
    days = [DayUsageOut.model_validate(d, from_attributes=True) for d in found]
    return UsageOut(
        key=key,
        first_day=first,
        last_day=last,
        days=days,
        total=DayUsageOut(
            day=None,
            classified=sum(d.classified for d in days),
            failed=sum(d.failed for d in days),
            reused=sum(d.reused for d in days),
        ),
    )
